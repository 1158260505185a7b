"""∞-former continuous memory: ridge fit, closed-form Gaussian integral, constant memory, gradients, padding."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.attention import functional as AF
from models.encoders.infinite_former import (
    InfiniteFormerAttention,
    InfiniteFormerConfig,
    InfiniteFormerEncoder,
    RidgeTables,
    rbf_centers_widths,
)

from model_fixtures import lengths_mask


def test_ridge_fit_reconstructs_a_smooth_signal() -> None:
    config = InfiniteFormerConfig(n_basis=64, rbf_widths=(0.02, 0.05), ridge_lambda=0.5)
    centers, widths = rbf_centers_widths(config)
    t = (torch.arange(200, dtype=torch.float64) + 0.5) / 200
    signal = torch.stack([torch.sin(2 * math.pi * t), 0.5 * torch.cos(6 * math.pi * t) + t], dim=1)  # (n, 2)
    coeffs = AF.ridge_operator(t, centers, widths, config.ridge_lambda) @ signal  # B = G X  (R, 2)
    t_mid = torch.linspace(0.05, 0.95, 97, dtype=torch.float64)  # also between the samples
    truth = torch.stack([torch.sin(2 * math.pi * t_mid), 0.5 * torch.cos(6 * math.pi * t_mid) + t_mid], dim=1)
    recon = AF.rbf_basis(t_mid, centers, widths) @ coeffs
    assert (recon - truth).abs().max() < 0.03


def test_ridge_operator_is_the_closed_form_solution() -> None:
    centers, widths = rbf_centers_widths(InfiniteFormerConfig(n_basis=6, rbf_widths=(0.1, 0.3)))
    t = torch.rand(9, dtype=torch.float64)
    lam = 0.3
    f = AF.rbf_basis(t, centers, widths).T  # (R, n)
    expected = torch.linalg.inv(f @ f.T + lam * torch.eye(6, dtype=torch.float64)) @ f
    torch.testing.assert_close(AF.ridge_operator(t, centers, widths, lam), expected)


@settings(max_examples=20, deadline=None)
@given(
    mu=st.floats(-0.2, 1.2), sigma=st.floats(0.01, 0.5), center=st.floats(0.0, 1.0), width=st.floats(0.01, 0.2)
)
def test_closed_form_gaussian_integral_equals_quadrature(mu: float, sigma: float, center: float, width: float) -> None:
    t = torch.linspace(-3.0, 4.0, 40_001, dtype=torch.float64)
    integrand = AF.gaussian_pdf(t, torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma**2, dtype=torch.float64))
    integrand = integrand * AF.rbf_basis(t, torch.tensor([center], dtype=torch.float64), torch.tensor([width], dtype=torch.float64))[:, 0]
    numeric = torch.trapezoid(integrand, t)
    closed = AF.gaussian_rbf_integral(
        torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64),
        torch.tensor([center], dtype=torch.float64), torch.tensor([width], dtype=torch.float64),
    )[0]
    torch.testing.assert_close(closed, numeric, rtol=1e-6, atol=1e-8)


def test_memory_size_is_constant_as_segments_grow() -> None:
    config = InfiniteFormerConfig(segment_len=4, n_basis=8, n_samples=6)
    attn = InfiniteFormerAttention(8, 2, config).eval()
    shapes = []
    for n_segments in (1, 2, 8, 32):
        t = 4 * n_segments
        attn(torch.randn(2, t, 8), torch.ones(2, t, dtype=torch.bool))
        shapes.append(tuple(attn.last_memory.shape))
    assert shapes == [(2, 8, 8)] * 4  # (B, R, D) whatever the length of the past


def test_gradients_flow_through_the_current_segment_and_into_the_memory() -> None:
    torch.manual_seed(0)
    enc = InfiniteFormerEncoder(8, 1, 2, dropout=0.0,
                                config=InfiniteFormerConfig(segment_len=4, n_basis=8, n_samples=6)).double()
    x = torch.randn(1, 12, 8, dtype=torch.float64, requires_grad=True)
    out = enc(x, torch.ones(1, 12, dtype=torch.bool))
    # loss on the last segment only, through a fixed random projection: a plain sum of the output (a LayerNorm's,
    # zero-mean per position) is constant, its gradient zero up to rounding, and its sign CPU-dependent
    weight = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (out.hidden[:, 8:] * weight).sum().backward()
    grad_norm = x.grad[0].norm(dim=-1)  # (T,)
    # float64: rounding noise ~1e-15, every gradient here is >= ~1e-6 (the oldest event's, through the memory)
    assert (grad_norm[8:] > 1e-9).all(), "current segment"
    assert (grad_norm[:8] > 1e-9).all(), "past segments, through the memory coefficients"
    attn = enc.blocks[0].attn
    assert attn.w_mu.grad is not None and attn.w_mu.grad.abs().sum() > 0


def test_first_segment_sees_no_memory_and_later_segments_do() -> None:
    torch.manual_seed(0)
    enc = InfiniteFormerEncoder(8, 1, 2, dropout=0.0, config=InfiniteFormerConfig(segment_len=4, n_basis=8, n_samples=6)).eval()
    x = torch.randn(1, 8, 8)
    valid = torch.ones(1, 8, dtype=torch.bool)
    base = enc(x, valid).hidden
    x2 = x.clone()
    x2[:, 4:] += torch.randn(1, 4, 8)  # change the second segment only
    changed = enc(x2, valid).hidden
    torch.testing.assert_close(changed[:, :4], base[:, :4])  # segments never look ahead
    x3 = x.clone()
    x3[:, :4] += torch.randn(1, 4, 8)  # change the first segment only
    assert not torch.allclose(enc(x3, valid).hidden[:, 4:], base[:, 4:])  # the memory carries it forward


def test_padded_positions_never_enter_the_ridge_fit() -> None:
    config = InfiniteFormerConfig(segment_len=5, n_basis=4, rbf_widths=(0.2,), n_samples=3)
    first, update = RidgeTables(config).get(torch.device("cpu"), torch.float64)
    for n in range(config.segment_len + 1):
        assert (first[n, :, n:] == 0).all()
        assert (update[n, :, config.n_samples + n :] == 0).all()
        if n:
            assert (first[n, :, :n] != 0).any() and (update[n, :, : config.n_samples + n] != 0).any()


def test_a_segment_without_events_leaves_the_memory_unchanged() -> None:
    config = InfiniteFormerConfig(segment_len=4, n_basis=8, n_samples=6)
    attn = InfiniteFormerAttention(8, 2, config).eval()
    x = torch.randn(2, 12, 8)
    attn(x, lengths_mask([6, 6], 12))
    short = attn.last_memory.clone()
    attn(x[:, :8], lengths_mask([6, 6], 8))
    torch.testing.assert_close(attn.last_memory, short)


def test_sticky_positions_follow_the_attention_histogram() -> None:
    hist = AF.attention_histogram(
        mu=torch.tensor([[0.75, 0.76, 0.74, 0.1]]), sigma=torch.full((1, 4), 0.01), weight=torch.tensor([[1.0, 1.0, 1.0, 0.0]]),
        n_bins=10,
    )
    assert hist.argmax().item() == 7 and hist[0, 1] < 1e-6  # the padded query (μ = 0.1) contributes nothing
    u = (torch.arange(20) + 0.5).unsqueeze(0) / 20
    positions = AF.inverse_cdf_positions(hist, u)
    assert ((positions > 0.7) & (positions < 0.9)).float().mean() > 0.9
    assert torch.all(positions[:, 1:] >= positions[:, :-1])  # quantiles are sorted


def test_inverse_cdf_of_a_uniform_histogram_is_the_identity() -> None:
    u = torch.rand(3, 50)
    torch.testing.assert_close(AF.inverse_cdf_positions(torch.full((3, 8), 1 / 8), u), u)


@pytest.mark.parametrize("wide", [False, True])
def test_fused_gaussian_integral_matches_the_formula_and_its_gradient(wide: bool) -> None:
    torch.manual_seed(0)
    mu = torch.rand(2, 3, 5, dtype=torch.float64, requires_grad=True)
    sigma = (torch.rand(2, 3, 5, dtype=torch.float64) * (0.5 if wide else 0.05) + 0.01).requires_grad_()
    centers = torch.linspace(0, 1, 7, dtype=torch.float64, requires_grad=True)
    widths = torch.full((7,), 0.05, dtype=torch.float64, requires_grad=True)
    fused = AF.gaussian_rbf_integral(mu, sigma, centers, widths)
    ref = AF.gaussian_pdf(mu.unsqueeze(-1), centers, sigma.unsqueeze(-1) ** 2 + widths**2)
    torch.testing.assert_close(fused, ref)
    w = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad((fused * w).sum(), (mu, sigma, centers, widths)),
                               torch.autograd.grad((ref * w).sum(), (mu, sigma, centers, widths)))
    assert torch.autograd.gradcheck(AF.gaussian_rbf_integral, (mu, sigma, centers, widths))
