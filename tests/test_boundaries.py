"""The architecture rules, checked on the source: models/ imports only torch; pipeline/ never imports flows/;
only flows/ imports prefect; only pipeline/registry/tracking.py and pipeline/scoring/pyfunc.py import mlflow; nothing
under pipeline/scoring/ imports pipeline/training/, directly or through other modules; package __init__ files
import only the standard library; library code never reads the environment and never loads the settings (the edges
pass them in)."""

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


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", _sources("models"), ids=_rel)
def test_models_import_only_torch(path: Path) -> None:
    foreign = _imports(path) - STDLIB - {"torch", "models", "__future__"}
    assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}; models/ may import only torch"


@pytest.mark.parametrize("path", _sources("pipeline"), ids=_rel)
def test_pipeline_never_imports_flows_or_prefect(path: Path) -> None:
    bad = _imports(path) & {"flows", "prefect"}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


MLFLOW_IMPORTERS = {"pipeline/registry/tracking.py", "pipeline/scoring/pyfunc.py"}


@pytest.mark.parametrize("path", _sources("pipeline"), ids=_rel)
def test_only_tracking_and_the_pyfunc_import_mlflow(path: Path) -> None:
    if _rel(path) in MLFLOW_IMPORTERS:
        return
    assert "mlflow" not in _imports(path), f"{_rel(path)} imports mlflow; go through pipeline.registry.tracking"


def test_the_mlflow_importers_exist() -> None:
    """Guard against a rule that exempts files that were moved or renamed."""
    assert all((ROOT / p).is_file() and "mlflow" in _imports(ROOT / p) for p in MLFLOW_IMPORTERS)


@pytest.mark.parametrize("path", sorted((ROOT / "pipeline").rglob("__init__.py")), ids=_rel)
def test_package_inits_import_only_the_standard_library(path: Path) -> None:
    """Importing `pipeline.training.presets` must not run a package init that loads torch or MLflow for others."""
    imports = _module_level_imports(path)
    assert not imports, f"{_rel(path)} imports at line(s) {imports}; import lazily or from the module itself"


def _module_level_imports(path: Path) -> list[int]:
    """Lines of a module's top-level imports of anything but the standard library."""
    lines = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        if any(n.split(".")[0] not in STDLIB for n in names):
            lines.append(node.lineno)
    return lines


def test_the_rules_see_real_imports(tmp_path: Path) -> None:
    """Guard against a checker that can never fail."""
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\nfrom flows.train import x\nfrom . import sibling\n")
    assert _imports(probe) == {"numpy", "flows"}


def _module_path(name: str) -> Path | None:
    """The source file of a `pipeline.x.y` module or package, or None if there is none (an imported name)."""
    base = ROOT / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _pipeline_imports(path: Path) -> set[str]:
    """`pipeline.x` modules a module imports, at module level or inside functions (`from pipeline.x import y` names
    the module `pipeline.x.y` when y is one, else `pipeline.x`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("pipeline."))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pipeline" or node.module.startswith("pipeline."):
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    names.add(sub if _module_path(sub) else node.module)
    return names - {"pipeline"}


def _reachable(module: str) -> set[str]:
    """Every pipeline module `module` imports, directly or through others (packages through their __init__)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = _module_path(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo.extend(_pipeline_imports(path))
        parts = name.split(".")  # importing a.b.c runs the __init__ of a.b first
        todo.extend(".".join(parts[:k]) for k in range(2, len(parts)))
    return seen - {module}


def _modules(package: str) -> list[str]:
    return [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in _sources(package.replace(".", "/"))]


SCORING = _modules("pipeline.scoring")


@pytest.mark.parametrize("module", SCORING)
def test_scoring_never_imports_training(module: str) -> None:
    bad = {m for m in _reachable(module) if m == "pipeline.training" or m.startswith("pipeline.training.")}
    assert not bad, f"{module} imports {sorted(bad)} (directly or through other modules); scoring never trains"


@pytest.mark.parametrize("path", _sources("pipeline"), ids=_rel)
def test_library_code_never_reads_the_environment(path: Path) -> None:
    """Only pipeline/settings.py reads environment variables; the rest gets them passed in."""
    if _rel(path) == "pipeline/settings.py":
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
    probe.write_text("from pipeline.training import train\nimport pipeline.training.run\nfrom pipeline.io import x\n"
                     "from pipeline.scoring import TxSeqModel\nfrom pipeline import schema\n")
    assert _pipeline_imports(probe) == {"pipeline.training.train", "pipeline.training.run", "pipeline.io",
                                        "pipeline.scoring", "pipeline.schema"}
    assert "pipeline.training.train" in _reachable("pipeline.training.trainers")
    assert "pipeline.scoring.pyfunc" in _reachable("pipeline.training.trainers")  # training may use scoring
    assert "pipeline.scoring.pyfunc" in SCORING and "pipeline.scoring" in SCORING
    init = tmp_path / "__init__.py"
    init.write_text('"""doc"""\nfrom __future__ import annotations\nimport torch\nfrom pipeline.scoring import pyfunc\n'
                    'import json\n')
    assert _module_level_imports(init) == [3, 4]
    call = ast.parse("settings.load_settings()").body[0].value
    assert isinstance(call, ast.Call) and _called(call) == "load_settings"


@pytest.mark.parametrize("path", _sources("pipeline"), ids=_rel)
def test_settings_are_loaded_only_at_the_edges(path: Path) -> None:
    """`load_settings()` (the data root, the tracking store, the registered model's name) is called by the edges
    (pipeline/cli.py, flows/, bench/) and passed down; library code takes a `Settings`."""
    if _rel(path) in {"pipeline/cli.py", "pipeline/settings.py"}:
        return
    calls = [n.lineno for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(n, ast.Call) and _called(n) == "load_settings"]
    assert not calls, f"{path.relative_to(ROOT)} calls load_settings() at line(s) {calls}; take a Settings instead"
