"""prefect.yaml: every deployment's entrypoint loads as a worker loads it, its parameters resolve, and
`prefect deploy --all` accepts the file (tests/flows/test_worker.py then runs each deployment on a real worker)."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.flows import load_flow_from_entrypoint

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
PREFECT = [sys.executable, "-m", "prefect"]


def test_the_file_declares_nightly_retraining_and_hourly_landing_scores() -> None:
    by_name = {d["name"]: d for d in DEPLOYMENTS}
    assert by_name["nightly-retrain"]["schedules"][0]["cron"] == "0 2 * * *"
    assert by_name["hourly-landing-scores"]["schedules"][0]["cron"] == "5 * * * *"
    # The anchors of the definitions block are shared, not copied.
    assert len({d["work_pool"]["name"] for d in DEPLOYMENTS}) == 1
    assert by_name["hourly-landing-scores"]["parameters"]["params"]["model_uri"].endswith("@champion")


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_and_parameters_resolve(deployment: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # entrypoints are relative to the project root, as for `prefect deploy`
    flow = load_flow_from_entrypoint(deployment["entrypoint"])
    validated = flow.validate_parameters(deployment.get("parameters") or {})
    assert set(validated) <= set(flow.parameters.properties)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_entrypoint_loads_in_a_fresh_process_without_placeholder(deployment: dict) -> None:
    """A worker's flow-run process starts in the project folder with nothing imported; no placeholder flow allowed."""
    code = (
        "import sys; from prefect.flows import load_flow_from_entrypoint as load; "
        "f = load(sys.argv[1], use_placeholder_flow=False); print(type(f).__name__, f.name, f.fn.__module__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, deployment["entrypoint"]], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    kind, _, module = done.stdout.split()[-3:]
    assert kind == "Flow" and module.startswith("flows.")


def test_no_flow_module_shadows_a_top_level_module() -> None:
    """A file entrypoint puts flows/ first on sys.path: no flows/*.py may be named like an importable package."""
    taken = set(sys.stdlib_module_names) | set(importlib.metadata.packages_distributions()) | {"pipeline", "models", "flows"}
    clashes = sorted(p.name for p in (ROOT / "flows").glob("*.py") if p.stem in taken)
    assert not clashes, f"flows/ modules named like top-level modules: {clashes}"


def test_prefect_deploy_all_accepts_the_file(prefect_server: str) -> None:
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    pool = DEPLOYMENTS[0]["work_pool"]["name"]

    def prefect(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([*PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    prefect("work-pool", "create", pool, "--type", "process", "--overwrite")
    prefect("--no-prompt", "deploy", "--all")

    async def read() -> list:
        async with get_client() as client:
            return await client.read_deployments()

    import asyncio

    deployed = {d.name: d for d in asyncio.run(read())}
    assert set(deployed) >= {d["name"] for d in DEPLOYMENTS}
    nightly = deployed["nightly-retrain"]
    assert nightly.work_pool_name == pool
    assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"]
    assert deployed["hourly-landing-scores"].parameters["params"]["min_age_s"] == 60
