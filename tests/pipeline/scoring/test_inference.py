"""Fast batch inference (token-budget batches, inference mode) gives the training-time evaluation loop's scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models import ModelConfig, build_model, comparison_encoders
from pipeline.sequences.batches import SequenceDataset, make_loader, numeric_stats
from pipeline.scoring.embeddings import embed
from pipeline.scoring.inference import InferenceConfig, embed_customers, predict_proba, token_budget_batches
from pipeline.training.presets import demo, tiny
from pipeline.training.train import evaluate

from _train_data import synthetic_sequences  # on sys.path: tests/pipeline/conftest.py


@pytest.fixture(scope="module")
def table():
    return synthetic_sequences(n=60, seed=3, max_len=260)


CONFIGS = {"default": InferenceConfig(), "small": InferenceConfig(max_tokens=700),
           "one_row": InferenceConfig(max_tokens=1)}  # one customer per batch: no padding, no attention mask


@pytest.mark.parametrize(("encoder", "preset", "config"), [
    *((e, "demo", "default") for e in comparison_encoders()),  # the size users register
    *((e, "tiny", "small") for e in comparison_encoders()),
    ("transformer", "tiny", "one_row"),
])
def test_scores_equal_the_unoptimised_path(table, encoder: str, preset: str, config: str) -> None:
    cfg = ModelConfig(n_mcc=30, n_tr_type=8, **{"tiny": tiny, "demo": demo}[preset]().model_kwargs(encoder))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.embedding.set_numeric_stats(*numeric_stats(table))
    reference = evaluate(model, make_loader(table, batch_size=64), torch.device("cpu"), "fp32")  # padded, autograd on
    ids, prob = predict_proba(model, SequenceDataset(table), CONFIGS[config])
    want = dict(zip(reference["customer_id"].tolist(), reference["prob"].tolist(), strict=True))
    assert ids.tolist() == table["customer_id"].to_list()
    np.testing.assert_allclose(prob, [want[i] for i in ids.tolist()], atol=1e-5, rtol=0)


@pytest.mark.parametrize("encoder", ["transformer", "eam"])  # EAM: pooled tokens, its own output mask
def test_embeddings_equal_the_unoptimised_path(table, encoder: str) -> None:
    """The hybrid model's frozen encoder at scoring (token-budget batches) = the fixed batches it was trained on."""
    cfg = ModelConfig(n_mcc=30, n_tr_type=8, **tiny().model_kwargs(encoder))
    torch.manual_seed(0)
    model = build_model(cfg)
    want_ids, want = embed(model, table, batch_size=64)  # padded batches of 64, sorted by customer_id
    ids, got = embed_customers(model, SequenceDataset(table), InferenceConfig(max_tokens=700))
    order = np.argsort(ids, kind="stable")
    assert ids[order].tolist() == want_ids.tolist()
    assert got.shape == want.shape == (table.height, cfg.d_model)
    np.testing.assert_allclose(got[order], want, atol=1e-5, rtol=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1300), min_size=0, max_size=80), st.integers(1, 5000))
def test_token_budget_batches_cover_every_row_once_within_budget(lengths, max_tokens) -> None:
    lengths = np.array(lengths, dtype=np.int64)
    batches = token_budget_batches(lengths, InferenceConfig(max_tokens))
    rows = np.concatenate(batches) if batches else np.empty(0, np.int64)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert np.all(np.diff(lengths[rows]) >= 0)  # consecutive in length order: padding only up to a neighbour
    for b in batches:
        padded = max(int(lengths[b].max()), 1)
        assert len(b) == 1 or len(b) * padded <= max_tokens
    for b, nxt in zip(batches, batches[1:]):  # filled: the next row would not have fitted
        assert (len(b) + 1) * max(int(lengths[nxt[0]]), 1) > max_tokens
