"""The one batch type that travels from collate to the classifier head."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Batch:
    """A padded batch of customers' event sequences.

    Shapes (B customers, T = longest sequence in the batch):
        mcc        (B, T) long   frequency-rank code, 0 = padding, 1 = unknown
        tr_type    (B, T) long   same encoding
        numeric    (B, T, F) float  amount sign·log1p, hour, weekday, log Δt (raw; the embedding normalises)
        event_time (B, T) float  days since the start of the export (0 at padding)
        valid      (B, T) bool   True = real event (the padding mask points this way everywhere)
        label      (B,) float    0/1 target, NaN when unknown (scoring)
        customer_id (B,) long
    Events are ordered oldest → newest and left-aligned (padding at the tail).
    """

    mcc: torch.Tensor
    tr_type: torch.Tensor
    numeric: torch.Tensor
    event_time: torch.Tensor
    valid: torch.Tensor
    label: torch.Tensor
    customer_id: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return replace(self, **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)})

    @property
    def size(self) -> int:
        return self.mcc.shape[0]

    @property
    def n_events(self) -> int:
        return int(self.valid.sum())
