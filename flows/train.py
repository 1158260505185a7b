"""`train` flow: one task per model, every model a nested MLflow run under one parent run, then the report.

    start_comparison (parent run) ──▶ train_model × N (nested runs; `max_parallel` at a time) ──▶ finish (report)

Tasks pass the plan (paths, run ids, preset name) and model names, never data; each task loads what it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect.futures import wait
from pydantic import BaseModel, Field

from flows.hooks import MLFLOW_HOOKS, comparison_run_name

from pipeline.training.run import (
    ComparisonPlan,
    ComparisonResult,
    ModelResult,
    finish_comparison,
    resolve_preset,
    start_comparison,
    train_one,
)
from pipeline.training.presets import PRESET_NAMES
from pipeline.settings import load_settings


class TrainParams(BaseModel):
    preset: Literal[PRESET_NAMES] = Field(
        "auto", description="named run configuration (pipeline/training/presets.py); auto is sized from the data")
    models: list[str] = Field(default_factory=list, description="models to train (default: the preset's)")
    sequences_dir: str | None = Field(None, description="default: <data root>/sequences")
    events_dir: str | None = Field(None, description="default: <data root>/events")
    fold: int = Field(0, ge=0, description="validation fold of the split")
    steps: int | None = Field(None, gt=0, description="override the preset's optimiser-step budget")
    device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="override the preset's device")
    max_parallel: int = Field(1, ge=1, description="models trained at the same time (threads; mind the cores)")
    init_from: list[str] = Field(default_factory=list,
                                 description="CoLES-pretrained encoder URIs: adds <encoder>_coles and hybrid_<encoder>")
    threads: int | None = Field(None, gt=0, description="compute threads (default: TXSEQ_THREADS, else usable CPUs)")


@task
def start_task(p: TrainParams, sequences_dir: Path, events_dir: Path, run_name: str) -> ComparisonPlan:
    preset = resolve_preset(p.preset, sequences_dir, p.fold, steps=p.steps, device=p.device)
    return start_comparison(sequences_dir, events_dir, preset, p.models or None, fold=p.fold, settings=load_settings(),
                            run_name=run_name, threads=p.threads, init_from=p.init_from)


@task(task_run_name="train-{model}")
def train_model(plan: ComparisonPlan, model: str) -> ModelResult:
    return train_one(plan, model)


@task
def finish_task(plan: ComparisonPlan, results: list[ModelResult]) -> ComparisonResult:
    result = finish_comparison(plan, results)
    create_markdown_artifact(result.report_md.read_text(), key="train-comparison", description="model comparison")
    return result


@flow(name="train", **MLFLOW_HOOKS)
def train_flow(params: TrainParams = TrainParams()) -> ComparisonResult:
    """Cancelled or crashed, its MLflow runs end KILLED or FAILED (hooks in flows/hooks.py), never RUNNING."""
    s = load_settings()
    sequences_dir = Path(params.sequences_dir) if params.sequences_dir else s.sequences_dir
    run_name = comparison_run_name(FlowRunContext.get().flow_run, params.preset)
    plan = start_task(params, sequences_dir, Path(params.events_dir) if params.events_dir else s.events_dir, run_name)
    results: list[ModelResult] = []
    for i in range(0, len(plan.models), params.max_parallel):
        wave = [train_model.submit(plan, m) for m in plan.models[i : i + params.max_parallel]]
        wait(wave)
        results += [f.result() for f in wave]
    return finish_task(plan, results)
