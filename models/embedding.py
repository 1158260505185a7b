"""Per-event embedding: categorical codes, numeric features and time, projected to d_model."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.batch import Batch


def sinusoidal_time_features(days_ago: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """sin/cos of ``days_ago`` at ⌈dim/2⌉ periods spaced geometrically in [min_period, max_period] days, cut to ``dim``
    features (any dim, odd included). days_ago (B, T) -> (B, T, dim)"""
    n = -(-dim // 2)
    periods = torch.logspace(
        math.log10(min_period), math.log10(max_period), n, device=days_ago.device, dtype=torch.float32
    )
    angles = 2 * math.pi * days_ago.float().unsqueeze(-1) / periods  # (B, T, n)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)[..., :dim]


class TransactionEmbedding(nn.Module):
    """concat[mcc embedding, tr_type embedding, Linear(normalised numeric), sin/cos(time before the last event)]
    -> Linear -> LayerNorm -> dropout, zero at padded positions. Every size may be odd.

    Codes: 0 = padding (a zero vector, ``padding_idx``), 1 = unknown; codes outside the vocabulary read as unknown.
    Numeric features are normalised as (x − mean)/std with buffers set by ``set_numeric_stats`` (default 0 and 1);
    they are part of the state dict, so a saved model carries the statistics it was trained with.

    >>> emb = TransactionEmbedding(n_mcc=10, n_tr_type=5, n_numeric=4, d_model=7)
    >>> b = Batch(mcc=torch.ones(2, 3, dtype=torch.long), tr_type=torch.ones(2, 3, dtype=torch.long),
    ...           numeric=torch.zeros(2, 3, 4), event_time=torch.zeros(2, 3), valid=torch.ones(2, 3, dtype=torch.bool),
    ...           label=torch.zeros(2), customer_id=torch.arange(2))
    >>> emb(b).shape
    torch.Size([2, 3, 7])
    """

    def __init__(
        self,
        n_mcc: int,
        n_tr_type: int,
        n_numeric: int,
        d_model: int,
        mcc_dim: int = 32,
        tr_type_dim: int = 16,
        numeric_dim: int = 16,
        time_dim: int = 16,
        dropout: float = 0.1,
        time_periods: tuple[float, float] = (0.25, 1000.0),
    ) -> None:
        super().__init__()
        self.n_mcc, self.n_tr_type, self.time_dim, self.time_periods = n_mcc, n_tr_type, time_dim, time_periods
        self.mcc = nn.Embedding(n_mcc, mcc_dim, padding_idx=0)
        self.tr_type = nn.Embedding(n_tr_type, tr_type_dim, padding_idx=0)
        self.numeric = nn.Linear(n_numeric, numeric_dim)
        self.register_buffer("numeric_mean", torch.zeros(n_numeric))
        self.register_buffer("numeric_std", torch.ones(n_numeric))
        self.proj = nn.Linear(mcc_dim + tr_type_dim + numeric_dim + time_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    @torch.no_grad()
    def set_numeric_stats(self, mean: torch.Tensor | list[float], std: torch.Tensor | list[float]) -> None:
        mean_t = torch.as_tensor(mean, dtype=self.numeric_mean.dtype, device=self.numeric_mean.device)
        std_t = torch.as_tensor(std, dtype=self.numeric_std.dtype, device=self.numeric_std.device)
        if mean_t.shape != self.numeric_mean.shape or std_t.shape != self.numeric_std.shape:
            raise ValueError(f"expected {tuple(self.numeric_mean.shape)} statistics, got {tuple(mean_t.shape)}")
        self.numeric_mean.copy_(mean_t)
        self.numeric_std.copy_(std_t.clamp_min(1e-6))

    def forward(self, batch: Batch) -> torch.Tensor:
        valid = batch.valid
        mcc = torch.where(batch.mcc < self.n_mcc, batch.mcc, 1).masked_fill(~valid, 0)
        tr_type = torch.where(batch.tr_type < self.n_tr_type, batch.tr_type, 1).masked_fill(~valid, 0)
        numeric = torch.where(valid.unsqueeze(-1), batch.numeric.float(), 0.0)  # no NaN from padding reaches autograd
        numeric = (numeric - self.numeric_mean) / self.numeric_std
        parts = [self.mcc(mcc), self.tr_type(tr_type), self.numeric(numeric)]
        if self.time_dim > 0:
            time = torch.where(valid, batch.event_time.float(), float("-inf"))
            last = time.amax(dim=1, keepdim=True)  # latest event of each customer
            last = torch.where(torch.isfinite(last), last, 0.0)  # customers without events
            days_ago = torch.where(valid, last - batch.event_time.float(), 0.0)
            parts.append(sinusoidal_time_features(days_ago, self.time_dim, *self.time_periods))
        x = self.drop(self.norm(self.proj(torch.cat(parts, dim=-1))))
        return x.masked_fill(~valid.unsqueeze(-1), 0.0)
