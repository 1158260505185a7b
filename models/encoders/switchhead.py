"""SwitchHead encoder (Csordás et al., "SwitchHead: Accelerating Transformers with Mixture-of-Experts Attention",
NeurIPS 2024): attention whose value and output projections are mixtures of experts, so that fewer heads do the
work of many.

Per head h, with x the layer input at a token:
    q = x W_q^h,  k = x W_k^h                                    dense, as in any Transformer
    s_V = σ(x W_V^h),  s_O = σ(x W_O^h)                           (E,) non-competitive sigmoid gates per token
    v = Σ_{e ∈ top-k(s_V)} s_V[e] · x W_v^{h,e}                   value: mixture of the k chosen of E experts
    y = Σ_h Σ_{e ∈ top-k(s_O)} s_O[e] · (softmax(q kᵀ/√d) v)_h W_o^{h,e}   output: the same, per destination token
Only the chosen experts run: ``expert_linear`` gathers the rows routed to each expert and multiplies them by that
expert's matrix (gather + matmul + gather back, pure PyTorch, CPU and GPU; no Triton). No auxiliary loss (the
paper needs none with sigmoid gates); each layer counts its expert choices in training and reports each expert's
share per epoch through ``pop_stats`` (the trainer logs them: ``encoder.blocks.0.attn/v_expert_share_0``, …).

The attention has its own head count (``SwitchHeadConfig.n_heads``, default 2: fewer than the dense baseline's) and
head width (default d_model / the model's n_heads). Padding: every projection is per token and the attention
masks padded keys, so appending padding changes no output (contract test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.attention import functional as AF
from models.encoders.base import StackedEncoder, feed_forward_blocks
from models.moe import ExpertUsage


def expert_linear(x: torch.Tensor, weight: torch.Tensor, expert: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """y[n, s] = gate[n, s] · x[n, s] @ weight[expert[n, s]], running each expert on the rows routed to it only.

    x (N, S, I) or (N, I) (shared by the S slots), weight (G, I, O), expert (N, S) long in [0, G), gate (N, S)
    -> (N, S, O). Rows are sorted by expert, cut into one chunk per expert, multiplied, and put back in order.
    """
    n, s = expert.shape
    flat = expert.reshape(-1)  # (N·S,)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=weight.shape[0]).tolist()
    rows = x[order // s] if x.dim() == 2 else x.reshape(n * s, -1)[order]  # (N·S, I), grouped by expert
    chunks = rows.split(counts)
    y_sorted = torch.cat([chunk @ weight[g].to(chunk.dtype) for g, chunk in enumerate(chunks)])  # (N·S, O)
    y = y_sorted[torch.argsort(order)]  # back to (token, slot) order
    return y.view(n, s, -1) * gate.unsqueeze(-1).to(y.dtype)


def sigmoid_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-competitive gates: σ(logits), keep the k largest per row. logits (..., E) -> gates (..., k), experts (..., k)."""
    return torch.sigmoid(logits.float()).topk(k, dim=-1)


@dataclass(frozen=True)
class SwitchHeadConfig:
    n_experts: int = 4  # E value experts and E output experts per head
    top_k: int = 2  # k experts active per token, head and projection
    n_heads: int | None = 2  # attention heads of SwitchHead (None = the model's n_heads); the paper uses fewer
    head_dim: int | None = None  # width of a head (None = d_model // the model's n_heads)

    def __post_init__(self) -> None:
        if not 1 <= self.top_k <= self.n_experts or (self.n_heads or 1) < 1 or (self.head_dim or 1) < 1:
            raise ValueError(f"invalid SwitchHeadConfig: {self}")


class SwitchHeadAttention(nn.Module):
    """x (B, T, D), valid (B, T) -> (B, T, D)."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.n_experts, self.top_k = n_heads, head_dim, n_experts, top_k
        h, d, e = n_heads, head_dim, n_experts
        self.qk = nn.Linear(d_model, 2 * h * d)
        self.w_v = nn.Parameter(torch.empty(h * e, d_model, d).uniform_(-1, 1) / math.sqrt(d_model))  # (H·E, D, d)
        self.w_o = nn.Parameter(torch.empty(h * e, d, d_model).uniform_(-1, 1) / math.sqrt(h * d))  # (H·E, d, D)
        self.gate_v = nn.Linear(d_model, h * e)
        self.gate_o = nn.Linear(d_model, h * e)
        self.out_bias = nn.Parameter(torch.zeros(d_model))
        self.usage_v, self.usage_o = ExpertUsage(e, "v_"), ExpertUsage(e, "o_")

    def _route(self, gate: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, D) -> gates (N, H·k), group ids h·E + e (N, H·k), expert ids e (N, H, k)."""
        n = x.shape[0]
        g, e = sigmoid_top_k(gate(x).view(n, self.n_heads, self.n_experts), self.top_k)  # (N, H, k)
        head = torch.arange(self.n_heads, device=x.device)[None, :, None]
        return g.reshape(n, -1), (head * self.n_experts + e).reshape(n, -1), e

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, d_model = x.shape
        h, d, k = self.n_heads, self.head_dim, self.top_k
        q, key = self.qk(x).view(b, t, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, d)
        tokens = x.reshape(b * t, d_model)  # (N, D)
        gates_v, groups_v, experts_v = self._route(self.gate_v, tokens)
        v = expert_linear(tokens, self.w_v, groups_v, gates_v).view(b * t, h, k, d).sum(dim=2)  # (N, H, d)
        v = v.view(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
        o = AF.sdpa_attention(q, key, v.to(q.dtype), valid)  # (B, H, T, d)
        o = o.transpose(1, 2).reshape(b * t, h, d).repeat_interleave(k, dim=1)  # (N, H·k, d): slot h·k + j
        gates_o, groups_o, experts_o = self._route(self.gate_o, tokens)
        y = expert_linear(o, self.w_o, groups_o, gates_o).sum(dim=1)  # (N, D)
        if self.training:
            real = valid.reshape(-1)
            self.usage_v.add(experts_v[real])
            self.usage_o.add(experts_o[real])
        return (y + self.out_bias.to(y.dtype)).view(b, t, d_model)

    def pop_stats(self) -> dict[str, float]:
        """Each expert's share of this layer's value and output choices (all heads) since the last call."""
        return {**self.usage_v.pop(), **self.usage_o.pop()}


class SwitchHeadEncoder(StackedEncoder):
    """>>> enc = SwitchHeadEncoder(d_model=8, n_layers=1, n_heads=4, config=SwitchHeadConfig(n_experts=4, top_k=2))
    >>> enc(torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)).hidden.shape
    torch.Size([3, 5, 8])
    """

    label = "SwitchHead (MoE attention)"

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        ff_mult: int = 4,
        dropout: float = 0.1,
        config: SwitchHeadConfig | None = None,
    ) -> None:
        c = config or SwitchHeadConfig()
        heads, head_dim = c.n_heads or n_heads, c.head_dim or max(d_model // n_heads, 1)
        attention = lambda: SwitchHeadAttention(d_model, heads, head_dim, c.n_experts, c.top_k)  # noqa: E731
        super().__init__(d_model, feed_forward_blocks(d_model, n_layers, ff_mult, dropout, attention))
