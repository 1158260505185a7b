"""What every encoder shares: the output type, multi-head self-attention plumbing, the feed-forward layer and the
pre-norm block (nanoGPT style: ``x = x + attn(ln_1(x))``; ``x = x + ff(ln_2(x))``).

Encoder contract: ``forward(x (B, T, D), valid (B, T) bool) -> EncoderOutput(hidden (B, T', D), valid (B, T'),
aux_loss ())``. Positions where ``valid`` is False are ignored exactly (appending padding changes no real output)
and come back as zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn


class EncoderOutput(NamedTuple):
    hidden: torch.Tensor  # (B, T', D), zeros where not valid
    valid: torch.Tensor  # (B, T') bool
    aux_loss: torch.Tensor  # () auxiliary loss to add to the training loss (0 for most encoders)


def zero_aux(x: torch.Tensor) -> torch.Tensor:
    return x.new_zeros((), dtype=torch.float32)


@runtime_checkable
class ReportsStats(Protocol):
    """A module that accumulates statistics in training (e.g. expert usage) and hands them over once per epoch."""

    def pop_stats(self) -> dict[str, float]:
        """Metric name -> value accumulated since the last call (then reset); {} when nothing was accumulated."""
        ...


def pop_stats(model: nn.Module) -> dict[str, float]:
    """The statistics of every submodule of ``model`` that implements ``ReportsStats``, each key prefixed with the
    module's path (``encoder.blocks.0.ff/expert_share_1``), so two layers never collide. The trainer logs them per
    epoch; any encoder gets its statistics logged by implementing ``pop_stats``."""
    stats: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, ReportsStats):
            stats.update({f"{name}/{k}" if name else k: v for k, v in module.pop_stats().items()})
    return stats


class MultiHeadSelfAttention(nn.Module):
    """Projections in and out; subclasses say how heads attend (``attend``). All heads share one fused QKV matmul."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim)  # (B, T, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, d)
        return q, k, v

    def merge_heads(self, o: torch.Tensor) -> torch.Tensor:
        b, h, t, d = o.shape
        return self.out(o.transpose(1, 2).reshape(b, t, h * d))  # (B, T, D)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        return self.merge_heads(self.attend(q, k, v, valid))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FeedForward(nn.Module):
    """Position-wise MLP; returns (y, aux_loss) so that a mixture of experts can stand in its place."""

    def __init__(self, d_model: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_mult * d_model, d_model)
        )

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), zero_aux(x)


class Block(nn.Module):
    """Pre-norm residual block around any attention and feed-forward module."""

    def __init__(self, d_model: int, attention: nn.Module, feed_forward: nn.Module, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = attention
        self.ln_2 = nn.LayerNorm(d_model)
        self.ff = feed_forward
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.drop(self.attn(self.ln_1(x), valid))
        y, aux = self.ff(self.ln_2(x), valid)
        return x + self.drop(y), aux


def feed_forward_blocks(
    d_model: int, n_layers: int, ff_mult: int, dropout: float, attention: Callable[[], nn.Module]
) -> list[Block]:
    """`n_layers` pre-norm blocks of a fresh `attention()` and a FeedForward (built in that order, per block)."""
    return [Block(d_model, attention(), FeedForward(d_model, ff_mult, dropout), dropout) for _ in range(n_layers)]


class StackedEncoder(nn.Module):
    """Blocks one after the other, then a final LayerNorm; padded positions are zeroed on the way out."""

    def __init__(self, d_model: int, blocks: list[Block]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> EncoderOutput:
        aux = zero_aux(x)
        for block in self.blocks:
            x, block_aux = block(x, valid)
            aux = aux + block_aux
        hidden = self.ln_f(x) * valid.unsqueeze(-1).to(x.dtype)
        return EncoderOutput(hidden, valid, aux)
