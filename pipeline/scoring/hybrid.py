"""The hybrid model: the GBDT on aggregates and a linear probe on the frozen CoLES embedding, their logits blended
with a weight chosen by cross-validation on the labelled customers.

    aggregates ─GBDT (validation early stopping, as `gbdt`)─────▶ logit_g ┐
    embedding  ─LinearProbe (`pipeline.scoring.probe`, C by CV on train)─▶ logit_p ┴▶ w·logit_g + (1−w)·logit_p ─σ─▶ probability
    w from 0, 0.1, …, 1 by stratified 5-fold CV over train ∪ validation (the GBDT at the round count validation
    chose, the probe at its C); w = 1 is the plain GBDT, the choice on ties.

Why not the GBDT on [aggregates | embedding] (the first hybrid): on a few hundred labels the trees overfit 64 more
columns and a validation set of sixty customers cannot tell; a cross-validated linear read-out of the embedding does
not overfit, and the blend weight lets the labels say how much of it to trust (0 on data where it adds nothing).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline import schema as S
from pipeline.scoring.gbdt import GBDTConfig, GBDTRun, feature_matrix, fit_rounds, train_gbdt
from pipeline.metrics import classification_metrics
from pipeline.scoring.probe import LinearProbe, blend_logit, choose_blend_weight, fit_probe, sigmoid


@dataclass
class HybridRun:
    """A fitted hybrid: the GBDT run (aggregates), the probe, the blend weight and the cross-validated ROC AUC of
    each weight tried; probabilities and metrics under the GBDT's keys."""

    gbdt: GBDTRun
    probe: LinearProbe
    weight: float
    cv_auroc: dict[float, float]
    metrics: dict[str, float]
    val_prob: np.ndarray
    val_label: np.ndarray
    test_prob: np.ndarray
    test_label: np.ndarray


def embedding_rows(embeddings: pl.DataFrame, customer_ids: np.ndarray, dim: int) -> np.ndarray:
    """(N, dim) embedding rows for `customer_ids` in that order; NaN for a customer without one."""
    if embeddings.width <= 1:  # no customer had a sequence: nothing but the id column
        return np.full((len(customer_ids), dim), np.nan)
    return feature_matrix(embeddings, customer_ids)


def fit_hybrid(events: pl.LazyFrame, labels: pl.DataFrame, split_ids: tuple[np.ndarray, np.ndarray, np.ndarray],
               config: GBDTConfig, embeddings: pl.DataFrame, *, folds: int = 5, cv_rows: int = 20_000
               ) -> HybridRun:
    """Fit the GBDT (`train_gbdt`, aggregates only), the probe on the training customers' embeddings, and the blend
    weight by cross-validation on train ∪ validation (a seeded sample of `cv_rows` when there are more).

    `labels`: customer_id + label; `embeddings`: customer_id + emb_0 … of every customer of the split."""
    t0 = time.perf_counter()
    run = train_gbdt(events, labels, split_ids, config)
    train_ids, val_ids, test_ids = (np.asarray(a, dtype=np.int64) for a in split_ids)
    y = dict(zip(labels[S.CUSTOMER_ID].to_list(), labels[S.LABEL].to_list(), strict=True))
    dim = embeddings.width - 1

    def xy(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (feature_matrix(run.features, ids), embedding_rows(embeddings, ids, dim),
                np.array([y[int(i)] for i in ids], dtype=np.int64))

    _, e_tr, y_tr = xy(train_ids)
    probe = fit_probe(e_tr, y_tr, seed=config.seed)

    pool = np.concatenate([train_ids, val_ids])
    if len(pool) > cv_rows:
        pool = np.sort(np.random.default_rng(config.seed).permutation(pool)[:cv_rows])
    a_pool, e_pool, y_pool = xy(pool)
    n_folds = int(min(folds, np.bincount(y_pool, minlength=2).min()))
    if n_folds >= 2:
        from sklearn.model_selection import StratifiedKFold

        oof_g, oof_p = np.empty(len(pool)), np.empty(len(pool))
        for a, b in StratifiedKFold(n_folds, shuffle=True, random_state=config.seed).split(a_pool, y_pool):
            oof_g[b] = fit_rounds(a_pool[a], y_pool[a], config, run.model.n_iter_).decision_function(a_pool[b])
            oof_p[b] = fit_probe(e_pool[a], y_pool[a], c=probe.c).logit(e_pool[b])
        weight, cv_auroc = choose_blend_weight(oof_g, oof_p, y_pool)
    else:  # too few labels of one class to cross-validate: the GBDT alone
        weight, cv_auroc = 1.0, {}

    def prob(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        agg, emb, label = xy(ids)
        return sigmoid(blend_logit(run.model.decision_function(agg), probe.logit(emb), weight)), label

    (val_prob, val_label), (test_prob, test_label) = prob(val_ids), prob(test_ids)
    metrics = {
        **run.metrics,
        **{f"val/{k}": v for k, v in classification_metrics(val_label, val_prob).items()},
        **{f"test/{k}": v for k, v in classification_metrics(test_label, test_prob).items()},
        "time/train_s": time.perf_counter() - t0,
        "hybrid/blend_weight": weight,
        "hybrid/probe_c": probe.c,
        **({"hybrid/cv_auroc_gbdt": cv_auroc[1.0], "hybrid/cv_auroc_probe": cv_auroc[0.0],
            "hybrid/cv_auroc_blend": cv_auroc[weight]} if cv_auroc else {}),
    }
    return HybridRun(run, probe, weight, cv_auroc, metrics, val_prob, val_label.astype(np.float64), test_prob,
                     test_label.astype(np.float64))
