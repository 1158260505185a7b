"""`pretrain` flow: CoLES self-supervised pretraining, one task per encoder, each registered in MLflow.

    pretrain_encoder × N (every non-test customer with transactions, labelled or not) ──▶ [models:/…-coles-<enc>/<v>]

The pipeline flow runs it between the sequences and the training steps when `pretrain.encoders` is not empty, and
hands the URIs to training as `init_from` (fine-tuned `<encoder>_coles` and `hybrid_<encoder>` models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, task
from pydantic import BaseModel, Field

from pipeline.training.run import resolve_preset
from pipeline.training.pretrain import PretrainConfig, run_pretraining
from pipeline.training.presets import PRESET_NAMES
from pipeline.settings import load_settings


class PretrainParams(BaseModel):
    encoders: list[str] = Field(default_factory=list, description="encoders to pretrain with CoLES (empty: skip)")
    preset: Literal[PRESET_NAMES] = Field("auto", description="the encoders' architecture")
    epochs: int = Field(PretrainConfig().epochs, gt=0, description="evaluation rounds (held-out recall, best kept)")
    steps: int = Field(0, ge=0, description="optimiser steps; 0 = sized from the customers")
    sequences_dir: str | None = Field(None, description="default: <data root>/sequences")
    events_dir: str | None = Field(None, description="default: <data root>/events")
    fold: int = Field(0, ge=0, description="fold the auto preset is sized from")


@task(task_run_name="pretrain-{encoder}")
def pretrain_encoder(p: PretrainParams, sequences_dir: Path, events_dir: Path, encoder: str) -> str:
    run = run_pretraining(sequences_dir, events_dir, encoder, resolve_preset(p.preset, sequences_dir, p.fold),
                          PretrainConfig(epochs=p.epochs, steps=p.steps), settings=load_settings())
    return str(run.model_uri)


@flow(name="pretrain")
def pretrain_flow(params: PretrainParams = PretrainParams()) -> list[str]:
    s = load_settings()
    sequences_dir = Path(params.sequences_dir) if params.sequences_dir else s.sequences_dir
    events_dir = Path(params.events_dir) if params.events_dir else s.events_dir
    return [pretrain_encoder(params, sequences_dir, events_dir, e) for e in params.encoders]
