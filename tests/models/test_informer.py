"""ProbSparse Informer: exact when every query is active, padding-safe sampling and measure, distilling halves T."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.attention import functional as AF
from models.encoders.informer import (
    Distil,
    InformerConfig,
    InformerEncoder,
    ProbSparseAttention,
    log_count,
    masked_max_pool,
    prob_sparse_attention,
    query_sparsity,
    sample_valid_keys,
)

from model_fixtures import lengths_mask


def _qkv(b: int, h: int, t: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, t, d, generator=g) for _ in range(3))  # type: ignore[return-value]


def test_log_count_is_c_ceil_ln_n_clamped() -> None:
    n = torch.tensor([0, 1, 2, 3, 20, 4096])
    assert log_count(n, 5).tolist() == [1, 1, 2, 3, 15, 5 * math.ceil(math.log(4096))]
    assert log_count(n, 1).tolist() == [1, 1, 1, 2, 3, 9]


@pytest.mark.parametrize("lengths", [[13, 5, 1], [7, 7, 7], [12, 3, 9]])
def test_with_every_query_active_it_is_exact_attention(lengths: list[int]) -> None:
    q, k, v = _qkv(3, 2, 13, 4)
    valid = lengths_mask(lengths, 13)
    n = valid.sum(-1)
    sample, keep = sample_valid_keys(valid, log_count(n, 2), torch.rand(3, int(log_count(n, 2).max())))
    out = prob_sparse_attention(q, k, v, valid, n, sample, keep)  # u_b = L_b: every valid query attends
    ref = AF.materialized_attention(q, k, v, valid)
    torch.testing.assert_close(out[valid[:, None, :].expand(-1, 2, -1)], ref[valid[:, None, :].expand(-1, 2, -1)])


def test_a_large_factor_makes_the_module_exact() -> None:
    torch.manual_seed(0)
    attn = ProbSparseAttention(8, 2, InformerConfig(factor=10)).eval()  # 10·⌈ln 13⌉ = 30 ≥ 13
    x, valid = torch.randn(2, 13, 8), lengths_mask([13, 6])
    q, k, v = attn.split_heads(x)
    ref = attn.merge_heads(AF.materialized_attention(q, k, v, valid))
    torch.testing.assert_close(attn(x, valid)[valid], ref[valid])


def test_inactive_queries_output_the_mean_of_the_valid_values() -> None:
    q, k, v = _qkv(1, 1, 10, 4)
    valid = lengths_mask([7], 10)
    n_top = torch.tensor([2])
    sample, keep = sample_valid_keys(valid, torch.tensor([3]), torch.full((1, 3), 0.5))
    out = prob_sparse_attention(q, k, v, valid, n_top, sample, keep)
    mean_v = v[0, 0, :7].mean(0)
    m = query_sparsity(q, k[:, :, sample[0]], keep)[0, 0, :7]
    lazy = m.argsort(descending=True)[2:]  # all but the 2 most "active" valid queries
    torch.testing.assert_close(out[0, 0, lazy], mean_v.expand(len(lazy), -1))
    active = m.argsort(descending=True)[:2]
    ref = AF.materialized_attention(q, k, v, valid)
    torch.testing.assert_close(out[0, 0, active], ref[0, 0, active])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=4), st.integers(0, 9), st.integers(1, 12))
def test_samples_are_valid_keys_only(lengths: list[int], extra: int, n_samples: int) -> None:
    t = max(max(lengths) + extra, 1)
    valid = lengths_mask(lengths, t)
    u = torch.full((len(lengths),), n_samples)
    sample, keep = sample_valid_keys(valid, u, torch.rand(len(lengths), n_samples))
    assert valid.gather(1, sample)[keep].all(), "a sampled key is padding"
    for b, n in enumerate(lengths):
        assert int(keep[b].sum()) == (n_samples if n > 0 else 0)


def test_samples_do_not_depend_on_where_the_valid_keys_sit() -> None:
    """The sample is drawn among valid positions by rank: any mask (not only left-aligned) is handled."""
    valid = torch.tensor([[False, True, False, True, True, False, True]])
    sample, keep = sample_valid_keys(valid, torch.tensor([4]), torch.full((1, 4), 0.5))
    assert sample[keep].tolist() == [1, 3, 4, 6]


def test_measure_ignores_padded_keys_and_is_max_minus_mean() -> None:
    q, k, _ = _qkv(1, 1, 3, 4)
    keep = torch.tensor([[True, True, False]])
    k_pad = k.clone()
    k_pad[0, 0, 2] = 1e4  # a huge padded key must not move the measure
    m = query_sparsity(q, k_pad, keep)
    s = q[0, 0] @ k[0, 0, :2].T / 2.0
    torch.testing.assert_close(m[0, 0], s.amax(-1) - s.mean(-1))


@pytest.mark.parametrize("t,expected", [(10, 5), (9, 5), (2, 1), (1, 1)])
def test_distilling_halves_the_length_and_the_mask(t: int, expected: int) -> None:
    x = torch.randn(2, t, 4)
    valid = lengths_mask([t, max(t // 3, 1)], t)
    y, valid_out = Distil(4)(x, valid)
    assert y.shape == (2, expected, 4) and valid_out.shape == (2, expected)
    assert valid_out.sum(-1).tolist() == [math.ceil(t / 2), math.ceil(max(t // 3, 1) / 2)]
    assert (y[~valid_out] == 0).all()


def test_masked_max_pool_ignores_padding() -> None:
    x = torch.tensor([[[1.0], [5.0], [2.0], [9.0], [7.0]]])
    y, v = masked_max_pool(x, torch.tensor([[True, True, True, False, False]]))
    assert y[0, :, 0].tolist() == [5.0, 5.0, 0.0] and v[0].tolist() == [True, True, False]


def test_encoder_distils_between_layers_only() -> None:
    x, valid = torch.randn(2, 16, 8), lengths_mask([16, 5])
    three = InformerEncoder(8, 3, 2, config=InformerConfig(factor=2)).eval()(x, valid)
    assert three.hidden.shape == (2, 4, 8) and three.valid.sum(-1).tolist() == [4, 2]  # 5 -> 3 -> 2
    flat = InformerEncoder(8, 3, 2, config=InformerConfig(factor=2, distil=False)).eval()(x, valid)
    assert flat.hidden.shape == (2, 16, 8) and torch.equal(flat.valid, valid)


def test_training_draws_a_new_sample_and_eval_is_deterministic() -> None:
    torch.manual_seed(0)
    enc = InformerEncoder(8, 1, 2, dropout=0.0, config=InformerConfig(factor=1))
    x, valid = torch.randn(2, 200, 8), lengths_mask([200, 150])
    enc.eval()
    assert torch.equal(enc(x, valid).hidden, enc(x, valid).hidden)
    enc.train()
    assert not torch.equal(enc(x, valid).hidden, enc(x, valid).hidden)


@pytest.mark.parametrize("n", [13, 14])
def test_distilling_ignores_appended_padding_for_odd_and_even_lengths(n: int) -> None:
    torch.manual_seed(0)
    distil = Distil(4)
    x = torch.randn(1, n, 4)
    y, v = distil(x, torch.ones(1, n, dtype=torch.bool))
    x_long = torch.cat([x, torch.randn(1, 5, 4) * 10], dim=1)
    y_long, v_long = distil(x_long, lengths_mask([n], n + 5))
    assert int(v_long.sum()) == int(v.sum()) == math.ceil(n / 2)
    torch.testing.assert_close(y_long[:, : y.shape[1]], y)
