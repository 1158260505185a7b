"""FAVOR+ (Performer) random features: each test checks one property of the math in models.attention.functional."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.attention import functional as AF
from models.encoders.performer import FavorAttention, PerformerConfig


def test_rows_are_orthogonal_within_each_block() -> None:
    d, m = 4, 10  # blocks of rows 0-3, 4-7, 8-9
    w = AF.orthogonal_gaussian(m, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for start in range(0, m, d):
        block = w[start : start + d]
        unit = block / block.norm(dim=1, keepdim=True)
        torch.testing.assert_close(unit @ unit.T, torch.eye(len(block), dtype=torch.float64))


def test_row_norms_follow_the_chi_distribution() -> None:
    d = 6
    g = torch.Generator().manual_seed(1)
    norms_sq = torch.cat([AF.orthogonal_gaussian(60, d, generator=g, dtype=torch.float64).pow(2).sum(1) for _ in range(50)])
    assert abs(norms_sq.mean().item() - d) < 0.25  # E‖ω‖² = d for ω ~ N(0, I_d)
    assert abs(norms_sq.var().item() - 2 * d) < 2.0  # Var‖ω‖² = 2d


def test_first_feature_of_a_block_is_unbiased() -> None:
    """E[exp(ω₁ᵀz)] = exp(‖z‖²/2) when ω₁ ~ N(0, I). Without the sign(diag R) correction of the QR, the first
    direction always points the same way along e₁ and this mean falls to ≈ 0.70 instead of 1.13."""
    d, n = 4, 4000
    z = torch.tensor([0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    first = torch.stack([AF.orthogonal_gaussian(d, d, generator=g, dtype=torch.float64)[0] for _ in range(n)])
    estimate = torch.exp(first @ z).mean().item()
    assert abs(estimate - math.exp(0.125)) < 0.05  # 5 standard errors
    assert abs(first[:, 0].mean().item()) < 0.1  # no sign bias along any axis


def _exact_and_favor_error(m: int, seeds: int = 8) -> float:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 24, 8, generator=g, dtype=torch.float64) * 0.5 for _ in range(3))
    exact = AF.materialized_attention(q, k, v)
    errs = []
    for s in range(seeds):
        w = AF.orthogonal_gaussian(m, 8, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64)
        errs.append((AF.favor_attention(q, k, v, w) - exact).abs().mean().item())
    return sum(errs) / len(errs)


def test_approximation_error_decreases_with_the_number_of_features() -> None:
    errors = [_exact_and_favor_error(m) for m in (4, 16, 64, 256)]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05


@settings(max_examples=20, deadline=None)
@given(n_valid=st.integers(1, 12), n_pad=st.integers(1, 6), scale=st.floats(0.1, 30.0))
def test_masked_keys_have_no_effect(n_valid: int, n_pad: int, scale: float) -> None:
    g = torch.Generator().manual_seed(n_valid * 31 + n_pad)
    q, k, v = (torch.randn(1, 2, n_valid, 4, generator=g) for _ in range(3))
    w = AF.orthogonal_gaussian(16, 4, generator=g)
    ref = AF.favor_attention(q, k, v, w, torch.ones(1, n_valid, dtype=torch.bool))
    junk_k = torch.randn(1, 2, n_pad, 4, generator=g) * scale  # large junk would dominate the stabiliser and Σφ(k)
    junk_v = torch.randn(1, 2, n_pad, 4, generator=g) * scale
    valid = torch.cat([torch.ones(1, n_valid, dtype=torch.bool), torch.zeros(1, n_pad, dtype=torch.bool)], dim=1)
    out = AF.favor_attention(q, torch.cat([k, junk_k], 2), torch.cat([v, junk_v], 2), w, valid)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_padded_keys_get_zero_features() -> None:
    k = torch.randn(2, 1, 5, 4)
    valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    phi = AF.softmax_kernel(k, AF.orthogonal_gaussian(8, 4), is_query=False, valid=valid)
    assert (phi[1, :, 2:] == 0).all()
    assert (phi[0] > 0).all() and (phi[1, :, :2] > 0).all()


def test_features_are_float32_under_autocast() -> None:
    x = torch.randn(1, 1, 3, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        phi = AF.softmax_kernel(x, AF.orthogonal_gaussian(8, 4), is_query=True)
    assert phi.dtype == torch.float32


def test_features_are_redrawn_on_schedule_in_training_and_fixed_in_eval() -> None:
    torch.manual_seed(0)
    attn = FavorAttention(8, 2, PerformerConfig(nb_features=8, redraw_interval=2))
    x, valid = torch.randn(1, 5, 8), torch.ones(1, 5, dtype=torch.bool)
    seen = []
    attn.train()
    for _ in range(5):
        attn(x, valid)
        seen.append(attn.projection.clone())
    changed = [not torch.equal(a, b) for a, b in zip(seen, seen[1:])]
    assert changed == [False, True, False, True]  # redrawn at the start of calls 3 and 5
    attn.eval()
    frozen = attn.projection.clone()
    for _ in range(5):
        attn(x, valid)
    assert torch.equal(attn.projection, frozen)
    assert "projection" in attn.state_dict()  # a reloaded model uses the same features


def _features_step_by_step(x, projection, is_query, valid, eps):
    """The FAVOR+ features written out op by op (autograd keeps every intermediate): the fused version's oracle."""
    m, d = projection.shape
    x = x * d**-0.25
    wx = torch.einsum("bhtd,md->bhtm", x, projection)
    sq = 0.5 * (x * x).sum(dim=-1, keepdim=True)
    if is_query:
        stab = wx.amax(dim=-1, keepdim=True).detach()
    else:
        masked = wx if valid is None else wx.masked_fill(~valid[:, None, :, None], torch.finfo(wx.dtype).min)
        stab = masked.amax(dim=(-2, -1), keepdim=True).detach()
    phi = (torch.exp(wx - sq - stab) + eps) / math.sqrt(m)
    return phi if (valid is None or is_query) else phi * valid[:, None, :, None].to(phi.dtype)


@pytest.mark.parametrize("is_query", [True, False])
@pytest.mark.parametrize("masked", [True, False])
def test_fused_features_match_the_step_by_step_formula_and_its_gradient(is_query: bool, masked: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 4, requires_grad=True)
    projection = AF.orthogonal_gaussian(10, 4)
    valid = torch.tensor([[True] * 7, [True] * 4 + [False] * 3]) if masked else None
    w = torch.randn(2, 3, 7, 10)
    fused = AF.softmax_kernel(x, projection, is_query=is_query, valid=valid, eps=1e-3)
    (g_fused,) = torch.autograd.grad((fused * w).sum(), x)
    ref = _features_step_by_step(x, projection, is_query, valid, 1e-3)
    (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(g_fused, g_ref)
