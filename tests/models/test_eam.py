"""EAM parts: token pooling, block-sparse attention, mixture-of-experts routing and its balancing loss."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.attention import functional as AF
from models.encoders.eam import EAMConfig, EAMEncoder, pool_tokens
from models.moe import MoEFeedForward, load_balancing_loss, route

from model_fixtures import lengths_mask


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(0, 13), min_size=1, max_size=3), extra=st.integers(0, 3), p=st.integers(1, 5))
def test_pooling_gives_masked_window_means(lengths: list[int], extra: int, p: int) -> None:
    t = max(lengths) + extra or 1
    valid = lengths_mask(lengths, t)
    x = torch.randn(len(lengths), t, 3, dtype=torch.float64)
    pooled, pooled_valid = pool_tokens(x, valid, p)
    assert pooled.shape == (len(lengths), math.ceil(t / p), 3)
    for b, n in enumerate(lengths):
        for w in range(pooled.shape[1]):
            idx = [i for i in range(w * p, min((w + 1) * p, t)) if i < n]
            assert pooled_valid[b, w] == bool(idx)
            expected = x[b, idx].mean(0) if idx else torch.zeros(3, dtype=torch.float64)
            torch.testing.assert_close(pooled[b, w], expected)


def _dense_restricted_attention(q, k, v, valid, window, stride):
    pattern = AF.block_sparse_pattern(q.shape[2], window, stride)
    allowed = pattern[None, None] & valid[:, None, None, :]  # (B, 1, T, T)
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 23), min_size=1, max_size=3),
    window=st.integers(1, 6),
    stride=st.integers(0, 7),
)
def test_sparse_attention_equals_dense_attention_restricted_to_the_pattern(lengths, window, stride) -> None:
    t = max(lengths)
    valid = lengths_mask(lengths, t)
    g = torch.Generator().manual_seed(t * 100 + window * 10 + stride)
    q, k, v = (torch.randn(len(lengths), 2, t, 3, generator=g, dtype=torch.float64) for _ in range(3))
    sparse = AF.block_sparse_attention(q, k, v, valid, window, stride)
    dense = _dense_restricted_attention(q, k, v, valid, window, stride)
    rows = valid[:, None, :, None].expand_as(dense)  # every valid query sees at least itself
    torch.testing.assert_close(sparse[rows], dense[rows])


def test_the_pattern_is_sparse() -> None:
    pattern = AF.block_sparse_pattern(1024, window=32, stride=64)
    assert pattern.float().mean() < 0.2  # each query sees ≤ 3·32 + 1024/64 = 112 of 1024 keys
    assert pattern.sum(1).max() <= 3 * 32 + 1024 // 64


def test_gate_weights_sum_to_one_and_top_k_picks_the_k_largest() -> None:
    logits = torch.randn(50, 6)
    routing = route(logits, top_k=2)
    torch.testing.assert_close(routing.probs.sum(-1), torch.ones(50))
    assert routing.experts.shape == (50, 2)
    assert (routing.experts[:, 0] != routing.experts[:, 1]).all()
    top2 = logits.argsort(dim=-1, descending=True)[:, :2]
    assert torch.equal(routing.experts.sort(-1).values, top2.sort(-1).values)
    torch.testing.assert_close(routing.weights, routing.probs.gather(1, routing.experts))


def test_balancing_loss_is_minimal_for_uniform_routing() -> None:
    n, e = 64, 4
    uniform_probs = torch.full((n, e), 1 / e)
    round_robin = torch.arange(n).remainder(e).unsqueeze(1)  # f uniform too
    uniform = load_balancing_loss(uniform_probs, round_robin, e)
    torch.testing.assert_close(uniform, torch.tensor(1.0))
    skewed_probs = torch.tensor([0.7, 0.1, 0.1, 0.1]).expand(n, e)
    all_to_one = torch.zeros(n, 1, dtype=torch.long)
    collapsed = load_balancing_loss(skewed_probs, all_to_one, e)
    torch.testing.assert_close(collapsed, torch.tensor(e * 0.7))
    for seed in range(5):  # routing by the gate's own top-1 on random logits: never below the uniform value by much
        logits = torch.randn(n, e, generator=torch.Generator().manual_seed(seed)) * 3
        r = route(logits, 1)
        assert load_balancing_loss(r.probs, r.experts, e) > uniform - 0.1


def test_moe_output_is_the_gate_weighted_sum_of_the_chosen_experts() -> None:
    torch.manual_seed(0)
    moe = MoEFeedForward(d_model=5, hidden=7, n_experts=3, top_k=2, dropout=0.0)
    x = torch.randn(2, 4, 5)
    valid = lengths_mask([4, 2])
    y, aux = moe(x, valid)
    probs = moe.gate(x).softmax(-1)
    for b in range(2):
        for t in range(4):
            if not valid[b, t]:
                assert (y[b, t] == 0).all()
                continue
            top = probs[b, t].topk(2)
            expected = sum(w * moe.experts[int(e)](x[b, t]) for w, e in zip(top.values, top.indices))
            torch.testing.assert_close(y[b, t], expected, atol=1e-6, rtol=1e-5)
    assert aux.shape == () and aux >= 0


def test_pads_are_not_routed_and_do_not_enter_the_loss() -> None:
    torch.manual_seed(0)
    moe = MoEFeedForward(d_model=5, hidden=7, n_experts=3, top_k=1, dropout=0.0)
    x = torch.randn(1, 6, 5)
    valid = lengths_mask([3], 6)
    y, aux = moe(x, valid)
    y_short, aux_short = moe(x[:, :3], valid[:, :3])
    torch.testing.assert_close(y[:, :3], y_short)
    torch.testing.assert_close(aux, aux_short)


def test_encoder_returns_the_weighted_balancing_loss_and_pools_once_per_listed_layer() -> None:
    torch.manual_seed(0)
    enc = EAMEncoder(8, 3, 2, config=EAMConfig(window=2, stride=3, pool_size=2, pool_after=(0, 1), balance_loss_weight=0.5))
    out = enc(torch.randn(2, 11, 8), lengths_mask([11, 5]))
    assert out.hidden.shape == (2, 3, 8)  # 11 -> 6 -> 3
    assert out.valid.tolist() == [[True, True, True], [True, True, False]]
    assert 0.5 * 3 * 0.9 < out.aux_loss < 0.5 * 3 * 3  # three layers, each loss in [~1, E]
