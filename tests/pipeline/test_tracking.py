"""MLflow tracking: preflight errors, experiment location, metric logging, and the champion-alias rule."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.tracking import (
    CHAMPION,
    TAG_DECISION,
    TAG_PROMOTED,
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


def _version(tracker: Tracker, name: str, auroc: float, split_id: str) -> str:
    if not tracker.client.search_registered_models(f"name='{name}'"):
        tracker.client.create_registered_model(name)
    mv = tracker.client.create_model_version(name, source="file:///dev/null")
    tracker.client.set_model_version_tag(name, mv.version, TAG_TEST_AUROC, str(auroc))
    tracker.client.set_model_version_tag(name, mv.version, TAG_SPLIT_ID, split_id)
    return mv.version


def _champion(tracker: Tracker, name: str) -> str:
    return tracker.client.get_model_version_by_alias(name, CHAMPION).version


def test_champion_moves_only_on_a_better_score_on_the_same_split(tracker: Tracker) -> None:
    name = "champion-rule"
    v1 = _version(tracker, name, 0.70, "s1")
    assert tracker.promote_champion(name, v1, 0.70, "s1").promoted  # the first version is champion
    v2 = _version(tracker, name, 0.75, "s1")
    assert tracker.promote_champion(name, v2, 0.75, "s1").promoted  # better: moves
    assert _champion(tracker, name) == v2
    v3 = _version(tracker, name, 0.74, "s1")
    worse = tracker.promote_champion(name, v3, 0.74, "s1")
    assert not worse.promoted and "does not beat" in worse.reason
    v4 = _version(tracker, name, 0.75, "s1")
    assert not tracker.promote_champion(name, v4, 0.75, "s1").promoted  # a tie does not move it
    v5 = _version(tracker, name, 0.99, "s2")
    other = tracker.promote_champion(name, v5, 0.99, "s2")
    assert not other.promoted and "not compared" in other.reason  # another split is not comparable
    assert _champion(tracker, name) == v2
    tags = tracker.client.get_model_version(name, v3).tags
    assert tags[TAG_PROMOTED] == "false" and "0.7400" in tags[TAG_DECISION]
    assert tracker.client.get_model_version(name, v2).tags[TAG_PROMOTED] == "true"


def test_a_champion_from_another_split_is_rescored_and_compared(tracker: Tracker) -> None:
    """Given an evaluator, a champion measured on another split is re-scored on this split's test customers."""
    name = "champion-resplit"
    v1 = _version(tracker, name, 0.90, "old")
    assert tracker.promote_champion(name, v1, 0.90, "old").promoted
    asked: list[str] = []

    def rescored(auroc: float):
        def evaluate(model_uri: str) -> tuple[float, str]:
            asked.append(model_uri)
            return auroc, "its pyfunc on 40 test customers"
        return evaluate

    v2 = _version(tracker, name, 0.80, "new")
    kept = tracker.promote_champion(name, v2, 0.80, "new", rescored(0.85))  # champion still better on the new split
    assert not kept.promoted and _champion(tracker, name) == v1 and asked == [f"models:/{name}/{v1}"]
    assert "0.8000 does not beat" in kept.reason and "re-scored on split new: 0.8500" in kept.reason
    assert "its pyfunc on 40 test customers" in kept.reason and "0.9000 on split old" in kept.reason
    v3 = _version(tracker, name, 0.85, "new")
    assert not tracker.promote_champion(name, v3, 0.85, "new", rescored(0.85)).promoted  # a tie does not move it
    v4 = _version(tracker, name, 0.86, "new")
    moved = tracker.promote_champion(name, v4, 0.86, "new", rescored(0.85))
    assert moved.promoted and _champion(tracker, name) == v4 and "0.8600 beats champion" in moved.reason
    tags = tracker.client.get_model_version(name, v4).tags
    assert tags[TAG_PROMOTED] == "true" and "re-scored on split new: 0.8500" in tags[TAG_DECISION]


def test_a_champion_that_cannot_be_rescored_is_replaced(tracker: Tracker) -> None:
    """The champion's artifacts are gone (here: never there): loading it through the registry fails, so the new
    version is promoted and the tag says why."""
    from pipeline.scoring import score_with_model

    import polars as pl

    name = "champion-gone"
    v1 = _version(tracker, name, 0.95, "old")
    assert tracker.promote_champion(name, v1, 0.95, "old").promoted
    v2 = _version(tracker, name, 0.70, "new")
    events = pl.LazyFrame()
    decision = tracker.promote_champion(name, v2, 0.70, "new",
                                        lambda uri: (0.0, str(score_with_model(uri, events))))
    assert decision.promoted and _champion(tracker, name) == v2
    assert decision.reason.startswith(f"promoted: champion v{v1} (it had 0.9500 on split old) could not be re-scored")
    assert tracker.client.get_model_version(name, v2).tags[TAG_DECISION] == decision.reason
