"""Shared fixtures of the reliability suite: tiny data and one trained, registered model, built once per session.

`txseq(...)` runs the real command line in a subprocess (the installed `txseq` script) against the session's data
root and SQLite tracking store, and returns the finished process (stdout, stderr, return code).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

TXSEQ = Path(sys.executable).with_name("txseq")
REGISTERED = "reliability-model"
STEPS = 15  # the reference run (tiny preset: validation every 5 steps); the fault tests kill and resume a run of the same length


@dataclass(frozen=True)
class Data:
    raw: Path  # transactions.csv.gz, gender_train.csv
    events: Path
    sequences: Path


@dataclass
class Session:
    """Where the session's runs live and how a subprocess reaches them."""

    root: Path  # TXSEQ_DATA_ROOT (runs/, mlflow/)
    data: Data
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow' / 'mlflow.db'}"

    @property
    def model_uri(self) -> str:
        return f"models:/{REGISTERED}@champion"

    def txseq(self, *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300,
              cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(TXSEQ), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})}, cwd=cwd)

    def popen(self, *args: str | Path, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen([str(TXSEQ), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**self.env, **(env or {})}, **kw)


def make_data(root: Path, scale: float = 0.02, max_len: int = 200) -> Data:
    """generate -> ingest -> sequences at a tiny scale (~300 customers, ~170 labelled)."""
    from pipeline.sources.generate import GeneratorConfig, generate
    from pipeline.ingest.files import ingest
    from pipeline.sequences.table import SequenceConfig, run_sequences

    paths = generate(root / "raw", GeneratorConfig(scale=scale, seed=1))
    ingest([paths.transactions], root / "events")
    run_sequences(root / "events", paths.labels, root / "sequences", SequenceConfig(max_len=max_len, min_count=2))
    return Data(root / "raw", root / "events", root / "sequences")


def subprocess_env(root: Path, registered: str = REGISTERED) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TXSEQ_"))}
    env.update(
        TXSEQ_DATA_ROOT=str(root), TXSEQ_REGISTERED_MODEL=registered, MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK="true",
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", TQDM_DISABLE="1", PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """Tiny data, and the transformer trained with the tiny preset (the reference run) registered as champion."""
    import mlflow

    from pipeline.training.run import run_comparison
    from pipeline.training.presets import get
    from pipeline.settings import Settings

    base = tmp_path_factory.mktemp("reliability")
    data = make_data(base / "data")
    root = base / "root"
    s = Session(root, data, subprocess_env(root))
    settings = Settings(root, s.tracking_uri, root / "mlflow" / "artifacts", REGISTERED)
    result = run_comparison(data.sequences, data.events, get("tiny", steps=STEPS, device="cpu"), ["transformer"],
                            settings=settings, run_name="reference")
    s.reference = result.results[0]  # type: ignore[attr-defined]
    yield s
    mlflow.set_tracking_uri(None)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def scorer(session: Session) -> tuple[Any, Any]:
    """(scorer, ModelRef) of the session's champion, loaded as `txseq score` loads it."""
    from pipeline.scoring.pyfunc import load_batch_scorer

    return load_batch_scorer(session.model_uri, session.tracking_uri)


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")} if folder.exists() else set()


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, poll: float = 0.02) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)

