"""What every flow shares: the content-hash cache policy and the retry settings of I/O tasks.

`cached_on("inputs")` keys a task on its source code, the *contents* of the named path parameters (sha256 of a file;
for a folder, every file's relative path, size and mtime) and the value of every other parameter. Re-running a flow
on unchanged input therefore skips the finished step, while a changed input file, a changed config or a changed task
body runs it again. Output paths are plain parameters (their value, not their contents, enters the key); a flow
that finds a cached step's output gone passes `refresh_cache=True` (see `missing`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel, Field

from pipeline.engines import Engine
from pipeline.io import is_uri, sha256_file

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


def _flat(value: Any) -> list[Any]:
    return [x for v in value for x in _flat(v)] if isinstance(value, (list, tuple)) else [value]


def cache_key(path_params: Iterable[str], params: dict[str, Any]) -> str | None:
    """The key of `cached_on`; None (not cached: the step runs) when a path parameter is a URI (hdfs://, s3a://,
    read by the Spark engine), whose contents are not fingerprinted from here."""
    path_params = set(path_params)
    if any(is_uri(v) for k in path_params for v in _flat(params.get(k)) if isinstance(v, str)):
        return None
    parts = {k: (fingerprint(v) if k in path_params and v is not None else v) for k, v in params.items()}
    return hash_objects(parts, raise_on_failure=True)


def cached_on(*path_params: str) -> CachePolicy:
    """Cache policy: task source + contents of `path_params` + values of the other parameters (`cache_key`). One
    key function, not `TASK_SOURCE + ...`: a compound policy drops a part that says None and would cache a step that
    reads a URI on its source code alone."""
    def key(ctx: TaskRunContext, params: dict[str, Any]) -> str | None:
        inputs = cache_key(path_params, params)
        if inputs is None:
            return None
        return hash_objects(TASK_SOURCE.compute_key(task_ctx=ctx, inputs=params, flow_parameters={}), inputs,
                            raise_on_failure=True)

    return CacheKeyFnPolicy(cache_key_fn=key)


def missing(paths: Iterable[Path | str]) -> bool:
    """True when an expected output is gone: the flow then refreshes the step's cache instead of trusting it. An
    output at a URI is not checked from here: the step runs (ingest records what it ingested before; a no-op)."""
    return not all(not is_uri(p) and Path(p).exists() for p in paths)



class EngineParams(BaseModel):
    """Flow parameters choosing the engine of a step (see `pipeline.engines`)."""

    engine: Literal["polars", "spark"] = Field("polars", description="polars: in the flow's process; spark: on Spark")
    spark_master: str | None = Field(None, description="with engine=spark: master URL (default local[*])")
    spark_conf: list[str] = Field(default_factory=list, description="with engine=spark: spark.* settings, KEY=VALUE")

    def engine_choice(self) -> Engine:
        return Engine(self.engine, self.spark_master, tuple(self.spark_conf))
