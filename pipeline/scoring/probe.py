"""Linear probes on frozen customer embeddings: what a few hundred labels can afford on top of a pretrained encoder.

    embedding (N, D) ─standardise (train mean/sd)─▶ L2 logistic regression, C chosen by stratified k-fold ROC AUC
                                                     on the training labels ─▶ LinearProbe (plain numbers, numpy)

Why: a GBDT or a fine-tuned network on a 64-d embedding overfits a few hundred labels; a regularised linear read-out
whose strength is chosen by cross-validation does not (pytorch-lifestream's small-label gain comes from frozen CoLES
embeddings under a well-regularised downstream model, not from fine-tuning). Two uses:
- `probe_head`: a `<encoder>_coles` classifier's head starts as the probe of its frozen pretrained embedding, so
  fine-tuning starts from a read-out that already works, and the probe alone competes with the fine-tuned model.
- `blend_logit` / `choose_blend_weight`: the hybrid mixes the GBDT's and the probe's logits with a weight chosen by
  cross-validation on the labelled customers (`pipeline.scoring.hybrid`).
The probe is stored as JSON numbers and applied with numpy: scoring needs no scikit-learn object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 1, 11))  # inverse L2 strengths tried
BLEND_GRID: tuple[float, ...] = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 11))  # GBDT's share of the logit


@dataclass(frozen=True)
class LinearProbe:
    """logit = ((x - mean) / scale) · coef + intercept; a missing (NaN) input counts as the training mean."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    c: float  # the inverse L2 strength cross-validation chose

    def logit(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.scale
        return np.nan_to_num(z, nan=0.0) @ self.coef + self.intercept

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "scale": self.scale.tolist(), "coef": self.coef.tolist(),
                "intercept": float(self.intercept), "c": float(self.c)}

    @classmethod
    def from_dict(cls, d: dict) -> LinearProbe:
        return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["scale"], dtype=np.float64),
                   np.asarray(d["coef"], dtype=np.float64), float(d["intercept"]), float(d["c"]))


def _folds(y: np.ndarray, folds: int) -> int:
    """Stratified folds the labels allow: at most `folds`, at most the rarer class's count (0: too few to split)."""
    counts = np.bincount(y.astype(np.int64), minlength=2)
    n = int(min(folds, counts.min()))
    return n if n >= 2 else 0


def fit_probe(x: np.ndarray, y: np.ndarray, *, c: float | None = None, folds: int = 5, seed: int = 0,
              grid: Sequence[float] = C_GRID, cv_rows: int = 20_000) -> LinearProbe:
    """L2 logistic regression on standardised `x` (NaN -> the column mean). `c` None: chosen from `grid` by
    stratified `folds`-fold ROC AUC on (x, y) (on a seeded sample of `cv_rows` rows when there are more), the
    smaller C (stronger penalty) on ties; 1.0 when the labels are too few to split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel().astype(np.int64)
    if np.unique(y).size < 2:
        raise ValueError(f"a linear probe needs both classes among its {len(y)} training labels")
    mean = np.nanmean(x, axis=0) if len(x) else np.zeros(x.shape[1])
    mean = np.nan_to_num(mean, nan=0.0)
    scale = np.nan_to_num(np.nanstd(x, axis=0), nan=0.0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = np.nan_to_num((x - mean) / scale, nan=0.0)

    def model(strength: float) -> LogisticRegression:
        return LogisticRegression(C=strength, max_iter=2000)

    if c is None:
        rows = np.arange(len(y))
        if len(rows) > cv_rows:
            rows = np.sort(np.random.default_rng(seed).permutation(len(y))[:cv_rows])
        zc, yc = z[rows], y[rows]
        n_folds = _folds(yc, folds)
        if n_folds:
            from sklearn.metrics import roc_auc_score

            split = list(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(zc, yc))
            scores = []
            for strength in grid:
                oof = np.empty(len(yc))
                for a, b in split:
                    oof[b] = model(strength).fit(zc[a], yc[a]).decision_function(zc[b])
                scores.append(roc_auc_score(yc, oof))
            c = float(grid[int(np.argmax(scores))])  # argmax takes the first best: the strongest penalty
        else:
            c = 1.0
    fitted = model(c).fit(z, y)
    return LinearProbe(mean, scale, fitted.coef_.ravel().astype(np.float64), float(fitted.intercept_[0]), float(c))


def blend_logit(gbdt_logit: np.ndarray, probe_logit: np.ndarray, weight: float) -> np.ndarray:
    """weight × the GBDT's logit + (1 − weight) × the probe's."""
    return weight * np.asarray(gbdt_logit, dtype=np.float64) + (1.0 - weight) * np.asarray(probe_logit,
                                                                                           dtype=np.float64)


def choose_blend_weight(gbdt_logit: np.ndarray, probe_logit: np.ndarray, y: np.ndarray,
                        grid: Sequence[float] = BLEND_GRID) -> tuple[float, dict[float, float]]:
    """The weight of `grid` whose blend of out-of-fold logits has the best ROC AUC on `y`, and the AUC of each; on
    ties the larger GBDT share (the established model unless the probe adds something)."""
    from sklearn.metrics import roc_auc_score

    aucs = {float(w): float(roc_auc_score(y, blend_logit(gbdt_logit, probe_logit, w))) for w in grid}
    best = max(aucs.values())
    return max(w for w, a in aucs.items() if a >= best - 1e-12), aucs


def sigmoid(logit: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-logit), without overflow."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(logit, dtype=np.float64)))
