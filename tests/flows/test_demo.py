"""`txseq-demo` in a real subprocess: it prints the time of each step and the champion, and it gives the temporary
Prefect server a generous startup timeout unless the user chose one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_VAR = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


def _env(**extra: str) -> dict[str, str]:
    drop = {TIMEOUT_VAR, "MLFLOW_TRACKING_URI", "TXSEQ_REGISTERED_MODEL", "PREFECT_API_URL"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"PYTHONPATH": str(ROOT), **extra}


@pytest.mark.parametrize(("user_value", "expected"), [(None, "300"), ("7", "7")])
def test_ephemeral_server_startup_timeout_is_generous_unless_set(user_value: str | None, expected: str) -> None:
    code = f"import flows; from prefect.settings import {TIMEOUT_VAR} as s; print(s.value())"
    env = _env(**({TIMEOUT_VAR: user_value} if user_value else {}))
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == expected


@pytest.mark.slow
def test_demo_prints_step_times_and_the_champion(tmp_path: Path, prefect_server: str) -> None:
    env = _env(TXSEQ_DATA_ROOT=str(tmp_path), PREFECT_API_URL=prefect_server, PREFECT_LOGGING_LEVEL="INFO")
    args = ["--customers", "200", "--preset", "tiny", "--models", "transformer,gbdt"]
    done = subprocess.run([sys.executable, "-m", "flows.demo", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"generated [\d,]+ transactions of 200 customers in [\d.]+ s", out)
    steps = re.findall(r"^step (\S+)\s+([\d.]+) s$", out, re.M)
    assert [name for name, _ in steps] == ["ingest", "build_sequences", "train"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("txseq-gender", "champion")
    auc = float(champion.tags["test_auroc"])
    assert f"champion:   txseq-gender v{champion.version} = {champion.tags['model']}, test ROC AUC {auc:.4f}" in out
    # the per-epoch lines name the model and show the validation AUC; the GBDT reports its rounds
    logs = done.stdout + done.stderr
    assert re.search(r"transformer: step \d+/\d+ .*val auroc \d\.\d{4}", logs)
    assert re.search(r"gbdt: round \d+/\d+ +val auroc \d\.\d{4}", logs)
