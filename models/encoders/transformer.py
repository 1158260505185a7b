"""Baseline Transformer encoder: pre-norm blocks with exact softmax attention.

Two interchangeable attention paths, side by side (nanoGPT style):
- ``SdpaAttention``: ``F.scaled_dot_product_attention`` with a boolean key mask (fused kernel, O(T) memory on CPU);
- ``MaterializedAttention``: ``softmax(QKᵀ/√d)V`` built explicitly, O(T²) memory, the baseline of the papers and the
  test oracle. Both give the same numbers (tests/models/test_transformer.py).
Attention dropout is 0 on purpose: with dropout > 0 SDPA falls back to its quadratic path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.attention import functional as AF
from models.encoders.base import MultiHeadSelfAttention, StackedEncoder, feed_forward_blocks


@dataclass(frozen=True)
class TransformerConfig:
    """The Transformers have no options beyond the shared ModelConfig sizes (kept as a class so that every encoder
    has one)."""


class SdpaAttention(MultiHeadSelfAttention):
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return AF.sdpa_attention(q, k, v, valid)


class MaterializedAttention(MultiHeadSelfAttention):
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return AF.materialized_attention(q, k, v, valid)


class TransformerEncoder(StackedEncoder):
    """>>> enc = TransformerEncoder(d_model=8, n_layers=1, n_heads=2)
    >>> enc(torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)).hidden.shape
    torch.Size([3, 5, 8])
    """

    label = "Transformer (SDPA)"  # for tables and plots
    attention_cls: type[MultiHeadSelfAttention] = SdpaAttention

    def __init__(
        self, d_model: int, n_layers: int, n_heads: int, ff_mult: int = 4, dropout: float = 0.1,
        config: TransformerConfig | None = None,
    ) -> None:
        attention = lambda: self.attention_cls(d_model, n_heads)  # noqa: E731
        super().__init__(d_model, feed_forward_blocks(d_model, n_layers, ff_mult, dropout, attention))


class MaterializedTransformerEncoder(TransformerEncoder):
    """The same Transformer with the attention matrix built explicitly (same parameters, same state dict keys)."""

    label = "Transformer (materialised)"
    attention_cls = MaterializedAttention
