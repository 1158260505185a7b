"""∞-former encoder (Martins et al., 2022): exact attention inside a segment plus an unbounded continuous long-term
memory of everything before it, at a cost per segment that does not depend on how long the past is.

Per layer, the sequence is cut into segments of ``segment_len`` positions. For segment s:

1. short-term memory (STM): exact softmax attention among the valid positions of segment s (all segments at once);
2. long-term memory (LTM): the past is a signal X̄(t) = Bᵀψ(t), t ∈ [0, 1], with B (R, D) the coefficients of R
   Gaussian RBFs ψ. Keys/values of the memory are K = B W_K, V = B W_V (R rows each, whatever the past length).
   Each query reads it with a Gaussian N(μ, σ²) over t: with s = K q/√d (R scores), μ = sigmoid(w_μᵀs + b_μ),
   σ = softplus(w_σᵀs + b_σ), and the context is E_{t~N(μ,σ²)}[V(t)] = Vᵀ r with r_k = N(μ; c_k, σ² + w_k²)
   (closed-form Gaussian integral, ``gaussian_rbf_integral``). The head output is STM + LTM context;
3. memory update: M samples of the old signal are placed evenly in [0, τ] and the valid positions of segment s
   evenly in [τ, 1]; B is refitted by ridge regression, B = (FFᵀ + λI)⁻¹ F X = G X. G depends only on how many
   valid positions the segment has, so it is solved once in float64 per count and cached (``RidgeTables``).
   With sticky memories the M old-signal sample positions are drawn from a histogram of where this segment's
   queries attended in the old memory (stratified draws in training, quantiles in eval), so attended regions keep
   more resolution; otherwise they are an even grid.

Padding is exact: padded positions are never keys (STM), never enter the ridge fit (their columns of G are 0), and a
segment with no valid position leaves the memory as it was. Segment boundaries are fixed at multiples of
``segment_len`` from the first event, so appended padding only adds all-padding segments.

Differences from the paper, on purpose: a bidirectional STM (this is a classifier, not a language model), value
bias not applied to the memory (K = B W_K, V = B W_V use the weights of the shared QKV projection, no bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import functional as AF
from models.encoders.base import MultiHeadSelfAttention, StackedEncoder, feed_forward_blocks


@dataclass(frozen=True)
class InfiniteFormerConfig:
    segment_len: int = 128  # L, positions per segment (exact attention inside)
    n_basis: int = 64  # R = N, Gaussian RBFs of the continuous memory (split evenly across the widths)
    rbf_widths: tuple[float, ...] = (0.02, 0.05)  # standard deviations of the RBFs, centres evenly spaced in [0, 1]
    n_samples: int = 64  # M, samples of the old signal kept when the memory is compressed
    ridge_lambda: float = 0.5  # λ of the ridge fit
    tau: float = 0.5  # the old memory is compressed into [0, τ], the new segment goes into [τ, 1]
    sticky: bool = True  # sticky memories: sample the M positions from a histogram of past attention
    histogram_bins: int = 32

    def __post_init__(self) -> None:
        if self.n_basis % len(self.rbf_widths):
            raise ValueError("n_basis must be a multiple of len(rbf_widths)")
        if not 0.0 < self.tau < 1.0 or self.segment_len < 1 or self.n_samples < 1 or self.ridge_lambda <= 0:
            raise ValueError(f"invalid InfiniteFormerConfig: {self}")


def rbf_centers_widths(config: InfiniteFormerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    per_width = config.n_basis // len(config.rbf_widths)
    centers = torch.linspace(0.0, 1.0, per_width, dtype=torch.float64).repeat(len(config.rbf_widths))
    widths = torch.tensor(config.rbf_widths, dtype=torch.float64).repeat_interleave(per_width)
    return centers, widths  # (R,), (R,)


class RidgeTables:
    """The ridge operators G for every possible count n of valid positions in a segment, solved in float64 once.

    first[n] (R, L): fit of a first segment alone, its n positions evenly over [0, 1]; columns ≥ n are 0.
    update[n] (R, M + L): M old-memory samples evenly over [0, τ], then n new positions over [τ, 1]; columns of the
    L - n padded positions are 0.
    """

    def __init__(self, config: InfiniteFormerConfig) -> None:
        self.config = config
        self._cache: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache[key] = tuple(t.to(device=device, dtype=dtype) for t in self._build())  # type: ignore[assignment]
        return self._cache[key]

    def _build(self) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        centers, widths = rbf_centers_widths(c)
        big_l, m, r = c.segment_len, c.n_samples, c.n_basis
        first = torch.zeros(big_l + 1, r, big_l, dtype=torch.float64)
        update = torch.zeros(big_l + 1, r, m + big_l, dtype=torch.float64)
        old_pos = c.tau * (torch.arange(m, dtype=torch.float64) + 0.5) / m
        for n in range(1, big_l + 1):
            new_pos = (torch.arange(n, dtype=torch.float64) + 0.5) / n
            first[n, :, :n] = AF.ridge_operator(new_pos, centers, widths, c.ridge_lambda)
            pos = torch.cat([old_pos, c.tau + (1.0 - c.tau) * new_pos])
            update[n, :, : m + n] = AF.ridge_operator(pos, centers, widths, c.ridge_lambda)
        return first, update


class InfiniteFormerAttention(MultiHeadSelfAttention):
    def __init__(self, d_model: int, n_heads: int, config: InfiniteFormerConfig) -> None:
        super().__init__(d_model, n_heads)
        self.config = config
        centers, widths = rbf_centers_widths(config)
        self.register_buffer("centers", centers.float(), persistent=False)  # (R,)
        self.register_buffer("widths", widths.float(), persistent=False)  # (R,)
        r = config.n_basis
        self.w_mu = nn.Parameter(torch.randn(n_heads, r) * 0.02)
        self.b_mu = nn.Parameter(torch.zeros(n_heads))
        self.w_sigma = nn.Parameter(torch.randn(n_heads, r) * 0.02)
        self.b_sigma = nn.Parameter(torch.full((n_heads,), math.log(math.expm1(0.1))))  # σ ≈ 0.1 at init
        self.tables = RidgeTables(config)
        self.last_memory: torch.Tensor | None = None  # (B, R, D) after the last segment, for inspection

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        c = self.config
        b, t, d_model = x.shape
        seg = c.segment_len
        n_seg = -(-t // seg)
        pad = n_seg * seg - t
        x = x.masked_fill(~valid.unsqueeze(-1), 0.0)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            valid = F.pad(valid, (0, pad), value=False)
        h, d = self.n_heads, self.head_dim
        q, k, v = self.split_heads(x)  # (B, H, S·L, d)

        # 1. short-term memory: exact attention inside each segment, all segments in one call
        def by_segment(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(b, h, n_seg, seg, d).transpose(1, 2).reshape(b * n_seg, h, seg, d)  # (B·S, H, L, d)

        stm = AF.sdpa_attention(by_segment(q), by_segment(k), by_segment(v), valid.reshape(b * n_seg, seg))
        stm = stm.reshape(b, n_seg, h, seg, d).transpose(1, 2).reshape(b, h, n_seg * seg, d)

        # 2.-3. long-term memory, segment after segment
        w_k = self.qkv.weight[d_model : 2 * d_model]  # (D, D) key weights, shared with the STM
        w_v = self.qkv.weight[2 * d_model :]
        first_g, update_g = self.tables.get(x.device, x.dtype)
        n_valid = valid.reshape(b, n_seg, seg).sum(-1)  # (B, S)
        memory = x.new_zeros(b, c.n_basis, d_model)  # B (B, R, D)
        has_memory = torch.zeros(b, dtype=torch.bool, device=x.device)
        ltm_parts = []
        for s in range(n_seg):
            sl = slice(s * seg, (s + 1) * seg)
            q_s, x_s, valid_s, n_s = q[:, :, sl], x[:, sl], valid[:, sl], n_valid[:, s]
            if has_memory.any():
                ctx, mu, sigma = self._read(q_s, memory, w_k, w_v)
                ltm_parts.append(ctx * has_memory[:, None, None, None].to(ctx.dtype))
                positions = self._sample_positions(mu, sigma, valid_s)  # (B, M)
                old = AF.rbf_basis(positions, self.centers, self.widths).to(x.dtype) @ memory  # (B, M, D)
                fitted = update_g[n_s] @ torch.cat([old, x_s], dim=1)  # (B, R, M+L) @ (B, M+L, D)
                if not has_memory.all():  # customers without any event so far
                    fitted = torch.where(has_memory[:, None, None], fitted, first_g[n_s] @ x_s)
            else:
                ltm_parts.append(torch.zeros_like(q_s))
                fitted = first_g[n_s] @ x_s  # (B, R, L) @ (B, L, D)
            memory = torch.where((n_s > 0)[:, None, None], fitted, memory)
            has_memory = has_memory | (n_s > 0)
        self.last_memory = memory.detach()
        ltm = torch.cat(ltm_parts, dim=2)  # (B, H, S·L, d)
        return self.merge_heads(stm + ltm)[:, :t]

    def _read(
        self, q: torch.Tensor, memory: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LTM context for queries q (B, H, L, d) from coefficients memory (B, R, D) -> ctx (B, H, L, d), μ, σ (B, H, L)."""
        b, r, _ = memory.shape
        h, d = self.n_heads, self.head_dim
        k_mem = (memory @ w_k.T).view(b, r, h, d).transpose(1, 2)  # (B, H, R, d)
        v_mem = (memory @ w_v.T).view(b, r, h, d).transpose(1, 2)  # (B, H, R, d)
        scores = q @ k_mem.transpose(-2, -1) / math.sqrt(d)  # (B, H, L, R)
        mu = torch.sigmoid(torch.einsum("bhlr,hr->bhl", scores, self.w_mu) + self.b_mu[:, None])
        sigma = F.softplus(torch.einsum("bhlr,hr->bhl", scores, self.w_sigma) + self.b_sigma[:, None])
        weights = AF.gaussian_rbf_integral(mu, sigma, self.centers, self.widths)  # (B, H, L, R)
        return weights @ v_mem, mu, sigma

    def _sample_positions(self, mu: torch.Tensor, sigma: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Where to read the old signal before compressing it: M positions in [0, 1] per row (B, M)."""
        c = self.config
        b = mu.shape[0]
        grid = (torch.arange(c.n_samples, device=mu.device, dtype=torch.float32) + 0.5) / c.n_samples
        if not c.sticky:
            return grid.expand(b, -1)
        with torch.no_grad():
            h = mu.shape[1]
            weight = valid.to(torch.float32)[:, None, :].expand(-1, h, -1).reshape(b, -1)  # (B, H·L)
            hist = AF.attention_histogram(mu.float().reshape(b, -1), sigma.float().reshape(b, -1), weight, c.histogram_bins)
            if self.training:
                u = (torch.arange(c.n_samples, device=mu.device) + torch.rand(b, c.n_samples, device=mu.device)) / c.n_samples
            else:
                u = grid.expand(b, -1)
            return AF.inverse_cdf_positions(hist, u.clamp(max=1.0 - 1e-6))


class InfiniteFormerEncoder(StackedEncoder):
    """>>> enc = InfiniteFormerEncoder(d_model=8, n_layers=1, n_heads=2, config=InfiniteFormerConfig(segment_len=4))
    >>> enc(torch.randn(3, 10, 8), torch.ones(3, 10, dtype=torch.bool)).hidden.shape
    torch.Size([3, 10, 8])
    """

    label = "∞-former"

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        ff_mult: int = 4,
        dropout: float = 0.1,
        config: InfiniteFormerConfig | None = None,
    ) -> None:
        config = config or InfiniteFormerConfig()
        attention = lambda: InfiniteFormerAttention(d_model, n_heads, config)  # noqa: E731
        super().__init__(d_model, feed_forward_blocks(d_model, n_layers, ff_mult, dropout, attention))
