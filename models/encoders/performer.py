"""Performer encoder: pre-norm blocks whose attention is FAVOR+ (positive orthogonal random features), linear in T.

The math lives in ``models.attention.functional`` (``orthogonal_gaussian``, ``softmax_kernel``, ``linear_attention``);
this module only owns the random projection ω (a buffer, so eval and a reloaded model use the same features) and
its redraw schedule: in training the features are redrawn every ``redraw_interval`` forward calls, in eval never.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.attention import functional as AF
from models.encoders.base import MultiHeadSelfAttention, StackedEncoder, feed_forward_blocks


@dataclass(frozen=True)
class PerformerConfig:
    nb_features: int = 128  # m, random features per head (shared by the heads of a layer)
    redraw_interval: int = 1000  # training forward calls between feature redraws; 0 = never redraw
    kernel_eps: float = 1e-6  # added to every feature: keeps the normaliser away from 0

    def __post_init__(self) -> None:
        if self.nb_features < 1 or self.redraw_interval < 0:
            raise ValueError(f"invalid PerformerConfig: {self}")


class FavorAttention(MultiHeadSelfAttention):
    def __init__(self, d_model: int, n_heads: int, config: PerformerConfig) -> None:
        super().__init__(d_model, n_heads)
        self.config = config
        self.register_buffer("projection", AF.orthogonal_gaussian(config.nb_features, self.head_dim))  # (m, d)
        self.register_buffer("calls_since_redraw", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def redraw(self) -> None:
        new = AF.orthogonal_gaussian(self.config.nb_features, self.head_dim, device=self.projection.device)
        self.projection.copy_(new)
        self.calls_since_redraw.zero_()

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.training and self.config.redraw_interval > 0:
            if int(self.calls_since_redraw) >= self.config.redraw_interval:
                self.redraw()
            self.calls_since_redraw += 1
        q_prime = AF.softmax_kernel(q, self.projection, is_query=True, eps=self.config.kernel_eps)
        k_prime = AF.softmax_kernel(k, self.projection, is_query=False, valid=AF.keys_or_any(valid), eps=self.config.kernel_eps)
        with torch.autocast(device_type=q.device.type, enabled=False):
            out = AF.linear_attention(q_prime, k_prime, v.float())
        return out.to(v.dtype)


class PerformerEncoder(StackedEncoder):
    """>>> enc = PerformerEncoder(d_model=8, n_layers=1, n_heads=2, config=PerformerConfig(nb_features=16))
    >>> enc(torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)).hidden.shape
    torch.Size([3, 5, 8])
    """

    label = "Performer (FAVOR+)"

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        ff_mult: int = 4,
        dropout: float = 0.1,
        config: PerformerConfig | None = None,
    ) -> None:
        config = config or PerformerConfig()
        attention = lambda: FavorAttention(d_model, n_heads, config)  # noqa: E731
        super().__init__(d_model, feed_forward_blocks(d_model, n_layers, ff_mult, dropout, attention))
