"""SwitchHead: the expert projections, the reduction to standard multi-head attention, expert-usage statistics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.encoders.base import pop_stats
from models.encoders.switchhead import (
    SwitchHeadAttention,
    SwitchHeadConfig,
    SwitchHeadEncoder,
    expert_outputs,
    expert_values,
    gated_experts,
    sigmoid_top_k,
)
from models.encoders.transformer import MaterializedAttention

from model_fixtures import lengths_mask


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 3), st.integers(1, 4), st.integers(0, 10_000))
def test_expert_projections_equal_the_per_token_sum_over_the_chosen_experts(n: int, h: int, e: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    k = max(1, e // 2)
    x, o = torch.randn(n, 5, generator=gen), torch.randn(n, h, 3, generator=gen)
    w_v, w_o = torch.randn(h, e, 5, 3, generator=gen), torch.randn(h, e, 3, 5, generator=gen)
    g, chosen = sigmoid_top_k(torch.randn(n, h, e, generator=gen), k)
    gate = gated_experts(g, chosen, e)
    v_ref = torch.zeros(n, h, 3)
    y_ref = torch.zeros(n, 5)
    for i in range(n):
        for hh in range(h):
            for j in range(k):
                ex = int(chosen[i, hh, j])
                v_ref[i, hh] += g[i, hh, j] * (x[i] @ w_v[hh, ex])
                y_ref[i] += g[i, hh, j] * (o[i, hh] @ w_o[hh, ex])
    torch.testing.assert_close(expert_values(x, w_v, gate), v_ref)
    torch.testing.assert_close(expert_outputs(o, w_o, gate), y_ref)


def test_unchosen_experts_get_no_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 4)
    w_v = torch.randn(1, 3, 4, 2, requires_grad=True)
    g, chosen = sigmoid_top_k(torch.tensor([[[5.0, -5.0, 1.0]]]), 2)
    expert_values(x, w_v, gated_experts(g, chosen, 3)).sum().backward()
    assert (w_v.grad[0, 1] == 0).all() and (w_v.grad[0, 0] != 0).all() and (w_v.grad[0, 2] != 0).all()


def _open_gates(attn: SwitchHeadAttention) -> None:
    """Gate logits 50 everywhere: σ(50) rounds to exactly 1.0 in float32, so every chosen expert has weight 1."""
    with torch.no_grad():
        for gate in (attn.gate_v, attn.gate_o):
            gate.weight.zero_()
            gate.bias.fill_(50.0)


@pytest.mark.parametrize("n_heads", [1, 2, 4])
def test_one_expert_with_open_gates_is_standard_multi_head_attention(n_heads: int) -> None:
    torch.manual_seed(0)
    d_model, d = 8, 8 // n_heads
    attn = SwitchHeadAttention(d_model, n_heads, d, n_experts=1, top_k=1)
    _open_gates(attn)
    ref = MaterializedAttention(d_model, n_heads)  # softmax(QKᵀ/√d)V with one fused QKV and an output projection
    with torch.no_grad():
        ref.qkv.weight.copy_(torch.cat([attn.qk.weight, torch.cat(list(attn.w_v[:, 0]), dim=1).T]))
        ref.qkv.bias.copy_(torch.cat([attn.qk.bias, torch.zeros(d_model)]))
        ref.out.weight.copy_(torch.cat(list(attn.w_o[:, 0]), dim=0).T)
        ref.out.bias.copy_(attn.out_bias)
    x, valid = torch.randn(3, 11, d_model), lengths_mask([11, 6, 1])
    torch.testing.assert_close(attn(x, valid)[valid], ref(x, valid)[valid], atol=1e-5, rtol=1e-5)


def test_gates_keep_the_top_k_sigmoids_and_zero_the_rest() -> None:
    torch.manual_seed(0)
    attn = SwitchHeadAttention(8, 2, 4, n_experts=4, top_k=2)
    x = torch.randn(5, 8)
    gate, chosen = attn._gates(attn.gate_v, x)
    s = torch.sigmoid(attn.gate_v(x)).view(5, 2, 4)
    top = s.topk(2, dim=-1)
    assert torch.equal(chosen, top.indices)
    expected = torch.zeros(5, 2, 4).scatter(-1, top.indices, top.values)
    torch.testing.assert_close(gate, expected)
    assert int((gate > 0).sum()) == 5 * 2 * 2


def test_fewer_heads_than_the_model_by_default() -> None:
    enc = SwitchHeadEncoder(d_model=32, n_layers=1, n_heads=4)
    attn = enc.blocks[0].attn
    assert (attn.n_heads, attn.head_dim, attn.n_experts, attn.top_k) == (2, 8, 4, 2)
    same = SwitchHeadEncoder(d_model=32, n_layers=1, n_heads=4, config=SwitchHeadConfig(n_heads=None))
    assert same.blocks[0].attn.n_heads == 4


def test_expert_usage_is_counted_in_training_on_valid_tokens_only_and_reset_when_read() -> None:
    torch.manual_seed(0)
    enc = SwitchHeadEncoder(d_model=8, n_layers=2, n_heads=2, config=SwitchHeadConfig(n_experts=3, top_k=2)).train()
    valid = lengths_mask([9, 4])
    enc(torch.randn(2, 9, 8), valid)
    attn = enc.blocks[0].attn
    assert int(attn.usage_v.counts.sum()) == 13 * 2 * 2  # valid tokens × heads × k
    stats = pop_stats(enc)
    assert set(stats) == {f"blocks.{i}.attn/{kind}_expert_share_{e}" for i in (0, 1) for kind in "vo" for e in range(3)}
    for i in (0, 1):
        for kind in "vo":
            assert math.isclose(sum(stats[f"blocks.{i}.attn/{kind}_expert_share_{e}"] for e in range(3)), 1.0, rel_tol=1e-6)
    assert pop_stats(enc) == {}, "read once, then reset"
    enc.eval()
    enc(torch.randn(2, 9, 8), valid)
    assert pop_stats(enc) == {}, "evaluation is not counted"
