"""The two exact-attention paths agree: fused SDPA and the materialised softmax(QKᵀ/√d)V."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.attention import functional as AF
from models.encoders.transformer import MaterializedTransformerEncoder, TransformerEncoder

from model_fixtures import lengths_mask


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 11), min_size=1, max_size=3),
    heads=st.integers(1, 3),
    head_dim=st.integers(1, 9),
)
def test_sdpa_equals_materialized_attention(lengths: list[int], heads: int, head_dim: int) -> None:
    t = max(max(lengths), 1)
    valid = lengths_mask(lengths, t)
    g = torch.Generator().manual_seed(sum(lengths) + heads * 7 + head_dim)
    q, k, v = (torch.randn(len(lengths), heads, t, head_dim, generator=g, dtype=torch.float64) for _ in range(3))
    sdpa = AF.sdpa_attention(q, k, v, valid)
    mat = AF.materialized_attention(q, k, v, valid)
    rows = valid.any(dim=1)  # customers with at least one event (the others are finite garbage, masked later)
    torch.testing.assert_close(sdpa[rows], mat[rows])
    assert torch.isfinite(sdpa).all() and torch.isfinite(mat).all()


def test_materialized_attention_is_softmax_of_scaled_scores() -> None:
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 2)
    valid = torch.tensor([[True, True, True, False, False]])
    weights = torch.softmax(q[0, 0] @ k[0, 0, :3].T / 2.0, dim=-1)  # √4 = 2; only the 3 valid keys
    torch.testing.assert_close(AF.materialized_attention(q, k, v, valid)[0, 0], weights @ v[0, 0, :3])


def test_the_two_encoders_give_the_same_outputs_and_gradients() -> None:
    torch.manual_seed(0)
    sdpa = TransformerEncoder(d_model=12, n_layers=2, n_heads=3, dropout=0.0)
    mat = MaterializedTransformerEncoder(d_model=12, n_layers=2, n_heads=3, dropout=0.0)
    mat.load_state_dict(sdpa.state_dict())  # same parameters, same keys
    x = torch.randn(3, 10, 12)
    valid = lengths_mask([10, 4, 7])
    out_s, out_m = sdpa(x, valid), mat(x, valid)
    torch.testing.assert_close(out_s.hidden, out_m.hidden, atol=1e-5, rtol=1e-5)
    out_s.hidden.square().sum().backward()
    out_m.hidden.square().sum().backward()
    for (name, p_s), p_m in zip(sdpa.named_parameters(), mat.parameters()):
        torch.testing.assert_close(p_s.grad, p_m.grad, atol=1e-4, rtol=1e-4, msg=name)
