"""Hooks of the training flows (`train`, `pipeline`): a cancelled or crashed flow run leaves no MLflow run RUNNING.

A cancelled run's process is stopped before its `with` blocks and `finish_comparison` can close the runs (and the
model tasks run in threads that are not unwound), so the `on_cancellation` / `on_crashed` hooks end them: KILLED or
FAILED, with the reason in the tag `txseq.failure`. The runs are found by their run name, which ends with the first
8 characters of the top-level flow run's id, so the hook of either flow (train alone, or the pipeline around it,
whose hooks the worker runs) finds them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.logging.loggers import flow_run_logger

from pipeline.training.run import end_comparison_runs
from pipeline.settings import load_settings


def root_flow_run_id(flow_run: FlowRun) -> str:
    """The id of the top-level flow run `flow_run` belongs to (itself, or the pipeline run it is a subflow of)."""
    if flow_run.parent_task_run_id is None:
        return str(flow_run.id)
    with get_client(sync_client=True) as client:
        while flow_run.parent_task_run_id is not None:
            flow_run = client.read_flow_run(client.read_task_run(flow_run.parent_task_run_id).flow_run_id)
    return str(flow_run.id)


def comparison_run_name(flow_run: FlowRun, preset: str) -> str:
    """MLflow run name of a training started by `flow_run`: ends with its root flow run's id, so that the hooks of
    either flow (train, or the pipeline around it) find the runs to close."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{preset}-{root_flow_run_id(flow_run)[:8]}"


def close_mlflow_runs(status: str) -> Callable[[Flow, FlowRun, State], None]:
    """`on_cancellation` (status KILLED) / `on_crashed` (FAILED) hook: end the MLflow runs the flow run left RUNNING."""

    def hook(flow: Flow, flow_run: FlowRun, state: State) -> None:
        reason = f"Prefect flow run {flow_run.name!r} ({flow_run.id}) ended {state.name}"
        ended = end_comparison_runs(f"-{root_flow_run_id(flow_run)[:8]}", status, reason, load_settings())
        flow_run_logger(flow_run, flow).info("marked %d MLflow run(s) %s: %s", len(ended), status, ", ".join(ended))

    hook.__name__ = f"close_mlflow_runs_{status.lower()}"
    return hook


MLFLOW_HOOKS = {"on_cancellation": [close_mlflow_runs("KILLED")], "on_crashed": [close_mlflow_runs("FAILED")]}
