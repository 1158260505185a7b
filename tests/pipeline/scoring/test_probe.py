"""Linear probes on frozen embeddings: the probe itself, the blend weight, a classifier head set to the probe, and
`<encoder>_coles` keeping the probe when fine-tuning does not beat it on validation, and averaging the probe's and the
fine-tuned weights when it does."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F

from models import ModelConfig, build_model
from pipeline.sequences.batches import SequenceDataset, make_loader, numeric_stats
from pipeline.scoring.embeddings import embed, probe_head
from pipeline.metrics import classification_metrics
from pipeline.training.presets import tiny
from pipeline.scoring.probe import LinearProbe, blend_logit, choose_blend_weight, fit_probe, sigmoid
from pipeline.training.train import FitResult, TrainConfig, evaluate
from pipeline.training.trainers import FINE_TUNED_SHARE, probe_then_fine_tune, weight_average

from _train_data import synthetic_sequences  # tests/pipeline is on sys.path


def _signal(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two informative columns (on very different scales) among eight of noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 10))
    x[:, 0] += 1.5 * y
    x[:, 1] = 1000.0 * (x[:, 1] - y)
    return x, y


def test_the_probe_reads_the_signal_and_travels_as_json() -> None:
    x, y = _signal()
    probe = fit_probe(x, y)
    x_test, y_test = _signal(seed=1)
    assert classification_metrics(y_test, sigmoid(probe.logit(x_test)))["auroc"] > 0.85
    assert probe.coef[0] > 0 > probe.coef[1]  # standardised: the 1000× column gets no outsized weight
    again = LinearProbe.from_dict(json.loads(json.dumps(probe.to_dict())))
    np.testing.assert_array_equal(again.logit(x_test), probe.logit(x_test))
    missing = np.full((1, 10), np.nan)  # a customer without an embedding scores as the training mean
    assert again.logit(missing)[0] == pytest.approx(probe.intercept)


def test_a_given_strength_is_used_and_one_class_is_refused() -> None:
    x, y = _signal(n=60)
    assert fit_probe(x, y, c=0.01).c == 0.01
    assert np.abs(fit_probe(x, y, c=1e-4).coef).sum() < np.abs(fit_probe(x, y, c=10.0).coef).sum()
    with pytest.raises(ValueError, match="both classes"):
        fit_probe(x, np.zeros(60))


def test_the_blend_weight_follows_the_part_that_ranks() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    good, noise = y + rng.normal(scale=0.5, size=300), rng.normal(size=300)
    assert choose_blend_weight(noise, good, y)[0] == 0.0  # the probe alone
    assert choose_blend_weight(good, noise, y)[0] == 1.0  # the GBDT alone
    weight, aucs = choose_blend_weight(good, good, y)  # level everywhere: the GBDT's share wins the tie
    assert weight == 1.0 and len(set(aucs.values())) == 1
    np.testing.assert_allclose(blend_logit(good, noise, 0.3), 0.3 * good + 0.7 * noise)


@pytest.fixture(scope="module")
def encoder():
    table = synthetic_sequences(n=160, seed=2)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_mcc=24, n_tr_type=8, **tiny().model_kwargs("transformer")))
    train, val = SequenceDataset(table, list(range(120))), SequenceDataset(table, list(range(120, 160)))
    model.embedding.set_numeric_stats(*numeric_stats(train))
    return model, train, val


def test_the_head_set_to_the_probe_gives_the_probes_logit(encoder) -> None:
    model, train, _ = encoder
    with torch.no_grad():
        model.head[0].weight.mul_(3.0)  # a head that is not at its initial state: the probe resets it
    probe = probe_head(model, train, batch_size=32)
    out = evaluate(model, make_loader(train, batch_size=32), torch.device("cpu"), "fp32")
    cid, emb = embed(model, train, 32)
    expected = sigmoid(probe.logit(F.layer_norm(torch.from_numpy(emb), (emb.shape[1],)).double().numpy()))
    order = np.argsort(out["customer_id"])
    np.testing.assert_array_equal(out["customer_id"][order], cid)
    np.testing.assert_allclose(out["prob"][order], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fine_tuned_auroc, keeps", [(-1.0, "probe"), (2.0, "average")])
def test_the_probe_is_kept_unless_fine_tuning_beats_it_on_validation_then_the_weights_are_averaged(
        encoder, fine_tuned_auroc: float, keeps: str) -> None:
    model, train, val = encoder
    fine_tuned = {}

    def run_fit() -> FitResult:  # stands in for `fit`: moves the weights, reports a best validation AUC
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1)
        fine_tuned.update({k: v.clone() for k, v in model.state_dict().items()})
        return FitResult([], 40, fine_tuned_auroc, 0.0, 40, False, 0, "cpu")

    result = probe_then_fine_tune(model, train, val, 32, TrainConfig(device="cpu"), run_fit)
    state = model.state_dict()
    params = {name for name, _ in model.named_parameters()}
    out = evaluate(model, make_loader(val, batch_size=32), torch.device("cpu"), "fp32")
    assert classification_metrics(out["label"], out["prob"])["auroc"] == pytest.approx(result.best_val_auroc)
    if keeps == "probe":
        assert result.best_step == 0 and 0.0 <= result.best_val_auroc <= 1.0
        assert all(not torch.equal(state[k], fine_tuned[k]) for k in params)
    else:  # every weight half-way back from the fine-tuned one (+0.1) to the probe's; buffers the fine-tuned ones
        assert result.best_step == 40 and 0.0 <= result.best_val_auroc <= 1.0
        for k, v in state.items():
            expected = fine_tuned[k] - (1 - FINE_TUNED_SHARE) * 0.1 if k in params else fine_tuned[k]
            torch.testing.assert_close(v, expected, rtol=0, atol=1e-6)


@given(alpha=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_weight_average_interpolates_parameters_and_takes_the_end_buffers(alpha: float, seed: int) -> None:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))  # buffers: float stats, int counter
    start = {k: torch.randn_like(v) if v.is_floating_point() else v + 1 for k, v in model.state_dict().items()}
    end = {k: torch.randn_like(v) if v.is_floating_point() else v + 7 for k, v in model.state_dict().items()}
    out = weight_average(model, start, end, alpha)
    params = {name for name, _ in model.named_parameters()}
    assert out.keys() == end.keys() and params < out.keys()
    for k, v in out.items():
        if k in params:
            torch.testing.assert_close(v, start[k] + alpha * (end[k] - start[k]), rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(v, end[k])
    ends = weight_average(model, start, end, 0.0), weight_average(model, start, end, 1.0)
    assert all(torch.equal(ends[0][k], start[k]) and torch.equal(ends[1][k], end[k]) for k in params)
