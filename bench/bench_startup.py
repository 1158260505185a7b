"""Benchmark: CPU seconds a `txseq` call spends before and around its work, in fresh subprocesses.

Every scheduled job, shell loop and test calls the CLI anew, so its start-up cost is paid each time. Measured:
`txseq --help`, `txseq ingest` of the committed sample (137k rows), and, for reference, the bare import of the
libraries the CLI avoids loading unless a command needs them (torch, MLflow, scikit-learn via skops).
CPU = user + system time of the child (resource.RUSAGE_CHILDREN), the median of --repeats runs.

    python bench/bench_startup.py [--repeats 3]

Prints a table and writes bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "transactions.csv.gz"


def _child_cpu(cmd: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one subprocess run of `cmd`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "startup.json")
    args = p.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "txseq --help": lambda i: [py, "-m", "pipeline.cli", "--help"],
            "txseq ingest (sample, 137k rows)": lambda i: [py, "-m", "pipeline.cli", "ingest", str(SAMPLE), "--out",
                                                           f"{tmp}/events-{i}"],
            "import torch, mlflow, skops.io (avoided)": lambda i: [py, "-c", "import torch, mlflow, skops.io"],
        }
        rows = []
        for name, cmd in cases.items():
            runs = [_child_cpu(cmd(i)) for i in range(args.repeats)]
            rows.append({"case": name, "cpu_s": statistics.median(r[0] for r in runs),
                         "wall_s": statistics.median(r[1] for r in runs)})
    load = os.getloadavg()[0]
    print(f"| case | CPU s (median of {args.repeats}) | wall s |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} |")
    print(f"load average {load:.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "repeats": args.repeats, "load_avg_1m": load,
                                    "cpu_count": os.cpu_count(), "python": platform.python_version()}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
