"""The architecture rules, checked on the source: models/ imports only torch; pipeline/ never imports flows/;
only flows/ imports prefect; only pipeline/tracking.py and pipeline/scoring.py import mlflow."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path) -> set[str]:
    """Top-level package names imported by a module (absolute imports only; relative ones stay in-package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("models"), ids=lambda p: str(p.relative_to(ROOT)))
def test_models_import_only_torch(path: Path) -> None:
    foreign = _imports(path) - STDLIB - {"torch", "models", "__future__"}
    assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}; models/ may import only torch"


@pytest.mark.parametrize("path", _sources("pipeline"), ids=lambda p: str(p.relative_to(ROOT)))
def test_pipeline_never_imports_flows_or_prefect(path: Path) -> None:
    bad = _imports(path) & {"flows", "prefect"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _sources("pipeline"), ids=lambda p: str(p.relative_to(ROOT)))
def test_only_tracking_and_scoring_import_mlflow(path: Path) -> None:
    if path.name in {"tracking.py", "scoring.py"}:
        return
    assert "mlflow" not in _imports(path), f"{path.relative_to(ROOT)} imports mlflow; go through pipeline.tracking"


def test_the_rules_see_real_imports(tmp_path: Path) -> None:
    """Guard against a checker that can never fail."""
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\nfrom flows.train import x\nfrom . import sibling\n")
    assert _imports(probe) == {"numpy", "flows"}
