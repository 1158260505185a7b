"""Faults: a training process killed mid-run, a scoring process killed midway, an unusable tracking store.

The processes are the real `txseq` command line, killed with SIGKILL (no clean-up handler runs).
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import polars as pl
import pytest
from mlflow import MlflowClient

from pipeline import schema as S

from conftest import STEPS, Session, no_traceback, wait_for

TRAIN_ARGS = ("--preset", "tiny", "--models", "transformer", "--steps", str(STEPS), "--device", "cpu")


def _runs(client: MlflowClient, run_name: str):
    exp = client.get_experiment_by_name("txseq").experiment_id
    return client.search_runs([exp], f"tags.`txseq.run_name` = '{run_name}'")


def test_training_killed_mid_run_resumes_to_the_same_test_metrics(session: Session) -> None:
    from pipeline.training.train import load_checkpoint

    args = ("train", "--sequences", session.data.sequences, "--events", session.data.events, *TRAIN_ARGS,
            "--run", "killed", "--no-register")
    last = session.root / "runs" / "killed" / "checkpoints" / "transformer" / "last.pt"
    proc = session.popen(*args)
    wait_for(last.exists, 300, "the first checkpoint", proc)
    os.kill(proc.pid, signal.SIGKILL)  # the next round of steps has just started
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(last)["state"]["step"]
    assert killed_at < STEPS, "the run finished before it could be killed"

    client = MlflowClient(session.tracking_uri)
    dead = _runs(client, "killed")
    assert dead and {r.info.status for r in dead} == {"RUNNING"}  # what SIGKILL leaves behind

    done = session.txseq(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    no_traceback(done)
    runs = {r.info.run_id: r for r in _runs(client, "killed")}
    for r in dead:  # the killed attempt's parent and model runs are closed as failed by the rerun
        assert runs[r.info.run_id].info.status == "FAILED"
        assert "ended without closing" in runs[r.info.run_id].data.tags["txseq.failure"]
    new = [r for rid, r in runs.items() if rid not in {d.info.run_id for d in dead}]
    parent = next(r for r in new if r.data.tags.get("txseq.kind") == "comparison")
    child = next(r for r in new if r.data.tags.get("txseq.model") == "transformer")
    assert {parent.info.status, child.info.status} == {"FINISHED"}
    assert set(parent.data.tags["txseq.resumes_failed_runs"].split(",")) == {r.info.run_id for r in dead}
    assert child.data.params["resumed_from_step"] == str(killed_at)
    losses = client.get_metric_history(child.info.run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(5, STEPS + 1, 5))  # restored evaluations replayed: a whole curve

    reference = session.reference.metrics  # the same preset, never interrupted
    for key in ("test/auroc", "test/accuracy", "test/logloss", "val/best_auroc"):
        assert math.isclose(child.data.metrics[key], reference[key], rel_tol=0, abs_tol=1e-6), key


def test_scoring_killed_midway_leaves_no_output_and_a_rerun_completes(session: Session, tmp_path: Path) -> None:
    source = session.data.raw / "transactions.csv.gz"
    out = tmp_path / "scores"
    output = out / "scores.parquet"
    args = ("score", "--model", session.model_uri, "--input", source, "--output", output, "--chunk-rows", "4000")
    proc = session.popen(*args)
    wait_for(lambda: any(out.glob(".scores.parquet.*.staging/scores-unsorted.parquet")), 300,
             "the first scored chunk", proc, poll=0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not output.exists() and not (out / "scores.rejects.parquet").exists()
    assert all(p.name.startswith(".") for p in out.iterdir())  # only hidden temp/staging names

    left = sorted(out.iterdir())
    assert any(p.name.endswith(".staging") for p in left)

    again = session.txseq(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    no_traceback(again)
    assert not any(p.exists() for p in left)  # the killed run's staging and temp files are cleaned up
    assert sorted(p.name for p in out.iterdir()) == [
        "scores.drift.json", "scores.drift.png", "scores.parquet", "scores.rejects.parquet"]
    scores = pl.read_parquet(output)
    events = pl.read_parquet(session.data.events / "events")
    assert sorted(scores[S.CUSTOMER_ID]) == sorted(events[S.CUSTOMER_ID].unique())
    assert scores[S.PROBABILITY].is_finite().all()
    rejects = pl.read_parquet(out / "scores.rejects.parquet")
    assert rejects.height + events.height == pl.scan_csv(source, infer_schema=False).select(pl.len()).collect().item()


@pytest.mark.parametrize("store", ["unreachable server", "folder not writable"])
def test_an_unusable_tracking_store_fails_before_training(session: Session, tmp_path: Path, store: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    uri = {"unreachable server": "http://127.0.0.1:9", "folder not writable": f"sqlite:///{blocker}/mlflow.db"}[store]
    message = {"unreachable server": "unreachable", "folder not writable": "not writable"}[store]
    root = tmp_path / "root"
    t0 = time.monotonic()
    proc = session.txseq("train", "--sequences", session.data.sequences, "--events", session.data.events, *TRAIN_ARGS,
                         "--run", "never", env={"MLFLOW_TRACKING_URI": uri, "TXSEQ_DATA_ROOT": str(root)})
    assert proc.returncode == 2, proc.stderr[-3000:]
    no_traceback(proc)
    assert uri.removeprefix("sqlite:///").rsplit("/", 1)[0] in proc.stderr and message in proc.stderr
    assert not (root / "runs").exists(), "training started"
    assert time.monotonic() - t0 < 120


def test_the_train_flow_preflights_the_store_before_any_training(session: Session, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow's first task opens the comparison, which checks the store first (called through `.fn`)."""
    from flows.train import TrainParams, start_task
    from pipeline.registry.tracking import TrackingError

    monkeypatch.setenv("TXSEQ_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(TrackingError, match="unreachable"):
        start_task.fn(TrainParams(preset="tiny", models=["transformer"]), session.data.sequences, session.data.events,
                      "preflight")
    assert not (tmp_path / "root" / "runs").exists()
