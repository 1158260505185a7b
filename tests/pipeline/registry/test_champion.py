"""pipeline.registry.champion: the fair champion rule as a pure function (no MLflow here; see test_registry.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.registry.champion import (
    ChampionRule,
    Comparison,
    Contender,
    Decision,
    common_unseen,
    incumbent_unscorable,
    judge,
    newcomer_unscorable,
    plan,
)

LABELS = {i: i % 2 for i in range(1000)}  # 1,000 labelled customers, balanced
RULE = ChampionRule()  # the documented default: 100 customers, >= 10 of each class


def _good_and_bad(ids: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores that rank the labels well (noisy truth) and backwards."""
    rng = np.random.default_rng(seed)
    y = np.array([LABELS[i] for i in ids], dtype=float)
    good = y + rng.normal(0, 0.6, len(y))
    return good, -good


def test_no_champion_yet_the_newcomer_becomes_champion() -> None:
    d = plan(Contender("1", frozenset(range(800))), None, LABELS)
    assert isinstance(d, Decision) and d.promoted and "first champion" in d.reason


def test_compared_only_on_customers_neither_model_has_seen() -> None:
    new = Contender("2", frozenset(range(0, 600)))
    old = Contender("1", frozenset(range(300, 850)))  # another split: overlaps the newcomer's training customers
    step = plan(new, old, LABELS)
    assert isinstance(step, Comparison)
    assert step.customer_ids == tuple(range(850, 1000))
    assert step.labels == tuple(LABELS[i] for i in range(850, 1000))


@given(st.sets(st.integers(0, 999), max_size=900), st.sets(st.integers(0, 999), max_size=900))
@settings(max_examples=50, deadline=None)
def test_the_compared_customers_are_labelled_and_unseen_by_both(seen_new: set[int], seen_old: set[int]) -> None:
    ids = common_unseen(LABELS, frozenset(seen_new), frozenset(seen_old))
    assert list(ids) == sorted(ids)
    assert set(ids) == set(LABELS) - seen_new - seen_old


def test_a_bad_incumbent_is_displaced_by_a_good_newcomer() -> None:
    step = plan(Contender("2", frozenset(range(0, 600))), Contender("1", frozenset(range(400, 850))), LABELS)
    assert isinstance(step, Comparison)
    good, bad = _good_and_bad(step.customer_ids)
    d = judge(step, newcomer_prob=good, incumbent_prob=bad)
    assert d.promoted and d.newcomer_auroc > 0.7 > 0.3 > d.incumbent_auroc
    assert d.n_common == 150 and "v2" in d.reason and "beats champion v1" in d.reason and "150 customers" in d.reason


def test_a_good_incumbent_is_not_displaced_by_a_worse_newcomer() -> None:
    step = plan(Contender("3", frozenset(range(0, 600))), Contender("2", frozenset(range(400, 850))), LABELS)
    assert isinstance(step, Comparison)
    good, bad = _good_and_bad(step.customer_ids)
    d = judge(step, newcomer_prob=bad, incumbent_prob=good)
    assert not d.promoted and "does not beat champion v2" in d.reason and "champion kept" in d.reason


def test_a_tie_keeps_the_incumbent() -> None:
    step = plan(Contender("3", frozenset(range(600))), Contender("2", frozenset(range(600))), LABELS)
    good, _ = _good_and_bad(step.customer_ids)
    assert not judge(step, good, good.copy()).promoted


def test_too_few_common_customers_keeps_the_incumbent_without_rescoring() -> None:
    new = Contender("2", frozenset(range(0, 600)))
    old = Contender("1", frozenset(range(500, 920)))  # 80 customers unseen by both
    d = plan(new, old, LABELS)
    assert isinstance(d, Decision) and not d.promoted and d.n_common == 80
    assert "too few customers" in d.reason and "80" in d.reason and "neither model re-scored" in d.reason
    assert d.newcomer_auroc is None and d.incumbent_auroc is None


def test_enough_customers_but_too_few_of_one_class_is_too_few() -> None:
    labels = {i: int(i < 5) for i in range(200)}  # 5 of class 1
    d = plan(Contender("2", frozenset()), Contender("1", frozenset()), labels)
    assert isinstance(d, Decision) and not d.promoted and "5 of class 1" in d.reason


def test_the_minimum_is_configurable() -> None:
    step = plan(Contender("2", frozenset(range(0, 600))), Contender("1", frozenset(range(500, 920))), LABELS,
                ChampionRule(min_customers=50, min_per_class=5))
    assert isinstance(step, Comparison) and len(step.customer_ids) == 80


def test_unrecorded_fit_customers() -> None:
    recorded = Contender("2", frozenset(range(600)))
    assert not plan(Contender("3", None), recorded, LABELS).promoted  # an unrecorded newcomer never wins
    legacy = plan(recorded, Contender("1", None), LABELS)  # an incumbent from before the ids were recorded
    assert legacy.promoted and "no recorded training customers" in legacy.reason


def test_unscorable_models() -> None:
    step = plan(Contender("2", frozenset(range(600))), Contender("1", frozenset(range(600))), LABELS)
    assert incumbent_unscorable(step, "OSError: gone").promoted
    assert not newcomer_unscorable(step, "OSError: broken").promoted
