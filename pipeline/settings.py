"""Runtime settings: the one reader of environment variables.

Everything has an embedded default so that the demo runs with no configuration: the data root is `./data`
(override with TXSEQ_DATA_ROOT) and MLflow tracks to a SQLite file under it (override with MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    data_root: Path
    tracking_uri: str
    artifact_root: Path
    registered_model: str
    threads: int | None = None  # compute threads (TXSEQ_THREADS); None = the CPUs this process may use

    @property
    def raw_dir(self) -> Path:
        return self.data_root / "raw"

    @property
    def events_dir(self) -> Path:
        return self.data_root / "events"

    @property
    def sequences_dir(self) -> Path:
        return self.data_root / "sequences"

    @property
    def runs_dir(self) -> Path:
        """Checkpoints and reports of training runs."""
        return self.data_root / "runs"

    @property
    def landing_dir(self) -> Path:
        """New transaction files waiting to be scored."""
        return self.data_root / "landing"

    @property
    def scores_dir(self) -> Path:
        return self.data_root / "scores"


# Quiet, offline-friendly defaults for the libraries we drive (a user's own setting always wins): no Prefect
# telemetry from a bank's pipeline, no MLflow pip-requirements inference (needs the network) or progress bars in logs;
# a generous wait for the temporary Prefect server a flow starts with no PREFECT_API_URL (Prefect waits 20 s, which a
# busy 2-core machine exceeds), no warning when a `pipeline` log line (forwarded to Prefect by flows/logs.py) is
# written outside a flow run, and OpenMP threads (torch, scikit-learn) that sleep instead of spinning while they
# wait: on a busy machine the spinning cost the GBDT 9x the CPU time (bench/bench_threads.py). OpenMP reads it
# once, when torch or scikit-learn is first imported, so the entry points call `apply_library_defaults` first.
LIBRARY_ENV_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}


def apply_library_defaults() -> None:
    """Set LIBRARY_ENV_DEFAULTS where the user has not: call before prefect or mlflow is imported."""
    for key, value in LIBRARY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def shared_data_dir() -> Path | None:
    """The real Sberbank files (labels, dictionaries, a real sample) when `../shared` sits beside the project."""
    env = os.environ.get("TXSEQ_SHARED_DATA")
    candidates = [Path(env)] if env else []
    here = Path(__file__).resolve().parent.parent
    candidates += [here.parent / "shared" / "data" / "sberbank-gender" / "raw", Path.cwd().parent / "shared" / "data" / "sberbank-gender" / "raw"]
    for c in candidates:
        if (c / "gender_train.csv").exists():
            return c
    return None


DEFAULT_REGISTERED_MODEL = "txseq-gender"  # the registered model's name unless TXSEQ_REGISTERED_MODEL says otherwise


def load_settings() -> Settings:
    data_root = Path(os.environ.get("TXSEQ_DATA_ROOT", "data")).expanduser().resolve()
    mlflow_dir = data_root / "mlflow"
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    artifact_root = Path(os.environ.get("TXSEQ_ARTIFACT_ROOT", mlflow_dir / "artifacts")).expanduser().resolve()
    return Settings(
        data_root=data_root,
        tracking_uri=tracking_uri,
        artifact_root=artifact_root,
        registered_model=os.environ.get("TXSEQ_REGISTERED_MODEL", DEFAULT_REGISTERED_MODEL),
        threads=_positive_int("TXSEQ_THREADS"),
    )


def java_home() -> Path | None:
    """JAVA_HOME, when set: where Spark's launcher takes its Java from before PATH."""
    value = os.environ.get("JAVA_HOME")
    return Path(value) if value else None


def spark_submitted() -> bool:
    """This driver was started by `spark-submit` (which hands it the JVM gateway): the master comes from there."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def default_spark_python(executable: str) -> None:
    """Spark's Python workers run PYSPARK_PYTHON (else `python3`): default it to this interpreter, whose
    environment has the pipeline's packages; a user's setting wins."""
    os.environ.setdefault("PYSPARK_PYTHON", executable)


def torchrun_env() -> dict[str, int] | None:
    """rank, world_size, local_rank as torchrun sets them (RANK, WORLD_SIZE, LOCAL_RANK); None outside torchrun."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    return {"rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"]),
            "local_rank": int(os.environ.get("LOCAL_RANK", "0"))}
def _positive_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r}: expected a positive integer")
    return int(raw)
