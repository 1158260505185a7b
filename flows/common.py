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
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CacheKeyFnPolicy, CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

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


