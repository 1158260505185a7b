"""Decision threshold and calibration: fitted on validation predictions, stored as numbers, applied at scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_curve

from pipeline.scoring.calibration import (
    NO_DECISION,
    Calibration,
    Decision,
    ThresholdRule,
    choose_threshold,
    fit_calibration,
    fit_decision,
    log_loss,
)


def _sample(n: int, seed: int, true_map) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores p ~ U(0.02, 0.98), labels ~ Bernoulli(true_map(p)): p is miscalibrated by `true_map`."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, n)
    return (rng.random(n) < true_map(p)).astype(np.int64), p


def _sharpen(p: np.ndarray) -> np.ndarray:  # a sigmoid-shaped miscalibration: Platt's own family
    z = np.log(p / (1 - p))
    return 1 / (1 + np.exp(-(2.5 * z - 0.4)))


def _step(p: np.ndarray) -> np.ndarray:  # a step: no sigmoid fits it, isotonic does
    return np.where(p < 0.5, 0.15, 0.85)


@pytest.mark.parametrize(("true_map", "method"), [(_sharpen, "platt"), (_step, "isotonic")])
def test_the_method_with_the_lower_held_out_logloss_is_chosen_and_improves_fresh_data(true_map, method) -> None:
    label, prob = _sample(4000, 0, true_map)
    d = fit_decision(label, prob)
    assert d.calibration.method == method
    assert d.val_logloss[method] < d.val_logloss["raw"]
    fresh_label, fresh_prob = _sample(4000, 1, true_map)
    assert log_loss(fresh_label, d.apply(fresh_prob)[0]) < log_loss(fresh_label, fresh_prob)


def test_youden_threshold_maximises_tpr_minus_fpr() -> None:
    label, prob = _sample(1500, 2, _sharpen)
    threshold, how = choose_threshold(label, prob)
    fpr, tpr, thr = roc_curve(label, prob, drop_intermediate=False)
    assert how == "youden"
    pred = prob >= threshold
    j = pred[label == 1].mean() - pred[label == 0].mean()
    assert j == pytest.approx(np.max(tpr - fpr))


@pytest.mark.parametrize("target", [0.6, 0.75, 0.9])
def test_a_precision_target_is_met_with_the_most_recall(target: float) -> None:
    label, prob = _sample(2000, 3, _sharpen)
    threshold, how = choose_threshold(label, prob, ThresholdRule("precision", target))
    assert how == f"precision>={target:g}"
    pred = prob >= threshold
    assert label[pred].mean() >= target
    lower = prob[prob < threshold]  # every lower threshold misses the target
    for t in np.sort(lower)[-25:]:
        assert label[prob >= t].mean() < target


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95])
def test_a_recall_target_is_met_with_the_highest_threshold(target: float) -> None:
    label, prob = _sample(2000, 4, _sharpen)
    threshold, _ = choose_threshold(label, prob, ThresholdRule("recall", target))
    assert (prob[label == 1] >= threshold).mean() >= target
    higher = np.sort(prob[prob > threshold])[:25]
    for t in higher:
        assert (prob[label == 1] >= t).mean() < target


def test_an_unreachable_target_falls_back_to_youden() -> None:
    label, prob = _sample(500, 5, lambda p: np.full_like(p, 0.5))  # no signal: precision stays ~0.5 ...
    label[np.argsort(prob)[-5:]] = 0  # ... down to the top scores
    _, how = choose_threshold(label, prob, ThresholdRule("precision", 0.99))
    assert how.startswith("youden (precision>=0.99 not reachable")


def test_rules_parse_and_reject_nonsense() -> None:
    assert ThresholdRule.parse("Recall >= 0.7") == ThresholdRule("recall", 0.7)
    assert str(ThresholdRule.parse("precision>=0.8")) == "precision>=0.8"
    for bad in ("f1", "precision>=x", "recall>=1.5", "precision"):
        with pytest.raises(ValueError):
            ThresholdRule.parse(bad)


@pytest.mark.parametrize("true_map", [_sharpen, _step])
def test_the_decision_survives_a_json_round_trip(true_map) -> None:
    label, prob = _sample(800, 6, true_map)
    d = fit_decision(label, prob, ThresholdRule("recall", 0.8))
    back = Decision.from_dict(json.loads(json.dumps(d.to_dict())))
    assert back == d
    np.testing.assert_array_equal(back.apply(prob)[0], d.apply(prob)[0])


def test_without_a_stored_decision_probabilities_pass_through_at_0_5() -> None:
    p = np.array([0.0, 0.3, 0.5, 0.99])
    prob, pred = NO_DECISION.apply(p)
    np.testing.assert_array_equal(prob, p)
    assert pred.tolist() == [0, 0, 1, 1]


def test_one_class_validation_keeps_the_default() -> None:
    d = fit_decision(np.zeros(50, dtype=int), np.linspace(0, 1, 50))
    assert d.calibration.method == "none" and d.threshold == 0.5


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["platt", "isotonic"]))
def test_calibration_maps_are_monotone_and_stay_in_0_1(seed: int, method: str) -> None:
    label, prob = _sample(300, seed, _sharpen)
    cal = fit_calibration(label, prob, method)
    grid = np.linspace(0, 1, 501)
    out = cal.apply(grid)
    assert np.all(np.diff(out) >= -1e-12) and out.min() >= 0 and out.max() <= 1
    assert Calibration.from_dict(cal.to_dict()) == cal
