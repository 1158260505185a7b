"""Named run configurations as plain functions (torchtitan's "flavours"): `tiny()` for tests and CI, `demo()` for the
README's few-minutes-on-2-CPU-cores comparison, `full()` for the real-size run on a GPU.

A preset fixes everything but the data: the vocabulary sizes come from the sequences folder at run time.

    >>> p = get("tiny")
    >>> p.model_kwargs("eam")["encoder_config"].window
    8

The model list is the registry's (`models.comparison_encoders()` + the GBDT); `model` holds the sizes every encoder
shares plus, under an encoder's name, that encoder's config (an encoder without an entry gets its config defaults).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from models import ENCODERS, EAMConfig, InfiniteFormerConfig, PerformerConfig, comparison_encoders
from pipeline.features import FeatureConfig
from pipeline.gbdt import GBDTConfig
from pipeline.train import TrainConfig

ENCODER_MODELS: tuple[str, ...] = comparison_encoders()
DEFAULT_MODELS: tuple[str, ...] = (*ENCODER_MODELS, "gbdt")


@dataclass(frozen=True)
class RunPreset:
    name: str
    train: TrainConfig
    model: Mapping[str, Any]  # ModelConfig keywords shared by every encoder (n_mcc / n_tr_type come from the vocab)
    batch_size: int
    eval_batch_size: int
    crop_len: int | None  # training-time random window; evaluation sees the full sequence (up to max_len)
    gbdt: GBDTConfig
    models: tuple[str, ...] = DEFAULT_MODELS
    per_encoder: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # extra keywords for one encoder
    threshold_rule: str = "youden"  # decision threshold on validation: youden | precision>=X | recall>=X

    def model_kwargs(self, encoder: str) -> dict[str, Any]:
        """ModelConfig keywords for one encoder: the shared sizes, its config (if the preset has one), extras."""
        shared = {k: v for k, v in self.model.items() if k not in ENCODERS}
        return {**shared, **self.per_encoder.get(encoder, {}), "encoder": encoder,
                "encoder_config": self.model.get(encoder)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "train": asdict(self.train),
            "model": {k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in self.model.items()},
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "crop_len": self.crop_len,
            "gbdt": asdict(self.gbdt),
            "models": list(self.models),
            "threshold_rule": self.threshold_rule,
        }


def tiny() -> RunPreset:
    """Seconds per model on CPU: the tests and CI."""
    return RunPreset(
        name="tiny",
        train=TrainConfig(epochs=3, lr=3e-3, warmup_frac=0.1, patience=3, progress=False),
        model=dict(
            d_model=16, n_layers=1, n_heads=2, ff_mult=2, dropout=0.0, mcc_dim=8, tr_type_dim=4, numeric_dim=4,
            time_dim=4,
            performer=PerformerConfig(nb_features=16),
            infinite_former=InfiniteFormerConfig(segment_len=16, n_basis=8, rbf_widths=(0.05, 0.1), n_samples=8,
                                                 histogram_bins=8),
            eam=EAMConfig(window=8, stride=8, pool_size=2, n_experts=2, top_k=1),
        ),
        batch_size=16,
        eval_batch_size=64,
        crop_len=32,
        gbdt=GBDTConfig(max_iter=30, learning_rate=0.2, min_samples_leaf=5, features=FeatureConfig(top_mcc=10, top_tr_type=5)),
    )


def demo() -> RunPreset:
    """The README's demo: the whole comparison on the default generated data (15,000 customers, 8,400 labelled) in
    minutes on 2 CPU cores. Small models, short random windows (crop 128) and 40 batches per epoch keep training
    cheap; evaluation still reads every validation/test customer at full length (the sequences' max_len)."""
    return RunPreset(
        name="demo",
        train=TrainConfig(epochs=2, lr=3e-3, warmup_frac=0.1, patience=2, max_steps_per_epoch=40),
        model=dict(
            d_model=32, n_layers=1, n_heads=4, ff_mult=2, dropout=0.1, mcc_dim=16, tr_type_dim=8, numeric_dim=8,
            time_dim=8,
            performer=PerformerConfig(nb_features=32),
            infinite_former=InfiniteFormerConfig(segment_len=128, n_basis=32, n_samples=32),
            eam=EAMConfig(window=32, stride=32, pool_size=2, n_experts=4, top_k=2),
        ),
        batch_size=64,
        eval_batch_size=128,
        crop_len=128,
        gbdt=GBDTConfig(max_iter=120, learning_rate=0.1),
    )


def full() -> RunPreset:
    """The real-size comparison (a GPU run): bigger models, longer training windows, early stopping decides."""
    return RunPreset(
        name="full",
        train=TrainConfig(epochs=20, lr=1e-3, warmup_frac=0.03, patience=4),
        model=dict(
            d_model=64, n_layers=2, n_heads=4, ff_mult=4, dropout=0.1,
            performer=PerformerConfig(nb_features=128),
            infinite_former=InfiniteFormerConfig(segment_len=128, n_basis=64, n_samples=64),
            eam=EAMConfig(window=64, stride=64, pool_size=2, n_experts=4, top_k=2),
        ),
        batch_size=64,
        eval_batch_size=128,
        crop_len=800,
        gbdt=GBDTConfig(max_iter=600, learning_rate=0.03),
    )


PRESETS: dict[str, Callable[[], RunPreset]] = {"tiny": tiny, "demo": demo, "full": full}


def get(name: str, **train_overrides: Any) -> RunPreset:
    """A preset by name, with TrainConfig fields overridden (e.g. epochs=1, device="cpu")."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    preset = PRESETS[name]()
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    return replace(preset, train=replace(preset.train, **overrides)) if overrides else preset
