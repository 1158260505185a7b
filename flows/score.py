"""Batch scoring flows: `score` (one Parquet file or folder) and `score_landing` (each new landing file once).

Tasks pass paths and the model URI; the model is loaded inside the task (`pipeline.scoring.pyfunc.load_batch_scorer`),
so the same code runs with no Prefect at all through `txseq score`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from flows.common import IO_RETRIES, EngineParams
from pipeline.scoring.batch import ScoreConfig, ScoreResult, default_rejects_path, summary_markdown
from pipeline.scoring.landing import LandingConfig, LandingResult, landing_files, pending_files
from pipeline.scoring.landing import score_landing as score_landing_folder
from pipeline.scoring.drift import markdown as drift_markdown
from pipeline.engines import Engine, score_file_with
from pipeline.io import check_io_paths, location
from pipeline.scoring.pyfunc import ModelLoadError, load_batch_scorer, log_scoring_run
from pipeline.settings import DEFAULT_REGISTERED_MODEL, load_settings

CHAMPION_URI = f"models:/{DEFAULT_REGISTERED_MODEL}@champion"


class ScoreParams(EngineParams):
    model_uri: str = Field(CHAMPION_URI, description="models:/<name>@<alias>, models:/<name>/<version> or runs:/…")
    input: str | None = Field(None, description="raw transactions: Parquet/CSV file or folder (default: landing folder)")
    output: str | None = Field(None, description="scores Parquet (default: <data root>/scores/scores-<time>.parquet)")
    chunk_rows: int = Field(2_000_000, gt=0, description="validated rows scored at once (memory grows with it)")
    drift_threshold: float = Field(0.2, gt=0, description="warn when a feature's PSI exceeds this")


class LandingParams(BaseModel):
    model_uri: str = Field(CHAMPION_URI, description="the model that scores new files")
    landing_dir: str | None = Field(None, description="folder of new files (default: <data root>/landing)")
    out_dir: str | None = Field(None, description="scores and the ledger of scored files (default: <data root>/scores)")
    chunk_rows: int = Field(2_000_000, gt=0)
    min_age_s: float = Field(0.0, ge=0, description="skip files modified this recently (still being written)")
    stale_after_s: float = Field(3600.0, gt=0, description="take over claims with no heartbeat for this long")
    drift_threshold: float = Field(0.2, gt=0, description="warn when a feature's PSI exceeds this")


def _worth_retrying(task, task_run, state) -> bool:
    """Retry I/O failures, but not a model that does not exist (its URI will not appear by retrying)."""
    try:
        state.result()
    except ModelLoadError as e:
        return e.transient
    except Exception:  # noqa: BLE001 - any other failure: the usual I/O retries
        return True
    return True


@task(**IO_RETRIES, retry_condition_fn=_worth_retrying)
def score_task(model_uri: str, source: Path | str, output: Path | str, chunk_rows: int, drift_threshold: float,
               engine: Engine = Engine()) -> ScoreResult:
    scorer, model = load_batch_scorer(model_uri, load_settings().tracking_uri)
    result = score_file_with(engine, source, output, scorer, model,
                             ScoreConfig(chunk_rows, drift_psi_threshold=drift_threshold), load_settings().tracking_uri)
    _log_scoring_run(result, model)
    return result


@task(**IO_RETRIES, retry_condition_fn=_worth_retrying)
def score_landing_task(model_uri: str, landing_dir: Path, out_dir: Path, p: LandingParams) -> LandingResult:
    if not pending_files(landing_dir, out_dir, p.min_age_s):  # nothing new: no model to load
        return LandingResult(scored=[], skipped=landing_files(landing_dir, p.min_age_s), ledger=[])
    scorer, model = load_batch_scorer(model_uri, load_settings().tracking_uri)
    landing = LandingConfig(stale_after_s=p.stale_after_s, min_age_s=p.min_age_s)
    config = ScoreConfig(chunk_rows=p.chunk_rows, drift_psi_threshold=p.drift_threshold)
    result = score_landing_folder(landing_dir, out_dir, scorer, model, config, landing)
    for scored in result.scored:
        _log_scoring_run(scored, model)
    return result


def _log_scoring_run(result: ScoreResult, model) -> None:  # noqa: ANN001 - batch.ModelRef
    """The scoring run in MLflow; the scores are written already, so a tracking hiccup is a warning, not a retry."""
    try:
        log_scoring_run(result, model, load_settings().tracking_uri)
    except Exception as e:  # noqa: BLE001
        get_run_logger().warning("scoring run of %s not logged to MLflow: %s", result.output_name, e)


@task
def publish_summary(results: list[ScoreResult], key: str) -> None:
    create_markdown_artifact(summary_markdown(results), key=key, description="txseq scoring summary")
    for r in results:  # the drift report of each scored batch, and its warning line in the run's log
        if r.drift is not None:
            files = " and ".join(f"`{f}`" for f in r.drift_files)
            create_markdown_artifact(f"# Input drift: `{r.output_name}`\n\n{drift_markdown(r.drift)}\n\nFiles: {files}",
                                     key=f"{key}-drift", description=f"input drift of {r.output_name}")
        if r.drift_warning:
            get_run_logger().warning("%s: %s", r.output_name, r.drift_warning)


@flow(name="score")
def score(params: ScoreParams = ScoreParams()) -> ScoreResult:
    s = load_settings()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    output = location(params.output) if params.output else s.scores_dir / f"scores-{stamp}.parquet"
    (source,), (output, _) = check_io_paths([params.input or s.landing_dir], [output, default_rejects_path(output)])
    result = score_task(params.model_uri, source, output, params.chunk_rows, params.drift_threshold,
                        params.engine_choice())
    publish_summary([result], key="scoring-summary")
    return result


@flow(name="score-landing")
def score_landing(params: LandingParams = LandingParams()) -> LandingResult:
    s = load_settings()
    if params.landing_dir is None:  # the default folder may not exist yet on a new data root: nothing to score
        s.landing_dir.mkdir(parents=True, exist_ok=True)
    (landing_dir,), (out_dir,) = check_io_paths([params.landing_dir or s.landing_dir], [params.out_dir or s.scores_dir])
    result = score_landing_task(params.model_uri, landing_dir, out_dir, params)
    publish_summary(result.scored, key="landing-scoring-summary")
    if result.failed:  # the other files were scored; the run still fails so that someone looks at these
        raise RuntimeError("; ".join(error for _, error in result.failed))
    return result

