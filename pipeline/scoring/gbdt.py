"""The gradient-boosting baseline: scikit-learn `HistGradientBoostingClassifier` on per-customer aggregates.

Same split, same metrics and same early-stopping rule as the neural models (the number of boosting rounds is the
one with the best validation ROC AUC). Persistence uses skops (MLflow's own safe format for scikit-learn, already
installed with MLflow) with an explicit list of trusted types: no pickle is ever loaded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from pipeline import schema as S
from pipeline.sequences.features import FeatureConfig, FeatureSpec, build_features, fit_feature_spec
from pipeline.metrics import MemoryMonitor, classification_metrics

if TYPE_CHECKING:  # scikit-learn loads only where a GBDT is built, saved or loaded: scoring a neural model skips it
    from sklearn.ensemble import HistGradientBoostingClassifier

log = logging.getLogger(__name__)

# The only non-builtin type a fitted HistGradientBoostingClassifier holds (checked by
# tests/pipeline/scoring/test_gbdt.py).
TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


@dataclass(frozen=True)
class GBDTConfig:
    max_iter: int = 400
    learning_rate: float = 0.05
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20
    l2_regularization: float = 1.0
    seed: int = 0
    features: FeatureConfig = field(default_factory=FeatureConfig)
    log_every: int = 50  # a progress line (round, validation ROC AUC, elapsed) every this many boosting rounds


def _classifier(config: GBDTConfig, max_iter: int) -> HistGradientBoostingClassifier:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=max_iter,
        learning_rate=config.learning_rate,
        max_leaf_nodes=config.max_leaf_nodes,
        min_samples_leaf=config.min_samples_leaf,
        l2_regularization=config.l2_regularization,
        early_stopping=False,
        random_state=config.seed,
    )


def fit_gbdt(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, config: GBDTConfig
) -> tuple[HistGradientBoostingClassifier, list[float]]:
    """Fit `max_iter` rounds, pick the round count with the best validation ROC AUC, refit to it (deterministic).

    Returns the model and the validation ROC AUC after each round.
    """
    full = _fit_in_stages(_classifier(config, config.max_iter), x_train, y_train, x_val, y_val, config.log_every)
    val_auc = [classification_metrics(y_val, p[:, 1])["auroc"] for p in full.staged_predict_proba(x_val)]
    best = int(np.nanargmax(val_auc)) + 1 if np.isfinite(val_auc).any() else len(val_auc)
    if best == full.n_iter_:
        return full, val_auc
    log.info("gbdt: refit to the best round count, %d (val auroc %.4f)", best, val_auc[best - 1])
    return _classifier(config, best).fit(x_train, y_train), val_auc


def fit_rounds(x: np.ndarray, y: np.ndarray, config: GBDTConfig, rounds: int) -> HistGradientBoostingClassifier:
    """A GBDT of `config` fitted with exactly `rounds` boosting rounds (the hybrid's cross-validation refits at the
    round count validation chose)."""
    return _classifier(config, rounds).fit(x, y)


def _fit_in_stages(
    model: HistGradientBoostingClassifier, x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, every: int
) -> HistGradientBoostingClassifier:
    """`model.fit` in warm-started stages of `every` rounds, logging progress after each (the same trees as one
    fit: warm starting keeps the bins and the trees and continues from the same raw predictions)."""
    total, t0 = model.max_iter, time.perf_counter()
    model.set_params(warm_start=True)
    for stop in range(min(every, total), total + every, every):
        model.set_params(max_iter=min(stop, total)).fit(x, y)
        auc = classification_metrics(y_val, model.predict_proba(x_val)[:, 1])["auroc"]
        log.info("gbdt: round %d/%d  val auroc %.4f  %.1f s", model.n_iter_, total, auc, time.perf_counter() - t0)
        if model.n_iter_ >= total:
            break
    return model.set_params(warm_start=False)


def save_gbdt(model: HistGradientBoostingClassifier, path: Path) -> Path:
    import skops.io as sio  # here, not at module level: importing skops imports all of scikit-learn (seconds)

    sio.dump(model, path)
    return path


def load_gbdt(path: Path) -> HistGradientBoostingClassifier:
    import skops.io as sio  # lazily, as in save_gbdt

    untrusted = set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES)
    if untrusted:
        raise ValueError(f"{path} holds types outside the trusted list: {sorted(untrusted)}")
    return sio.load(path, trusted=TRUSTED_TYPES)


def feature_matrix(features: pl.DataFrame, customer_ids: np.ndarray) -> np.ndarray:
    """Rows of `features` for `customer_ids`, in that order (customers with no events get NaN rows)."""
    ids = pl.DataFrame({S.CUSTOMER_ID: np.asarray(customer_ids, dtype=np.int64)})
    rows = ids.join(features, on=S.CUSTOMER_ID, how="left", maintain_order="left")
    return rows.drop(S.CUSTOMER_ID).to_numpy().astype(np.float64)


@dataclass
class GBDTRun:
    """A fitted baseline with its feature spec and the same metric keys the neural trainer reports."""

    model: HistGradientBoostingClassifier
    spec: FeatureSpec
    val_auroc_per_round: list[float]
    metrics: dict[str, float]
    test_prob: np.ndarray
    test_label: np.ndarray
    val_prob: np.ndarray | None = None  # for the decision threshold and calibration (pipeline.scoring.calibration)
    val_label: np.ndarray | None = None
    features: pl.DataFrame | None = None  # the split's customers' features (the hybrid's cross-validation)


def train_gbdt(
    events: pl.LazyFrame,
    labels: pl.DataFrame,
    split_ids: tuple[np.ndarray, np.ndarray, np.ndarray],
    config: GBDTConfig,
    extra_features: pl.DataFrame | None = None,
) -> GBDTRun:
    """Features (spec fitted on the training customers) -> fit with validation early stopping -> test metrics.

    `labels`: customer_id + label; `split_ids`: (train, val, test) customer ids; `extra_features`: customer_id +
    more columns appended to the aggregates (the hybrid model's frozen embeddings).
    """
    train_ids, val_ids, test_ids = (np.asarray(a, dtype=np.int64) for a in split_ids)
    memory = MemoryMonitor()
    memory.reset()
    t0 = time.perf_counter()
    spec = fit_feature_spec(events, train_ids.tolist(), config.features)
    wanted = pl.Series(np.concatenate([train_ids, val_ids, test_ids]), dtype=pl.Int64)
    features = build_features(events.filter(pl.col(S.CUSTOMER_ID).is_in(wanted)), spec).collect()
    if extra_features is not None:
        features = features.join(extra_features, on=S.CUSTOMER_ID, how="left")
    y = dict(zip(labels[S.CUSTOMER_ID].to_list(), labels[S.LABEL].to_list(), strict=True))
    unlabelled = sorted({int(i) for i in wanted.to_list()} - y.keys())
    if unlabelled:  # a split over customers the labels (or the sequences table) do not hold: say so, not KeyError
        raise ValueError(f"{len(unlabelled)} customers of the split have no label (e.g. {unlabelled[:5]}); "
                         "rebuild the sequences folder (`txseq sequences`) so the split only holds labelled customers")

    def xy(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return feature_matrix(features, ids), np.array([y[i] for i in ids], dtype=np.float64)

    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = xy(train_ids), xy(val_ids), xy(test_ids)
    model, val_auc = fit_gbdt(x_tr, y_tr, x_va, y_va, config)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    test_prob = model.predict_proba(x_te)[:, 1]
    infer_s = time.perf_counter() - t1
    val_prob = model.predict_proba(x_va)[:, 1]
    val = classification_metrics(y_va, val_prob)
    test = classification_metrics(y_te, test_prob)
    metrics = {
        **{f"val/{k}": v for k, v in val.items()},
        **{f"test/{k}": v for k, v in test.items()},
        "time/train_s": train_s,
        "time/epoch_s": train_s,
        "throughput/train_customers_per_s": len(train_ids) / max(train_s, 1e-9),
        "throughput/infer_customers_per_s": len(test_ids) / max(infer_s, 1e-9),
        "params/n_parameters": float(sum(p.nodes.size for p in _predictors(model))),
        "gbdt/n_rounds": float(model.n_iter_),
        **memory.read(),
    }
    return GBDTRun(model, spec, val_auc, metrics, test_prob, y_te, val_prob, y_va, features)


def _predictors(model: HistGradientBoostingClassifier) -> list:
    """The fitted trees (one per round for a binary task): their node count stands in for a parameter count."""
    return [tree for round_ in model._predictors for tree in round_]  # noqa: SLF001 - read-only size report
