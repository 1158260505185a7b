"""`txseq` starts in well under a second of CPU: building the parser and running a data step (`ingest`) never
imports torch, MLflow or scikit-learn (together ~12 CPU seconds on the 2-core machine, paid by every call of a
scheduled job or a shell loop). Checked in a fresh interpreter, since this test session has them all loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "mlflow", "sklearn", "skops")

_PROBE = """
import json, sys
from pipeline.cli import build_parser, main
build_parser()
loaded_by_parser = [m for m in {heavy!r} if m in sys.modules]
rc = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
print(json.dumps({{"parser": loaded_by_parser, "rc": rc, "run": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _probe(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_building_the_parser_loads_no_heavy_library() -> None:
    assert _probe()["parser"] == []


def test_ingest_loads_no_heavy_library(tmp_path: Path) -> None:
    raw = tmp_path / "t.csv"
    raw.write_text("customer_id,tr_datetime,mcc_code,tr_type,amount,term_id\n"
                   "1,0 10:00:00,5411,1010,-100.5,\n1,1 11:30:00,6011,2010,-2000,T1\n")
    result = _probe("ingest", str(raw), "--out", str(tmp_path / "events"))
    assert result["rc"] == 0 and result["run"] == []
    assert (tmp_path / "events" / "manifest.json").exists()


def test_the_probe_sees_a_heavy_import() -> None:
    """The check can fail: importing the trainer does load torch."""
    done = subprocess.run([sys.executable, "-c", "import sys, pipeline.training.train; print('torch' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "True", done.stderr[-2000:]
