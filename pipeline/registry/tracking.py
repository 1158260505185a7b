"""MLflow behind a small interface: the only MLflow importer in `pipeline/` besides `pipeline.scoring.pyfunc`.

- `setup(settings)` checks the tracking store and the artifact folder first (`preflight`: an unreachable server or a
  read-only store fails here with a clear `TrackingError`, before any training starts), then opens the experiment
  with an explicit artifact location (never `./mlruns`).
- `Tracker.run(name, parent_run_id=...)`: one parent run per comparison, nested runs per model.
- `MlflowLogger.log(metrics, step)`: the trainer's `MetricLogger`.
- `Tracker.log_pyfunc(...)` logs and registers a pyfunc model; registry primitives (versions, tags, description,
  the `champion` alias, a registry lock) serve `pipeline.registry.versions`, which applies the champion rule of
  `pipeline.registry.champion`. No policy lives here. Aliases, never stages.
"""

from __future__ import annotations

import fcntl
import math
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from pipeline.io import pid_alive
from pipeline.settings import Settings

CHAMPION = "champion"
TAG_SPLIT_ID = "split_id"
TAG_TEST_AUROC = "test_auroc"
TAG_DECISION = "champion_decision"
TAG_PROMOTED = "champion_promoted"
_MAX_PARAM_CHARS = 6000


TAG_HOST = "txseq.host"
TAG_PID = "txseq.pid"


def process_tags() -> dict[str, str]:
    """Which process opened a run: lets a later run tell a killed run (process gone) from a live one."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


class TrackingError(RuntimeError):
    """The tracking store or artifact folder cannot be used; the message says which and why."""


# --- preflight ---------------------------------------------------------------------------------------------------
def _probe_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".txseq-probe-"):
            pass
    except OSError as e:
        raise TrackingError(f"{what} {folder} is not writable: {e.strerror or e}") from e


def _sqlite_path(tracking_uri: str) -> Path:
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    return db if db.is_absolute() else Path.cwd() / db


def preflight(tracking_uri: str, artifact_root: Path | None = None, timeout_s: float = 5.0) -> None:
    """Fail fast with a clear message when the store cannot be reached or written.

    sqlite:///path  -> the folder must be writable (SQLite writes its journal beside the file), the file too if it
                       exists, and the database must open. http(s)://host -> GET /health within `timeout_s`.
    The local artifact root, when given, must be writable.
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        db = _sqlite_path(tracking_uri)
        _probe_writable(db.parent, "MLflow tracking folder")
        if db.exists() and not os.access(db, os.W_OK):
            raise TrackingError(f"MLflow tracking database {db} is read-only")
    elif parsed.scheme in {"http", "https"}:
        _check_server(tracking_uri, timeout_s)
    if artifact_root is not None:
        _probe_writable(Path(artifact_root), "MLflow artifact folder")
    try:
        with store_lock(tracking_uri):  # the first use of a SQLite file creates and migrates its tables
            MlflowClient(tracking_uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure here means the store is unusable; say so plainly
        raise TrackingError(f"MLflow tracking store {tracking_uri} cannot be used: {e}") from e


def _check_server(tracking_uri: str, timeout_s: float) -> None:
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - http(s) checked by the callers
            if resp.status != 200:
                raise TrackingError(f"MLflow tracking server {tracking_uri} answered {resp.status} on /health")
    except (urllib.error.URLError, OSError) as e:
        raise TrackingError(f"MLflow tracking server {tracking_uri} is unreachable: {e}") from e


def check_readable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """For a reader (scoring): the store must already exist and answer, and nothing is created or written (MLflow
    would silently create an empty SQLite database at a mistyped path, then report the model as missing).
    sqlite:///path -> the file exists and is readable; http(s) -> GET /health within `timeout_s`."""
    scheme = urlparse(tracking_uri).scheme
    if scheme == "sqlite":
        db = _sqlite_path(tracking_uri)
        if not db.is_file():
            raise TrackingError(f"MLflow tracking database {db} does not exist (wrong MLFLOW_TRACKING_URI or "
                                f"TXSEQ_DATA_ROOT?)")
        if not os.access(db, os.R_OK):
            raise TrackingError(f"MLflow tracking database {db} is not readable")
    elif scheme in {"http", "https"}:
        _check_server(tracking_uri, timeout_s)


def stored_model_config(model_uri: str, tracking_uri: str) -> dict | None:
    """The config.json of a logged or registered txseq model (its kind, ingest rules with the export format, label),
    read alone: no weights, no torch. None when it cannot be read that way (a missing model or version, an
    unreachable store: loading the model then says why)."""
    import json

    try:
        if model_uri.startswith(("models:/", "runs:/")):  # these resolve through the store: never create one
            check_readable(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)  # models:/ URIs resolve through the current registry, as the load does
        with tempfile.TemporaryDirectory(prefix="txseq-config-") as tmp:
            path = mlflow.artifacts.download_artifacts(f"{model_uri.rstrip('/')}/artifacts/config.json", dst_path=tmp)
            return json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001 - an early look only: the model load reports the real problem
        return None


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """For a SQLite store, an exclusive lock (`<db>.lock` beside the file) held while the database is created or
    migrated and the experiment is created: MLflow's schema set-up fails when two processes run it at once (seen
    with two `txseq train` on a fresh store). Other stores: no lock. Ordinary run writes need none (SQLite's own
    locking and MLflow's retries serialise them)."""
    if urlparse(tracking_uri).scheme != "sqlite":
        yield
        return
    db = _sqlite_path(tracking_uri)
    with open(db.with_name(f"{db.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --- runs, params, metrics ---------------------------------------------------------------------------------------
def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"lr": 1e-3}} -> {"train.lr": "0.001"}; values stringified and cut to MLflow's length limit."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:_MAX_PARAM_CHARS]
    return out


@dataclass
class MlflowLogger:
    """`pipeline.training.train.MetricLogger` writing to one run (non-finite values are skipped: MLflow charts cannot
    draw them)."""

    client: MlflowClient
    run_id: str

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    model_uri: str  # runs:/ or models:/ URI of the logged model


@dataclass
class Tracker:
    tracking_uri: str
    experiment_id: str
    client: MlflowClient

    @contextmanager
    def run(self, name: str, parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        """Start (and end) a run; nested under `parent_run_id` when given. Yields the run id."""
        with mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=name,
            nested=parent_run_id is not None,
            parent_run_id=parent_run_id,
            tags=dict(tags or {}),
        ) as active:
            yield active.info.run_id

    def start_run(self, name: str, tags: Mapping[str, str] | None = None) -> str:
        """Open a run that outlives this call (a parent whose nested runs start in other tasks or threads); close
        it with `end_run`. Yields nothing active: children name it through `run(..., parent_run_id=...)`."""
        return self.client.create_run(self.experiment_id, run_name=name, tags=dict(tags or {})).info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def fail_stale_runs(self, tag: str, value: str) -> list[str]:
        """Mark FAILED every run tagged `tag = value` that is still RUNNING although the process that opened it
        (tags `txseq.host` / `txseq.pid`, see `process_tags`) is gone from this host: what a killed training leaves
        behind. Runs opened on another host are left alone (their process cannot be checked from here).
        Returns the ids of the runs marked failed."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'", max_results=1000
        )
        failed = []
        for run in runs:
            tags = run.data.tags
            pid = tags.get(TAG_PID, "")
            if tags.get(TAG_HOST) != socket.gethostname() or (pid.isdigit() and pid_alive(int(pid))):
                continue
            self.client.set_tag(run.info.run_id, "txseq.failure",
                                f"process {tags.get(TAG_PID)} ended without closing the run (killed?)")
            self.client.set_terminated(run.info.run_id, "FAILED")
            failed.append(run.info.run_id)
        return failed

    def end_running_runs(self, filter_string: str, status: str, reason: str) -> list[str]:
        """End as `status` (KILLED, FAILED) every RUNNING run matching `filter_string`, with the reason as the tag
        `txseq.failure`: what a cancelled or crashed flow run leaves open. Returns the ids of the runs ended."""
        runs = self.client.search_runs(
            [self.experiment_id], f"{filter_string} and attributes.status = 'RUNNING'", max_results=1000
        )
        for run in runs:
            self.client.set_tag(run.info.run_id, "txseq.failure", reason)
            self.client.set_terminated(run.info.run_id, status)
        return [run.info.run_id for run in runs]

    def logger(self, run_id: str) -> MlflowLogger:
        return MlflowLogger(self.client, run_id)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        flat = flatten(params)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self.logger(run_id).log(metrics, step)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_pyfunc(
        self,
        run_id: str,
        *,
        name: str,
        python_model: str | Path,
        artifacts: Mapping[str, str],
        code_paths: list[str],
        signature: Any,
        input_example: Any,
        pip_requirements: list[str],
        registered_model: str,
        version_tags: Mapping[str, str],
    ) -> RegisteredVersion:
        """Log a pyfunc model (models-from-code file: nothing is pickled) in the active run `run_id` and register it."""
        active = mlflow.active_run()
        if active is None or active.info.run_id != run_id:
            raise TrackingError(f"log_pyfunc needs run {run_id} to be the active run")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(python_model),
            artifacts=dict(artifacts),
            code_paths=code_paths,
            signature=signature,
            input_example=input_example,
            pip_requirements=pip_requirements,
            registered_model_name=registered_model,
        )
        version = str(info.registered_model_version)
        for key, value in version_tags.items():
            self.client.set_model_version_tag(registered_model, version, key, str(value))
        return RegisteredVersion(registered_model, version, info.model_uri)

    # --- registry primitives (the champion rule itself is `pipeline.registry.champion`; `pipeline.registry.versions` applies it) ---
    def version(self, name: str, version: str) -> VersionInfo:
        return _info(self.client.get_model_version(name, str(version)))

    def champion(self, name: str) -> VersionInfo | None:
        try:
            return _info(self.client.get_model_version_by_alias(name, CHAMPION))
        except MlflowException:
            return None

    def set_champion(self, name: str, version: str) -> None:
        self.client.set_registered_model_alias(name, CHAMPION, str(version))

    def versions(self, name: str, tags: Mapping[str, str] | None = None) -> list[VersionInfo]:
        """Every version of `name` carrying all of `tags`, oldest first."""
        try:
            found = self.client.search_model_versions(f"name = '{name}'", max_results=10_000)
        except MlflowException:
            return []
        infos = [_info(v) for v in found]
        infos = [v for v in infos if all(v.tags.get(k) == str(val) for k, val in (tags or {}).items())]
        return sorted(infos, key=lambda v: int(v.version))

    def set_version_tags(self, name: str, version: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def set_description(self, name: str, version: str, text: str) -> None:
        self.client.update_model_version(name, str(version), description=text)

    def download_artifact(self, run_id: str, path: str, dst: Path) -> Path:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst),
                                                        tracking_uri=self.tracking_uri))

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    @contextmanager
    def registry_lock(self, artifact_root: Path, name: str) -> Iterator[None]:
        """An exclusive lock (a file beside the artifacts) held while a version is registered and its champion
        decision made: two models trained at the same time (threads or processes of this host) cannot race for the
        alias or decide a version that is still being tagged."""
        lock = Path(artifact_root) / f".registry-{name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class VersionInfo:
    """A registered version as the registry step needs it."""

    name: str
    version: str
    run_id: str | None
    tags: Mapping[str, str]
    description: str = ""

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def _info(mv: Any) -> VersionInfo:
    return VersionInfo(mv.name, str(mv.version), mv.run_id, dict(mv.tags or {}), mv.description or "")


@dataclass(frozen=True)
class VersionSummary:
    """One registered version as `txseq models` lists it."""

    version: str
    model: str  # the model kind (tag "model"), e.g. transformer, gbdt
    aliases: tuple[str, ...]
    created: str  # UTC, minutes
    metrics: dict[str, float]  # of the run that logged it: test/auroc, test/logloss, ...
    tags: dict[str, str]


def registered_versions(tracking_uri: str, name: str) -> list[VersionSummary]:
    """Every version of registered model `name`, newest first, with its run's metrics, its aliases and its tags
    (champion decision, split, decision threshold and calibration). Raises TrackingError when the store cannot be
    read or the model is not registered."""
    check_readable(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        registered = client.get_registered_model(name)
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as e:
        raise TrackingError(f"no registered model {name!r} in {tracking_uri}") from e
    by_version: dict[str, list[str]] = {}
    for alias, version in registered.aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    out = []
    for v in sorted(versions, key=lambda v: int(v.version), reverse=True):
        try:
            metrics = dict(client.get_run(v.run_id).data.metrics) if v.run_id else {}
        except MlflowException:  # the run was deleted: the version stays listed
            metrics = {}
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(v.creation_timestamp / 1000))
        out.append(VersionSummary(str(v.version), v.tags.get("model", "?"), tuple(sorted(by_version.get(str(v.version), []))),
                                  created, metrics, dict(v.tags)))
    return out


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: Path) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=Path(artifact_location).resolve().as_uri())


def setup(settings: Settings, experiment: str = "txseq") -> Tracker:
    """Preflight the store, point MLflow at it and open `experiment` (artifacts under settings.artifact_root)."""
    preflight(settings.tracking_uri, settings.artifact_root)
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri)
    with store_lock(settings.tracking_uri):  # two processes must not both create the experiment
        experiment_id = get_or_create_experiment(client, experiment, settings.artifact_root / experiment)
    mlflow.set_experiment(experiment_id=experiment_id)
    return Tracker(settings.tracking_uri, experiment_id, client)
