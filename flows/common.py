"""What every flow shares: the content-hash cache policy, the retry settings of I/O tasks, and the hooks that close
the MLflow runs of a cancelled or crashed training.

`cached_on("inputs")` keys a task on its source code, the *contents* of the named path parameters (sha256 of a file;
for a folder, every file's relative path, size and mtime) and the value of every other parameter. Re-running a flow
on unchanged input therefore skips the finished step, while a changed input file, a changed config or a changed task
body runs it again. Output paths are plain parameters (their value, not their contents, enters the key); a flow
that finds a cached step's output gone passes `refresh_cache=True` (see `missing`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import TaskRunContext
from prefect.logging.loggers import flow_run_logger
from prefect.utilities.hashing import hash_objects

from pipeline.compare import end_comparison_runs
from pipeline.io import sha256_file

IO_RETRIES = {"retries": 2, "retry_delay_seconds": [2, 10]}


def fingerprint(value: Any) -> Any:
    """sha256 of a file, a digest of (relative path, size, mtime) of a folder's files; lists element-wise."""
    if isinstance(value, (list, tuple)):
        return [fingerprint(v) for v in value]
    path = Path(value)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
            st = p.stat()
            h.update(f"{p.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()
    return f"missing:{path}"


def cached_on(*path_params: str) -> CachePolicy:
    """Cache policy: task source + contents of `path_params` + values of the other parameters."""

    def key(_: TaskRunContext, params: dict[str, Any]) -> str | None:
        parts = {k: (fingerprint(v) if k in path_params and v is not None else v) for k, v in params.items()}
        return hash_objects(parts, raise_on_failure=True)

    return TASK_SOURCE + CacheKeyFnPolicy(cache_key_fn=key)


def missing(paths: Iterable[Path]) -> bool:
    """True when an expected output is gone: the flow then refreshes the step's cache instead of trusting it."""
    return not all(Path(p).exists() for p in paths)



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
    """`on_cancellation` (status KILLED) / `on_crashed` (FAILED) hook: end the MLflow runs the flow run left RUNNING
    (a cancelled run's process is killed before its `with` blocks and `finish_comparison` can close them)."""

    def hook(flow: Flow, flow_run: FlowRun, state: State) -> None:
        reason = f"Prefect flow run {flow_run.name!r} ({flow_run.id}) ended {state.name}"
        ended = end_comparison_runs(f"-{root_flow_run_id(flow_run)[:8]}", status, reason)
        flow_run_logger(flow_run, flow).info("marked %d MLflow run(s) %s: %s", len(ended), status, ", ".join(ended))

    hook.__name__ = f"close_mlflow_runs_{status.lower()}"
    return hook


MLFLOW_HOOKS = {"on_cancellation": [close_mlflow_runs("KILLED")], "on_crashed": [close_mlflow_runs("FAILED")]}
