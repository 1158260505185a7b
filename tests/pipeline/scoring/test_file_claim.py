"""File claims: exclusive while their holder lives, taken over when it died or stopped its heartbeat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.scoring.file_claim import try_claim


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "f.claim"
    mine = try_claim(path)
    assert mine is not None
    assert try_claim(path) is None  # held by a live process (this one)
    mine.release()
    assert not path.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"token": "old", "pid": int(dead.stdout), "host": os.uname().nodename}))
    taken = try_claim(path)  # its holder is gone
    assert taken is not None and json.loads(path.read_text())["token"] == taken.token

    old = time.time() - 7200
    os.utime(path, (old, old))  # no heartbeat for two hours: stale whoever holds it
    assert try_claim(path, stale_after_s=3600) is not None
