"""The MLflow pyfunc model: a raw transactions table in, one row per customer out (customer_id, probability,
prediction). Both kinds of model (sequence encoders and the GBDT baseline) sit behind the same interface.

    raw rows ──validate (as ingest)──▶ events ──build_sequences(stored vocab)──▶ batches ──model──▶ scores
                                              └─build_features(stored spec)──▶ GBDT ──────────────▶ scores

What is stored is data, never a pickled object: the state dict (`torch.load(weights_only=True)`), a JSON config
(model, sequence and ingest settings) and the vocabularies; the GBDT as skops with a fixed trusted-type list. The
pyfunc itself is logged as "models from code" (a three-line file that calls `set_model`), so MLflow pickles nothing
either; the `pipeline` and `models` packages travel with it as code paths.

`SequenceScorer` / `GBDTScorer` are plain callables (no MLflow): the pyfunc's `load_context` builds one from the
artifacts once, and `predict` just calls it. Customers all of whose rows fail validation get no output row.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from datetime import time as dt_time
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, Schema

from models import ModelConfig, build_model
from pipeline import schema as S
from pipeline.sequences.batches import SequenceDataset
from pipeline.scoring.calibration import NO_DECISION, Decision
from pipeline.scoring.drift import DriftReport, Reference
from pipeline.sequences.features import FeatureSpec, build_features
from pipeline.scoring.gbdt import feature_matrix, load_gbdt, save_gbdt
from pipeline.scoring.inference import InferenceConfig, predict_proba
from pipeline.ingest.rules import IngestConfig, validate
from pipeline.ingest.labels import LabelSpec
from pipeline.io import first_line, is_uri
from pipeline.sources.mapping import DAY_NUMBER, EPOCH_MS, EPOCH_S, SBERBANK, SBERBANK_DAY, Source
from pipeline.sequences.table import SequenceConfig, Vocab, build_sequences
from pipeline.registry.tracking import RegisteredVersion, Tracker, TrackingError, check_readable

ROOT = Path(__file__).resolve().parents[2]
CODE_PATHS = [str(ROOT / "pipeline"), str(ROOT / "models")]
_MODEL_CODE = "from mlflow.models import set_model\nfrom pipeline.scoring import TxSeqModel\nset_model(TxSeqModel())\n"
_REQUIREMENTS = ("torch", "polars", "pyarrow", "numpy", "pandas", "scikit-learn", "skops", "mlflow")


def pip_requirements() -> list[str]:
    """Pinned versions of what the pyfunc imports, as installed here (local build tags such as +cpu dropped)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in _REQUIREMENTS]


def embedding_signature(dim: int, source: Source = SBERBANK) -> ModelSignature:
    """The source's columns in, customer_id + emb_0 … emb_{dim-1} out: a pretrained encoder's pyfunc."""
    inputs = signature(source).inputs
    outputs = Schema([ColSpec("long", S.CUSTOMER_ID), *[ColSpec("double", f"emb_{j}") for j in range(dim)]])
    return ModelSignature(inputs=inputs, outputs=outputs)


def signature(source: Source = SBERBANK) -> ModelSignature:
    """The export's columns in (`source`: the model's export format; strings as read from CSV, or already typed
    values: both are accepted), scores out."""
    optional = S.RAW_OPTIONAL_COLUMNS if not source.declared else {S.TR_TYPE, S.TERM_ID}
    inputs = Schema([ColSpec(AnyType(), export, required=raw not in optional) for raw, export in source.columns])
    outputs = Schema([ColSpec("long", S.CUSTOMER_ID), ColSpec("double", S.PROBABILITY), ColSpec("long", S.PREDICTION)])
    return ModelSignature(inputs=inputs, outputs=outputs)


# Two made-up customers (ids outside the 8-digit range of real ones) with a few plausible transactions each: the
# input example and serving example of every logged model. Never rows of the training data (a model registry is read
# by many people; customer rows do not belong there).
EXAMPLE_CUSTOMERS = (900_000_001, 900_000_002)
_EXAMPLE_EVENTS = (  # (day, time, mcc, tr_type, amount, term_id)
    ("3", "10:15:02", "5411", "1010", "-1523.40", "10000001"),
    ("3", "18:40:51", "5812", "1110", "-870.00", ""),
    ("9", "00:00:00", "6011", "7070", "-5000.00", "20000002"),
    ("17", "12:05:33", "4814", "1030", "-300.00", ""),
    ("24", "09:12:00", "5541", "1010", "-2100.75", "30000003"),
    ("31", "00:00:00", "6010", "7010", "25000.00", ""),
)


def _example_time(day: int, hms: str, source: Source) -> str:
    """A synthetic event time written in the source's format."""
    h, m, sec = (int(x) for x in hms.split(":"))
    if source.time_format == SBERBANK_DAY:
        return f"{day} {hms}"
    if source.time_format == DAY_NUMBER:
        return str(day)
    moment = datetime.combine(source.origin_date, dt_time(h, m, sec)) + timedelta(days=day)
    if source.time_format in (EPOCH_S, EPOCH_MS):
        seconds = int((moment - datetime(1970, 1, 1)).total_seconds())
        return str(seconds * 1000 if source.time_format == EPOCH_MS else seconds)
    return moment.strftime(source.time_format)


def input_example(source: Source = SBERBANK) -> pd.DataFrame:
    """Synthetic rows (strings, as read from a CSV) of `EXAMPLE_CUSTOMERS` in the source's columns and time format,
    for `log_model`."""
    rows = [
        {S.CUSTOMER_ID: str(cid), S.TR_DATETIME: _example_time(int(day) + k, hms, source), S.MCC_CODE: mcc,
         S.TR_TYPE: tr, S.AMOUNT: amount, S.TERM_ID: term}
        for k, cid in enumerate(EXAMPLE_CUSTOMERS) for day, hms, mcc, tr, amount, term in _EXAMPLE_EVENTS
    ]
    export = source.export
    return pd.DataFrame(rows, columns=list(S.RAW_COLUMNS))[list(export)].rename(columns=export)


def raw_events(raw: pd.DataFrame | pl.DataFrame, ingest: IngestConfig) -> pl.LazyFrame:
    """Rows of the model's export format (`ingest.source`: the columns it was trained on) -> validated events (the
    rejects are dropped here; batch scoring keeps them). Other columns are left out."""
    frame = pl.from_pandas(raw) if isinstance(raw, pd.DataFrame) else raw
    keep = [c for c in frame.columns if c in set(ingest.source.export.values())]
    strings = frame.select([pl.col(c).cast(pl.String) for c in keep])
    events, _rejects = validate(strings.lazy(), "pyfunc-input", ingest)
    return events


def _scores(customer_id: np.ndarray, raw_prob: np.ndarray, decision: Decision) -> pd.DataFrame:
    """One row per customer, sorted: the calibrated probability and the prediction at the stored threshold."""
    order = np.argsort(customer_id, kind="stable")
    prob, prediction = decision.apply(raw_prob[order].astype(np.float64))
    return pd.DataFrame({
        S.CUSTOMER_ID: customer_id[order].astype(np.int64),
        S.PROBABILITY: prob,
        S.PREDICTION: prediction,
    })


@dataclass
class SequenceScorer:
    model: torch.nn.Module
    vocab: Vocab
    sequence: SequenceConfig
    ingest: IngestConfig
    decision: Decision = NO_DECISION
    reference: Reference | None = None  # training-time statistics for the drift report (None: models before it)
    inference: InferenceConfig = InferenceConfig()

    def __call__(self, raw: pd.DataFrame | pl.DataFrame) -> pd.DataFrame:
        return self.score_events(raw_events(raw, self.ingest))

    def score_events(self, events: pl.LazyFrame) -> pd.DataFrame:
        """Already validated events (EVENTS_SCHEMA) -> scores: batch scoring validates once, then calls this."""
        seq = build_sequences(events, self.vocab, self.sequence, labels=None)
        if seq.height == 0:
            return _scores(np.empty(0, np.int64), np.empty(0), self.decision)
        return _scores(*predict_proba(self.model, SequenceDataset(seq), self.inference), self.decision)


@dataclass
class GBDTScorer:
    model: Any  # HistGradientBoostingClassifier
    spec: FeatureSpec
    ingest: IngestConfig
    decision: Decision = NO_DECISION
    reference: Reference | None = None

    def __call__(self, raw: pd.DataFrame | pl.DataFrame) -> pd.DataFrame:
        return self.score_events(raw_events(raw, self.ingest))

    def score_events(self, events: pl.LazyFrame) -> pd.DataFrame:
        """Already validated events (EVENTS_SCHEMA) -> scores: batch scoring validates once, then calls this."""
        features = build_features(events, self.spec).collect()
        ids = features[S.CUSTOMER_ID].to_numpy()
        if len(ids) == 0:
            return _scores(np.empty(0, np.int64), np.empty(0), self.decision)
        prob = self.model.predict_proba(feature_matrix(features, ids))[:, 1]
        return _scores(ids, prob, self.decision)


def load_scorer(artifacts: dict[str, str]) -> Any:
    """Live scorer from the artifact files (config.json says which kind)."""
    cfg = json.loads(Path(artifacts["config"]).read_text())
    if cfg["kind"] in ("embedding", "hybrid"):  # a pretrained encoder, or the GBDT on its embeddings
        from pipeline.scoring.embeddings import load_embedding_kind

        return load_embedding_kind(cfg, artifacts)
    ingest = IngestConfig.from_dict(cfg["ingest"])
    # models registered before thresholds and calibration were stored: their threshold (0.5), no calibration
    decision = Decision.from_dict(cfg["decision"]) if "decision" in cfg else Decision(
        threshold=float(cfg.get("threshold", 0.5)), rule=NO_DECISION.rule)
    reference = Reference.load(Path(artifacts["reference"])) if "reference" in artifacts else None
    if cfg["kind"] == "gbdt":
        spec = FeatureSpec.load(Path(artifacts["feature_spec"]))
        return GBDTScorer(load_gbdt(Path(artifacts["model"])), spec, ingest, decision, reference)
    model = build_model(ModelConfig.from_dict(cfg["model"]))
    model.load_state_dict(torch.load(artifacts["model"], map_location="cpu", weights_only=True))
    model.eval()
    return SequenceScorer(model, Vocab.load(artifacts["vocab"]), SequenceConfig.from_dict(cfg["sequence"]), ingest,
                          decision, reference)


class TxSeqModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: `load_context` builds the scorer once; `predict` only calls it."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.scorer = load_scorer(context.artifacts)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.scorer(model_input)


def _config_json(kind: str, ingest: IngestConfig, decision: Decision, label: LabelSpec = LabelSpec(), **extra: Any
                 ) -> dict:
    """config.json of a model: the ingest rules (source mapping included) and the label it predicts travel with it."""
    return {"kind": kind, "schema_version": S.SCHEMA_VERSION, "ingest": ingest.to_dict(), "label": label.to_dict(),
            "threshold": decision.threshold, "decision": decision.to_dict(), **extra}


def _card_files(out_dir: Path, reference: Reference | None) -> dict[str, Path]:
    return {"reference": reference.save(out_dir / "reference.json")} if reference is not None else {}


def log_model(
    tracker: Tracker,
    run_id: str,
    *,
    artifacts_dir: Path,
    config: dict,
    files: dict[str, Path],
    registered_model: str,
    version_tags: dict[str, str],
    model_signature: ModelSignature | None = None,
) -> RegisteredVersion:
    """Write config.json beside `files` and log + register the pyfunc (models from code); the input example is
    `input_example()`, synthetic rows, so that no customer data reaches the registry; the signature defaults to raw
    rows in, scores out."""
    source = IngestConfig.from_dict(config.get("ingest", {})).source
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    (artifacts_dir / "config.json").write_text(json.dumps(config, indent=1))
    artifacts = {"config": str(artifacts_dir / "config.json"), **{k: str(v) for k, v in files.items()}}
    with tempfile.TemporaryDirectory(prefix="txseq-pyfunc-") as tmp:
        code = Path(tmp) / "txseq_model.py"
        code.write_text(_MODEL_CODE)
        return tracker.log_pyfunc(
            run_id, name="model", python_model=code, artifacts=artifacts, code_paths=CODE_PATHS,
            signature=model_signature or signature(source), input_example=input_example(source),
            pip_requirements=pip_requirements(),
            registered_model=registered_model, version_tags=version_tags,
        )


def save_sequence_artifacts(
    out_dir: Path, model: torch.nn.Module, model_config: ModelConfig, vocab: Vocab, sequence: SequenceConfig,
    ingest: IngestConfig, batch_size: int = 64, decision: Decision = NO_DECISION, reference: Reference | None = None,
    label: LabelSpec = LabelSpec(),
) -> tuple[dict, dict[str, Path]]:
    """(config.json content, artifact files) of a trained sequence model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "model.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    vocab_path = vocab.save(out_dir / "vocab.json")
    config = _config_json("sequence", ingest, decision, label, model=model_config.to_dict(), sequence=asdict(sequence),
                          batch_size=batch_size)
    return config, {"model": weights, "vocab": vocab_path, **_card_files(out_dir, reference)}


def save_gbdt_artifacts(out_dir: Path, model: Any, spec: FeatureSpec, ingest: IngestConfig,
                        decision: Decision = NO_DECISION, reference: Reference | None = None,
                        label: LabelSpec = LabelSpec()) -> tuple[dict, dict[str, Path]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"model": save_gbdt(model, out_dir / "model.skops"), "feature_spec": spec.save(out_dir / "feature_spec.json")}
    return _config_json("gbdt", ingest, decision, label), {**files, **_card_files(out_dir, reference)}


def score_with_model(model_uri: str, events: pl.LazyFrame) -> pd.DataFrame:
    """Score validated events (EVENTS_SCHEMA, e.g. a slice of the ingest output) with a logged or registered model
    through its pyfunc `predict`, fed the raw-schema columns as strings as a CSV read gives them: the route analysts
    use, so the model's own stored preprocessing and validation rules apply (used to re-measure a champion that was
    tested on another split). One row per customer with a valid row: customer_id, probability, prediction."""
    model = mlflow.pyfunc.load_model(model_uri)
    raw = events.select([pl.col(c).cast(pl.String) for c in S.RAW_COLUMNS]).collect()
    return model.predict(raw.to_pandas())


def load_batch_scorer(model_uri: str, tracking_uri: str | None = None) -> tuple[Any, Any]:
    """(scorer, `batch.ModelRef`) for a registered or logged model, for `pipeline.scoring.batch`.

    The scorer is the very object the pyfunc's `predict` calls (built once by `load_context`), taken unwrapped so
    that chunks skip pandas conversion and signature checks; `models:/<name>@<alias>` is resolved to its version so
    every output row names the version that scored it.

    Raises `ModelLoadError` (one line naming the URI and the problem, the cause chained) when the tracking store is
    missing or unreachable, the model, alias or version does not exist, or its artifacts do not load.
    """
    from pipeline.scoring.batch import ModelRef
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()  # None: the store the caller set up
    if model_uri.startswith(("models:/", "runs:/")):  # these resolve through the tracking store
        try:
            check_readable(tracking_uri)
        except TrackingError as e:
            raise ModelLoadError(f"cannot load model {model_uri}: {e}", transient=True) from e
    mlflow.set_tracking_uri(tracking_uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(model_uri)
        name, version = _model_name_version(model_uri, pyfunc)
        scorer = pyfunc.unwrap_python_model().scorer
    except Exception as e:  # noqa: BLE001 - MLflow, OS, torch and skops errors alike: say which model and why
        raise ModelLoadError(f"cannot load model {model_uri} (tracking store {tracking_uri}): "
                             f"{first_line(e)[:500].rstrip('.')}{_registry_hint(model_uri)}") from e
    return scorer, ModelRef(name, version, model_uri, pyfunc.metadata.run_id or "")


def download_model(model: Any, tracking_uri: str, folder: Path) -> Path:
    """The artifacts of the exact version `model` (`batch.ModelRef`) names, as the local model folder `folder`
    (the Spark engine ships it to its executors). Raises `ModelLoadError` naming the model."""
    uri = f"models:/{model.name}/{model.version}" if model.uri.startswith("models:/") else model.uri
    with tempfile.TemporaryDirectory(prefix="txseq-download-", dir=folder.parent, ignore_cleanup_errors=True) as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri, dst_path=tmp)
        except Exception as e:  # noqa: BLE001 - MLflow and OS errors alike: say which model
            raise ModelLoadError(f"cannot download model {uri}: {first_line(e)[:500]}", transient=True) from e
        shutil.move(local, folder)  # `local` may be `tmp` itself
    return folder


def log_scoring_run(result: Any, model: Any, tracking_uri: str | None = None) -> str | None:
    """Record one scored batch (`batch.ScoreResult` by `batch.ModelRef`) as a finished run named
    `score <output>` in the experiment of the run that logged the model: counts and throughput, PSI per feature,
    unknown-code shares and the mean probability as metrics, the drift JSON and PNG as artifacts. Returns its run
    id; None for a model with no MLflow run behind it."""
    if not model.run_id:
        return None
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()  # None: the store the caller set up
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = client.get_run(model.run_id).info.experiment_id
    tags = {"txseq.kind": "scoring", "txseq.model_name": model.name, "txseq.model_version": str(model.version),
            "txseq.model_run_id": model.run_id, "txseq.output": result.output_name}
    run_id = client.create_run(experiment_id, run_name=f"score {result.output_name}", tags=tags).info.run_id
    metrics = {"score/customers": result.customers, "score/input_rows": result.input_rows,
               "score/rejected_rows": result.rejected_rows, "score/seconds": result.seconds,
               "score/customers_per_minute": result.customers_per_minute}
    if result.drift:
        d = result.drift
        metrics.update({f"drift/psi_{f}": v for f, v in d["psi"].items()})
        metrics.update({f"drift/unknown_share_{f}": v["batch"] for f, v in d["unknown_share"].items()})
        metrics.update({"drift/score_mean": d["score_mean"]["batch"], "drift/n_drifted": len(d["drifted"])})
        client.log_param(run_id, "drift.psi_threshold", d["psi_threshold"])
        client.set_tag(run_id, "txseq.drifted", ",".join(d["drifted"]) or "none")
    tracker = Tracker(tracking_uri, experiment_id, client)
    tracker.log_metrics(run_id, {k: float(v) for k, v in metrics.items()})
    if any(is_uri(f) for f in result.drift_files):  # written to a URI by the Spark engine: the same files again
        with tempfile.TemporaryDirectory(prefix="txseq-drift-") as tmp:
            stem = Path(tmp, result.output_name.removesuffix(".parquet"))
            for path in DriftReport.from_dict(result.drift).write(stem):
                client.log_artifact(run_id, str(path), "drift")
    else:
        for path in result.drift_files:
            client.log_artifact(run_id, path, "drift")
    client.set_terminated(run_id, "FINISHED")
    return run_id


class ModelLoadError(RuntimeError):
    """A model URI that cannot be loaded; the message names the URI and the problem. `transient` is True when the
    tracking store could not be reached (worth retrying), False when the model itself is missing or broken."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def _registry_hint(model_uri: str) -> str:
    """'; registered model x has versions 1, 2 and aliases champion -> 2' for a models:/ URI whose name exists."""
    if not model_uri.startswith("models:/"):
        return ""
    name = model_uri.removeprefix("models:/").split("@", 1)[0].split("/", 1)[0]
    try:
        client = mlflow.MlflowClient()
        aliases = client.get_registered_model(name).aliases
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except Exception:  # noqa: BLE001 - only a hint: an unknown name has none
        return ""
    shown = ", ".join(map(str, versions[-10:])) or "none"
    alias_text = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
    return f"; registered model {name} has versions {shown} and aliases {alias_text}"


def _model_name_version(model_uri: str, pyfunc: Any) -> tuple[str, str]:
    if model_uri.startswith("models:/"):
        ref = model_uri.removeprefix("models:/")
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return name, str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        name, _, version = ref.partition("/")
        if version.isdigit():
            return name, version
    run_id = pyfunc.metadata.run_id or "unknown"
    return f"run-{run_id[:8]}", pyfunc.metadata.model_id or run_id
