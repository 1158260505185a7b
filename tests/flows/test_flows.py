"""The flows end to end on the committed sample, under the session's Prefect test server.

One pipeline run (tiny preset) feeds every test of this module: outputs, artifacts, MLflow runs, the cache skip of a
second run, scoring equal to the pyfunc model's own predictions, and the landing folder scored once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from uuid import UUID

import mlflow
import polars as pl
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import ArtifactSort

from flows.common import cache_key, cached_on
from flows.ingest import IngestParams, ingest_flow
from flows.end_to_end import PipelineParams, pipeline
from flows.pretrain import PretrainParams
from flows.score import LandingParams, ScoreParams, score, score_landing
from flows.sequences import SequencesParams, sequences_flow
from flows.train import TrainParams
from pipeline import schema
from pipeline.ingest.rules import REASONS
from pipeline.io import scan_table
from pipeline.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = Path(os.environ.get("TXSEQ_SAMPLE_DIR", ROOT / "data" / "sample"))  # override: a bigger sample
MODELS = ["transformer", "gbdt", "transformer_coles", "hybrid_transformer"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(SAMPLE, root / "raw")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TXSEQ_DATA_ROOT", str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TXSEQ_REGISTERED_MODEL", "txseq-flow-test")
        yield root


@pytest.fixture(scope="module")
def first_run(data_root: Path):
    # two models at a time: each model task opens its nested run from its own thread
    # with CoLES pretraining of the transformer: its fine-tuned and hybrid models train beside the others
    params = PipelineParams(pretrain=PretrainParams(encoders=["transformer"], preset="tiny", epochs=1, steps=5),
                            train=TrainParams(preset="tiny", models=MODELS, max_parallel=2))
    state = pipeline(params, return_state=True)
    assert state.is_completed(), state.message
    return state


@pytest.fixture(scope="module")
def champion_uri(first_run) -> str:
    return f"models:/{load_settings().registered_model}@champion"


def _run(coro):
    return asyncio.run(coro)


async def _artifact(key: str):
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    assert found, f"no artifact {key!r}"
    return found[0]


async def _task_states(flow_run_id: UUID) -> dict[str, str]:
    """task name (without the run suffix) -> state name, for every task run of a flow run and its subflows."""
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[r.id for r in runs])))
    return {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}


def test_pipeline_writes_every_step_output(first_run, data_root: Path) -> None:
    s = load_settings()
    assert (s.events_dir / "manifest.json").exists()
    assert {p.name for p in s.sequences_dir.iterdir()} >= {"sequences.parquet", "vocab.json", "split.json", "manifest.json"}
    result = first_run.result()
    assert [r.model for r in result.results] == MODELS
    assert result.report_md.exists() and "test ROC AUC" in result.report_md.read_text()


def test_artifacts_reconcile_and_compare(first_run) -> None:
    artifact = _run(_artifact("ingest-reconciliation"))
    rows = json.loads(artifact.data)
    total = next(r for r in rows if r["file"] == "TOTAL")
    assert total["rows_in"] == total["accepted"] + total["rejected"] > 0
    assert sum(v for k, v in total.items() if k in REASONS) == total["rejected"]  # a column per reject reason
    assert f"{total['rows_in']:,} rows in: {total['accepted']:,} accepted" in artifact.description
    table = _run(_artifact("train-comparison")).data
    assert all(f"| {m} |" in table for m in MODELS)
    assert "customers without a label: 60 (e.g." in _run(_artifact("sequences-summary")).data


def test_mlflow_has_one_parent_run_with_a_nested_run_per_model(first_run) -> None:
    result = first_run.result()
    client = mlflow.MlflowClient(load_settings().tracking_uri)
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'"
    )
    assert sorted(r.data.tags["mlflow.runName"] for r in children) == sorted(MODELS)
    assert all("test/auroc" in r.data.metrics for r in children)
    champion = client.get_model_version_by_alias(load_settings().registered_model, "champion")
    assert champion.run_id in {r.info.run_id for r in children}


def test_the_pretrain_step_registers_an_encoder_that_saw_no_test_customer(first_run) -> None:
    from pipeline.training.pretrain import customers_digest, pretrain_customers
    from pipeline.sequences.splits import Split

    s = load_settings()
    client = mlflow.MlflowClient(s.tracking_uri)
    (version,) = client.search_model_versions(f"name = '{s.registered_model}-coles-transformer'")
    seen = pretrain_customers(s.sequences_dir)
    assert version.tags["customers_sha256"] == customers_digest(seen)
    assert not set(seen) & set(Split.load(s.sequences_dir / "split.json").test_ids)
    children = client.search_runs([client.get_run(first_run.result().parent_run_id).info.experiment_id],
                                  filter_string="tags.`txseq.model` = 'transformer_coles'")
    assert children[0].data.params["init_from"] == f"models:/{version.name}/{version.version}"


def test_a_second_run_on_unchanged_input_skips_ingest_and_sequences(first_run) -> None:
    ingest_state = ingest_flow(IngestParams(), return_state=True)
    seq_state = sequences_flow(SequencesParams(), return_state=True)
    assert _run(_task_states(ingest_state.state_details.flow_run_id))["ingest_task"] == "Cached"
    assert _run(_task_states(seq_state.state_details.flow_run_id))["sequences_task"] == "Cached"
    # a changed input runs the step again
    raw = load_settings().raw_dir
    extra = raw / "transactions-extra.csv"
    scan_table(_sample_transactions()).head(5).collect().write_csv(extra)
    try:
        again = ingest_flow(IngestParams(), return_state=True)
        assert _run(_task_states(again.state_details.flow_run_id))["ingest_task"] == "Completed"
    finally:
        extra.unlink()


def _sample_transactions() -> Path:
    return sorted(load_settings().raw_dir.glob("transactions*"))[0]


def test_score_flow_equals_the_pyfunc_models_predictions(champion_uri: str, tmp_path: Path) -> None:
    out = tmp_path / "scores.parquet"
    result = score(ScoreParams(model_uri=champion_uri, input=str(_sample_transactions()), output=str(out), chunk_rows=20_000))
    assert result.chunks >= 1 and result.customers > 0

    mlflow.set_tracking_uri(load_settings().tracking_uri)
    raw = scan_table(_sample_transactions()).collect().to_pandas()
    expected = pl.from_pandas(mlflow.pyfunc.load_model(champion_uri).predict(raw)).sort(schema.CUSTOMER_ID)
    got = pl.read_parquet(out)
    assert got[schema.CUSTOMER_ID].to_list() == expected[schema.CUSTOMER_ID].to_list()
    assert got[schema.PROBABILITY].to_numpy() == pytest.approx(expected[schema.PROBABILITY].to_numpy(), abs=1e-6)
    assert got[schema.PREDICTION].to_list() == expected[schema.PREDICTION].to_list()
    champion = mlflow.MlflowClient().get_model_version_by_alias(load_settings().registered_model, "champion")
    assert set(got[schema.MODEL_VERSION]) == {str(champion.version)}
    assert "Scoring summary" in _run(_artifact("scoring-summary")).data
    # the drift report beside the scores, as an artifact, and as a scoring run in the model's experiment
    assert result.drift is not None and [Path(f).name for f in result.drift_files] == ["scores.drift.json",
                                                                                       "scores.drift.png"]
    assert "| feature | PSI | status |" in _run(_artifact("scoring-summary-drift")).data
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`txseq.output` = 'scores.parquet'",
                              output_format="list")
    assert runs and "drift/psi_amount" in runs[0].data.metrics


def test_landing_flow_scores_each_new_file_once(champion_uri: str, tmp_path: Path) -> None:
    landing, out = tmp_path / "landing", tmp_path / "scores"
    landing.mkdir()
    raw = scan_table(_sample_transactions()).collect()
    ids = raw[schema.CUSTOMER_ID].unique().sort()
    half = ids.head(len(ids) // 2)
    raw.filter(pl.col(schema.CUSTOMER_ID).is_in(half.implode())).write_parquet(landing / "part1.parquet")
    raw.filter(~pl.col(schema.CUSTOMER_ID).is_in(half.implode())).write_parquet(landing / "part2.parquet")
    params = LandingParams(model_uri=champion_uri, landing_dir=str(landing), out_dir=str(out))
    first = score_landing(params)
    assert len(first.scored) == 2
    second = score_landing(params)
    assert second.scored == [] and len(second.skipped) == 2
    scored = pl.concat([pl.read_parquet(r.output) for r in first.scored])
    assert scored[schema.CUSTOMER_ID].n_unique() == scored.height
    assert "No new files" in _run(_artifact("landing-scoring-summary")).data


def test_txseq_score_cli_writes_the_same_scores(champion_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import main

    out = tmp_path / "cli.parquet"
    assert main(["score", "--model", champion_uri, "--input", str(_sample_transactions()), "--output", str(out)]) == 0
    assert "Scoring summary" in capsys.readouterr().out
    flow_out = tmp_path / "flow.parquet"
    score(ScoreParams(model_uri=champion_uri, input=str(_sample_transactions()), output=str(flow_out)))
    cols = [schema.CUSTOMER_ID, schema.PROBABILITY, schema.PREDICTION, schema.MODEL_VERSION]
    assert pl.read_parquet(out, columns=cols).equals(pl.read_parquet(flow_out, columns=cols))
    assert (tmp_path / "cli.rejects.parquet").exists()

    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copy(_sample_transactions(), landing)
    args = ["score", "--model", champion_uri, "--landing", str(landing), "--out-dir", str(tmp_path / "scores")]
    assert main(args) == 0 and "1 new file(s) scored" in capsys.readouterr().out
    assert main(args) == 0 and "0 new file(s) scored, 1 skipped" in capsys.readouterr().out


def test_an_empty_landing_folder_needs_no_model(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    params = LandingParams(model_uri="models:/no-such-model@champion", landing_dir=str(tmp_path / "landing"),
                           out_dir=str(tmp_path / "scores"))
    assert score_landing(params).scored == []


def test_the_score_flow_fails_on_a_missing_model_with_the_cli_message(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Same one-line message as `txseq score`; a model that does not exist is not retried."""
    from mlflow import MlflowClient

    from pipeline.scoring.pyfunc import ModelLoadError

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).search_experiments()  # an existing, empty store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    source = tmp_path / "in.csv"
    source.write_text(",".join(schema.RAW_COLUMNS) + "\n1001,0 10:00:00,5411,1010,-12.5,\n")
    uri = "models:/no-such-model@champion"
    state = score(ScoreParams(model_uri=uri, input=str(source), output=str(tmp_path / "s.parquet")), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ModelLoadError) and not error.transient
    assert str(error).startswith(f"cannot load model {uri}") and "not found" in str(error)
    assert str(error) in state.message and not (tmp_path / "s.parquet").exists()
    assert _run(_task_run_counts(state.state_details.flow_run_id)) == {"score_task": 1}  # not retried
    mlflow.set_tracking_uri(None)


async def _task_run_counts(flow_run_id: UUID) -> dict[str, int]:
    async with get_client() as client:
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {t.name.rsplit("-", 1)[0]: t.run_count for t in tasks}


def test_the_ingest_and_sequences_flows_take_every_cli_knob(tmp_path: Path) -> None:
    """A declared source (the ptls age-group layout) and one label value against the rest, as flow parameters."""
    from pipeline.ingest.files import read_events
    from pipeline.sequences.table import TableRules

    toml = tmp_path / "ptls.toml"
    toml.write_text('[source]\nname = "ptls-age"\n[columns]\ncustomer_id = "client_id"\nevent_time = "trans_date"\n'
                    'amount = "amount_rur"\nmcc_code = "small_group"\n[time]\nformat = "day_number"\n'
                    'origin = "2020-01-08"\n')
    rows = [f"{c},{d},{(c + d) % 5},{10.0 + d}" for c in range(1, 21) for d in range(0, 30, 3)]
    (tmp_path / "trans.csv").write_text("client_id,trans_date,small_group,amount_rur\n" + "\n".join(rows) + "\n")
    (tmp_path / "target.csv").write_text("client_id,bins\n" + "".join(f"{c},{c % 4}\n" for c in range(1, 21)))
    events = ingest_flow(IngestParams(inputs=[str(tmp_path / "trans.csv")], out_dir=str(tmp_path / "events"),
                                      source=str(toml), max_day=24))
    assert events.rejected == 20  # day 27 of each of the 20 customers is past max_day
    frame = read_events(tmp_path / "events").collect()
    assert (frame[schema.WEEKDAY].cast(pl.Int32) == (frame[schema.DAY] + 2) % 7).all()  # 2020-01-08: a Wednesday
    seq = sequences_flow(SequencesParams(events_dir=str(tmp_path / "events"), labels=str(tmp_path / "target.csv"),
                                         out_dir=str(tmp_path / "seq"), label_column="bins", positive="3",
                                         negative="rest", folds=2, test_fraction=0.2, min_count=1))
    assert seq.n_labelled == 20
    rules = TableRules.load(tmp_path / "seq")
    assert rules.ingest.max_day == 24 and rules.ingest.source.name == "ptls-age" and rules.label.negative is None


def test_cache_key_follows_file_contents_and_skips_steps_reading_uris(tmp_path: Path) -> None:
    raw = tmp_path / "a.csv"
    raw.write_text("x\n1\n")
    first = cache_key(["inputs"], {"inputs": [raw], "atomic": False})
    assert first is not None and first == cache_key(["inputs"], {"inputs": [raw], "atomic": False})
    raw.write_text("x\n2\n")
    assert cache_key(["inputs"], {"inputs": [raw], "atomic": False}) not in (None, first)
    assert cache_key(["inputs"], {"inputs": [raw, "hdfs://nn/exports/b.csv"], "atomic": False}) is None
    assert cache_key(["labels"], {"labels": "s3a://bucket/labels.csv", "out": tmp_path}) is None


def test_a_step_reading_a_uri_runs_every_time_and_one_reading_an_unchanged_file_once(tmp_path: Path) -> None:
    """Real Prefect runs of a task with `cached_on("inputs")`: an unchanged local file is served from the cache, a
    URI (contents not fingerprinted) runs again, a changed task body runs again."""
    from prefect import flow, task

    runs = tmp_path / "runs.txt"
    runs.write_text("")

    @task(cache_policy=cached_on("inputs"))
    def step(inputs: list) -> int:  # noqa: ANN001
        runs.write_text(runs.read_text() + "x")
        return len(inputs)

    @flow
    def twice(inputs: list) -> None:  # noqa: ANN001
        step(inputs)
        step(inputs)

    raw = tmp_path / "a.csv"
    raw.write_text("x\n1\n")
    twice([raw])
    assert runs.read_text() == "x"
    twice([raw, "hdfs://nn/exports/b.csv"])
    assert runs.read_text() == "xxx"


def test_flows_run_on_spark_with_inputs_and_outputs_at_a_uri(spark_ok: None, champion_uri: str, tmp_path: Path) -> None:
    """The ingest, sequences and score flows with engine=spark, reading and writing at URIs only Hadoop opens (viewfs
    mount tables given as spark_conf, as a cluster's hdfs:// settings would be): the polars flows' results, and the
    scoring run's drift report logged to MLflow from there."""
    raw, lake = tmp_path / "raw", tmp_path / "lake"
    raw.mkdir()
    rows = scan_table(_sample_transactions()).collect()
    rows.filter(pl.col(schema.CUSTOMER_ID).is_in(rows[schema.CUSTOMER_ID].unique().sort().head(40).implode())) \
        .write_csv(raw / "transactions.csv")
    shutil.copy(load_settings().raw_dir / "gender_train.csv", raw / "labels.csv")
    spark = {"engine": "spark", "spark_master": "local[2]",
             "spark_conf": [f"spark.hadoop.fs.viewfs.mounttable.flows.link./raw={raw.as_uri()}",
                            f"spark.hadoop.fs.viewfs.mounttable.flows.link./lake={lake.as_uri()}",
                            "spark.sql.shuffle.partitions=2"]}
    a = ingest_flow(IngestParams(inputs=[str(raw / "transactions.csv")], out_dir=str(tmp_path / "events")))
    b = ingest_flow(IngestParams(inputs=["viewfs://flows/raw/transactions.csv"], out_dir="viewfs://flows/lake/events",
                                 **spark))
    assert b.manifest["totals"] == a.manifest["totals"] and b.files[0].sha256 == a.files[0].sha256
    assert json.loads((lake / "events" / "manifest.json").read_text())["totals"] == a.manifest["totals"]

    c = sequences_flow(SequencesParams(events_dir=str(tmp_path / "events"), labels=str(raw / "labels.csv"),
                                       out_dir=str(tmp_path / "seq-polars")))
    d = sequences_flow(SequencesParams(events_dir="viewfs://flows/lake/events", labels="viewfs://flows/raw/labels.csv",
                                       out_dir="viewfs://flows/lake/sequences", **spark))
    assert d.split_id == c.split_id and d.manifest["counts"] == c.manifest["counts"]
    assert d.manifest["input"]["labels_path"] == "viewfs://flows/raw/labels.csv"
    assert json.loads((lake / "sequences" / "manifest.json").read_text())["counts"] == c.manifest["counts"]

    e = score(ScoreParams(model_uri=champion_uri, input=str(raw / "transactions.csv"), output=str(tmp_path / "p.parquet")))
    f = score(ScoreParams(model_uri=champion_uri, input="viewfs://flows/raw/transactions.csv",
                          output="viewfs://flows/lake/scores/s.parquet", **spark))
    assert f.output == "viewfs://flows/lake/scores/s.parquet"
    got, expected = (pl.read_parquet(p).sort(schema.CUSTOMER_ID) for p in (lake / "scores" / "s.parquet", e.output))
    assert got[schema.CUSTOMER_ID].to_list() == expected[schema.CUSTOMER_ID].to_list() and f.customers == 40
    assert got[schema.PROBABILITY].to_numpy() == pytest.approx(expected[schema.PROBABILITY].to_numpy(), abs=1e-6)
    assert f.drift is not None and f.drift_files == ["viewfs://flows/lake/scores/s.drift.json",
                                                     "viewfs://flows/lake/scores/s.drift.png"]
    (run,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`txseq.output` = 's.parquet'",
                                output_format="list")
    logged = mlflow.MlflowClient().list_artifacts(run.info.run_id, "drift")
    assert sorted(a.path for a in logged) == ["drift/s.drift.json", "drift/s.drift.png"]


def test_spark_workers_score_with_the_shipped_model_not_the_tracking_store(spark_ok: None, champion_uri: str,
                                                                           tmp_path: Path) -> None:
    """The driver resolves the champion and ships that version's artifacts to the executors, whose workers load
    their local copy: scoring still works with the tracking store gone once the driver has shipped the model (as on
    a cluster whose executors cannot reach the driver's SQLite file), with the polars engine's scores."""
    from pipeline.engines.spark import SparkConfig, SparkEngine
    from pipeline.scoring.batch import ScoreConfig, score_file, scorer_rules
    from pipeline.scoring.pyfunc import load_batch_scorer

    store = tmp_path / "mlflow.db"  # a copy of the store (its artifacts stay where they are): this test deletes it
    shutil.copy(load_settings().tracking_uri.removeprefix("sqlite:///"), store)
    scorer, model = load_batch_scorer(champion_uri, f"sqlite:///{store}")
    rows = scan_table(_sample_transactions()).collect()
    rows.filter(pl.col(schema.CUSTOMER_ID).is_in(rows[schema.CUSTOMER_ID].unique().sort().head(30).implode())) \
        .write_csv(tmp_path / "t.csv")
    expected = score_file(tmp_path / "t.csv", tmp_path / "p.parquet", scorer, model, ScoreConfig())
    engine = SparkEngine.start(SparkConfig(master="local[2]", conf=(("spark.sql.shuffle.partitions", "2"),)))
    with engine.shipped_model(model, f"sqlite:///{store}") as shipped:
        store.unlink()
        got = engine.score_file(tmp_path / "t.csv", tmp_path / "s.parquet", shipped, model,
                                ingest_config=scorer_rules(scorer))
    a, b = pl.read_parquet(expected.output), pl.read_parquet(got.output)
    assert b[schema.CUSTOMER_ID].to_list() == a[schema.CUSTOMER_ID].to_list() and got.customers == 30
    assert b[schema.PROBABILITY].to_numpy() == pytest.approx(a[schema.PROBABILITY].to_numpy(), abs=1e-6)
    assert set(b[schema.MODEL_VERSION]) == {str(model.version)}


def test_a_model_that_cannot_be_downloaded_for_spark_is_an_error_naming_it(tmp_path: Path) -> None:
    from pipeline.scoring.batch import ModelRef
    from pipeline.scoring.pyfunc import ModelLoadError, download_model

    with pytest.raises(ModelLoadError, match=r"cannot download model models:/nope/3: "):
        download_model(ModelRef("nope", "3", "models:/nope@champion"), f"sqlite:///{tmp_path / 'm.db'}",
                       tmp_path / "model")
    assert not (tmp_path / "model").exists()
