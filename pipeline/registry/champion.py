"""The champion rule, a pure function: which registered version should hold the `champion` alias.

Two models are compared only on customers that **neither** of them trained or validated on (their "fit customers",
recorded for every version), and only with both models scored on exactly the same labelled customers:

    plan(newcomer, incumbent, labels)  ->  Decision                     (nothing to score: first champion, ...)
                                       or  Comparison(customer_ids)     (score both models on these customers)
    judge(comparison, newcomer_prob, incumbent_prob) -> Decision        (strictly higher ROC AUC wins; a tie keeps)

A comparison needs at least `ChampionRule.min_customers` common unseen customers with at least
`min_per_class` of each class; with fewer, the incumbent stays and the reason says that it was *not* re-scored.
A version whose fit customers are not recorded cannot be compared fairly: as a newcomer it is never promoted over
an incumbent; as an incumbent (registered before the ids were recorded) it gives way to a recorded newcomer.

    >>> new = Contender("2", frozenset({1, 2}))
    >>> old = Contender("1", frozenset({3, 4}))
    >>> labels = {i: i % 2 for i in range(1, 9)}
    >>> plan(new, old, labels, ChampionRule(min_customers=4, min_per_class=2)).customer_ids
    (5, 6, 7, 8)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class ChampionRule:
    """How many common unseen customers a fair comparison needs. 100 customers with at least 10 of each class keeps
    the standard error of a ROC AUC around 0.8 near 0.04: below that a re-score says little."""

    min_customers: int = 100
    min_per_class: int = 10


@dataclass(frozen=True)
class Contender:
    """A registered version as the rule sees it: its fit customers (training + validation ids; None = not recorded)."""

    version: str
    fit_ids: frozenset[int] | None


@dataclass(frozen=True)
class Comparison:
    """Both models are to be scored on these labelled customers (sorted), which neither of them has seen."""

    newcomer: Contender
    incumbent: Contender
    customer_ids: tuple[int, ...]
    labels: tuple[int, ...]  # label of each customer, same order


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    n_common: int = 0
    newcomer_auroc: float | None = None
    incumbent_auroc: float | None = None


def common_unseen(labels: Mapping[int, int], *fit_ids: frozenset[int]) -> tuple[int, ...]:
    """Labelled customers in none of the `fit_ids` sets, sorted."""
    seen = frozenset().union(*fit_ids)
    return tuple(sorted(c for c in labels if c not in seen))


def plan(newcomer: Contender, incumbent: Contender | None, labels: Mapping[int, int],
         rule: ChampionRule = ChampionRule()) -> Decision | Comparison:
    """Decide at once when no scoring is needed (or possible), else name the customers to score both models on.

    `labels`: customer id -> label of every labelled customer the caller can score (its current data)."""
    if incumbent is None:
        return Decision(True, f"v{newcomer.version}: first champion")
    if incumbent.version == newcomer.version:
        return Decision(False, f"v{newcomer.version} is already champion")
    if newcomer.fit_ids is None:
        return Decision(False, f"v{newcomer.version} has no recorded training customers, so it cannot be compared "
                               f"fairly; champion v{incumbent.version} kept (not re-scored)")
    if incumbent.fit_ids is None:
        return Decision(True, f"champion v{incumbent.version} has no recorded training customers (registered before "
                              f"they were recorded), so it cannot be compared fairly; v{newcomer.version} replaces it")
    ids = common_unseen(labels, newcomer.fit_ids, incumbent.fit_ids)
    y = [int(labels[c]) for c in ids]
    n_pos = sum(y)
    if len(ids) < rule.min_customers or min(n_pos, len(y) - n_pos) < rule.min_per_class:
        return Decision(False, f"too few customers unseen by both v{newcomer.version} and champion "
                               f"v{incumbent.version}: {len(ids)} ({n_pos} of class 1) where {rule.min_customers} with "
                               f">= {rule.min_per_class} of each class are needed; champion kept, neither model "
                               f"re-scored", n_common=len(ids))
    return Comparison(newcomer, incumbent, ids, tuple(y))


def auroc(labels: np.ndarray, prob: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, prob)) if len(np.unique(labels)) == 2 else float("nan")


def judge(comparison: Comparison, newcomer_prob: np.ndarray, incumbent_prob: np.ndarray, route: str = "") -> Decision:
    """Both models' ROC AUC on the comparison's customers; the newcomer wins only when strictly better."""
    y = np.asarray(comparison.labels)
    if not len(newcomer_prob) == len(incumbent_prob) == len(y):
        raise ValueError(f"scores for {len(newcomer_prob)} and {len(incumbent_prob)} customers, expected {len(y)}")
    new, old = auroc(y, newcomer_prob), auroc(y, incumbent_prob)
    beats = math.isfinite(new) and (not math.isfinite(old) or new > old)
    n, v_new, v_old = len(y), comparison.newcomer.version, comparison.incumbent.version
    verb = "beats" if beats else "does not beat"
    outcome = "promoted" if beats else "champion kept"
    how = f" ({route})" if route else ""
    return Decision(beats, f"v{v_new} {new:.4f} {verb} champion v{v_old} {old:.4f} on the {n} customers neither "
                           f"trained or validated on{how}; {outcome}", n, new, old)


def incumbent_unscorable(comparison: Comparison, error: str) -> Decision:
    """The champion cannot be loaded or scored any more (artifacts gone, ...): it cannot stay champion."""
    return Decision(True, f"champion v{comparison.incumbent.version} could not be scored ({error}); "
                          f"v{comparison.newcomer.version} replaces it", len(comparison.customer_ids))


def newcomer_unscorable(comparison: Comparison, error: str) -> Decision:
    return Decision(False, f"v{comparison.newcomer.version} could not be scored ({error}); champion "
                           f"v{comparison.incumbent.version} kept", len(comparison.customer_ids))
