"""The one explicit list of sequence encoders: ``ENCODERS`` maps a name to its encoder class and its config class.

A new encoder is one file (the encoder and its frozen config dataclass) plus one line here. Everything else derives
from this dict: ``ModelConfig`` (which config class goes with which name, JSON round trip), the presets' model
list, the CLI help, the demo, the encoder bench, and the contract tests (tests/models/test_encoder_contract.py).

    entry = ENCODERS["performer"]                        # EncoderEntry(encoder_cls, config_cls, in_comparison)
    enc = build_encoder("performer", d_model=64, n_layers=2, n_heads=4)   # config None = entry.config_cls()
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import nn

from models.encoders.base import EncoderOutput, pop_stats
from models.encoders.eam import EAMConfig, EAMEncoder
from models.encoders.infinite_former import InfiniteFormerConfig, InfiniteFormerEncoder
from models.encoders.informer import InformerConfig, InformerEncoder
from models.encoders.performer import PerformerConfig, PerformerEncoder
from models.encoders.switchhead import SwitchHeadConfig, SwitchHeadEncoder
from models.encoders.transformer import MaterializedTransformerEncoder, TransformerConfig, TransformerEncoder


class EncoderEntry(NamedTuple):
    encoder_cls: type[nn.Module]  # __init__(d_model, n_layers, n_heads, ff_mult, dropout, config)
    config_cls: type  # frozen dataclass; its defaults are the encoder's defaults
    in_comparison: bool = True  # trained by the default comparison (False: a baseline for the bench and tests only)


ENCODERS: dict[str, EncoderEntry] = {
    "transformer": EncoderEntry(TransformerEncoder, TransformerConfig),
    "transformer_materialized": EncoderEntry(MaterializedTransformerEncoder, TransformerConfig, in_comparison=False),
    "performer": EncoderEntry(PerformerEncoder, PerformerConfig),
    "infinite_former": EncoderEntry(InfiniteFormerEncoder, InfiniteFormerConfig),
    "eam": EncoderEntry(EAMEncoder, EAMConfig),
    "informer": EncoderEntry(InformerEncoder, InformerConfig),
    "switchhead": EncoderEntry(SwitchHeadEncoder, SwitchHeadConfig),
}


def encoder_entry(name: str) -> EncoderEntry:
    """The registry entry of ``name``; a clear error listing the choices otherwise."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    return ENCODERS[name]


def canonical_encoder_name(name: str) -> str:
    """``name`` itself once checked against ``ENCODERS`` (there are no aliases: ``informer`` is the ProbSparse
    Informer, the ∞-former is ``infinite_former`` only)."""
    encoder_entry(name)
    return name


def comparison_encoders() -> tuple[str, ...]:
    """The encoders the default comparison trains, in registry order."""
    return tuple(name for name, entry in ENCODERS.items() if entry.in_comparison)


def build_encoder(
    name: str, d_model: int, n_layers: int, n_heads: int, ff_mult: int = 4, dropout: float = 0.1, config: Any = None
) -> nn.Module:
    """An encoder by name; ``config`` is an instance of its config class (None = the defaults)."""
    entry = encoder_entry(name)
    config = entry.config_cls() if config is None else config
    if not isinstance(config, entry.config_cls):
        raise TypeError(f"encoder {name!r} takes a {entry.config_cls.__name__}, got {type(config).__name__}")
    return entry.encoder_cls(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, ff_mult=ff_mult, dropout=dropout, config=config
    )


__all__ = [
    "ENCODERS",
    "EAMConfig",
    "EncoderEntry",
    "EncoderOutput",
    "InfiniteFormerConfig",
    "PerformerConfig",
    "TransformerConfig",
    "build_encoder",
    "canonical_encoder_name",
    "comparison_encoders",
    "encoder_entry",
    "pop_stats",
]
