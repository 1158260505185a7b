"""Safety: nothing loaded from disk can run code (state dicts via `torch.load(weights_only=True)`, JSON configs, skops
with a trusted-type list, models from code: no pickle), and paths from the command line and flow parameters are
resolved and checked so that an output never overwrites or lands inside an input.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from pipeline.io import PathError, check_io_paths

from conftest import Session, no_traceback

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this creates a folder: proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _poisoned(path: Path, marker: Path, base: dict | None = None) -> Path:
    torch.save({**(base or {}), "extra": Payload(marker)}, path)
    return path


# --- loading never unpickles -----------------------------------------------------------------------------------------


def test_a_checkpoint_with_a_pickled_object_is_refused_by_resume(tmp_path: Path) -> None:
    from models import ModelConfig, build_model
    from pipeline.training.train import TrainConfig, fit, load_checkpoint

    marker = tmp_path / "code-ran"
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    model = build_model(ModelConfig(n_mcc=10, n_tr_type=5, d_model=16, n_layers=1, n_heads=2))
    _poisoned(ckpt_dir / "last.pt", marker, {"model": model.state_dict()})
    with pytest.raises(Exception, match="(?i)weights.only"):
        load_checkpoint(ckpt_dir / "last.pt")
    with pytest.raises(Exception, match="(?i)weights.only"):
        fit(model, lambda epoch: [], lambda: [], TrainConfig(steps=1, progress=False, device="cpu"), None, ckpt_dir)
    assert not marker.exists()


def test_a_model_artifact_with_a_pickled_object_is_refused(session: Session, tmp_path: Path) -> None:
    """The registered model's own artifacts, with model.pt replaced by a poisoned file, do not load."""
    from pipeline.scoring.pyfunc import load_scorer

    local = Path(mlflow.artifacts.download_artifacts(session.model_uri, dst_path=str(tmp_path / "model"),
                                                     tracking_uri=session.tracking_uri))
    artifacts = {p.stem if p.stem != "vocab" else "vocab": p for p in (local / "artifacts").iterdir()}
    assert {"config", "model", "vocab"} <= set(artifacts), artifacts
    load_scorer({k: str(v) for k, v in artifacts.items()})  # the genuine files load
    marker = tmp_path / "code-ran"
    _poisoned(artifacts["model"], marker, torch.load(artifacts["model"], weights_only=True))
    with pytest.raises(Exception, match="(?i)weights.only"):
        load_scorer({k: str(v) for k, v in artifacts.items()})
    assert not marker.exists()


def test_the_registered_model_holds_no_pickle(session: Session, tmp_path: Path) -> None:
    local = Path(mlflow.artifacts.download_artifacts(session.model_uri, dst_path=str(tmp_path / "model"),
                                                     tracking_uri=session.tracking_uri))
    names = [p.name for p in local.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib", ".cloudpickle"))], names
    mlmodel = (local / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel and "python_model.pkl" not in mlmodel
    config = json.loads((local / "artifacts" / "config.json").read_text())
    assert config["kind"] == "sequence"


def test_a_gbdt_file_with_untrusted_types_is_refused(tmp_path: Path) -> None:
    """A skops file whose estimator would call os.system is refused before anything is constructed."""
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    from pipeline.scoring.gbdt import load_gbdt

    path = tmp_path / "model.skops"
    sio.dump(FunctionTransformer(func=os.system), path)
    with pytest.raises(ValueError, match="trusted"):
        load_gbdt(path)


def _calls(tree: ast.AST, dotted: str) -> list[ast.Call]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            base = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
            if f"{base}.{name}" == dotted or (not base and name == dotted):
                out.append(node)
    return out


def test_no_code_path_loads_a_pickle() -> None:
    """Every torch.load passes weights_only=True; pickle/joblib/cloudpickle loads appear nowhere in the package."""
    sources = [p for d in ("pipeline", "models", "flows") for p in (ROOT / d).rglob("*.py")]
    torch_loads = 0
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree, "torch.load"):
            torch_loads += 1
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                f"{path}:{call.lineno}: torch.load without weights_only=True"
        for banned in ("pickle.load", "pickle.loads", "joblib.load", "cloudpickle.load", "cloudpickle.loads",
                       "pd.read_pickle", "np.load"):
            found = _calls(tree, banned)
            if banned == "np.load":  # allowed only with allow_pickle=False (its default) and never True
                found = [c for c in found if any(k.arg == "allow_pickle" and getattr(k.value, "value", None)
                                                 for k in c.keywords)]
            assert not found, f"{path}:{found[0].lineno}: {banned}"
    assert torch_loads >= 2  # the trainer's checkpoints and the scorer's weights


# --- paths: resolved and checked -------------------------------------------------------------------------------------


def test_check_io_paths_resolves_and_refuses_overlaps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("x")
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "in" / "a.csv")
    ins, outs = check_io_paths(["in/../in/a.csv"], ["out/scores.parquet"])
    assert ins == [tmp_path / "in" / "a.csv"] and outs == [tmp_path / "out" / "scores.parquet"]
    refused = {
        "equal": (["in/a.csv"], ["in/a.csv"], "also an input"),
        "via a symlink": (["in/a.csv"], [str(link)], "also an input"),
        "inside the input folder": (["in"], ["in/events"], "inside the input folder"),
        "input inside the output": (["in/a.csv"], ["in"], "inside the output folder"),
        "two equal outputs": (["in/a.csv"], ["o.parquet", "./o.parquet"], "two outputs"),
        "missing input": (["nowhere.csv"], ["o.parquet"], "no such file"),
    }
    for name, (i, o, message) in refused.items():
        with pytest.raises(PathError, match=message):
            check_io_paths(i, o)
            pytest.fail(name)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(proc, *expected: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    no_traceback(proc)
    for e in expected:
        assert e in proc.stderr, proc.stderr


def test_score_refuses_to_overwrite_its_input(session: Session, tmp_path: Path) -> None:
    source = tmp_path / "t.csv.gz"
    shutil.copy(session.data.raw / "transactions.csv.gz", source)
    before = _sha(source)
    _refused(session.txseq("score", "--model", session.model_uri, "--input", source, "--output", source),
             str(source), "output is also an input")
    # the rejects file beside the output would land on the input
    victim = tmp_path / "x.rejects.parquet"
    shutil.copy(session.data.events / "events" / next((session.data.events / "events").iterdir()).name, victim)
    victim_sha = _sha(victim)
    _refused(session.txseq("score", "--model", session.model_uri, "--input", victim, "--output",
                           tmp_path / "x.parquet"), "output is also an input")
    # relative paths are resolved first: ./t.csv.gz and sub/../t.csv.gz are the same file
    (tmp_path / "sub").mkdir()
    _refused(session.txseq("score", "--model", session.model_uri, "--input", "t.csv.gz", "--output", "sub/../t.csv.gz",
                           cwd=tmp_path), "output is also an input")
    _refused(session.txseq("score", "--model", session.model_uri, "--input", source, "--output", tmp_path / "sub"),
             "is a folder")
    assert _sha(source) == before and _sha(victim) == victim_sha


def test_landing_output_folder_must_not_be_the_landing_folder(session: Session, tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    shutil.copy(session.data.raw / "transactions.csv.gz", landing / "a.csv.gz")
    for out in (landing, landing / "scores"):
        _refused(session.txseq("score", "--model", session.model_uri, "--landing", landing, "--out-dir", out),
                 str(landing))
    assert sorted(p.name for p in landing.iterdir()) == ["a.csv.gz"]


def test_ingest_refuses_outputs_over_or_inside_its_inputs(session: Session, tmp_path: Path) -> None:
    folder = tmp_path / "parquet_in"  # a Parquet dataset folder as input
    shutil.copytree(session.data.events / "events", folder)
    before = {p.name: _sha(p) for p in folder.iterdir()}
    _refused(session.txseq("ingest", folder, "--out", folder), "output is also an input")
    _refused(session.txseq("ingest", folder, "--out", folder / "validated"), "inside the input folder")
    raw = tmp_path / "t.csv.gz"
    shutil.copy(session.data.raw / "transactions.csv.gz", raw)
    _refused(session.txseq("ingest", raw, "--out", raw), "output is also an input")
    _refused(session.txseq("ingest", tmp_path / "none.csv", "--out", tmp_path / "o"), "no such file")
    assert {p.name: _sha(p) for p in folder.iterdir()} == before and not (tmp_path / "o").exists()


def test_flow_parameters_are_checked_before_any_task(session: Session, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow bodies resolve and check their path parameters first (called through `.fn`: no task runs)."""
    from flows.ingest import IngestParams, ingest_flow
    from flows.score import LandingParams, ScoreParams, score, score_landing

    monkeypatch.setenv("TXSEQ_DATA_ROOT", str(tmp_path / "root"))
    raw = tmp_path / "t.csv.gz"
    shutil.copy(session.data.raw / "transactions.csv.gz", raw)
    with pytest.raises(PathError, match="output is also an input"):
        score.fn(ScoreParams(input=str(raw), output=str(raw)))
    with pytest.raises(PathError, match="output is also an input"):
        score_landing.fn(LandingParams(landing_dir=str(tmp_path), out_dir=str(tmp_path)))
    with pytest.raises(PathError, match="inside the input folder"):
        ingest_flow.fn(IngestParams(inputs=[str(tmp_path)], out_dir=str(tmp_path / "events")))
    assert not (tmp_path / "root").exists()
