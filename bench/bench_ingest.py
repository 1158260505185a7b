"""Benchmark: `txseq ingest` wall time, CPU time and peak memory on ordinary and adversarial raw files.

Each input is ingested by the real command line in its own subprocess; its CPU seconds and peak RSS come from that
child's `os.wait4` rusage (imports included), so nothing else in this process is counted.

Inputs (written once into --work):
  generated_csv_gz   a calibrated synthetic export (`txseq generate`, --customers), CSV.gz
  generated_csv      the same rows, plain CSV
  blank_lines_gz     a 65 KB gzip: 4 rows and 64 MiB of blank lines (issue 15: 10.8 GiB peak before the CSV pass)
  long_field_gz      a 300 KB gzip: 6 rows and one 300 MiB field (issue 15: 4.0 GiB peak before)
  ragged_csv         the generated rows with every 50th record one field short and every 70th one field long

    python bench/bench_ingest.py                        # 2,000 customers (~0.9M rows)
    python bench/bench_ingest.py --customers 300 --out /tmp/ingest.json   # quick check
    python bench/bench_ingest.py --baseline /work/main  # also the ingest of another checkout on the generated files

Writes bench/results/ingest.json (or --out) and prints a table: input, size, rows, blank lines, wall s, CPU s,
peak RSS MiB, rows/CPU s; with the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = b"customer_id,tr_datetime,mcc_code,tr_type,amount,term_id\n"
GOOD = b"1001,5 10:00:01,5411,1010,-120.5,\n1002,5 10:00:02,5411,1010,-12.5,T1\n"


def _gzip_stream(path: Path, parts) -> Path:
    """Write a gzip from an iterable of byte blocks without holding the whole content."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as fh:
        for p in parts:
            fh.write(c.compress(p))
        fh.write(c.flush())
    return path


def blank_lines_gz(path: Path) -> Path:
    """Header, 2 rows, 64 MiB of blank lines, 2 rows."""
    return _gzip_stream(path, [HEADER, GOOD, *([b"\n" * (1 << 20)] * 64), GOOD.replace(b"100", b"300")])


def long_field_gz(path: Path) -> Path:
    """Header, 2 rows, a row whose amount field runs 300 MiB, 2 rows."""
    return _gzip_stream(path, [HEADER, GOOD, b"1005,5 10:00:01,5411,1010,-1", *([b"7" * (1 << 20)] * 300), b",\n",
                               GOOD.replace(b"100", b"200")])


def ragged_csv(src: Path, path: Path) -> Path:
    with gzip.open(src, "rb") as fin, open(path, "wb") as out:
        out.write(fin.readline())
        for i, line in enumerate(fin):
            if i % 50 == 49:
                line = line.rstrip(b"\n").rsplit(b",", 1)[0] + b"\n"
            elif i % 70 == 69:
                line = line.rstrip(b"\n") + b",extra\n"
            out.write(line)
    return path


def run_ingest(path: Path, out: Path, code: Path = ROOT) -> dict:
    """`txseq ingest path --out out` (the code of the checkout `code`) in a subprocess: wall, CPU and peak RSS of
    that child alone."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(code)}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: the child is reaped by wait4 (its own rusage)
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "ingest", str(path), "--out", str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"ingest of {path} failed: {err.read().decode()[-2000:]}")
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    return {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "rows_in": totals["rows_in"],
            "rejected_by_reason": totals["rejected_by_reason"], "blank_lines": totals.get("blank_lines", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/txseq-bench-ingest"))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    ap.add_argument("--baseline", type=Path, help="another checkout (e.g. /work/main): its ingest on the generated "
                    "inputs too, rows named '<input> (baseline)' (not on the adversarial ones: they took GiBs)")
    args = ap.parse_args()
    from pipeline.sources.generate import GeneratorConfig, generate

    work = args.work / f"c{args.customers}"
    work.mkdir(parents=True, exist_ok=True)
    gen = work / "raw" / "transactions.csv.gz"
    if not gen.exists():
        generate(work / "raw", GeneratorConfig(n_customers=args.customers, n_labelled=args.customers // 2, seed=1))
    plain = work / "transactions.csv"
    if not plain.exists():
        with gzip.open(gen, "rb") as fin, open(plain, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    inputs = {
        "generated_csv_gz": gen,
        "generated_csv": plain,
        "ragged_csv": ragged_csv(gen, work / "ragged.csv") if not (work / "ragged.csv").exists() else work / "ragged.csv",
        "blank_lines_gz": blank_lines_gz(work / "blank.csv.gz"),
        "long_field_gz": long_field_gz(work / "long.csv.gz"),
    }
    rows = []
    for name, path in inputs.items():
        r = run_ingest(path, work / f"out-{name}")
        rows.append({"input": name, "bytes": path.stat().st_size, **r})
        if args.baseline and name.startswith("generated"):
            r = run_ingest(path, work / f"out-{name}-baseline", args.baseline)
            rows.append({"input": f"{name} (baseline)", "bytes": path.stat().st_size, **r})
    load = os.getloadavg()
    head = f"{'input':<29} {'MiB':>8} {'rows':>10} {'blank':>11} {'wall s':>7} {'CPU s':>6} {'peak MiB':>9} {'rows/CPU s':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['input']:<29} {r['bytes'] / 2**20:>8.2f} {r['rows_in']:>10,} {r['blank_lines']:>11,} "
              f"{r['wall_s']:>7.2f} {r['cpu_s']:>6.2f} {r['peak_rss_mib']:>9.1f} {r['rows_in'] / max(r['cpu_s'], 1e-9):>11,.0f}")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"customers": args.customers, "rows": rows, "load_average": load,
                                    "cpus": os.cpu_count(), "python": platform.python_version(),
                                    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
