"""Helper script for test_distributed.py (not a test): one `fit` on a tiny table, alone or as one rank of a
torchrun job; rank 0 writes the history and final weights' checksum to the JSON path given as argv[1].
argv: OUT.json [CHECKPOINTS [FINGERPRINT as JSON [KILL_AFTER]]]: with KILL_AFTER, every rank exits (status 3) when
it draws training batch KILL_AFTER + 1, as a job killed mid-run would."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_data import synthetic_sequences  # noqa: E402

from models import ModelConfig, build_model  # noqa: E402
from pipeline.training import distributed  # noqa: E402
from pipeline.sequences.batches import SequenceDataset, make_loader  # noqa: E402
from pipeline.training.train import TrainConfig, fit  # noqa: E402


def main(out: Path, checkpoints: Path | None, fingerprint: dict[str, str] | None, kill_after: int | None) -> None:
    ddp = distributed.init_from_env("cpu")
    torch.set_num_threads(1)
    table = synthetic_sequences(n=96, max_len=24)
    train, val = SequenceDataset(table.head(64)), SequenceDataset(table.tail(32))
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_mcc=24, n_tr_type=8, d_model=16, n_layers=1, n_heads=2, ff_mult=2, dropout=0.0,
                                    mcc_dim=8, tr_type_dim=4, numeric_dim=4, time_dim=0))
    config = TrainConfig(steps=21, eval_every=7, lr=3e-3, device="cpu", seed=0, progress=False, patience=10)
    drawn = 0

    def train_batches(epoch: int):  # noqa: ANN202
        nonlocal drawn
        for batch in make_loader(train, batch_size=10, shuffle=True, crop_len=16, seed=epoch):
            drawn += 1
            if kill_after is not None and drawn > kill_after:
                sys.exit(3)
            yield batch

    result = fit(model, train_batches, lambda: make_loader(val, batch_size=32), config, checkpoint_dir=checkpoints,
                 fingerprint=fingerprint)
    if ddp.is_main:
        weights = sum(float(p.detach().double().abs().sum()) for p in model.parameters())
        out.write_text(json.dumps({"history": result.history, "weights": weights, "world": ddp.world_size,
                                   "resumed_from_step": result.resumed_from_step}))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None,
         json.loads(sys.argv[3]) if len(sys.argv) > 3 else None, int(sys.argv[4]) if len(sys.argv) > 4 else None)
