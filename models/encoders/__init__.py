"""The one explicit list of sequence encoders. A new encoder is one file plus one line here; the contract tests in
tests/models/test_encoder_contract.py cover every entry automatically."""

from __future__ import annotations

from models.encoders.base import EncoderOutput
from models.encoders.eam import EAMConfig, EAMEncoder
from models.encoders.infinite_former import InfiniteFormerConfig, InfiniteFormerEncoder
from models.encoders.performer import PerformerConfig, PerformerEncoder
from models.encoders.transformer import MaterializedTransformerEncoder, TransformerEncoder

ENCODERS = {
    "transformer": TransformerEncoder,
    "transformer_materialized": MaterializedTransformerEncoder,
    "performer": PerformerEncoder,
    "infinite_former": InfiniteFormerEncoder,
    "eam": EAMEncoder,
}
ALIASES = {"informer": "infinite_former"}


def canonical_encoder_name(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {sorted(ENCODERS) + sorted(ALIASES)}")
    return name


__all__ = [
    "ALIASES",
    "ENCODERS",
    "EAMConfig",
    "EncoderOutput",
    "InfiniteFormerConfig",
    "PerformerConfig",
    "canonical_encoder_name",
]
