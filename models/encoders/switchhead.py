"""SwitchHead encoder (Csordás et al., "SwitchHead: Accelerating Transformers with Mixture-of-Experts Attention",
NeurIPS 2024): attention whose value and output projections are mixtures of experts, so that fewer heads do the
work of many.

Per head h, with x the layer input at a token:
    q = x W_q^h,  k = x W_k^h                                    dense, as in any Transformer
    s_V = σ(x W_V^h),  s_O = σ(x W_O^h)                           (E,) non-competitive sigmoid gates per token
    v = Σ_{e ∈ top-k(s_V)} s_V[e] · x W_v^{h,e}                   value: mixture of the k chosen of E experts
    y = Σ_h Σ_{e ∈ top-k(s_O)} s_O[e] · (softmax(q kᵀ/√d) v)_h W_o^{h,e}   output: the same, per destination token
Pure PyTorch, CPU and GPU, no Triton: the top-k gates are scattered into a dense (N, H, E) gate matrix (0 for the
experts not chosen) and each projection is one GEMM over all experts (``expert_values``, ``expert_outputs``). That
is E/k times the FLOPs of running only the chosen experts, with the same values and gradients (an unchosen expert
gets weight 0 and gradient 0); at our sizes it is the faster path on CPU: the routed version (argsort by expert,
one small matmul per expert, gather back) spent its time in the sort and the small matmuls and made a demo training
step ~2× slower than the Transformer's. No auxiliary loss (the
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


def sigmoid_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-competitive gates: σ(logits), keep the k largest per row. logits (..., E) -> gates (..., k), experts (..., k)."""
    return torch.sigmoid(logits.float()).topk(k, dim=-1)


def gated_experts(gates: torch.Tensor, experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Dense gate matrix: the chosen experts' gate values, 0 elsewhere. gates/experts (N, H, k) -> (N, H, E)."""
    return torch.zeros(*gates.shape[:-1], n_experts, dtype=gates.dtype, device=gates.device).scatter(-1, experts, gates)


def expert_values(x: torch.Tensor, w_v: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """v[n, h] = Σ_e gate[n, h, e] · x[n] @ w_v[h, e]. x (N, D), w_v (H, E, D, d), gate (N, H, E) -> (N, H, d)."""
    h, e, d_in, d = w_v.shape
    every = (x @ w_v.permute(2, 0, 1, 3).reshape(d_in, h * e * d)).view(-1, h, e, d)  # (N, H, E, d): one GEMM
    return torch.einsum("nhed,nhe->nhd", every, gate.to(every.dtype))


def expert_outputs(o: torch.Tensor, w_o: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """y[n] = Σ_h Σ_e gate[n, h, e] · o[n, h] @ w_o[h, e]. o (N, H, d), w_o (H, E, d, D), gate (N, H, E) -> (N, D)."""
    h, e, d, d_out = w_o.shape
    z = o.unsqueeze(2) * gate.unsqueeze(-1).to(o.dtype)  # (N, H, E, d), zero for the experts not chosen
    return z.reshape(-1, h * e * d) @ w_o.reshape(h * e * d, d_out)  # one GEMM


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
        self.w_v = nn.Parameter(torch.empty(h, e, d_model, d).uniform_(-1, 1) / math.sqrt(d_model))  # (H, E, D, d)
        self.w_o = nn.Parameter(torch.empty(h, e, d, d_model).uniform_(-1, 1) / math.sqrt(h * d))  # (H, E, d, D)
        self.gate_v = nn.Linear(d_model, h * e)
        self.gate_o = nn.Linear(d_model, h * e)
        self.out_bias = nn.Parameter(torch.zeros(d_model))
        self.usage_v, self.usage_o = ExpertUsage(e, "v_"), ExpertUsage(e, "o_")

    def _gates(self, gate: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) -> dense gates (N, H, E) (σ of the top k, 0 elsewhere), chosen experts (N, H, k)."""
        g, e = sigmoid_top_k(gate(x).view(x.shape[0], self.n_heads, self.n_experts), self.top_k)  # (N, H, k)
        return gated_experts(g, e, self.n_experts), e

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t, d_model = x.shape
        h, d = self.n_heads, self.head_dim
        q, key = self.qk(x).view(b, t, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, d)
        tokens = x.reshape(b * t, d_model)  # (N, D)
        gate_v, experts_v = self._gates(self.gate_v, tokens)
        v = expert_values(tokens, self.w_v, gate_v).view(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
        o = AF.sdpa_attention(q, key, v.to(q.dtype), valid)  # (B, H, T, d)
        gate_o, experts_o = self._gates(self.gate_o, tokens)
        y = expert_outputs(o.transpose(1, 2).reshape(b * t, h, d), self.w_o, gate_o)  # (N, D)
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
