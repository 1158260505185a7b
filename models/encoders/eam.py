"""EAM encoder: block-sparse attention, token pooling and a mixture-of-experts feed-forward layer.

- Sparse attention (``block_sparse_attention``): each query sees the keys of its own block of ``window`` positions and
  of the two neighbouring blocks, plus the strided "global" keys j % stride == 0 (``stride`` is the sparse factor).
  It is computed block by block, O(T·(3w + T/stride)), never as a dense T×T matrix filled with −inf.
- Token pooling (``pool_tokens``) after the layers listed in ``pool_after``: windows of ``pool_size`` consecutive
  positions are replaced by the mean of their valid positions; a window is valid if it holds at least one valid
  position. T shrinks to ⌈T/p⌉ for the following layers, which is why the encoder contract returns its own ``valid``.
- Feed-forward: ``MoEFeedForward`` (softmax gate, top-k routing, Switch load-balancing loss). The encoder returns
  ``balance_loss_weight`` × the sum of the layers' balancing losses as ``aux_loss``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import functional as AF
from models.encoders.base import Block, EncoderOutput, MultiHeadSelfAttention, zero_aux
from models.moe import MoEFeedForward


def pool_tokens(x: torch.Tensor, valid: torch.Tensor, pool_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked means of windows of ``pool_size`` positions. x (B, T, D), valid (B, T) -> (B, ⌈T/p⌉, D), (B, ⌈T/p⌉)."""
    b, t, d = x.shape
    n = -(-t // pool_size)
    pad = n * pool_size - t
    w = valid.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    xs, ws = F.pad(x * w, (0, 0, 0, pad)), F.pad(w, (0, 0, 0, pad))
    sums = xs.reshape(b, n, pool_size, d).sum(dim=2)  # (B, n, D)
    counts = ws.reshape(b, n, pool_size, 1).sum(dim=2)  # (B, n, 1)
    return sums / counts.clamp_min(1.0), counts.squeeze(-1) > 0


@dataclass(frozen=True)
class EAMConfig:
    window: int = 64  # w, block size of the local pattern (a query sees 3w local keys)
    stride: int = 64  # sparse factor: keys j % stride == 0 are seen by every query; 0 = local only
    pool_size: int = 2  # p, positions averaged by token pooling
    pool_after: tuple[int, ...] = (0,)  # indices of the layers followed by token pooling
    n_experts: int = 4
    top_k: int = 2
    expert_ff_mult: int = 2  # hidden size of each expert = expert_ff_mult · d_model
    balance_loss_weight: float = 0.01

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 0 or self.pool_size < 1 or not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"invalid EAMConfig: {self}")


class SparseAttention(MultiHeadSelfAttention):
    def __init__(self, d_model: int, n_heads: int, window: int, stride: int) -> None:
        super().__init__(d_model, n_heads)
        self.window, self.stride = window, stride

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return AF.block_sparse_attention(q, k, v, valid, self.window, self.stride)


class EAMEncoder(nn.Module):
    """>>> enc = EAMEncoder(d_model=8, n_layers=2, n_heads=2, config=EAMConfig(window=4, stride=4, pool_size=2))
    >>> out = enc(torch.randn(3, 10, 8), torch.ones(3, 10, dtype=torch.bool))
    >>> out.hidden.shape, out.valid.shape  # pooled once, after layer 0
    (torch.Size([3, 5, 8]), torch.Size([3, 5]))
    """

    label = "EAM"

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        ff_mult: int = 4,
        dropout: float = 0.1,
        config: EAMConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = c = config or EAMConfig()
        self.blocks = nn.ModuleList(
            Block(
                d_model,
                SparseAttention(d_model, n_heads, c.window, c.stride),
                MoEFeedForward(d_model, c.expert_ff_mult * d_model, c.n_experts, c.top_k, dropout),
                dropout,
            )
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> EncoderOutput:
        aux = zero_aux(x)
        for i, block in enumerate(self.blocks):
            x, block_aux = block(x, valid)
            aux = aux + block_aux
            if i in self.config.pool_after and self.config.pool_size > 1:
                x, valid = pool_tokens(x, valid, self.config.pool_size)
        hidden = self.ln_f(x) * valid.unsqueeze(-1).to(x.dtype)
        return EncoderOutput(hidden, valid, self.config.balance_loss_weight * aux)
