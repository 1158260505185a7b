"""Test-session setup. Env vars are set before anything imports prefect or mlflow (see ../shared/notes/stack.md)."""

from __future__ import annotations

import os
import tempfile

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="txseq-prefect-")
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as pipeline.settings.LIBRARY_ENV_DEFAULTS: no spinning
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one compute thread each, so the
    # workers (and the CLI subprocesses they start, which inherit this) do not oversubscribe the cores
    os.environ.setdefault("TXSEQ_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


# `make test` runs `pytest -n auto --dist loadgroup`: every test module stays on one worker (its module-scoped
# fixtures — a trained model, a Spark session, a deployed worker — are built once), except the modules listed here,
# many independent CLI calls on session fixtures, whose tests are spread over the workers one by one.
_SPREAD_MODULES = {"test_bad_input.py"}


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ANN001 - pytest hook
    for item in items:
        if item.path.name not in _SPREAD_MODULES:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))


@pytest.fixture(scope="session")
def spark_ok() -> None:
    """pyspark and Java 17+ are here: else a skip on a developer machine, a failure in CI (`CI` set). For every test
    that runs Spark (tests/pipeline/test_spark_engine.py, the flows on engine=spark)."""
    from pipeline.engines.spark import SparkError, check_spark

    try:
        check_spark()
    except SparkError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Spark tests: {e}")
        pytest.skip(str(e))
