"""TransactionEmbedding: odd sizes, padding, numeric statistics, unknown codes, time features."""

from __future__ import annotations

from dataclasses import replace

import torch

from models.embedding import TransactionEmbedding, sinusoidal_time_features

from model_fixtures import random_batch


def _embedding(**kw) -> TransactionEmbedding:
    args = dict(n_mcc=23, n_tr_type=7, n_numeric=4, d_model=7, mcc_dim=5, tr_type_dim=3, numeric_dim=1, time_dim=3, dropout=0.0)
    args.update(kw)
    return TransactionEmbedding(**args)


def test_odd_sizes_everywhere() -> None:
    """ptls's Transformer crashes on its default 73-dim input; every size here may be odd."""
    for d_model in (1, 7, 73):
        out = _embedding(d_model=d_model)(random_batch([5, 2]))
        assert out.shape == (2, 5, d_model) and torch.isfinite(out).all()


def test_padded_positions_are_zero_and_real_ones_ignore_the_padding() -> None:
    emb = _embedding().eval()
    batch = random_batch([5, 2])
    out = emb(batch)
    assert (out[1, 2:] == 0).all() and (out[1, :2] != 0).any()
    garbage = replace(batch, numeric=torch.where(batch.valid.unsqueeze(-1), batch.numeric, float("nan")),
                      event_time=torch.where(batch.valid, batch.event_time, 1e6))
    torch.testing.assert_close(emb(garbage), out)


def test_padding_index_is_a_zero_vector() -> None:
    emb = _embedding()
    assert (emb.mcc.weight[0] == 0).all() and (emb.tr_type.weight[0] == 0).all()


def test_numeric_statistics_normalise_and_travel_in_the_state_dict() -> None:
    torch.manual_seed(0)
    emb = _embedding().eval()
    batch = random_batch([5, 3])
    mean, std = torch.tensor([10.0, -2.0, 0.5, 3.0]), torch.tensor([2.0, 0.5, 4.0, 1.0])
    shifted = replace(batch, numeric=(batch.numeric * std + mean) * batch.valid.unsqueeze(-1))
    reference = emb(batch)
    emb.set_numeric_stats(mean, std)
    torch.testing.assert_close(emb(shifted), reference)
    state = emb.state_dict()
    assert torch.equal(state["numeric_mean"], mean) and torch.equal(state["numeric_std"], std)
    fresh = _embedding().eval()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(shifted), reference)


def test_codes_outside_the_vocabulary_read_as_unknown() -> None:
    emb = _embedding().eval()
    batch = random_batch([4])
    unknown = replace(batch, mcc=torch.ones_like(batch.mcc))
    outside = replace(batch, mcc=torch.full_like(batch.mcc, 999))
    torch.testing.assert_close(emb(outside), emb(unknown))


def test_time_features_depend_on_time_before_the_last_event() -> None:
    emb = _embedding().eval()
    batch = random_batch([5, 3])
    shifted = replace(batch, event_time=(batch.event_time + 100.0) * batch.valid)
    torch.testing.assert_close(emb(shifted), emb(batch), atol=1e-4, rtol=1e-4)
    feats = sinusoidal_time_features(torch.zeros(1, 2), dim=5, min_period=1.0, max_period=10.0)
    assert feats.shape == (1, 2, 5)
