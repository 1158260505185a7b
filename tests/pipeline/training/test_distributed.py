"""DDP: 2 CPU processes (gloo) follow the 1-process run with the same global batch and seed; sharding is exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.batch import Batch
from pipeline.training.distributed import Dist, shard, worker_argv

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).resolve().parents[1] / "_ddp_fit.py"
# Measured: train/loss and val/logloss agree to ~1e-7, the weights' L1 norm to ~1e-6 relative (float summation order
# of the gradient all-reduce); the tolerance leaves room for other CPUs' kernels.
TOLERANCE = 1e-4


def _batch(n: int) -> Batch:
    t = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    return Batch(mcc=t.long(), tr_type=t.long(), numeric=t[..., None].repeat(1, 1, 4), event_time=t,
                 valid=torch.ones(n, 3, dtype=torch.bool), label=torch.arange(n) % 2.0, customer_id=torch.arange(n))


@pytest.mark.parametrize("size", [1, 5, 8])
def test_shards_cover_the_global_batch_once_with_weights_averaging_to_one(size: int) -> None:
    world = 3
    parts = [shard(_batch(size), Dist(rank=r, world_size=world)) for r in range(world)]
    ids = sorted(int(i) for b, w in parts if w > 0 for i in b.customer_id)
    assert ids == list(range(size))
    assert sum(w for _, w in parts) / world == pytest.approx(1.0)  # DDP's mean of the weighted losses = global mean
    assert all(b.size >= 1 for b, _ in parts)  # every rank still runs a backward pass


def test_worker_arguments_leave_out_the_launcher_options() -> None:
    argv = ["train", "--nproc", "2", "--nnodes=1", "--models", "gbdt", "--master-addr", "h", "--run", "x", "--fold", "1"]
    assert worker_argv(argv) == ["train", "--models", "gbdt", "--fold", "1"]


def test_two_processes_match_one(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    subprocess.run([sys.executable, str(SCRIPT), str(one)], check=True, env=env, timeout=900)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(SCRIPT), str(two), str(tmp_path / "checkpoints")], env=env, timeout=900,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["world"] == 2 and len(a["history"]) == len(b["history"]) == 3
    for ha, hb in zip(a["history"], b["history"], strict=True):
        for key in ("train/loss", "val/logloss", "val/auroc"):
            assert hb[key] == pytest.approx(ha[key], rel=TOLERANCE, abs=TOLERANCE), key
        assert {"rank0/time/round_s", "rank1/time/round_s", "rank1/throughput/train_events_per_s"} <= set(hb)
        assert hb["rank0/steps"] == hb["rank1/steps"]
    assert b["weights"] == pytest.approx(a["weights"], rel=TOLERANCE)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # rank 0's only

    # killed after step 14's checkpoint (every rank at training batch 17), then resumed with the same fingerprint:
    # both ranks load rank 0's last.pt and the run ends as the uninterrupted 2-process run did
    killed, fp = tmp_path / "killed", json.dumps({"split_id": "same"})
    run2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(SCRIPT)]
    done = subprocess.run([*run2, str(tmp_path / "none.json"), str(killed), fp, "16"], env=env, timeout=900,
                          capture_output=True, text=True)
    assert done.returncode != 0 and not (tmp_path / "none.json").exists()
    resumed_out = tmp_path / "resumed.json"
    done = subprocess.run([*run2, str(resumed_out), str(killed), fp], env=env, timeout=900, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(resumed_out.read_text())
    assert r["resumed_from_step"] == 14 and [h["step"] for h in r["history"]] == [7, 14, 21]
    for hb, hr in zip(b["history"], r["history"], strict=True):
        for key in ("train/loss", "val/logloss", "val/auroc"):
            assert hr[key] == pytest.approx(hb[key], rel=TOLERANCE, abs=TOLERANCE), key
    assert r["weights"] == pytest.approx(b["weights"], rel=TOLERANCE)

    # another fingerprint: rank 0 alone moves the checkpoints aside, every rank starts fresh (none waits for the other)
    three = tmp_path / "three.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(SCRIPT), str(three), str(tmp_path / "checkpoints"), json.dumps({"split_id": "other"})],
                          env=env, timeout=900, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    c = json.loads(three.read_text())
    assert c["resumed_from_step"] is None and len(c["history"]) == 3
    assert c["weights"] == pytest.approx(b["weights"], rel=TOLERANCE)  # the same fresh training
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt", "replaced-1"]
    assert sorted(p.name for p in (tmp_path / "checkpoints" / "replaced-1").iterdir()) == ["best.pt", "last.pt"]


def test_txseq_train_nproc_2_logs_one_parent_run_with_per_rank_metrics(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from _train_data import tiny_dataset

    data = tiny_dataset(tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"PYTHONPATH": str(ROOT), "TXSEQ_DATA_ROOT": str(tmp_path / "root"), "OMP_NUM_THREADS": "1",
            "TXSEQ_REGISTERED_MODEL": "ddp-tests"}
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--sequences", str(data.sequences), "--events",
           str(data.events), "--preset", "tiny", "--steps", "10", "--device", "cpu", "--models", "transformer,gbdt",
           "--nproc", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| transformer |" in done.stdout and "| gbdt |" in done.stdout  # rank 0 prints the report once
    client = MlflowClient(f"sqlite:///{tmp_path / 'root' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("txseq").experiment_id
    parents = client.search_runs([experiment], "tags.`txseq.kind` = 'comparison'")
    assert len(parents) == 1
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'")
    assert sorted(r.data.tags["txseq.model"] for r in children) == ["gbdt", "transformer"]
    encoder = next(r for r in children if r.data.tags["txseq.model"] == "transformer")
    for key in ("rank0/time/round_s", "rank1/time/round_s", "train/loss"):
        assert len(client.get_metric_history(encoder.info.run_id, key)) == 2, key
    run_name = parents[0].data.tags["txseq.run_name"]
    run_dir = tmp_path / "root" / "runs" / run_name
    assert (run_dir / "checkpoints" / "transformer" / "last.pt").exists()
    versions = client.search_model_versions("name = 'ddp-tests'")
    assert len(versions) == 2

    # the same run again: rank 0 reuses both registered versions (same fingerprint) and rank 1 skips the transformer
    # with it instead of waiting for a training step that never comes
    again = subprocess.run([*cmd, "--run", run_name], env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rank 0 reuses its registered version" in again.stderr
    assert len(client.search_model_versions("name = 'ddp-tests'")) == 2
