"""Attention math as pure functions of tensors: no parameters, no state. The encoders own the buffers and call these.

Shapes use B batch, H heads, T (or N) query / key positions, d head dim, m random features, R basis functions.
Masks are called ``valid`` and point the same way everywhere: True = a real event.

Contents
- exact softmax attention: ``materialized_attention`` (builds softmax(QKᵀ/√d) explicitly: oracle and paper baseline)
  and ``sdpa_attention`` (torch's fused kernel, O(T) memory); both safe for rows without any valid key.
- FAVOR+ (Performer): ``orthogonal_gaussian``, ``softmax_kernel``, ``linear_attention``, ``favor_attention``.
- ∞-former continuous memory: ``rbf_basis``, ``gaussian_rbf_integral``, ``ridge_operator``, ``attention_histogram``,
  ``inverse_cdf_positions``.
- EAM sparse attention: ``block_sparse_attention`` (local blocks + strided keys, computed block by block) and
  ``block_sparse_pattern`` (the same pattern as a dense boolean matrix, for tests only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------------------------
# Exact softmax attention
# ------------------------------------------------------------------------------------------------------------------


def keys_or_any(valid: torch.Tensor) -> torch.Tensor:
    """Key mask that is never all-False in a row (an all-masked softmax is NaN). Rows without a single valid key are
    sequences with no events at all; they get finite garbage that the caller masks out."""
    return valid | ~valid.any(dim=-1, keepdim=True)


def materialized_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(QKᵀ/√d)V with the T×T matrix built explicitly (the baseline the efficient-attention papers compare to).

    q (B, H, T, d), k/v (B, H, N, d), valid (B, N) bool over keys -> (B, H, T, d)
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, N)
    if valid is not None:
        keep = keys_or_any(valid)[:, None, None, :]  # (B, 1, 1, N)
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    return scores.softmax(dim=-1) @ v


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Same result as ``materialized_attention`` through ``F.scaled_dot_product_attention``.

    Dropout is always 0 here: with dropout > 0 SDPA leaves its fused kernel for the quadratic path on CPU.
    q (B, H, T, d), k/v (B, H, N, d), valid (B, N) bool over keys -> (B, H, T, d)
    """
    # a batch without padding needs no mask, and SDPA's CPU kernel is about twice as fast without one
    mask = None if valid is None or bool(valid.all()) else keys_or_any(valid)[:, None, None, :]  # (B, 1, 1, N)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)


# ------------------------------------------------------------------------------------------------------------------
# FAVOR+ (Choromanski et al., "Rethinking Attention with Performers", 2021)
# ------------------------------------------------------------------------------------------------------------------


def orthogonal_gaussian(
    m: int,
    d: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """m random feature directions ω (m, d): blocks of d exactly orthogonal rows, each row rescaled to the norm of a
    d-dimensional standard Gaussian (chi distribution with d degrees of freedom), so every row is marginally N(0, I).

    ``torch.linalg.qr`` returns Q with a sign convention tied to R (diag R may be forced to one sign), which biases the
    direction of the first column; multiplying Q's columns by sign(diag R) makes Q Haar-distributed.
    """
    blocks = []
    for start in range(0, m, d):
        g = torch.randn(d, d, generator=generator, device=device, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # sign correction: column j times sign(R_jj)
        blocks.append(q.T[: min(d, m - start)])  # rows of the block are orthonormal
    directions = torch.cat(blocks, dim=0)  # (m, d)
    norms = torch.randn(m, d, generator=generator, device=device, dtype=torch.float64).norm(dim=1)  # chi(d)
    return (directions * norms.unsqueeze(1)).to(dtype)


class _PositiveFeatures(torch.autograd.Function):
    """φ = (exp(ωᵀx′ − ‖x′‖²/2 − c) + ε)/√m (· valid for keys) built in place in one (B, H, T, m) buffer, saving only
    φ itself (which the linear attention keeps anyway), x′ and ω: since ∂φ/∂(ωᵀx′) = φ − ε/√m at valid rows (and
    ∂φ/∂(‖x′‖²/2) is its negative), the exponential and the other intermediates need not be kept for backward.
    Same values as the step-by-step formula (same operations in the same order); c is detached, as before."""

    @staticmethod
    def forward(ctx, xs: torch.Tensor, projection: torch.Tensor, keep: torch.Tensor | None, is_query: bool,
                eps: float) -> torch.Tensor:
        m = projection.shape[0]
        phi = torch.einsum("bhtd,md->bhtm", xs, projection)  # (B, H, T, m) = ωᵀx′, then overwritten by φ
        if is_query:
            stab = phi.amax(dim=-1, keepdim=True)  # (B, H, T, 1)
        else:
            per_key = phi.amax(dim=-1)  # (B, H, T): max over features first, then over the valid keys
            if keep is not None:
                per_key = per_key.masked_fill(keep[:, None, :, 0] == 0, torch.finfo(phi.dtype).min)
            stab = per_key.amax(dim=-1)[..., None, None]  # (B, H, 1, 1)
        phi.sub_(0.5 * (xs * xs).sum(dim=-1, keepdim=True)).sub_(stab).exp_().add_(eps).div_(math.sqrt(m))
        if keep is not None:
            phi.mul_(keep[:, None])  # φ(k) = 0 at padded keys
        ctx.save_for_backward(xs, projection, phi, keep)
        ctx.eps_scaled = eps / math.sqrt(m)
        return phi

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        xs, projection, phi, keep = ctx.saved_tensors
        g = phi.sub(ctx.eps_scaled).mul_(grad)  # ∂L/∂(ωᵀx′) (B, H, T, m), the one temporary
        if keep is not None:
            g.mul_(keep[:, None])
        grad_x = torch.einsum("bhtm,md->bhtd", g, projection) - g.sum(dim=-1, keepdim=True) * xs
        grad_proj = torch.einsum("bhtm,bhtd->md", g, xs) if ctx.needs_input_grad[1] else None
        return grad_x, grad_proj, None, None, None


def softmax_kernel(
    x: torch.Tensor,
    projection: torch.Tensor,
    *,
    is_query: bool,
    valid: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Positive random features φ(x) = exp(ωᵀx' − ‖x'‖²/2 − c) / √m with x' = x·d^(-1/4), so that
    E[φ(q)ᵀφ(k)] ∝ exp(qᵀk/√d) (the constant exp(−c) cancels in the attention normaliser).

    The stabiliser c is the max over features for each query row (it cancels per query) and the max over all valid
    keys and features for keys (it must be one constant per sequence and head to cancel). Features are computed in
    float32 even under autocast. Keys at padded positions get φ(k) = 0 exactly: masking only V would leave them in
    the normaliser. Built by ``_PositiveFeatures``: one (B, H, T, m) buffer in forward, one kept for backward.

    x (B, H, T, d), projection (m, d), valid (B, T) -> (B, H, T, m) float32
    """
    device_type = x.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        x = x.float()
        projection = projection.float()
        xs = x * projection.shape[1] ** -0.25
        keep = None if (valid is None or is_query) else valid[:, :, None].to(xs.dtype)  # (B, T, 1)
        return _PositiveFeatures.apply(xs, projection, keep, is_query, eps)


def linear_attention(q_prime: torch.Tensor, k_prime: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ / φ(q_i)ᵀ Σ_j φ(k_j): O(T·m·d) instead of O(T²·d).

    einsum legend: b batch, h head, n query, j key, m feature, e value dim.
    q' (B, H, T, m), k' (B, H, N, m), v (B, H, N, e) -> (B, H, T, e)
    """
    kv = torch.einsum("bhjm,bhje->bhme", k_prime, v.to(k_prime.dtype))  # (B, H, m, e)
    k_sum = k_prime.sum(dim=-2)  # (B, H, m)
    denom = torch.einsum("bhnm,bhm->bhn", q_prime, k_sum).clamp_min(1e-12)  # (B, H, T)
    out = torch.einsum("bhnm,bhme->bhne", q_prime, kv) / denom.unsqueeze(-1)
    return out


def favor_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, projection: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """FAVOR+ estimate of softmax(QKᵀ/√d)V. q (B, H, T, d), k/v (B, H, N, d), projection (m, d), valid (B, N)."""
    device_type = q.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        q_prime = softmax_kernel(q, projection, is_query=True)
        k_prime = softmax_kernel(k, projection, is_query=False, valid=None if valid is None else keys_or_any(valid))
        out = linear_attention(q_prime, k_prime, v.float())
    return out.to(v.dtype)


# ------------------------------------------------------------------------------------------------------------------
# ∞-former continuous memory (Martins et al., "∞-former: Infinite Memory Transformer", 2022)
# ------------------------------------------------------------------------------------------------------------------


def gaussian_pdf(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """N(x; mean, var), broadcasting."""
    return torch.exp(-0.5 * (x - mean) ** 2 / var) / torch.sqrt(2 * math.pi * var)


def rbf_basis(t: torch.Tensor, centers: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Gaussian radial basis functions ψ_r(t) = N(t; c_r, w_r²). t (...,), centers/widths (R,) -> (..., R)."""
    return gaussian_pdf(t.unsqueeze(-1), centers, widths**2)


class _GaussianRbfIntegral(torch.autograd.Function):
    """r = N(μ; c, σ² + w²) built in place in one (..., R) buffer, saving only μ, σ (..., 1 per query) and r: the
    gradients are closed-form in r, ∂r/∂μ = −r(μ − c)/s², ∂r/∂σ = rσ((μ − c)²/s⁴ − 1/s²) with s² = σ² + w², so no
    (..., R) intermediate is kept for backward. Same values as ``gaussian_pdf`` (same operations, same order)."""

    @staticmethod
    def forward(ctx, mu: torch.Tensor, sigma: torch.Tensor, centers: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        var = sigma.unsqueeze(-1) ** 2 + widths**2  # (..., R)
        r = (mu.unsqueeze(-1) - centers).pow_(2).mul_(-0.5).div_(var).exp_()
        r.div_(var.mul_(2 * math.pi).sqrt_())
        ctx.save_for_backward(mu, sigma, centers, widths, r)
        return r

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        mu, sigma, centers, widths, r = ctx.saved_tensors
        inv_var = (sigma.unsqueeze(-1) ** 2 + widths**2).reciprocal_()  # 1/s² (..., R)
        diff = mu.unsqueeze(-1) - centers  # (..., R)
        gr = grad * r
        d_mu_terms = diff * inv_var  # (μ − c)/s²
        grad_mu = -(gr * d_mu_terms).sum(-1)
        d_var = d_mu_terms.square_().sub_(inv_var).mul_(0.5).mul_(gr)  # ∂L/∂s² = g·r·((μ−c)²/s⁴ − 1/s²)/2
        grad_sigma = (d_var.sum(-1) * 2 * sigma) if ctx.needs_input_grad[1] else None
        grad_c = (gr * diff * inv_var).reshape(-1, r.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None
        grad_w = (d_var * 2 * widths).reshape(-1, r.shape[-1]).sum(0) if ctx.needs_input_grad[3] else None
        return grad_mu, grad_sigma, grad_c, grad_w


def gaussian_rbf_integral(mu: torch.Tensor, sigma: torch.Tensor, centers: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """E_{t~N(μ, σ²)}[ψ_r(t)] = ∫ N(t; μ, σ²) N(t; c_r, w_r²) dt = N(μ; c_r, σ² + w_r²) in closed form
    (``_GaussianRbfIntegral``: one (..., R) buffer, closed-form backward).

    mu/sigma (...,), centers/widths (R,) -> (..., R)
    """
    return _GaussianRbfIntegral.apply(mu, sigma, centers, widths)


def ridge_operator(positions: torch.Tensor, centers: torch.Tensor, widths: torch.Tensor, ridge_lambda: float) -> torch.Tensor:
    """The linear map G (R, n) from n signal samples X (n, D) at ``positions`` to basis coefficients B = G X, i.e. the
    ridge solution Bᵀ = XᵀFᵀ(FFᵀ + λI)⁻¹ with F (R, n) = ψ(positions)ᵀ. Solved in float64 by Cholesky (FFᵀ + λI is
    symmetric positive definite); cast back by the caller.
    """
    pos = positions.to(torch.float64)
    basis = rbf_basis(pos, centers.to(torch.float64), widths.to(torch.float64))  # (n, R)
    f = basis.T  # (R, n)
    gram = f @ f.T + ridge_lambda * torch.eye(f.shape[0], dtype=torch.float64, device=f.device)
    chol = torch.linalg.cholesky(gram)
    return torch.cholesky_solve(f, chol)  # (R, n) = (FFᵀ + λI)⁻¹ F


def attention_histogram(mu: torch.Tensor, sigma: torch.Tensor, weight: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Mass that the Gaussians N(μ_i, σ_i²) put on each of ``n_bins`` equal bins of [0, 1], summed over queries with
    ``weight`` (0 for padded queries) and normalised to a distribution; a row without mass becomes uniform.

    mu/sigma/weight (B, Q) -> (B, n_bins)
    """
    edges = torch.linspace(0.0, 1.0, n_bins + 1, device=mu.device, dtype=mu.dtype)  # (n_bins + 1,)
    z = (edges - mu.unsqueeze(-1)) / (sigma.unsqueeze(-1) * math.sqrt(2.0))  # (B, Q, n_bins + 1)
    cdf = 0.5 * (1.0 + torch.erf(z))
    mass = (cdf[..., 1:] - cdf[..., :-1]) * weight.unsqueeze(-1)  # (B, Q, n_bins)
    hist = mass.sum(dim=1)  # (B, n_bins)
    total = hist.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(hist, 1.0 / n_bins)
    return torch.where(total > 1e-12, hist / total.clamp_min(1e-12), uniform)


def inverse_cdf_positions(hist: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Positions in [0, 1] drawn from the piecewise-uniform density ``hist`` (B, n_bins) at quantiles u (B, M) ∈ [0, 1).

    With u = (i + U_i)/M (stratified) these are M samples of the histogram; with u = (i + ½)/M they are its quantiles.
    """
    n_bins = hist.shape[-1]
    cdf = torch.cumsum(hist, dim=-1)  # (B, n_bins)
    cdf = cdf / cdf[..., -1:].clamp_min(1e-12)
    idx = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True).clamp(max=n_bins - 1)  # (B, M)
    lower = torch.gather(F.pad(cdf, (1, 0)), -1, idx)  # CDF at the left edge of the bin
    mass = torch.gather(hist, -1, idx).clamp_min(1e-12)
    within = ((u - lower) / mass).clamp(0.0, 1.0)
    return (idx.to(u.dtype) + within) / n_bins


# ------------------------------------------------------------------------------------------------------------------
# EAM sparse attention: local blocks + strided keys, computed block by block
# ------------------------------------------------------------------------------------------------------------------


def block_sparse_pattern(t: int, window: int, stride: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The sparse pattern as a dense (T, T) boolean matrix (query i may see key j). For tests and docs only.

    Query i sees key j when their blocks of ``window`` positions are neighbours (|i//w − j//w| ≤ 1) or when j is a
    strided "global" key (j % stride == 0; stride 0 disables them).
    """
    pos = torch.arange(t, device=device)
    blocks = pos // window
    local = (blocks[:, None] - blocks[None, :]).abs() <= 1
    strided = (pos % stride == 0) if stride > 0 else torch.zeros_like(pos, dtype=torch.bool)
    return local | strided[None, :]


def block_sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, window: int, stride: int
) -> torch.Tensor:
    """Exact softmax attention restricted to ``block_sparse_pattern``, without ever forming a T×T matrix.

    Queries are cut into blocks of ``window``; all queries of a block see the same keys: those of their own block and
    its two neighbours (3w keys) and the strided keys j % stride == 0 (G = ⌈T/stride⌉ keys) that are not already
    local. So each block is one small dense attention over its 3w + G gathered keys with a key mask, and all blocks
    go through one fused ``scaled_dot_product_attention`` call (batch = B·blocks): O(T·(3w + G)·d) time and
    O(T·d + (T/w)·G·d) memory instead of O(T²·d) time (and O(T²) memory when materialised).

    q/k/v (B, H, T, d), valid (B, T) -> (B, H, T, d)
    """
    b, h, t, d = q.shape
    w = window
    n_blocks = -(-t // w)
    pad = n_blocks * w - t
    valid_keys = keys_or_any(valid)
    if pad:
        q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
        valid_keys = F.pad(valid_keys, (0, pad), value=False)
    tp = n_blocks * w

    def neighbours(z: torch.Tensor) -> torch.Tensor:
        """(B, C, T, ...) -> (B, C, nb, 3w, ...): for block i, the positions of blocks i-1, i, i+1 (zeros off the edges)."""
        zb = z.reshape(*z.shape[:2], n_blocks, w, *z.shape[3:])
        tail = (0, 0) * (zb.dim() - 3)
        prev = F.pad(zb, tail + (1, 0))[:, :, :-1]
        nxt = F.pad(zb, tail + (0, 1))[:, :, 1:]
        return torch.cat([prev, zb, nxt], dim=3)

    keys, values = neighbours(k), neighbours(v)  # (B, H, nb, 3w, d)
    keep = neighbours(valid_keys[:, None, :, None].to(q.dtype))[:, 0, ..., 0] > 0.5  # (B, nb, 3w)
    if stride > 0:
        g_pos = torch.arange(0, tp, stride, device=q.device)  # (G,) strided key positions
        n_g = g_pos.numel()
        keys = torch.cat([keys, k[:, :, None, g_pos].expand(b, h, n_blocks, n_g, d)], dim=3)  # (B, H, nb, 3w+G, d)
        values = torch.cat([values, v[:, :, None, g_pos].expand(b, h, n_blocks, n_g, d)], dim=3)
        q_block = torch.arange(n_blocks, device=q.device)
        not_local = (q_block[:, None] - (g_pos // w)[None, :]).abs() > 1  # (nb, G): count each key once
        keep = torch.cat([keep, valid_keys[:, None, g_pos] & not_local[None]], dim=2)  # (B, nb, 3w+G)
    n_keys = keys.shape[3]
    qb = q.reshape(b, h, n_blocks, w, d).transpose(1, 2).reshape(b * n_blocks, h, w, d)  # (B·nb, H, w, d)
    keys = keys.transpose(1, 2).reshape(b * n_blocks, h, n_keys, d)
    values = values.transpose(1, 2).reshape(b * n_blocks, h, n_keys, d)
    keep = keep.reshape(b * n_blocks, n_keys)
    out = sdpa_attention(qb, keys, values, keep)  # (B·nb, H, w, d); a block without valid keys gets finite garbage
    return out.reshape(b, n_blocks, h, w, d).transpose(1, 2).reshape(b, h, tp, d)[:, :, :t]
