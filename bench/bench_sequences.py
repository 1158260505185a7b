"""Benchmark: raw transactions -> per-customer sequences, our polars route vs the straightforward pandas way.

Routes (each runs in its own subprocess, so peak RSS is the route's own `ru_maxrss`, imports included):
  ours    pipeline.ingest.ingest (typed, validated Parquet + rejects + manifest) then pipeline.sequences.run_sequences
          (split, vocab on non-test customers, sorted + truncated list columns, Parquet).
  pandas  what pytorch-lifestream's PandasDataPreprocessor does: pandas.read_csv, parse "<day> HH:MM:SS", per-feature
          encoding (frequency ranks fitted on the same non-test customers), sort, then
          groupby("customer_id").apply(...) to per-customer arrays, truncated to the same max_len, written to Parquet.
Both produce the same table; the driver checks that on a sample of customers and reports it (`outputs_agree`).

    python bench/bench_sequences.py                 # full size: 15,000 customers, ~6.85M rows (generated once, cached)
    python bench/bench_sequences.py --customers 500 --out /tmp/seq.json           # quick check
    python bench/bench_sequences.py --input my_transactions.csv --labels gender_train.csv

Writes bench/results/sequences.json (or --out) and prints a table: route, seconds, peak RSS GiB, rows/s, ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAX_LEN = 1200


# --- the two routes (run inside a child process) ---------------------------------------------------------------------
def route_ours(input_path: Path, labels_path: Path, work: Path, max_len: int) -> dict:
    from pipeline.ingest import IngestConfig, ingest
    from pipeline.sequences import SequenceConfig, run_sequences

    t0 = time.perf_counter()
    ing = ingest([input_path], work / "events", IngestConfig())
    t1 = time.perf_counter()
    res = run_sequences(work / "events", labels_path, work / "sequences", SequenceConfig(max_len=max_len))
    t2 = time.perf_counter()
    rows = _ingest_rows(ing)
    return {"seconds": t2 - t0, "stages": {"ingest_s": t1 - t0, "sequences_s": t2 - t1}, "input_rows": rows,
            "customers": res.n_customers, "events_kept": res.n_events_kept,
            "output": str(res.sequences_path)}


def _ingest_rows(result) -> int | None:
    for name in ("rows_in", "n_input", "input_rows"):
        if hasattr(result, name):
            return int(getattr(result, name))
    return None


def route_pandas(input_path: Path, labels_path: Path, work: Path, max_len: int) -> dict:
    import numpy as np
    import pandas as pd
    import polars as pl

    from pipeline.splits import SplitConfig, make_split

    t0 = time.perf_counter()
    df = pd.read_csv(input_path, dtype={"term_id": str})
    n_input = len(df)
    df = df.dropna(subset=["customer_id", "tr_datetime", "mcc_code", "tr_type", "amount"])
    df = df.drop_duplicates(subset=["customer_id", "tr_datetime", "mcc_code", "tr_type", "amount", "term_id"])
    parts = df["tr_datetime"].str.split(" ", n=1, expand=True)
    df["day"] = parts[0].astype("int64")
    clock = pd.to_timedelta(parts[1].str.replace(":60$", ":59", regex=True))
    df["second_of_day"] = clock.dt.total_seconds().astype("int64")
    df["event_time"] = df["day"] + df["second_of_day"] / 86400.0
    t_read = time.perf_counter()

    labels = pd.read_csv(labels_path)
    split = make_split(pl.from_pandas(labels), SplitConfig())  # the same split as ours (not the timed part)
    train = df[~df["customer_id"].isin(set(split.test_ids))]

    def ranks(col: str) -> dict:
        counts = train[col].value_counts()
        counts = counts[counts >= 5].reset_index()
        counts.columns = [col, "n"]
        counts = counts.sort_values(["n", col], ascending=[False, True])
        return dict(zip(counts[col], range(2, len(counts) + 2)))

    df["mcc"] = df["mcc_code"].map(ranks("mcc_code")).fillna(1).astype("int32")
    df["tr_type_code"] = df["tr_type"].map(ranks("tr_type")).fillna(1).astype("int32")
    df["amount_log"] = (np.sign(df["amount"]) * np.log1p(np.abs(df["amount"]))).astype("float32")
    df["hour"] = (df["second_of_day"] / 3600.0).astype("float32")
    df["weekday"] = (df["day"] % 7).astype("float32")
    df["source_row"] = np.arange(1, len(df) + 1)
    df = df.sort_values(["customer_id", "event_time", "source_row"], kind="stable")
    df["log_dt"] = np.log1p(df.groupby("customer_id")["event_time"].diff().fillna(0.0) * 24.0).astype("float32")
    t_encode = time.perf_counter()

    cols = ["event_time", "mcc", "tr_type_code", "amount_log", "hour", "weekday", "log_dt"]

    def to_arrays(g: pd.DataFrame) -> dict:  # ptls: {k: np.array(v) for k, v in x.to_dict(orient="list").items()}
        return {k: np.array(v)[-max_len:] for k, v in g[cols].to_dict(orient="list").items()} | {"n_events_total": len(g)}

    per_customer = df.groupby("customer_id").apply(to_arrays)
    out = pd.DataFrame(per_customer.tolist(), index=per_customer.index).reset_index()
    out["length"] = out["mcc"].map(len)
    out = out.merge(labels, on="customer_id", how="left")
    t_group = time.perf_counter()
    path = work / "sequences_pandas.parquet"
    out.to_parquet(path)
    t_end = time.perf_counter()
    return {"seconds": t_end - t0, "stages": {"read_parse_s": t_read - t0, "encode_sort_s": t_encode - t_read,
                                              "groupby_apply_s": t_group - t_encode, "write_s": t_end - t_group},
            "input_rows": n_input, "customers": len(out), "events_kept": int(out["length"].sum()), "output": str(path)}


def child(route: str, input_path: Path, labels_path: Path, work: Path, max_len: int) -> None:
    fn = {"ours": route_ours, "pandas": route_pandas}[route]
    result = fn(input_path, labels_path, work, max_len)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["peak_rss_gib"] = usage.ru_maxrss / 2**20  # KiB on Linux
    result["cpu_s"] = usage.ru_utime + usage.ru_stime  # whole process, imports included: robust to a busy machine
    result["load_avg_1m"] = os.getloadavg()[0]
    print("RESULT " + json.dumps(result))


# --- driver -------------------------------------------------------------------------------------------------------
def ensure_input(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.input:
        if not args.labels:
            sys.exit("--input needs --labels")
        return Path(args.input), Path(args.labels)
    from pipeline.generate import GeneratorConfig, generate

    cache = Path(args.cache) / f"c{args.customers}"
    tx = cache / "transactions.csv"
    if not tx.exists():
        cfg = GeneratorConfig(format="csv", **({} if args.customers == 15_000 else
                                                {"n_customers": args.customers,
                                                 "n_labelled": max(20, args.customers * 56 // 100)}))
        t = time.perf_counter()
        paths = generate(cache, cfg)
        print(f"generated {paths.n_rows:,} rows / {paths.n_customers:,} customers in {time.perf_counter() - t:.0f} s"
              f" -> {cache}")
    return tx, cache / "gender_train.csv"


def run_route(route: str, tx: Path, labels: Path, work: Path, max_len: int) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--_route", route, "--input", str(tx), "--labels", str(labels),
           "--_work", str(work), "--max-len", str(max_len)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"route {route} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def compare_outputs(ours: Path, theirs: Path, n: int = 300) -> dict:
    """Same customers, lengths and (on a sample) the same per-event values."""
    import numpy as np
    import polars as pl

    a = pl.read_parquet(ours).sort("customer_id")
    b = pl.read_parquet(theirs).sort("customer_id")
    same_ids = a["customer_id"].to_list() == b["customer_id"].to_list()
    same_len = same_ids and a["length"].to_list() == b["length"].cast(pl.Int32).to_list()
    values_ok = same_len
    if same_len:
        idx = np.random.default_rng(0).choice(a.height, size=min(n, a.height), replace=False)
        for col in ("event_time", "mcc", "tr_type_code", "amount_log", "hour", "weekday", "log_dt"):
            for i in idx:
                x, y = np.asarray(a[col][int(i)].to_list(), float), np.asarray(b[col][int(i)].to_list(), float)
                if x.shape != y.shape or not np.allclose(x, y, rtol=1e-5, atol=1e-5):
                    values_ok = False
                    break
    return {"same_customers": same_ids, "same_lengths": same_len, "same_values_on_sample": bool(values_ok)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", help="raw transactions file (CSV); default: generate with pipeline.generate")
    p.add_argument("--labels", help="gender_train.csv for --input")
    p.add_argument("--customers", type=int, default=15_000, help="customers to generate (default full size)")
    p.add_argument("--cache", default=str(ROOT / "data" / "bench"), help="generated data cache folder")
    p.add_argument("--routes", default="ours,pandas")
    p.add_argument("--max-len", type=int, default=MAX_LEN)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "sequences.json"))
    p.add_argument("--_route", help=argparse.SUPPRESS)
    p.add_argument("--_work", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._route:
        child(args._route, Path(args.input), Path(args.labels), Path(args._work), args.max_len)
        return

    tx, labels = ensure_input(args)
    work_root = Path(args.cache) / "work"
    results = {}
    for route in args.routes.split(","):
        print(f"running {route} ...", flush=True)
        results[route] = run_route(route, tx, labels, work_root / route, args.max_len)
    ref = results.get("ours", {}).get("seconds")
    rows = []
    for route, r in results.items():
        n = r.get("input_rows") or results.get("pandas", {}).get("input_rows")
        r["rows_per_s"] = n / r["seconds"] if n else None
        r["ratio_vs_ours"] = r["seconds"] / ref if ref else None
        rows.append((route, r["seconds"], r["peak_rss_gib"], r["rows_per_s"], r["ratio_vs_ours"]))
    agree = compare_outputs(Path(results["ours"]["output"]), Path(results["pandas"]["output"])) \
        if {"ours", "pandas"} <= results.keys() else None

    print(f"\ninput: {tx} ({tx.stat().st_size / 2**20:.0f} MiB)")
    print(f"{'route':8} {'seconds':>9} {'CPU s':>7} {'peak RSS GiB':>13} {'rows/s':>12} {'× ours':>7}")
    for route, s, rss, rps, ratio in rows:
        print(f"{route:8} {s:9.1f} {results[route]['cpu_s']:7.1f} {rss:13.2f} {rps or 0:12,.0f} {ratio or 0:7.1f}")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if agree is not None:
        print(f"outputs agree: {agree}")

    import polars
    report = {
        "input": str(tx), "input_bytes": tx.stat().st_size, "max_len": args.max_len, "routes": results,
        "outputs_agree": agree,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "polars": polars.__version__,
                    "platform": platform.platform()},
        "command": " ".join([Path(sys.executable).name, "bench/bench_sequences.py", *sys.argv[1:]]),
        "created_unix": time.time(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
