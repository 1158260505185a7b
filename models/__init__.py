"""Sequence models for card-transaction logs (imports only torch).

    cfg = ModelConfig(n_mcc=200, n_tr_type=80, encoder="performer", encoder_config=PerformerConfig(nb_features=64))
    model = build_model(cfg)               # SequenceClassifier
    out = model(batch)                     # ClassifierOutput(logit (B,), aux_loss ())
    ENCODERS["performer"]                  # EncoderEntry(encoder_cls, config_cls, in_comparison)
"""

from __future__ import annotations

from models.batch import Batch
from models.classifier import ClassifierOutput, ModelConfig, Pooling, SequenceClassifier, build_model
from models.embedding import TransactionEmbedding
from models.encoders import (
    ENCODERS,
    EAMConfig,
    EncoderEntry,
    EncoderOutput,
    InfiniteFormerConfig,
    PerformerConfig,
    TransformerConfig,
    build_encoder,
    canonical_encoder_name,
    comparison_encoders,
    encoder_entry,
    pop_stats,
)

__all__ = [
    "ENCODERS",
    "Batch",
    "ClassifierOutput",
    "EAMConfig",
    "EncoderEntry",
    "EncoderOutput",
    "InfiniteFormerConfig",
    "ModelConfig",
    "PerformerConfig",
    "Pooling",
    "SequenceClassifier",
    "TransactionEmbedding",
    "TransformerConfig",
    "build_encoder",
    "build_model",
    "canonical_encoder_name",
    "comparison_encoders",
    "encoder_entry",
    "pop_stats",
]
