"""Decision threshold and probability calibration, fitted on validation predictions and stored with the model.

    validation (label, raw probability) ──cross-fitted log-loss──▶ Platt or isotonic, whichever is lower
                                        ──calibrated probability──▶ threshold (Youden's J, or a precision/recall target)

At scoring, `probability` is the calibrated probability and `prediction` = probability ≥ threshold. Everything is
stored as plain numbers (`Decision.to_dict`, read back by `Decision.from_dict`); models registered before this
existed have no decision stored and keep `NO_DECISION`: raw probability, threshold 0.5.

Why cross-fitted: isotonic regression fitted and measured on the same validation customers always looks better
than Platt (it memorises them), so each method's log-loss is measured on held-out folds of the validation set; the
winner is then refitted on all of it.

    >>> Decision(Calibration("platt", a=2.0, b=0.0), threshold=0.6).apply(np.array([0.5, 0.6]))[1].tolist()
    [0, 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Method = Literal["none", "platt", "isotonic"]
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logit and in the log-loss


@dataclass(frozen=True)
class ThresholdRule:
    """How the threshold is chosen on validation: Youden's J (max TPR − FPR), or the threshold that reaches a target
    precision (the lowest such threshold: most recall) or a target recall (the highest such: most precision).

    >>> ThresholdRule.parse("precision>=0.8")
    ThresholdRule(kind='precision', target=0.8)
    """

    kind: Literal["youden", "precision", "recall"] = "youden"
    target: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("youden", "precision", "recall"):
            raise ValueError(f"threshold rule must be youden, precision>=X or recall>=X, got {self.kind!r}")
        if self.kind != "youden" and (self.target is None or not 0.0 < self.target <= 1.0):
            raise ValueError(f"a {self.kind} target must be in (0, 1], got {self.target!r}")

    @classmethod
    def parse(cls, text: str) -> ThresholdRule:
        """'youden' | 'precision>=0.8' | 'recall>=0.7'."""
        text = text.strip().lower().replace(" ", "")
        if text == "youden":
            return cls()
        kind, sep, value = text.partition(">=")
        if not sep:
            raise ValueError(f"threshold rule must be youden, precision>=X or recall>=X, got {text!r}")
        try:
            target = float(value)
        except ValueError:
            raise ValueError(f"threshold rule {text!r}: {value!r} is not a number") from None
        return cls(kind, target)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "youden" if self.kind == "youden" else f"{self.kind}>={self.target:g}"


@dataclass(frozen=True)
class Calibration:
    """A monotone map raw probability -> calibrated probability.

    platt: sigmoid(a·logit(p) + b); isotonic: piecewise-linear through (x, y), flat outside (as sklearn's
    IsotonicRegression with out_of_bounds="clip"); none: identity.
    """

    method: Method = "none"
    a: float = 1.0
    b: float = 0.0
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()

    def apply(self, prob: np.ndarray) -> np.ndarray:
        prob = np.asarray(prob, dtype=np.float64)
        if self.method == "platt":
            return _sigmoid(self.a * _logit(prob) + self.b)
        if self.method == "isotonic":
            return np.interp(prob, self.x, self.y)
        return prob

    def to_dict(self) -> dict[str, Any]:
        if self.method == "platt":
            return {"method": "platt", "a": self.a, "b": self.b}
        if self.method == "isotonic":
            return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}
        return {"method": "none"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(d["method"], float(d.get("a", 1.0)), float(d.get("b", 0.0)),
                   tuple(map(float, d.get("x", ()))), tuple(map(float, d.get("y", ()))))


@dataclass(frozen=True)
class Decision:
    """What turns a model's raw probability into the scores' `probability` and `prediction`."""

    calibration: Calibration = field(default_factory=Calibration)
    threshold: float = 0.5
    rule: str = "default"  # how the threshold was chosen (ThresholdRule text, or why it is the default)
    val_logloss: dict[str, float] = field(default_factory=dict)  # raw / platt / isotonic (cross-fitted)
    val_customers: int = 0

    def apply(self, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """raw probabilities -> (calibrated probabilities, 0/1 predictions)."""
        calibrated = self.calibration.apply(prob)
        return calibrated, (calibrated >= self.threshold).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.calibration.to_dict(), "threshold": self.threshold, "rule": self.rule,
                "val_logloss": self.val_logloss, "val_customers": self.val_customers}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        return cls(Calibration.from_dict(d["calibration"]), float(d["threshold"]), str(d.get("rule", "")),
                   {k: float(v) for k, v in d.get("val_logloss", {}).items()}, int(d.get("val_customers", 0)))

    def summary(self) -> dict[str, str]:
        """Flat strings for model-version tags and run params."""
        return {"decision.threshold": f"{self.threshold:.6f}", "decision.rule": self.rule,
                "decision.calibration": self.calibration.method,
                **{f"decision.val_logloss_{k}": f"{v:.6f}" for k, v in self.val_logloss.items()}}


NO_DECISION = Decision(rule="default 0.5: no threshold stored with this model")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def log_loss(label: np.ndarray, prob: np.ndarray) -> float:
    p = np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(label, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def fit_calibration(label: np.ndarray, prob: np.ndarray, method: Method) -> Calibration:
    """Fit one calibration map on (label, raw probability)."""
    from sklearn.isotonic import IsotonicRegression  # lazily: scoring applies calibrations without sklearn
    from sklearn.linear_model import LogisticRegression

    if method == "platt":
        lr = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(prob)[:, None], label)
        return Calibration("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(prob, label)
        return Calibration("isotonic", x=tuple(map(float, iso.X_thresholds_)), y=tuple(map(float, iso.y_thresholds_)))
    return Calibration()


def cross_fitted_logloss(label: np.ndarray, prob: np.ndarray, method: Method, folds: int = 5, seed: int = 0) -> float:
    """Log-loss of `method` on held-out folds of (label, prob): each fold calibrated by a map fitted on the others."""
    from sklearn.model_selection import StratifiedKFold

    out = np.empty(len(prob))
    for fit_idx, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(prob, label):
        out[held] = fit_calibration(label[fit_idx], prob[fit_idx], method).apply(prob[held])
    return log_loss(label, out)


def choose_threshold(label: np.ndarray, prob: np.ndarray, rule: ThresholdRule = ThresholdRule()) -> tuple[float, str]:
    """(threshold, how it was chosen). A precision/recall target no threshold reaches falls back to Youden's J."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(label, prob, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # roc_curve's first threshold is +inf (nothing predicted positive)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if rule.kind != "youden":
        positives, negatives = label.sum(), len(label) - label.sum()
        tp, fp = tpr * positives, fpr * negatives
        precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
        ok = (precision if rule.kind == "precision" else tpr) >= rule.target - 1e-12
        if ok.any():
            # thresholds fall along the curve: the lowest reaching a precision target keeps most recall, the highest
            # reaching a recall target keeps most precision
            pick = np.flatnonzero(ok)[-1] if rule.kind == "precision" else np.flatnonzero(ok)[0]
            return float(thresholds[pick]), str(rule)
        fallback = f"youden ({rule} not reachable on validation)"
    else:
        fallback = "youden"
    return float(thresholds[int(np.argmax(tpr - fpr))]), fallback


def fit_decision(label: np.ndarray, prob: np.ndarray, rule: ThresholdRule = ThresholdRule(), folds: int = 5,
                 seed: int = 0) -> Decision:
    """Calibration (Platt or isotonic, lower cross-fitted validation log-loss) and threshold on the calibrated
    validation probabilities. Too few validation customers of one class (< `folds`): no calibration, threshold 0.5."""
    label = np.asarray(label, dtype=np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    keep = np.isfinite(prob)
    label, prob = label[keep], prob[keep]
    if len(label) == 0 or min(label.sum(), len(label) - label.sum()) < folds:
        return Decision(rule=f"default 0.5: too few validation customers of one class ({len(label)} in all)",
                        val_customers=len(label))
    losses = {"raw": log_loss(label, prob),
              **{m: cross_fitted_logloss(label, prob, m, folds, seed) for m in ("platt", "isotonic")}}
    method: Method = "platt" if losses["platt"] <= losses["isotonic"] else "isotonic"
    calibration = fit_calibration(label, prob, method)
    threshold, how = choose_threshold(label, calibration.apply(prob), rule)
    return Decision(calibration, threshold, how, {k: round(v, 6) for k, v in losses.items() if math.isfinite(v)},
                    len(label))
