"""Helper of bench_engines.py: train a transformer for 3 epochs on generated sequences, alone or as one rank of a
torchrun job, with the same global batch (32) and seed; rank 0 writes {epoch_s, loss} to argv[1]."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

from models import ModelConfig, build_model
from pipeline.training import distributed
from pipeline import schema as S
from pipeline.sequences.batches import SequenceDataset, make_loader
from pipeline.schema import SEQUENCES_SCHEMA
from pipeline.training.train import TrainConfig, fit


def table(n: int, max_len: int = 128, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for cid in range(n):
        g, length = int(rng.integers(0, 2)), int(rng.integers(16, max_len))
        t = np.sort(rng.random(length) * 90.0)
        rows.append({S.CUSTOMER_ID: cid, S.LABEL: g, S.SEQ_LENGTH: length, S.SEQ_TOTAL: length,
                     S.SEQ_EVENT_TIME: t.tolist(), S.SEQ_MCC: rng.integers(2, 60, length).tolist(),
                     S.SEQ_TR_TYPE: rng.integers(2, 10, length).tolist(), S.SEQ_AMOUNT: (rng.normal(size=length) - g).tolist(),
                     S.SEQ_HOUR: (rng.random(length) * 24).tolist(), S.SEQ_WEEKDAY: (np.floor(t) % 7).tolist(),
                     S.SEQ_LOG_DT: np.log1p(np.diff(t, prepend=t[0]) * 24).tolist()})
    return pl.DataFrame(rows, schema=SEQUENCES_SCHEMA)


def main(out: Path, n: int) -> None:
    ddp = distributed.init_from_env("cpu")
    data = table(n)
    train, val = SequenceDataset(data.head(n * 3 // 4)), SequenceDataset(data.tail(n // 4))
    per_pass = -(-len(train) // 32)  # steps of one pass over the training customers
    torch.manual_seed(0)  # the same initial weights as the 1-process run (DDP then broadcasts rank 0's)
    model = build_model(ModelConfig(n_mcc=64, n_tr_type=12, d_model=64, n_layers=2, n_heads=4, dropout=0.0))
    result = fit(model, lambda e: make_loader(train, batch_size=32, shuffle=True, crop_len=128, seed=e),
                 lambda: make_loader(val, batch_size=64), TrainConfig(steps=3 * per_pass, eval_every=per_pass, device="cpu", progress=False, patience=9))
    if ddp.is_main:
        epochs = [h["time/round_s"] for h in result.history[1:]]
        out.write_text(json.dumps({"epoch_s": sum(epochs) / len(epochs), "loss": result.history[-1]["train/loss"],
                                   "world": ddp.world_size, "epochs_s": [h["time/round_s"] for h in result.history]}))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
