"""What a trained model carries for scoring besides its weights, fitted once training is done: the decision (threshold
and calibration, from validation predictions; `pipeline.scoring.calibration`) and the drift reference (training
customers' events and the calibrated test probabilities; `pipeline.scoring.drift`). `pipeline.training.run` fits one per
model and stores it with the pyfunc artifacts (config.json + reference.json), the run params and the model-version tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipeline import schema as S
from pipeline.scoring.calibration import Decision, ThresholdRule, fit_decision, log_loss
from pipeline.scoring.drift import Reference, fit_reference


@dataclass(frozen=True)
class ScoringCard:
    decision: Decision
    reference: Reference

    def tags(self) -> dict[str, str]:
        """Model-version tags and run params (flat strings)."""
        return self.decision.summary()


def fit_scoring_card(events: pl.LazyFrame, train_ids: Sequence[int], val_label: np.ndarray, val_prob: np.ndarray,
                   test_prob: np.ndarray, rule: ThresholdRule = ThresholdRule()) -> ScoringCard:
    decision = fit_decision(val_label, val_prob, rule)
    train = events.filter(pl.col(S.CUSTOMER_ID).is_in(pl.Series(list(train_ids), dtype=pl.Int64)))
    return ScoringCard(decision, fit_reference(train, decision.apply(test_prob)[0]))


def decision_metrics(decision: Decision, label: np.ndarray, raw_prob: np.ndarray) -> dict[str, float]:
    """Test metrics of the stored decision: calibrated log-loss and precision / recall / accuracy at the threshold."""
    label = np.asarray(label, dtype=np.int64)
    prob, pred = decision.apply(raw_prob)
    tp = float(((pred == 1) & (label == 1)).sum())
    return {
        "test/logloss_calibrated": log_loss(label, prob),
        "test/precision_at_threshold": tp / max(float(pred.sum()), 1.0),
        "test/recall_at_threshold": tp / max(float(label.sum()), 1.0),
        "test/accuracy_at_threshold": float((pred == label).mean()) if len(label) else float("nan"),
        "decision/threshold": decision.threshold,
    }
