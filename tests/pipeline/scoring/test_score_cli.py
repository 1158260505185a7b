"""`txseq score` and `txseq models` through the real command line (subprocess) against a trained, registered
model: the champion by default, a drift report beside every scored batch, one warning line only when the batch has
drifted, the scoring run in MLflow, and the registered versions listed with their decisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import polars as pl
import pytest

from pipeline import schema as S
from pipeline.sources.generate import GeneratorConfig, generate
from pipeline.settings import Settings

from _train_data import tiny_dataset  # on sys.path: tests/pipeline/conftest.py

ROOT = Path(__file__).resolve().parents[3]
NAME = "score-cli-tests"
pytestmark = pytest.mark.timeout(1800)  # the module fixture generates ~1,500 customers and trains (minutes when busy)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~1,500 customers; the GBDT trained, calibrated and registered as champion (with its drift reference)."""
    from pipeline.training.run import run_comparison
    from pipeline.training.presets import get

    base = tmp_path_factory.mktemp("score-cli")
    data = tiny_dataset(base / "data", scale=0.1)
    root = base / "root"
    settings = Settings(root, f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", root / "mlflow" / "artifacts", NAME)
    run_comparison(data.sequences, data.events, get("tiny"), ["gbdt"], settings=settings, run_name="cli")
    yield root
    mlflow.set_tracking_uri(None)


def _txseq(root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TXSEQ_"))}
    env.update(PYTHONPATH=str(ROOT), TXSEQ_DATA_ROOT=str(root), TXSEQ_REGISTERED_MODEL=NAME,
               MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK="true")
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def fresh_batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new sample of the training distribution (the generator with another seed)."""
    out = generate(tmp_path_factory.mktemp("batch"), GeneratorConfig(scale=0.1, seed=2, format="parquet"))
    return out.transactions


def _drift_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "drift" in line.lower()]


def test_a_batch_from_the_training_distribution_scores_with_the_champion_and_no_warning(root: Path, fresh_batch: Path,
                                                                                          tmp_path: Path) -> None:
    proc = _txseq(root, "score", "--input", fresh_batch, "--output", tmp_path / "march.parquet")  # no --model
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _drift_lines(proc) == [], proc.stdout + proc.stderr
    assert "input stable" in proc.stdout
    report = json.loads((tmp_path / "march.drift.json").read_text())
    assert report["drifted"] == [] and max(report["psi"].values()) <= 0.2
    assert (tmp_path / "march.drift.png").read_bytes()[:4] == b"\x89PNG"
    scores = pl.read_parquet(tmp_path / "march.parquet")
    assert report["customers"] == scores.height and scores[S.MODEL_VERSION].unique().to_list() == ["1"]


def test_a_shifted_batch_prints_one_warning_naming_the_features(root: Path, fresh_batch: Path, tmp_path: Path) -> None:
    shifted = tmp_path / "shifted.parquet"
    pl.read_parquet(fresh_batch).with_columns(
        (pl.col(S.AMOUNT).cast(pl.Float64) * 25).alias(S.AMOUNT),  # amounts 25× larger
        (pl.col(S.MCC_CODE).cast(pl.Int64) + 7).cast(pl.read_parquet_schema(fresh_batch)[S.MCC_CODE]).alias(S.MCC_CODE),
    ).write_parquet(shifted)
    proc = _txseq(root, "score", "--model", f"models:/{NAME}@champion", "--input", shifted,
                  "--output", tmp_path / "shifted-scores.parquet", "--drift-threshold", "0.2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _drift_lines(proc)
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "warning" in lines[0] and "amount" in lines[0] and "mcc" in lines[0]
    report = json.loads((tmp_path / "shifted-scores.drift.json").read_text())
    assert {"amount", "mcc"} <= set(report["drifted"])
    assert report["unknown_share"]["mcc"]["batch"] > report["unknown_share"]["mcc"]["reference"]

    # each scored batch is a finished run in the model's experiment, with the report as metrics and artifacts
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("txseq")
    runs = client.search_runs([experiment.experiment_id], "tags.`txseq.kind` = 'scoring'")
    run = next(r for r in runs if r.data.tags["txseq.output"] == "shifted-scores.parquet")
    assert run.info.status == "FINISHED" and run.data.metrics["drift/psi_amount"] > 0.2
    assert {"amount", "mcc"} <= set(run.data.tags["txseq.drifted"].split(","))
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "drift")) == [
        "drift/shifted-scores.drift.json", "drift/shifted-scores.drift.png"]


def test_models_lists_versions_with_metrics_aliases_and_decisions(root: Path) -> None:
    proc = _txseq(root, "models")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "gbdt" and cells[2] == "champion"
    assert 0.5 < float(cells[3]) <= 1.0  # test ROC AUC
    assert 0.0 < float(cells[5]) < 1.0 and cells[6] in {"platt", "isotonic"}  # threshold, calibration
    assert "first champion" in cells[8]  # the champion decision recorded at registration


def test_models_and_score_fail_in_one_line_without_a_registered_model(tmp_path: Path, fresh_batch: Path) -> None:
    (tmp_path / "mlflow").mkdir()
    empty_root = tmp_path
    mlflow.MlflowClient(f"sqlite:///{empty_root / 'mlflow' / 'mlflow.db'}").search_experiments()  # an empty store
    proc = _txseq(empty_root, "models")
    assert proc.returncode == 2 and "no registered model" in proc.stderr and "Traceback" not in proc.stderr
    proc = _txseq(empty_root, "score", "--input", fresh_batch, "--output", tmp_path / "s.parquet")
    assert proc.returncode == 2 and f"models:/{NAME}@champion" in proc.stderr and "Traceback" not in proc.stderr


def test_a_file_without_a_column_of_the_models_format_fails_before_the_model_is_loaded(
        root: Path, fresh_batch: Path, tmp_path: Path) -> None:
    """The input's columns are checked against the model's export format, read from its config.json alone, before
    the model is loaded: the error names the file and the missing column, even for a model whose weights would not
    load (a copy of the champion without them)."""
    tracking_uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/1", dst_path=str(tmp_path / "copy"),
                                                     tracking_uri=tracking_uri))
    for f in (local / "artifacts").iterdir():
        if f.name != "config.json":
            f.unlink()
    client = mlflow.MlflowClient(tracking_uri)
    client.create_registered_model(f"{NAME}-no-weights")
    client.create_model_version(f"{NAME}-no-weights", source=local.resolve().as_uri())
    uri = f"models:/{NAME}-no-weights/1"

    wrong = tmp_path / "export.csv"
    pl.read_parquet(fresh_batch).head(50).drop(S.AMOUNT).write_csv(wrong)
    proc = _txseq(root, "score", "--model", uri, "--input", wrong, "--output", tmp_path / "wrong.parquet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    error = next(line for line in proc.stderr.splitlines() if line.startswith("txseq score: error:"))
    assert "export.csv: missing column(s) amount" in error and "cannot load model" not in proc.stderr, error
    assert not (tmp_path / "wrong.parquet").exists()

    proc = _txseq(root, "score", "--model", uri, "--input", fresh_batch, "--output", tmp_path / "right.parquet")
    assert proc.returncode == 2 and f"cannot load model {uri}" in proc.stderr, proc.stderr[-3000:]  # what a load gives
