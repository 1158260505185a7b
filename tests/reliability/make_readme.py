"""Run the reliability suite and write the README's reliability section from its results (nothing hand-counted).

    .venv/bin/python tests/reliability/make_readme.py            # runs pytest, writes docs/readme/reliability.md
    .venv/bin/python tests/reliability/make_readme.py --junit X  # from an existing JUnit XML of tests/reliability
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / "docs" / "readme" / "reliability.md"


def run_pytest(junit: Path) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE), f"--junitxml={junit}"],
                   cwd=ROOT, check=False)
    return time.monotonic() - t0


def results(junit: Path) -> dict[str, str]:
    """test id (file::name[param]) -> passed / failed / skipped / error."""
    out = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        status = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                status = {"failure": "failed"}.get(child.tag, child.tag)
        module = case.get("classname", "").rsplit(".", 1)[-1]
        out[f"{module}::{case.get('name')}"] = status
    return out


def mark(status: str | None) -> str:
    return {"passed": "✅ passed", "failed": "❌ failed", "error": "❌ error", "skipped": "skipped"}.get(status or "",
                                                                                                      "not run")


def render(res: dict[str, str], seconds: float | None) -> str:
    sys.path.insert(0, str(HERE))
    from test_bad_input import CASES, LABEL_CASES, MODEL_CASES

    counts = Counter(res.values())
    bad = {k: v for k, v in res.items() if k.startswith("test_bad_input::")}
    lines = [
        "## Reliability",
        "",
        "`tests/reliability/` feeds the pipeline bad files, kills it mid-run, runs it twice at once and tries to make it",
        "load code or overwrite its inputs. The counts below are generated from a run of that suite",
        "(`python tests/reliability/make_readme.py`), not written by hand.",
        "",
        f"**{len(res)} cases tried, {counts['passed']} passed**"
        + (f", {counts['failed'] + counts['error']} failed" if counts["failed"] + counts["error"] else "")
        + (f", {counts['skipped']} skipped" if counts["skipped"] else "")
        + (f" ({seconds / 60:.1f} min on {os.cpu_count()} cores)" if seconds else "") + ".",
        "",
        "| part | cases tried | passed |",
        "|---|---:|---:|",
    ]
    for module, title in (("test_bad_input", "bad input (ingest, score, labels)"), ("test_faults", "faults"),
                          ("test_concurrency", "concurrency"), ("test_safety", "safety")):
        part = [v for k, v in res.items() if k.startswith(f"{module}::")]
        lines.append(f"| {title} | {len(part)} | {part.count('passed')} |")
    lines += [
        "",
        "### Bad input",
        "",
        "Each case is a real file written by the test and goes through `txseq ingest` (a subprocess) and scoring:",
        "file-level cases through `txseq score` (a subprocess), row-level ones through `score_file` with the registered",
        "model. A file-level problem must exit with status 2, name the file and the problem, print no traceback and",
        "leave no output behind; a row-level one must put the rows in the rejects with a reason, and the",
        "reconciliation must hold (rows in = accepted + rejected; scored customers are exactly those with a valid row).",
        "",
        "| case | expected | ingest | score |",
        "|---|---|---|---|",
    ]
    for c in CASES:
        expected = ("file error: " + " … ".join(f"“{e}”" for e in c.error)) if c.file_level else (
            "rejects: " + ", ".join(f"{n} {r}" for r, n in c.rejected.items()) if c.rejected else "all rows accepted")
        lines.append(f"| {c.what} | {expected} | {mark(bad.get(f'test_bad_input::test_ingest[{c.id}]'))} | "
                     f"{mark(bad.get(f'test_bad_input::test_score[{c.id}]'))} |")
    lines += ["", "Labels (`txseq sequences --labels`, a subprocess; any bad row fails the file):", "",
              "| labels case | expected error | result |", "|---|---|---|"]
    for name, (_, problem) in LABEL_CASES.items():
        lines.append(f"| {name.replace('_', ' ')} | “{problem}” | {mark(bad.get(f'test_bad_input::test_labels[{name}]'))} |")
    lines += ["", "Models that cannot be loaded (`txseq score --model …`, a subprocess: exit status 2, one line naming the",
              "URI and the problem, no traceback, no output; `tests/flows/test_flows.py` checks that the score flow",
              "fails with the same message, without retrying a model that does not exist):", "",
              "| model case | URI | expected error | result |", "|---|---|---|---|"]
    for name, (uri, env, problem) in MODEL_CASES.items():
        where = f" with `MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI'].replace('{tmp}', '…')}`" if env else ""
        lines.append(f"| {name.replace('_', ' ')} | `{uri}`{where} | “{problem}” | "
                     f"{mark(bad.get(f'test_bad_input::test_model[{name}]'))} |")
    others = {k: v for k, v in bad.items()
              if not k.split("::")[1].startswith(("test_ingest[", "test_score[", "test_labels[", "test_model["))}
    if others:
        lines += ["", "| other bad-input test | result |", "|---|---|"]
        lines += [f"| {k.split('::', 1)[1].removeprefix('test_').replace('_', ' ')} | {mark(v)} |" for k, v in others.items()]
    for module, title in (("test_faults", "Faults"), ("test_concurrency", "Concurrency"), ("test_safety", "Safety")):
        lines += ["", f"### {title}", "", "| test | result |", "|---|---|"]
        for k, v in res.items():
            if k.startswith(f"{module}::"):
                lines.append(f"| {k.split('::', 1)[1].removeprefix('test_').replace('_', ' ')} | {mark(v)} |")
    lines += ["", NOTES]
    return "\n".join(lines) + "\n"


NOTES = """### What the suite relies on

- A training process killed with SIGKILL resumes from its last checkpoint (written at every validation) (`txseq train --run <same name>`);
  the rerun marks the killed attempt's MLflow runs FAILED (their process is gone: runs carry `txseq.host` and
  `txseq.pid`), logs `resumed_from_step` on the model's run and replays the restored evaluations' metrics. Runs opened
  on another host are not touched (their process cannot be checked from here).
- Scores and rejects are written under temporary names and renamed at the end; a killed scoring run leaves only
  hidden `.<name>.<host>-<pid>-<random>.staging` / `.tmp` entries. The next scoring run into that folder removes
  the ones whose process is gone (same host, pid not running); those of a live concurrent run, of another host or
  with names of any other shape (older versions) are left alone.
- A SQLite tracking store is created and migrated under a file lock (`mlflow.db.lock`): without it two processes
  starting on a fresh store fail in MLflow's schema migration.
- In a landing folder, a file with a file-level problem is reported (exit status 2, the flow fails) while the other
  files are still scored; it is tried again on the next run.
- Paths from the command line and flow parameters go through `pipeline.io.check_io_paths`: resolved (`~`, `..`,
  symlinks), inputs must exist, and no output may be an input, lie inside an input folder or contain an input."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--junit", type=Path, help="use this JUnit XML instead of running pytest")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    seconds = None
    junit = args.junit
    if junit is None:
        junit = Path(tempfile.mkdtemp(prefix="txseq-reliability-")) / "junit.xml"
        seconds = run_pytest(junit)
    res = results(junit)
    args.out.write_text(render(res, seconds))
    counts = Counter(res.values())
    print(f"{len(res)} tried, {counts['passed']} passed -> {args.out}")


if __name__ == "__main__":
    main()
