"""Every deployment of the real `prefect.yaml`, run by a real process worker, the way production runs them.

A copy of the project (so nothing is written into the repository) is deployed with `prefect deploy --all` to the
session's test server; `prefect worker start --pool txseq --run-once` subprocesses then pick the runs up: first
`nightly-retrain` (the `tiny` preset through a parameter override, on small generated data in a temporary data root),
then `score-file` and `hourly-landing-scores` with the champion it registered. Each run must end COMPLETED *and* leave
its artifacts and output files: a flow that fails to load in the worker (an import clash, a placeholder flow put in
by `prefect deploy` when the script did not import) ends CRASHED or produces nothing, and fails this test.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import mlflow
import polars as pl
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.states import Cancelling
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterName,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)

from pipeline import schema
from pipeline.sources.generate import GeneratorConfig, generate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SPEC = yaml.safe_load((ROOT / "prefect.yaml").read_text())
POOL = SPEC["deployments"][0]["work_pool"]["name"]
PREFECT = [sys.executable, "-m", "prefect"]
CHAMPION = "models:/txseq-gender@champion"


def _copy_project(dest: Path) -> Path:
    """The files a worker needs: prefect.yaml and the three packages (no caches, no data)."""
    dest.mkdir()
    shutil.copy(ROOT / "prefect.yaml", dest)
    for pkg in ("flows", "pipeline", "models"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def deployed(prefect_server: str, tmp_path_factory: pytest.TempPathFactory):
    """(project copy, data root, env of the worker): pool created, every deployment of prefect.yaml registered."""
    tmp = tmp_path_factory.mktemp("worker")
    project = _copy_project(tmp / "project")
    data_root = tmp / "data"
    generate(data_root / "raw", GeneratorConfig(n_customers=300, n_labelled=240, mean_count=60, seed=3))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TXSEQ_REGISTERED_MODEL")}
    env.update(PREFECT_API_URL=prefect_server, TXSEQ_DATA_ROOT=str(data_root), PREFECT_LOGGING_LEVEL="INFO")
    _prefect(env, project, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    _prefect(env, project, "--no-prompt", "deploy", "--all")
    return project, data_root, env


def _prefect(env: dict[str, str], cwd: Path, *args: str, timeout: int = 300) -> str:
    done = subprocess.run([*PREFECT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


async def _deployment_id(name: str) -> UUID:
    async with get_client() as client:
        (dep,) = await client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name])))
        return dep.id


async def _start(name: str, parameters: dict | None = None) -> UUID:
    """A flow run of deployment `name` (parameters override the deployment's), scheduled now."""
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(await _deployment_id(name), parameters=parameters)
        return run.id


async def _outcome(run_id: UUID) -> tuple[str, str, set[str], str]:
    """(state type, state message, artifact keys, log text) of the run and its subflows."""
    async with get_client() as client:
        run = await client.read_flow_run(run_id)
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
        )
        ids = [run_id, *(c.id for c in children)]
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
    text = "\n".join(f"{log.name}: {log.message}" for log in logs)
    return run.state.type.value, run.state.message or "", {a.key for a in artifacts if a.key}, text


def _run_worker(project: Path, env: dict[str, str], run_ids: list[UUID]) -> dict[UUID, tuple[str, str, set[str], str]]:
    """One `prefect worker start --run-once`: it submits the due runs and returns when they have finished."""
    log = _prefect(env, project, "worker", "start", "--pool", POOL, "--run-once", timeout=900)
    outcomes = {i: asyncio.run(_outcome(i)) for i in run_ids}
    for i, (state, message, _, _) in outcomes.items():
        assert state == "COMPLETED", f"flow run {i} ended {state}: {message}\nworker log:\n{log[-6000:]}"
    return outcomes


def test_every_deployment_runs_to_completion_on_a_process_worker(deployed) -> None:
    project, data_root, env = deployed
    assert {d["name"] for d in SPEC["deployments"]} == {"nightly-retrain", "hourly-landing-scores", "score-file"}

    # 1. nightly retrain, tiny preset through a parameter override
    train = {"preset": "tiny", "models": ["transformer", "gbdt"]}
    nightly = asyncio.run(_start("nightly-retrain", {"params": {"train": train}}))
    (_, _, keys, logs), = _run_worker(project, env, [nightly]).values()
    assert {"ingest-reconciliation", "sequences-summary", "train-comparison"} <= keys
    # progress reaches the run's logs in the UI: per-epoch lines naming the model, GBDT rounds
    assert re.search(r"pipeline\.training\.train: transformer: step \d+/\d+ .*val auroc \d\.\d{4}", logs), logs[-3000:]
    assert re.search(r"pipeline\.scoring\.gbdt: gbdt: round \d+/\d+ +val auroc", logs), logs[-3000:]
    assert (data_root / "events" / "manifest.json").exists() and (data_root / "sequences" / "manifest.json").exists()
    tracking = f"sqlite:///{data_root / 'mlflow' / 'mlflow.db'}"
    champion = mlflow.MlflowClient(tracking).get_model_version_by_alias("txseq-gender", "champion")
    assert champion.version

    # 2. ad-hoc scoring of one file and the hourly landing scores, with the champion just registered
    sample = pl.read_csv(data_root / "raw" / "transactions.csv.gz", infer_schema=False)
    ids = sample[schema.CUSTOMER_ID].unique().sort()[:20]
    batch = sample.filter(pl.col(schema.CUSTOMER_ID).is_in(ids.implode()))
    (data_root / "landing").mkdir()
    landing_file = data_root / "landing" / "day1.csv"
    batch.write_csv(landing_file)
    old = time.time() - 600  # older than the deployment's min_age_s
    os.utime(landing_file, (old, old))
    adhoc_out = data_root / "scores" / "adhoc.parquet"
    score_file = asyncio.run(_start("score-file", {"params": {"model_uri": CHAMPION, "input": str(landing_file), "output": str(adhoc_out)}}))
    landing = asyncio.run(_start("hourly-landing-scores"))
    outcomes = _run_worker(project, env, [score_file, landing])
    assert "scoring-summary" in outcomes[score_file][2]
    assert "landing-scoring-summary" in outcomes[landing][2]
    scored = pl.read_parquet(adhoc_out)
    assert sorted(scored[schema.CUSTOMER_ID].cast(pl.Utf8).to_list()) == sorted(ids.to_list())
    landing_scores = [p for p in (data_root / "scores").glob("day1.*.parquet") if not p.name.endswith(".rejects.parquet")]
    assert len(landing_scores) == 1 and pl.read_parquet(landing_scores[0]).height == len(ids)


async def _cancel(run_id: UUID) -> None:
    """What the UI's Cancel button does: propose CANCELLING; the worker then stops the run's process."""
    async with get_client() as client:
        await client.set_flow_run_state(run_id, Cancelling(message="cancelled by the test"), force=True)


def _wait(what: str, check, timeout_s: float = 600.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def test_cancelling_the_nightly_retrain_ends_its_mlflow_runs_killed(deployed, tmp_path: Path) -> None:
    """A nightly retrain cancelled mid-training (as from the UI): no MLflow run of it stays RUNNING."""
    project, data_root, env = deployed
    # bigger data in its own folders, so that training is still under way when the cancellation arrives
    big = tmp_path / "big"
    generate(big / "raw", GeneratorConfig(n_customers=1000, n_labelled=800, seed=4))
    params = {"params": {
        "ingest": {"inputs": [str(big / "raw" / "transactions.csv.gz")], "out_dir": str(big / "events")},
        "sequences": {"labels": str(big / "raw" / "gender_train.csv"), "out_dir": str(big / "sequences")},
        "train": {"preset": "full", "device": "cpu", "models": ["transformer", "performer", "infinite_former"]},
    }}
    client = mlflow.MlflowClient(f"sqlite:///{data_root / 'mlflow' / 'mlflow.db'}")
    worker = subprocess.Popen([*PREFECT, "worker", "start", "--pool", POOL], cwd=project, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_id = asyncio.run(_start("nightly-retrain", params))
        runs_filter = f"tags.`txseq.run_name` LIKE '%-{str(run_id)[:8]}'"

        def runs() -> list:
            experiment = client.get_experiment_by_name("txseq")
            return client.search_runs([experiment.experiment_id], runs_filter) if experiment else []

        _wait("a model's MLflow run", lambda: any("txseq.model" in r.data.tags for r in runs()))
        asyncio.run(_cancel(run_id))
        _wait("the flow run to end", lambda: asyncio.run(_outcome(run_id))[0] in ("CANCELLED", "COMPLETED", "FAILED", "CRASHED"))
        assert asyncio.run(_outcome(run_id))[0] == "CANCELLED"
        ended = _wait("the MLflow runs to end", lambda: (r := runs()) and all(x.info.status != "RUNNING" for x in r) and r)
    finally:
        worker.terminate()
        log = worker.communicate(timeout=120)[0]
    statuses = {r.data.tags.get("txseq.model", "parent"): r.info.status for r in ended}
    assert statuses["parent"] == "KILLED", (statuses, log[-4000:])
    assert "KILLED" in {s for m, s in statuses.items() if m != "parent"}, statuses
    assert all("Cancel" in r.data.tags["txseq.failure"] for r in ended if r.info.status == "KILLED")
