"""One Prefect test server for the whole session (it takes 11–16 s to start; see ../shared/notes/stack.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session", autouse=True)
def prefect_server() -> Iterator[str]:
    """Every flow test reports to this temporary server; yields its API URL (for the CLI in subprocesses)."""
    from prefect.settings import PREFECT_API_URL

    with prefect_test_harness(server_startup_timeout=600):
        yield str(PREFECT_API_URL.value())
