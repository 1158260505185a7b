"""File claims: an exclusive claim file per unit of work, so that concurrent runs (on one host or on a shared
folder) never do the same work twice.

`try_claim(path)` creates `path` with O_CREAT|O_EXCL and returns a `Claim`; a claim whose holder died (same host,
pid gone) or that saw no heartbeat for `stale_after_s` is broken (renamed aside atomically: one breaker wins) and
retaken.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.io import pid_alive


@dataclass
class Claim:
    """An exclusive claim file; `heartbeat` keeps it fresh, `release` removes it if it is still ours."""

    path: Path
    token: str

    def heartbeat(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path)

    def release(self) -> None:
        if _claim_info(self.path).get("token") == self.token:
            self.path.unlink(missing_ok=True)


def try_claim(path: Path, stale_after_s: float = 3600.0) -> Claim | None:
    """Create `path` exclusively (O_CREAT|O_EXCL) and return the claim; None when a live claim holds it.

    A claim is stale when its holder ran on this host and its pid is gone, or when it saw no heartbeat (mtime) for
    `stale_after_s`. A stale claim is broken by renaming it aside (atomic: one breaker wins), then retaken.
    """
    token = uuid.uuid4().hex
    body = json.dumps({"token": token, "pid": os.getpid(), "host": socket.gethostname(), "created": time.time()})
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _break_if_stale(path, stale_after_s):
                continue
            return None
        with os.fdopen(fd, "w") as fh:
            fh.write(body)
        return Claim(path, token)
    return None


def _claim_info(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _is_stale(path: Path, info: dict[str, Any], stale_after_s: float) -> bool:
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if age > stale_after_s:
        return True
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        return not pid_alive(info["pid"])
    return False


def _break_if_stale(path: Path, stale_after_s: float) -> bool:
    """Remove a stale claim; True when the caller should try to claim again."""
    info = _claim_info(path)
    if not _is_stale(path, info, stale_after_s):
        return False
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another run broke it first
    if _claim_info(aside).get("token") != info.get("token"):
        # A fresh claim replaced the stale one between our read and our rename: put it back.
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True
