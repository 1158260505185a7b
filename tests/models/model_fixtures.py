"""Helpers (not fixtures) for the model tests. Tiny configurations shared by the model tests: every encoder small enough that a test runs in milliseconds, and
small enough segments/windows/pools that the interesting code paths (several segments, several blocks, pooling,
strided keys) are exercised by 10–30 positions."""

from __future__ import annotations

import torch

from models import ENCODERS, EAMConfig, InfiniteFormerConfig, ModelConfig, PerformerConfig, build_encoder
from models.batch import Batch
from models.encoders.informer import InformerConfig

TINY_SUBCONFIGS = dict(  # encoder name -> its config at test size (an encoder not listed runs with its defaults)
    performer=PerformerConfig(nb_features=16, redraw_interval=3),
    infinite_former=InfiniteFormerConfig(segment_len=4, n_basis=8, n_samples=6, histogram_bins=8),
    eam=EAMConfig(window=3, stride=4, pool_size=2, n_experts=3, top_k=2),
    informer=InformerConfig(factor=1),  # u = ⌈ln L⌉: a few active queries even at 10-20 positions
)


def tiny_config(encoder: str, **overrides) -> ModelConfig:
    base = dict(
        n_mcc=23, n_tr_type=7, encoder=encoder, d_model=8, n_layers=2, n_heads=2, ff_mult=2, dropout=0.1,
        mcc_dim=5, tr_type_dim=3, numeric_dim=3, time_dim=3, encoder_config=TINY_SUBCONFIGS.get(encoder),
    )
    base.update(overrides)
    return ModelConfig(**base)


def tiny_encoder(name: str, d_model: int = 8, n_heads: int = 2, n_layers: int = 2, dropout: float = 0.1):
    cfg = tiny_config(name, d_model=d_model, n_heads=n_heads, n_layers=n_layers, dropout=dropout)
    return build_encoder(name, d_model, n_layers, n_heads, ff_mult=2, dropout=dropout, config=cfg.encoder_config)


def lengths_mask(lengths: list[int], t: int | None = None) -> torch.Tensor:
    t = t if t is not None else max(lengths)
    return torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]  # (B, T) left-aligned


def random_batch(lengths: list[int], n_mcc: int = 23, n_tr_type: int = 7, t: int | None = None, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    valid = lengths_mask(lengths, t)
    b, t = valid.shape
    times = torch.cumsum(torch.rand(b, t, generator=g) * 3, dim=1)
    return Batch(
        mcc=torch.randint(1, n_mcc, (b, t), generator=g) * valid,
        tr_type=torch.randint(1, n_tr_type, (b, t), generator=g) * valid,
        numeric=torch.randn(b, t, 4, generator=g) * valid.unsqueeze(-1),
        event_time=times * valid,
        valid=valid,
        label=torch.randint(0, 2, (b,), generator=g).float(),
        customer_id=torch.arange(b),
    )


ENCODER_NAMES = sorted(ENCODERS)
