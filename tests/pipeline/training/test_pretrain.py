"""CoLES pretraining: slices, the customers it may see, that it learns, and the whole route through the CLI
(pretrain -> registered embedding model -> fine-tuned and hybrid models that score raw transactions)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
import torch
from mlflow import MlflowClient

from models import ModelConfig, build_model
from pipeline import schema as S
from pipeline.sequences.batches import SequenceDataset, SliceCollate, numeric_stats
from pipeline.cli import main
from pipeline.training.presets import tiny
from pipeline.training.pretrain import PretrainConfig, heldout_recall, pretrain, pretrain_customers
from pipeline.sequences.splits import Split

from _train_data import synthetic_sequences, tiny_dataset  # on sys.path: tests/pipeline/conftest.py


def test_slices_are_contiguous_windows_of_the_right_lengths() -> None:
    table = synthetic_sequences(n=20, max_len=120, seed=3)
    ds = SequenceDataset(table)
    batch = SliceCollate(ds, n_slices=4, min_len=15, max_len=30, seed=1)(list(range(20)))
    assert batch.size == 80 and batch.customer_id.tolist() == np.repeat(ds.customer_id.numpy(), 4).tolist()
    lengths = batch.valid.sum(1)
    full = ds.lengths.repeat_interleave(4)
    short = full <= 15
    assert torch.equal(lengths[short], full[short])  # short histories come whole
    assert ((lengths[~short] >= 15) & (lengths[~short] <= torch.minimum(full[~short], torch.tensor(30)))).all()
    for r in range(batch.size):  # each slice is a run of consecutive events of its customer
        row = int(torch.nonzero(ds.customer_id == batch.customer_id[r])[0])
        seq = ds.event_time[ds.offsets[row]:ds.offsets[row + 1]]
        got = batch.event_time[r, : lengths[r]]
        starts = [s for s in range(len(seq) - len(got) + 1) if torch.equal(seq[s:s + len(got)], got)]
        assert starts, r


def test_pretraining_customers_exclude_the_test_set(tmp_path: Path) -> None:
    data = tiny_dataset(tmp_path / "data")
    ids = pretrain_customers(data.sequences)
    seq = pl.read_parquet(data.sequences / "sequences.parquet")
    test = set(Split.load(data.sequences / "split.json").test_ids)
    assert test and not set(ids) & test
    assert set(ids) == set(seq.filter(pl.col(S.SEQ_LENGTH) > 0)[S.CUSTOMER_ID].to_list()) - test
    assert seq[S.LABEL].null_count() > 0 and set(ids) & set(seq.filter(pl.col(S.LABEL).is_null())[S.CUSTOMER_ID])


def test_pretraining_raises_held_out_recall() -> None:
    table = synthetic_sequences(n=96, max_len=120, seed=5)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_mcc=24, n_tr_type=8, **tiny().model_kwargs("transformer")))
    ds = SequenceDataset(table)
    model.embedding.set_numeric_stats(*numeric_stats(ds))
    config = PretrainConfig(epochs=3, steps=18, batch_size=32, min_len=10, max_len=40, heldout_fraction=0.3,
                            device="cpu")
    held = SequenceDataset(table, list(range(67, 96)))  # not the held-out draw, but a fixed set to compare on
    before = heldout_recall(model, held, config, torch.device("cpu"))
    result = pretrain(model, table, list(range(96)), config)
    assert len(result.history) == 3 and result.n_fit + result.n_heldout == 96
    assert [h["pretrain/steps"] for h in result.history] == [6, 6, 6]
    assert result.history[-1]["pretrain/loss"] < result.history[0]["pretrain/loss"]
    assert heldout_recall(model, held, config, torch.device("cpu")) > before


def test_pretrain_then_fine_tune_and_hybrid_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys) -> None:
    data = tiny_dataset(tmp_path / "data")
    monkeypatch.setenv("TXSEQ_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TXSEQ_REGISTERED_MODEL", "pretrain-tests")
    paths = ["--sequences", str(data.sequences), "--events", str(data.events)]
    assert main(["pretrain", "--encoder", "transformer", *paths, "--preset", "tiny", "--epochs", "2", "--steps", "10",
                 "--batch-size", "32", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    uri = out.split("registered: ")[1].split()[0]
    assert uri == "models:/pretrain-tests-coles-transformer/1"
    client = MlflowClient(f"sqlite:///{tmp_path / 'root' / 'mlflow' / 'mlflow.db'}")
    version = client.get_model_version("pretrain-tests-coles-transformer", "1")
    assert version.tags["test_customers_seen"] == "0"
    assert int(version.tags["n_customers"]) == len(pretrain_customers(data.sequences))
    run = client.get_run(version.run_id)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pretrain/recall_at_4")] == [0, 1]
    raw = pl.read_csv(data.raw / "transactions.csv.gz", infer_schema=False).head(400)
    emb = mlflow.pyfunc.load_model(uri).predict(raw.to_pandas())
    assert list(emb.columns) == [S.CUSTOMER_ID, *[f"emb_{j}" for j in range(tiny().model["d_model"])]]

    assert main(["train", *paths, "--preset", "tiny", "--steps", "10", "--device", "cpu", "--run", "ft",
                 "--models", "transformer_coles,hybrid_transformer,gbdt", "--init-from", uri]) == 0
    table = capsys.readouterr().out
    assert "| transformer_coles |" in table and "| hybrid_transformer |" in table
    versions = {v.tags["model"]: v for v in client.search_model_versions("name='pretrain-tests'")}
    assert set(versions) == {"transformer_coles", "hybrid_transformer", "gbdt"}
    for name in versions:  # every model, the hybrid too, carries its validation threshold and calibration
        assert {"decision.threshold", "decision.rule", "decision.calibration"} <= set(versions[name].tags), name
    hybrid = mlflow.pyfunc.load_model(f"models:/pretrain-tests/{versions['hybrid_transformer'].version}")
    scores = hybrid.predict(raw.to_pandas())
    assert list(scores.columns) == [S.CUSTOMER_ID, S.PROBABILITY, S.PREDICTION]
    assert len(scores) == raw[S.CUSTOMER_ID].n_unique() and scores[S.PROBABILITY].between(0, 1).all()

    # a model that needs a pretrained encoder it was not given: one line, exit 2
    assert main(["train", *paths, "--preset", "tiny", "--models", "eam_coles", "--device", "cpu"]) == 2
    assert "needs a pretrained eam encoder" in capsys.readouterr().err
    mlflow.set_tracking_uri(None)


def test_the_pretraining_budget_is_passes_over_the_customers_within_bounds() -> None:
    c = PretrainConfig(batch_size=100, passes=30, min_steps=1000, max_steps=20_000)
    assert c.budget_steps(500) == 1000  # 5 batches a pass: the floor
    assert c.budget_steps(10_001) == 30 * 101  # 30 passes
    assert c.budget_steps(1_000_000) == 20_000  # the cap
    assert replace(c, steps=7).budget_steps(10**6) == 7  # an explicit budget wins
    with pytest.raises(ValueError):
        PretrainConfig(min_steps=10, max_steps=5)
