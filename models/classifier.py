"""The model: TransactionEmbedding -> encoder -> masked mean (or CLS) pooling -> binary head; and its one builder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import nn

from models.batch import Batch
from models.embedding import TransactionEmbedding
from models.encoders import build_encoder, encoder_entry

Pooling = Literal["mean", "cls"]


@dataclass(frozen=True)
class ModelConfig:
    n_mcc: int  # vocabulary sizes including padding (0) and unknown (1)
    n_tr_type: int
    encoder: str = "transformer"  # a key of ENCODERS
    n_numeric: int = 4
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    pooling: Pooling = "mean"
    mcc_dim: int = 32
    tr_type_dim: int = 16
    numeric_dim: int = 16
    time_dim: int = 16  # sinusoidal features of the time before the customer's last event; 0 = none
    encoder_config: Any = None  # an instance of ENCODERS[encoder].config_cls; None = its defaults

    def __post_init__(self) -> None:
        entry = encoder_entry(self.encoder)
        if self.encoder_config is None:
            object.__setattr__(self, "encoder_config", entry.config_cls())
        elif not isinstance(self.encoder_config, entry.config_cls):
            raise ValueError(f"encoder {self.encoder!r} takes a {entry.config_cls.__name__} as encoder_config, "
                             f"got {type(self.encoder_config).__name__}")
        if self.pooling not in get_args(Pooling):
            raise ValueError(f"pooling must be one of {get_args(Pooling)}, got {self.pooling!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if min(self.n_mcc, self.n_tr_type) < 2:
            raise ValueError("vocabulary sizes include padding (0) and unknown (1): they must be >= 2")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of ``to_dict`` (also after a JSON round trip: lists become tuples again).

        Also reads the format saved before ``encoder_config`` existed (one key per encoder: ``performer``,
        ``infinite_former``, ``eam``): the chosen encoder's entry becomes its ``encoder_config``. Such a config
        naming ``informer`` is refused: that name then meant the ∞-former and now means the ProbSparse Informer.
        """
        own = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in own}  # (drops the old per-encoder keys)
        name = kwargs.get("encoder", "transformer")
        sub = kwargs.pop("encoder_config", None)
        legacy = "encoder_config" not in d
        if legacy and name == "informer":
            raise ValueError("this model config predates the ProbSparse Informer: its encoder 'informer' was an alias "
                             "of 'infinite_former'; set encoder='infinite_former' to load it as it was trained")
        if legacy:
            sub = d.get(name)
        entry = encoder_entry(name)
        if isinstance(sub, dict):
            known = {f.name for f in fields(entry.config_cls)}
            sub = entry.config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in sub.items() if k in known})
        return cls(**kwargs, encoder_config=sub)


class ClassifierOutput(NamedTuple):
    logit: torch.Tensor  # (B,)
    aux_loss: torch.Tensor  # () to add to the training loss (MoE balancing loss; 0 otherwise)


class SequenceClassifier(nn.Module):
    """Batch -> one logit per customer.

    Pooling "mean": mean of the encoder's valid outputs. Pooling "cls": a learned token is written right after each
    customer's last event (so it is the newest position, which every encoder, the segment-recurrent ∞-former
    included, sees with the full history); its output is read at the customer's last valid output position (for
    EAM, the pooled window that holds it).
    """

    def __init__(self, embedding: TransactionEmbedding, encoder: nn.Module, d_model: int, pooling: Pooling, dropout: float) -> None:
        super().__init__()
        self.embedding = embedding
        self.encoder = encoder
        self.pooling = pooling
        self.cls_token = nn.Parameter(torch.randn(d_model) * 0.02) if pooling == "cls" else None
        self.head = nn.Sequential(nn.LayerNorm(d_model), nn.Dropout(dropout), nn.Linear(d_model, 1))

    def forward(self, batch: Batch) -> ClassifierOutput:
        pooled, aux_loss = self.embed(batch)  # (B, D), ()
        return ClassifierOutput(self.head(pooled).squeeze(-1), aux_loss)

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The customer embedding the head reads (pooled encoder output, (B, D)) and the encoder's aux loss: what
        CoLES pretraining trains and the hybrid model feeds to the GBDT."""
        x = self.embedding(batch)  # (B, T, D)
        valid = batch.valid
        if self.cls_token is not None:
            x, valid = self._append_cls(x, valid)
        out = self.encoder(x, valid)
        hidden, valid_out = out.hidden, out.valid  # (B, T', D), (B, T')
        if self.cls_token is not None:
            last = (valid_out.sum(dim=1) - 1).clamp_min(0)  # (B,)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            w = valid_out.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # (B, D)
        return pooled, out.aux_loss

    def _append_cls(self, x: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, d = x.shape
        lengths = valid.sum(dim=1)  # events are left-aligned: the first free slot is at index `length`
        x = torch.cat([x, x.new_zeros(b, 1, d)], dim=1)
        valid = torch.cat([valid, valid.new_zeros(b, 1)], dim=1)
        at_cls = torch.arange(t + 1, device=x.device)[None, :] == lengths[:, None]  # (B, T+1)
        x = torch.where(at_cls.unsqueeze(-1), self.cls_token.to(x.dtype), x)
        return x, valid | at_cls

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(cfg: ModelConfig) -> SequenceClassifier:
    """The one builder for every encoder: ``build_model(ModelConfig(n_mcc=..., n_tr_type=..., encoder="eam"))``."""
    embedding = TransactionEmbedding(
        cfg.n_mcc,
        cfg.n_tr_type,
        cfg.n_numeric,
        cfg.d_model,
        mcc_dim=cfg.mcc_dim,
        tr_type_dim=cfg.tr_type_dim,
        numeric_dim=cfg.numeric_dim,
        time_dim=cfg.time_dim,
        dropout=cfg.dropout,
    )
    encoder = build_encoder(
        cfg.encoder, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.ff_mult, cfg.dropout, cfg.encoder_config
    )
    return SequenceClassifier(embedding, encoder, cfg.d_model, cfg.pooling, cfg.dropout)
