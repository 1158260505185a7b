"""Informer encoder (Zhou et al., "Informer: Beyond Efficient Transformer for Long Sequence Time-Series Forecasting",
AAAI 2021): ProbSparse self-attention and, optionally, self-attention distilling between layers.

- ProbSparse attention. The sparsity of query q_i is M(q_i) = max_j(q_i·k_j/√d) − mean_j(q_i·k_j/√d), estimated on
  U = c·⌈ln L⌉ sampled keys; the top u = c·⌈ln L⌉ queries attend exactly to all keys, every other query outputs the
  mean of V. O(L·log L) time and memory instead of O(L²).
- Distilling (``distil=True``): after every layer but the last, Conv1d(k=3) → LayerNorm → ELU → MaxPool(k=3, s=2)
  halves the length; the ``valid`` mask is downsampled alongside (a window is valid when its centre is), so the encoder returns T' = ⌈T/2^(layers−1)⌉.

Padding-safe, unlike the reference code: L is each sequence's valid length n_b (not the padded T), keys are sampled
among the valid keys of each sequence, M and the mean of V use valid keys only, padded queries are never selected,
the convolution sees zeros at padded positions and the max-pool ignores them. So appending padding changes no
output (contract test). Other choices: the U sampled keys are one stratified sample per sequence shared by its
queries and heads (the reference draws per query: a (B, H, L, U, d) gather, which at 4k events outweighs the
attention it saves); in eval the sample is the even grid (offset ½), so eval outputs are deterministic; the distilling
norm is a LayerNorm (the paper's BatchNorm would mix padding and other customers into the statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import functional as AF
from models.encoders.base import EncoderOutput, MultiHeadSelfAttention, feed_forward_blocks, zero_aux

# ------------------------------------------------------------------------------------------------------------------
# The math, as pure functions of tensors (models/attention/functional.py style)
# ------------------------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------------------------


def log_count(n_valid: torch.Tensor, factor: int) -> torch.Tensor:
    """c·⌈ln n⌉ per sequence, clamped to [1, max(n, 1)]: the paper's u (active queries) and U (sampled keys), taken
    from each sequence's valid length n rather than the padded T, so that appending padding changes neither.

    n_valid (B,) long -> (B,) long
    """
    n = n_valid.clamp_min(1)
    return (factor * torch.ceil(torch.log(n.to(torch.float64)))).long().clamp_min(1).minimum(n)


def sample_valid_keys(
    valid: torch.Tensor, n_samples: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified sample of U_b valid key positions per sequence: slot s < U_b takes the ⌊(s + offset_s)·n_b/U_b⌋-th
    valid position (offsets uniform in [0, 1) for a random sample, ½ for an even grid); padded keys are never drawn.

    valid (B, T), n_samples (B,) = U_b, offsets (B, S) with S ≥ max U_b -> positions (B, S) long, keep (B, S) bool
    (keep is False at the slots s ≥ U_b and for sequences without valid keys)
    """
    n = valid.sum(dim=-1)  # (B,)
    order = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)  # (B, T) valid positions first, in order
    slots = torch.arange(offsets.shape[-1], device=valid.device)  # (S,)
    u = n_samples.clamp_min(1)[:, None].to(offsets.dtype)
    rank = torch.floor((slots + offsets) * n[:, None].to(offsets.dtype) / u).long()  # (B, S)
    rank = rank.minimum((n - 1).clamp_min(0)[:, None]).clamp_min(0)
    keep = (slots[None, :] < n_samples[:, None]) & (n > 0)[:, None]
    return torch.gather(order, -1, rank), keep


def query_sparsity(q: torch.Tensor, k_sample: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """M(q_i) = max_j(q_i·k_j/√d) − mean_j(q_i·k_j/√d) over the sampled valid keys j (``keep``).

    q (B, H, T, d), k_sample (B, H, S, d), keep (B, S) -> (B, H, T)
    """
    scores = q @ k_sample.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    keep4 = keep[:, None, None, :]
    top = scores.masked_fill(~keep4, torch.finfo(scores.dtype).min).amax(dim=-1)
    mean = (scores * keep4.to(scores.dtype)).sum(dim=-1) / keep4.sum(dim=-1).clamp_min(1).to(scores.dtype)
    return top - mean


def prob_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor,
    n_top: torch.Tensor,
    sample: torch.Tensor,
    sample_keep: torch.Tensor,
) -> torch.Tensor:
    """ProbSparse self-attention: the u_b queries with the largest sparsity measure M (estimated on the sampled keys)
    attend exactly to all valid keys; every other query outputs the mean of V over the valid keys (what a uniform,
    "lazy" attention row gives). Cost O(T·S·d + u·T·d) instead of O(T²·d); no T×T matrix.

    With n_top = the valid length of every sequence it is exact softmax attention at every valid query (test).
    q/k/v (B, H, T, d), valid (B, T), n_top (B,) = u_b, sample/sample_keep (B, S) from ``sample_valid_keys``
    -> (B, H, T, d)
    """
    b, h, t, d = q.shape
    idx = sample[:, None, :, None].expand(b, h, sample.shape[-1], d)
    m = query_sparsity(q, torch.gather(k, 2, idx), sample_keep)  # (B, H, T)
    m = m.masked_fill(~valid[:, None, :], -math.inf)  # padded queries are never among the top u
    u = int(n_top.max())
    top = m.topk(u, dim=-1).indices  # (B, H, u)
    top_e = top.unsqueeze(-1).expand(b, h, u, d)
    active = AF.sdpa_attention(torch.gather(q, 2, top_e), k, v, valid)  # (B, H, u, d), exact over the valid keys
    w = valid.to(v.dtype)[:, None, :, None]  # (B, 1, T, 1)
    mean_v = (v * w).sum(dim=2, keepdim=True) / w.sum(dim=2, keepdim=True).clamp_min(1.0)  # (B, H, 1, d)
    chosen = (torch.arange(u, device=q.device)[None, :] < n_top[:, None])[:, None, :, None]  # (B, 1, u, 1)
    active = torch.where(chosen, active, mean_v)  # slots beyond u_b keep the mean
    return mean_v.expand(b, h, t, d).scatter(2, top_e, active)


def masked_max_pool(x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MaxPool1d(kernel 3, stride 2, padding 1) over valid positions only: T -> ⌈T/2⌉ (Informer's distilling).

    Window i covers positions 2i−1, 2i, 2i+1 and is valid when its centre 2i is: so n left-aligned events give
    ⌈n/2⌉ valid windows whatever the padding (a window "valid if any position is" would gain one more window when
    padding makes T longer than an even n). Invalid windows come back as zeros.

    x (B, T, D), valid (B, T) -> (B, ⌈T/2⌉, D), (B, ⌈T/2⌉)
    """
    filled = x.masked_fill(~valid.unsqueeze(-1), torch.finfo(x.dtype).min).transpose(1, 2)  # (B, D, T)
    pooled = F.max_pool1d(filled, kernel_size=3, stride=2, padding=1).transpose(1, 2)  # (B, ⌈T/2⌉, D)
    valid_out = valid[:, ::2]  # (B, ⌈T/2⌉) the windows' centres
    return pooled.masked_fill(~valid_out.unsqueeze(-1), 0.0), valid_out


# ------------------------------------------------------------------------------------------------------------------
# The modules
# ------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InformerConfig:
    factor: int = 5  # c: u = U = c·⌈ln L⌉ active queries and sampled keys per sequence (the paper's default 5)
    distil: bool = True  # halve the length between layers (Conv1d + ELU + MaxPool)

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"invalid InformerConfig: {self}")


class ProbSparseAttention(MultiHeadSelfAttention):
    def __init__(self, d_model: int, n_heads: int, config: InformerConfig) -> None:
        super().__init__(d_model, n_heads)
        self.config = config

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        n_top = log_count(valid.sum(dim=-1), self.config.factor)  # (B,) u_b = U_b
        slots = int(n_top.max())
        if self.training:
            offsets = torch.rand(valid.shape[0], slots, device=q.device)  # a fresh random sample per step
        else:
            offsets = torch.full((valid.shape[0], slots), 0.5, device=q.device)  # the even grid: deterministic
        sample, keep = sample_valid_keys(valid, n_top, offsets)
        return prob_sparse_attention(q, k, v, valid, n_top, sample, keep)


class Distil(nn.Module):
    """Self-attention distilling: Conv1d(k=3, zeros at padding) → LayerNorm → ELU → masked MaxPool(3, 2, 1).
    x (B, T, D), valid (B, T) -> (B, ⌈T/2⌉, D), (B, ⌈T/2⌉)."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel_size=3, padding=1)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x * valid.unsqueeze(-1).to(x.dtype)
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, D)
        return masked_max_pool(F.elu(self.norm(y)), valid)


class InformerEncoder(nn.Module):
    """>>> enc = InformerEncoder(d_model=8, n_layers=2, n_heads=2, config=InformerConfig(factor=2))
    >>> out = enc(torch.randn(3, 10, 8), torch.ones(3, 10, dtype=torch.bool))
    >>> out.hidden.shape, out.valid.shape  # distilled once, between the two layers
    (torch.Size([3, 5, 8]), torch.Size([3, 5]))
    """

    label = "Informer (ProbSparse)"

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        ff_mult: int = 4,
        dropout: float = 0.1,
        config: InformerConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config or InformerConfig()
        attention = lambda: ProbSparseAttention(d_model, n_heads, config)  # noqa: E731
        self.blocks = nn.ModuleList(feed_forward_blocks(d_model, n_layers, ff_mult, dropout, attention))
        self.distil = nn.ModuleList(Distil(d_model) for _ in range(n_layers - 1)) if config.distil else None
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> EncoderOutput:
        aux = zero_aux(x)
        for i, block in enumerate(self.blocks):
            x, block_aux = block(x, valid)
            aux = aux + block_aux
            if self.distil is not None and i < len(self.distil):
                x, valid = self.distil[i](x, valid)
        hidden = self.ln_f(x) * valid.unsqueeze(-1).to(x.dtype)
        return EncoderOutput(hidden, valid, aux)
