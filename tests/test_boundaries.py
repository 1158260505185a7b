"""The architecture rules, checked on the source: models/ imports only torch; pipeline/ never imports flows/;
only flows/ imports prefect; only pipeline/tracking.py and pipeline/scoring.py import mlflow; scoring never imports
training; library code never reads the environment and never loads the settings (the edges pass them in)."""

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


def _pipeline_imports(path: Path) -> set[str]:
    """`pipeline.x` modules a module imports, at module level or inside functions (`from pipeline import x` too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("pipeline."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pipeline":
                names.update(f"pipeline.{a.name}" for a in node.names)
            elif node.module.startswith("pipeline."):
                names.add(node.module)
    return names


def _reachable(module: str) -> set[str]:
    """Every pipeline module `module` imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = ROOT / (name.replace(".", "/") + ".py")
        if name in seen or not path.exists():
            continue
        seen.add(name)
        todo.extend(_pipeline_imports(path))
    return seen - {module}


SCORING = ("pipeline.scoring", "pipeline.batch_scoring", "pipeline.inference", "pipeline.drift", "pipeline.embeddings")
TRAINING = {"pipeline.train", "pipeline.trainers", "pipeline.training_run", "pipeline.pretrain", "pipeline.report"}


@pytest.mark.parametrize("module", SCORING)
def test_scoring_never_imports_training(module: str) -> None:
    bad = _reachable(module) & TRAINING
    assert not bad, f"{module} imports {sorted(bad)} (directly or through other modules); scoring never trains"


@pytest.mark.parametrize("path", _sources("pipeline"), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_code_never_reads_the_environment(path: Path) -> None:
    """Only pipeline/settings.py reads environment variables; the rest gets them passed in."""
    if path.name == "settings.py":
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    reads = [n.lineno for n in ast.walk(tree)
             if (isinstance(n, ast.Attribute) and n.attr in {"environ", "getenv", "environb"}
                 and isinstance(n.value, ast.Name) and n.value.id == "os")
             or (isinstance(n, ast.ImportFrom) and n.module == "os"
                 and any(a.name in {"environ", "getenv"} for a in n.names))]
    assert not reads, f"{path.relative_to(ROOT)} reads the environment at line(s) {reads}; use pipeline.settings"


def _called(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def test_the_new_rules_can_fail(tmp_path: Path) -> None:
    """Guard against checkers that can never fail."""
    probe = tmp_path / "probe.py"
    probe.write_text("from pipeline import train\nimport pipeline.training_run\nfrom pipeline.io import x\n")
    assert _pipeline_imports(probe) == {"pipeline.train", "pipeline.training_run", "pipeline.io"}
    assert "pipeline.train" in _reachable("pipeline.trainers")
    call = ast.parse("settings.load_settings()").body[0].value
    assert isinstance(call, ast.Call) and _called(call) == "load_settings"


@pytest.mark.parametrize("path", _sources("pipeline"), ids=lambda p: str(p.relative_to(ROOT)))
def test_settings_are_loaded_only_at_the_edges(path: Path) -> None:
    """`load_settings()` (the data root, the tracking store, the registered model's name) is called by the edges
    (pipeline/cli.py, flows/, bench/) and passed down; library code takes a `Settings`."""
    if path.name in {"cli.py", "settings.py"}:
        return
    calls = [n.lineno for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(n, ast.Call) and _called(n) == "load_settings"]
    assert not calls, f"{path.relative_to(ROOT)} calls load_settings() at line(s) {calls}; take a Settings instead"
