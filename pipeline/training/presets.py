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
from dataclasses import asdict, dataclass, replace
from typing import Any

from models import ENCODERS, EAMConfig, InfiniteFormerConfig, PerformerConfig, comparison_encoders
from pipeline.sequences.features import FeatureConfig
from pipeline.scoring.gbdt import GBDTConfig
from pipeline.training.train import TrainConfig

ENCODER_MODELS: tuple[str, ...] = comparison_encoders()
BACKBONE_LR_SCALE = 0.3  # a pretrained backbone's share of the LR when fine-tuned (`fine_tune`)
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
    threshold_rule: str = "youden"  # decision threshold on validation: youden | precision>=X | recall>=X

    def model_kwargs(self, encoder: str) -> dict[str, Any]:
        """ModelConfig keywords for one encoder: the shared sizes and its config (if the preset has one)."""
        shared = {k: v for k, v in self.model.items() if k not in ENCODERS}
        return {**shared, "encoder": encoder,
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
        train=TrainConfig(steps=15, eval_every=5, lr=3e-3, warmup_frac=0.1, patience=3, progress=False),
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
    minutes on 2 CPU cores. Small models, short random windows (crop 128) and 80 optimiser steps keep training
    cheap; evaluation still reads every validation/test customer at full length (the sequences' max_len)."""
    return RunPreset(
        name="demo",
        train=TrainConfig(steps=80, eval_every=40, lr=3e-3, warmup_frac=0.1, patience=2),
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
        train=TrainConfig(steps=20_000, eval_every=500, lr=1e-3, warmup_frac=0.03, patience=6),
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


@dataclass(frozen=True)
class DataProfile:
    """What `auto` sizes a run from: the labelled training customers of one fold and their events."""

    n_labelled: int  # labelled training customers (the fold's train ids)
    n_events: int  # their events (as kept in the sequences table)
    n_positive: int  # of them with label 1

    @property
    def mean_length(self) -> float:
        return self.n_events / max(self.n_labelled, 1)


def auto(profile: DataProfile) -> RunPreset:
    """Sized from the data: a recipe that learns from a few hundred labels and from hundreds of thousands.

    - Budget in optimiser steps: ~`passes` passes over the labelled customers, never fewer than 600 steps (a few
      hundred customers are ~10 batches a pass: an epoch budget would give them a few dozen updates) nor more than
      30,000; validation every ~1/20 of the budget (at least every 20 steps), early stopping after 6 evaluations
      without a better validation ROC AUC.
    - Smaller batches on small data (more, noisier updates), a small model (d_model 32, one layer) below 2,000
      labelled customers, 64 × 2 below 50,000, 128 × 2 above; dropout 0.2 on small data.
    - AdamW at 2e-3 (1e-3 from 50,000 customers) with 10% warm-up, weight decay 0.05, classes balanced in the loss.
    - Training windows (random crops) of up to 256 events (512 from 50,000 customers), never longer than twice the
      mean sequence length.
    """
    n = max(profile.n_labelled, 1)
    small, large = n < 2_000, n >= 50_000
    batch_size = 32 if small else 64
    steps_per_pass = max(1, -(-n // batch_size))
    steps = int(min(30_000, max(600, 30 * steps_per_pass)))
    eval_every = max(20, steps // 20)
    neg = n - profile.n_positive
    pos_weight = neg / profile.n_positive if profile.n_positive and neg else 1.0
    crop = int(min(512 if large else 256, max(32, 2 * profile.mean_length)))
    d_model, n_layers = (32, 1) if small else (128, 2) if large else (64, 2)
    return RunPreset(
        name="auto",
        train=TrainConfig(steps=steps, eval_every=eval_every, patience=6, lr=1e-3 if large else 2e-3,
                          weight_decay=0.05, warmup_frac=0.1, min_lr_frac=0.05, pos_weight=round(pos_weight, 6)),
        model=dict(
            d_model=d_model, n_layers=n_layers, n_heads=4, ff_mult=2, dropout=0.2 if small else 0.1,
            mcc_dim=d_model // 2, tr_type_dim=d_model // 4, numeric_dim=d_model // 4, time_dim=d_model // 4,
            performer=PerformerConfig(nb_features=2 * d_model),
            infinite_former=InfiniteFormerConfig(segment_len=128, n_basis=d_model, n_samples=d_model),
            eam=EAMConfig(window=32, stride=32, pool_size=2, n_experts=4, top_k=2),
        ),
        batch_size=batch_size,
        eval_batch_size=128,
        crop_len=crop,
        gbdt=GBDTConfig(max_iter=300, learning_rate=0.05, min_samples_leaf=10 if small else 20),
    )


def fine_tune(train: TrainConfig, backbone_lr_scale: float = BACKBONE_LR_SCALE) -> TrainConfig:
    """The recipe for a pretrained embedding + encoder under a fresh head (`<encoder>_coles`): the preset's budget and
    schedule, the head alone during the warm-up steps (a linear probe on the pretrained embedding), then the backbone
    too, at `backbone_lr_scale` × the LR. A fresh head's first gradients are large and random; passed through at the
    full LR they rewrite the pretrained features before the head has learned which of them matter (linear probing
    then fine-tuning: Kumar et al., ICLR 2022)."""
    warmup = max(1, int(round(train.warmup_frac * train.steps)))
    return replace(train, head_only_steps=warmup, backbone_lr_scale=backbone_lr_scale)


PRESETS: dict[str, Callable[[], RunPreset]] = {"tiny": tiny, "demo": demo, "full": full}


PRESET_NAMES: tuple[str, ...] = ("auto", *PRESETS)


def get(name: str, profile: DataProfile | None = None, **train_overrides: Any) -> RunPreset:
    """A preset by name (`auto` needs the data's `profile`), with TrainConfig fields overridden (e.g. steps=100,
    device="cpu")."""
    if name == "auto":
        if profile is None:
            raise ValueError("the auto preset is sized from the data: pass profile=DataProfile(...)")
        preset = auto(profile)
    elif name in PRESETS:
        preset = PRESETS[name]()
    else:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(PRESET_NAMES)}")
    overrides = {k: v for k, v in train_overrides.items() if v is not None}
    return replace(preset, train=replace(preset.train, **overrides)) if overrides else preset
