"""Concurrency with real processes: two trainings writing to one fresh SQLite tracking store, and two scoring runs on
one landing folder."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from mlflow import MlflowClient

from pipeline import schema as S
from pipeline.scoring.landing import read_ledger

from conftest import Session, no_traceback, subprocess_env

STEPS = 10  # tiny preset: validation every 5 steps


def test_two_trainings_on_one_fresh_sqlite_store_both_record_everything(session: Session, tmp_path: Path) -> None:
    """Both processes create the store, the experiment and the registered model at the same moment; default run
    names (both started in the same second)."""
    root = tmp_path / "root"  # a fresh data root: no mlflow.db yet
    env = subprocess_env(root, registered="concurrent-model")
    args = ("train", "--sequences", session.data.sequences, "--events", session.data.events, "--preset", "tiny",
            "--models", "transformer", "--steps", str(STEPS), "--device", "cpu")
    procs = [session.popen(*args, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
        assert "Traceback" not in err, err[-4000:]

    client = MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    (exp,) = [e for e in client.search_experiments() if e.name == "txseq"]
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("txseq.kind") == "comparison"]
    children = [r for r in runs if r.data.tags.get("txseq.model") == "transformer"]
    assert len(parents) == 2 and len(children) == 2 and len(runs) == 4
    assert len({r.data.tags["txseq.run_name"] for r in parents}) == 2  # distinct default names
    assert {r.info.status for r in runs} == {"FINISHED"}
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] in {p.info.run_id for p in parents}
        for key in ("train/loss", "val/auroc"):
            assert sorted(m.step for m in client.get_metric_history(child.info.run_id, key)) == list(range(5, STEPS + 1, 5))
        assert {"test/auroc", "time/train_s"} <= set(child.data.metrics) and child.data.params["split_id"]
    for parent in parents:
        assert "transformer/test_auroc" in parent.data.metrics
        assert {"report.md", "report.png"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}
    versions = client.search_model_versions("name='concurrent-model'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.run_id for v in versions} == {c.info.run_id for c in children}


def test_two_scoring_runs_on_one_landing_folder_score_each_file_once(session: Session, tmp_path: Path) -> None:
    landing, out = tmp_path / "landing", tmp_path / "scores"
    landing.mkdir()
    raw = pl.read_csv(session.data.raw / "transactions.csv.gz", infer_schema=False)
    ids = raw[S.CUSTOMER_ID].unique().sort()
    parts = 6
    for i in range(parts):  # disjoint customers per file, alternately CSV and Parquet
        part = raw.filter(pl.col(S.CUSTOMER_ID).is_in(ids.gather_every(parts, offset=i).implode()))
        if i % 2:
            part.write_parquet(landing / f"part{i}.parquet")
        else:
            part.write_csv(landing / f"part{i}.csv")
    args = ("score", "--model", session.model_uri, "--landing", landing, "--out-dir", out, "--chunk-rows", "5000")
    procs = [session.popen(*args) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-4000:]
        assert "Traceback" not in err
    scored = [int(stdout.split(" new file(s) scored")[0].rsplit("\n", 1)[-1]) for stdout, _ in outs]
    assert sum(scored) == parts, [o for o, _ in outs]

    ledger = read_ledger(out)
    assert sorted(Path(r["source"]).name for r in ledger) == sorted(p.name for p in landing.iterdir())
    outputs = sorted(p for p in out.glob("*.parquet") if not p.name.endswith(".rejects.parquet"))
    assert [p.name for p in outputs] == sorted(r["output"] for r in ledger)
    scores = pl.read_parquet(outputs)
    assert scores.height == scores[S.CUSTOMER_ID].n_unique() == ids.len()  # every customer once, no file twice
    assert not list((out / "_claims").iterdir())
    # a third run finds nothing new
    again = session.txseq(*args)
    assert again.returncode == 0 and again.stdout.startswith("0 new file(s) scored"), again.stdout
    no_traceback(again)
    assert json.loads(json.dumps(read_ledger(out))) == ledger
