"""Sequence models for card-transaction logs (imports only torch).

    cfg = ModelConfig(n_mcc=200, n_tr_type=80, encoder="performer")
    model = build_model(cfg)               # SequenceClassifier
    out = model(batch)                     # ClassifierOutput(logit (B,), aux_loss ())
"""

from __future__ import annotations

from models.batch import Batch
from models.classifier import ClassifierOutput, ModelConfig, Pooling, SequenceClassifier, build_model
from models.embedding import TransactionEmbedding
from models.encoders import (
    ALIASES,
    ENCODERS,
    EAMConfig,
    EncoderOutput,
    InfiniteFormerConfig,
    PerformerConfig,
    canonical_encoder_name,
)

__all__ = [
    "ALIASES",
    "ENCODERS",
    "Batch",
    "ClassifierOutput",
    "EAMConfig",
    "EncoderOutput",
    "InfiniteFormerConfig",
    "ModelConfig",
    "PerformerConfig",
    "Pooling",
    "SequenceClassifier",
    "TransactionEmbedding",
    "build_model",
    "canonical_encoder_name",
]
