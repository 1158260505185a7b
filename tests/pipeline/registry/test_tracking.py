"""MLflow tracking: preflight errors, experiment location, metric logging, registry primitives."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.registry.tracking import (
    CHAMPION,
    TAG_SPLIT_ID,
    TAG_TEST_AUROC,
    Tracker,
    TrackingError,
    flatten,
    preflight,
    setup,
)


def _settings(root: Path, name: str = "txseq-test") -> Settings:
    return Settings(data_root=root, tracking_uri=f"sqlite:///{root / 'mlflow' / 'mlflow.db'}",
                    artifact_root=root / "mlflow" / "artifacts", registered_model=name)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    return setup(_settings(tmp_path_factory.mktemp("store")), experiment="tracking-tests")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_preflight_unreachable_server_fails_fast() -> None:
    with pytest.raises(TrackingError, match="unreachable"):
        preflight(f"http://127.0.0.1:{_free_port()}", timeout_s=2.0)


def test_preflight_store_folder_that_cannot_exist(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingError, match="not writable"):
        preflight(f"sqlite:///{blocker / 'mlflow.db'}")


def test_preflight_read_only_artifact_root(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(TrackingError, match="artifact folder"):
        preflight(f"sqlite:///{tmp_path / 'mlflow.db'}", blocker / "artifacts")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_preflight_read_only_store_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(TrackingError, match="not writable"):
            preflight(f"sqlite:///{folder / 'mlflow.db'}")
    finally:
        folder.chmod(0o755)


def test_setup_puts_artifacts_under_the_artifact_root(tracker: Tracker) -> None:
    exp = tracker.client.get_experiment(tracker.experiment_id)
    assert exp.artifact_location.startswith("file://")
    assert exp.artifact_location.endswith("/mlflow/artifacts/tracking-tests")


def test_nested_runs_params_and_per_epoch_metrics(tracker: Tracker) -> None:
    with tracker.run("parent") as parent:
        with tracker.run("child", parent_run_id=parent) as child:
            tracker.log_params(child, {"train": {"lr": 0.001, "epochs": 3}, "split_id": "abc"})
            logger = tracker.logger(child)
            for epoch, loss in enumerate([0.7, 0.6, float("nan")]):
                logger.log({"train/loss": loss}, step=epoch)
    run = tracker.client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params == {"train.lr": "0.001", "train.epochs": "3", "split_id": "abc"}
    history = tracker.client.get_metric_history(child, "train/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.7), (1, 0.6)]


def test_flatten_nests_with_dots_and_truncates() -> None:
    flat = flatten({"a": {"b": 1, "c": {"d": "x" * 7000}}})
    assert flat["a.b"] == "1" and len(flat["a.c.d"]) == 6000


def test_registry_primitives_versions_tags_alias_and_description(tracker: Tracker) -> None:
    """The adapter's registry primitives (the champion rule is tested in test_champion.py / test_registry.py)."""
    name = "registry-primitives"
    tracker.client.create_registered_model(name)
    v1 = str(tracker.client.create_model_version(name, source="file:///dev/null").version)
    v2 = str(tracker.client.create_model_version(name, source="file:///dev/null").version)
    assert tracker.champion(name) is None
    tracker.set_version_tags(name, v2, {TAG_SPLIT_ID: "s2", TAG_TEST_AUROC: 0.7})
    assert [v.version for v in tracker.versions(name)] == [v1, v2]  # oldest first
    assert [v.version for v in tracker.versions(name, {TAG_SPLIT_ID: "s2"})] == [v2]
    assert tracker.versions("no-such-model") == []
    tracker.set_champion(name, v2)
    champion = tracker.champion(name)
    assert champion is not None and champion.version == v2 and champion.tags[TAG_TEST_AUROC] == "0.7"
    assert champion.uri == f"models:/{name}/{v2}"
    tracker.set_description(name, v1, "# card")
    assert tracker.version(name, v1).description == "# card"
    assert str(tracker.client.get_model_version_by_alias(name, CHAMPION).version) == v2
