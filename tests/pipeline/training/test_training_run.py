"""`txseq train` end to end on tiny data: every model trained under one parent run, registered, reported."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.cli import main
from pipeline.training.report import markdown_table
from pipeline.training.trainers import ModelResult
from pipeline.training.presets import DEFAULT_MODELS
from pipeline.registry.tracking import CHAMPION, TAG_DECISION

from _train_data import tiny_dataset  # on sys.path: tests/pipeline/conftest.py


def test_txseq_train_runs_the_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    data = tiny_dataset(tmp_path / "data")
    monkeypatch.setenv("TXSEQ_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TXSEQ_REGISTERED_MODEL", "compare-tests")
    rc = main(["train", "--sequences", str(data.sequences), "--events", str(data.events), "--preset", "tiny",
               "--steps", "20", "--device", "cpu", "--run", "t1", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    for name in DEFAULT_MODELS:
        assert f"| {name} |" in out

    run_dir = tmp_path / "root" / "runs" / "t1"
    assert (run_dir / "report.md").read_text().count("\n| ") == 1 + len(DEFAULT_MODELS)  # header + one row each
    assert (run_dir / "report.png").read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(f"sqlite:///{tmp_path / 'root' / 'mlflow' / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("txseq").experiment_id],
                                "tags.`txseq.kind` = 'comparison'")[0]
    assert {"report.md", "report.png", "roc_test.png"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert parent.data.params["threads"] == "1"  # --threads reached the comparison
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["txseq.model"] for r in children) == sorted(DEFAULT_MODELS)
    for child in children:
        assert "test/auroc" in child.data.metrics and child.data.params["split_id"]
        if child.data.tags["txseq.model"] != "gbdt":
            losses = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "train/loss"),
                                              key=lambda m: m.step)]
            assert len(losses) == 4 and losses[-1] < losses[0], (child.data.tags["txseq.model"], losses)  # every 5
    versions = sorted(client.search_model_versions("name='compare-tests'"), key=lambda v: int(v.version))
    assert len(versions) == len(DEFAULT_MODELS) and all(TAG_DECISION in v.tags for v in versions)
    # decided as each was registered: the first is champion; the tiny split's ~17 test customers are too few for
    # the default rule (100 unseen customers), so every later version keeps it, saying so, without re-scoring
    assert str(client.get_model_version_by_alias("compare-tests", CHAMPION).version) == str(versions[0].version)
    assert "first champion" in versions[0].tags[TAG_DECISION]
    for v in versions[1:]:
        assert "too few customers" in v.tags[TAG_DECISION] and "neither model re-scored" in v.tags[TAG_DECISION]
    for v in versions:  # the model card: tags and the description
        assert v.tags["card.split_id"] == children[0].data.params["split_id"] and v.tags["card.preset"] == "tiny"
        assert "# Model card" in v.description and "Champion decision" in v.description
        assert v.tags[TAG_DECISION] in v.description
    assert "Champion decisions" in (run_dir / "report.md").read_text()
    assert "compare-tests v1" in out and "first champion" in out
    mlflow.set_tracking_uri(None)


def test_unusable_store_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker / 'mlflow.db'}")
    monkeypatch.setenv("TXSEQ_DATA_ROOT", str(tmp_path / "root"))
    assert main(["train", "--sequences", str(tmp_path / "nowhere"), "--preset", "tiny"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert not (tmp_path / "root" / "runs").exists()


def test_markdown_table_shows_missing_values_as_dashes() -> None:
    metrics = {"test/auroc": 0.8, "test/accuracy": 0.7, "test/logloss": 0.5, "time/train_s": 12.0,
               "train/best_step": 200.0, "params/n_parameters": 1234.0, "mem/rss_peak_gib": 1.5,
               "mem/cuda_peak_gib": float("nan")}
    table = markdown_table([ModelResult("eam", metrics, 300, "r"), ModelResult("gbdt", {**metrics,
                                                                                       "train/best_step": None}, None, "g")])
    assert table.splitlines()[-2] == "| eam | 0.8000 | 0.7000 | 0.5000 | 12.0 | 300 | 200 | — | 1.50 | 1,234 |"
    assert table.splitlines()[-1] == "| gbdt | 0.8000 | 0.7000 | 0.5000 | 12.0 | — | — | — | 1.50 | 1,234 |"
