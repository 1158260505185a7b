"""Benchmark: raw transactions -> per-customer sequences, our polars route vs the straightforward pandas way.

Routes (each runs in its own subprocess, so peak RSS is the route's own `ru_maxrss`, imports included):
  ours              pipeline.ingest.files.ingest (typed, validated Parquet + rejects + manifest) then
                    pipeline.sequences.table.run_sequences (split, vocab on non-test customers, sorted + truncated list
                    columns, Parquet).
  pandas_lean       what pytorch-lifestream's PandasDataPreprocessor does: pandas.read_csv, parse "<day> HH:MM:SS",
                    drop_duplicates, per-feature encoding (frequency ranks fitted on the same non-test customers),
                    sort, then groupby("customer_id").apply(...) to per-customer arrays, truncated to the same max_len,
                    written to Parquet. No validation: a bad value fails the run or becomes NaN.
  pandas_validated  the same job as ours, the plain pandas way: read_csv as strings, strip, coerce types with
                    errors="coerce", reject bad rows with the same reason codes (first failing check wins), parse
                    the datetime (":60" -> 59), drop exact repeats of non-date-only rows, write events + rejects
                    Parquet, then the same groupby().apply as pandas_lean.
All produce the same table; the driver checks that on a sample of customers (`outputs_agree`), and checks on a small
file with one bad row per reason that pandas_validated rejects the same rows for the same reasons as ours
(`validation_agrees`).

    python bench/bench_sequences.py                 # full size: 15,000 customers, ~6.85M rows (generated once, cached)
    python bench/bench_sequences.py --customers 500 --out /tmp/seq.json           # quick check
    python bench/bench_sequences.py --input my_transactions.csv --labels gender_train.csv

Writes bench/results/sequences.json (or --out) and prints a table: route, wall and CPU seconds, peak RSS GiB,
rows/s, ratio to ours (wall and CPU).
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
    from pipeline.ingest.rules import IngestConfig
    from pipeline.ingest.files import ingest
    from pipeline.sequences.table import SequenceConfig, run_sequences

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


SEQ_COLS = ["event_time", "mcc", "tr_type_code", "amount_log", "hour", "weekday", "log_dt"]
RAW = ["customer_id", "tr_datetime", "mcc_code", "tr_type", "amount", "term_id"]
MAX_DAY, MAX_ABS_AMOUNT = 3650, 1e12  # pipeline.ingest.rules.IngestConfig defaults


def pandas_sequences(df, labels_path: Path, work: Path, max_len: int) -> tuple[object, dict]:
    """Parsed events (customer_id, day, second_of_day, event_time, mcc_code, tr_type, amount) -> the sequences table,
    the ptls PandasDataPreprocessor way. Returns (table, stage seconds)."""
    import numpy as np
    import pandas as pd
    import polars as pl

    from pipeline.sequences.splits import SplitConfig, make_split

    t0 = time.perf_counter()
    labels = pd.read_csv(labels_path).rename(columns={"gender": "label"})  # the target column ours writes
    split = make_split(pl.from_pandas(labels), SplitConfig())  # the same split as ours
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
    df = df.sort_values(["customer_id", "event_time", "source_row"], kind="stable")
    df["log_dt"] = np.log1p(df.groupby("customer_id")["event_time"].diff().fillna(0.0) * 24.0).astype("float32")
    t_encode = time.perf_counter()

    def to_arrays(g: pd.DataFrame) -> dict:  # ptls: {k: np.array(v) for k, v in x.to_dict(orient="list").items()}
        return {k: np.array(v)[-max_len:] for k, v in g[SEQ_COLS].to_dict(orient="list").items()} | {"n_events_total": len(g)}

    per_customer = df.groupby("customer_id").apply(to_arrays)
    out = pd.DataFrame(per_customer.tolist(), index=per_customer.index).reset_index()
    out["length"] = out["mcc"].map(len)
    out = out.merge(labels, on="customer_id", how="left")
    t_group = time.perf_counter()
    return out, {"encode_sort_s": t_encode - t0, "groupby_apply_s": t_group - t_encode}


def route_pandas_lean(input_path: Path, labels_path: Path, work: Path, max_len: int) -> dict:
    import pandas as pd

    t0 = time.perf_counter()
    df = pd.read_csv(input_path, dtype={"term_id": str})
    n_input = len(df)
    df = df.dropna(subset=["customer_id", "tr_datetime", "mcc_code", "tr_type", "amount"])
    df = df.drop_duplicates(subset=RAW)
    parts = df["tr_datetime"].str.split(" ", n=1, expand=True)
    df["day"] = parts[0].astype("int64")
    clock = pd.to_timedelta(parts[1].str.replace(":60$", ":59", regex=True))
    df["second_of_day"] = clock.dt.total_seconds().astype("int64")
    df["event_time"] = df["day"] + df["second_of_day"] / 86400.0
    df["source_row"] = range(1, len(df) + 1)
    t_read = time.perf_counter()
    out, stages = pandas_sequences(df, labels_path, work, max_len)
    t_group = time.perf_counter()
    path = work / "sequences_pandas.parquet"
    out.to_parquet(path)
    t_end = time.perf_counter()
    return {"seconds": t_end - t0, "stages": {"read_parse_s": t_read - t0, **stages, "write_s": t_end - t_group},
            "input_rows": n_input, "customers": len(out), "events_kept": int(out["length"].sum()), "output": str(path)}


def pandas_validate(raw):
    """Raw string columns (read_csv(dtype=str, keep_default_na=False)) -> (events, rejects): the checks of
    pipeline.ingest, in the same order (first failing one wins), written the plain pandas way."""
    import numpy as np
    import pandas as pd

    df = raw.copy()
    df["source_row"] = np.arange(1, len(df) + 1)
    text = {c: df[c].str.strip() for c in RAW}
    df["reason"] = None
    df["column"] = None

    def reject(bad, reason: str, column: str | None) -> None:
        rows = bad.fillna(False).astype(bool) & df["reason"].isna()
        df.loc[rows, "reason"] = reason
        df.loc[rows, "column"] = column

    for c in RAW[:-1]:
        reject(text[c] == "", "missing_value", c)
    for c in RAW:
        reject(df[c].str.contains("\ufffd", regex=False), "invalid_utf8", c)
    ints = {}
    for c in ["customer_id", "mcc_code", "tr_type"]:
        ints[c] = pd.to_numeric(text[c], errors="coerce")
        bad = ints[c].isna() | (ints[c] < 0) | (ints[c] != ints[c].round()) | text[c].str.startswith("-")
        reject(bad, "not_an_integer", c)
    parts = text["tr_datetime"].str.extract(r"^(-?\d+) +(\d{1,2}):(\d{2}):(\d{2})$").apply(pd.to_numeric)
    parts.columns = ["day", "h", "m", "s"]
    reject(parts.isna().any(axis=1) | (parts["h"] > 23) | (parts["m"] > 59) | (parts["s"] > 60),
           "unparseable_datetime", "tr_datetime")
    reject((parts["day"] < 0) | (parts["day"] > MAX_DAY), "day_out_of_range", "tr_datetime")
    amount = pd.to_numeric(text["amount"], errors="coerce")
    word = text["amount"].str.contains("(?i)nan|inf")
    reject(amount.isna() & ~word, "unparseable_amount", "amount")
    reject(~np.isfinite(amount) & word, "non_finite_amount", "amount")
    reject(amount.abs() > MAX_ABS_AMOUNT, "amount_out_of_range", "amount")
    date_only = text["tr_datetime"].str.endswith((" 00:00:00", " 0:00:00"))  # identical purchases on one day: kept
    reject(df[RAW].duplicated(keep="first") & ~date_only, "duplicate_row", None)

    ok = df["reason"].isna()
    rejects = df.loc[~ok, [*RAW, "source_row", "column", "reason"]]
    events = pd.DataFrame({
        "customer_id": ints["customer_id"][ok].astype("int64"),
        "tr_datetime": text["tr_datetime"][ok],
        "day": parts["day"][ok].astype("int32"),
        "second_of_day": (parts["h"] * 3600 + parts["m"] * 60 + parts["s"].clip(upper=59))[ok].astype("int32"),
        "mcc_code": ints["mcc_code"][ok].astype("int32"),
        "tr_type": ints["tr_type"][ok].astype("int32"),
        "amount": amount[ok],
        "term_id": text["term_id"][ok].replace("", None),
        "source_row": df["source_row"][ok],
    })
    events["event_time"] = events["day"] + events["second_of_day"] / 86400.0
    return events, rejects


def route_pandas_validated(input_path: Path, labels_path: Path, work: Path, max_len: int) -> dict:
    import pandas as pd

    t0 = time.perf_counter()
    raw = pd.read_csv(input_path, dtype=str, keep_default_na=False, encoding_errors="replace")
    t_read = time.perf_counter()
    events, rejects = pandas_validate(raw)
    del raw
    events.to_parquet(work / "events.parquet")
    rejects.to_parquet(work / "rejects.parquet")
    t_valid = time.perf_counter()
    out, stages = pandas_sequences(events, labels_path, work, max_len)
    t_group = time.perf_counter()
    path = work / "sequences_pandas.parquet"
    out.to_parquet(path)
    t_end = time.perf_counter()
    return {"seconds": t_end - t0, "stages": {"read_s": t_read - t0, "validate_write_events_s": t_valid - t_read,
                                              **stages, "write_s": t_end - t_group},
            "input_rows": len(events) + len(rejects), "rejected": len(rejects), "customers": len(out),
            "events_kept": int(out["length"].sum()), "output": str(path)}


def child(route: str, input_path: Path, labels_path: Path, work: Path, max_len: int) -> None:
    fn = {"ours": route_ours, "pandas_lean": route_pandas_lean, "pandas_validated": route_pandas_validated}[route]
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
    from pipeline.sources.generate import GeneratorConfig, generate

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


def check_validation(work: Path) -> dict:
    """A small file with one bad row per reason (and rows that must pass: ":60", "5411.0", a repeated date-only
    record): do ours and pandas_validated reject the same rows for the same reasons and accept the same values?"""
    import pandas as pd
    import polars as pl

    from pipeline.ingest.rules import IngestConfig, validate
    from pipeline.io import scan_table

    good = ["1,5 10:00:00,5411,1010,-100.5,123456", "1,5 10:00:60,5411,1010,-7,", "2,6 00:00:00,5912,1110,-20,",
            "2,6 00:00:00,5912,1110,-20,", "2,7 23:59:59,5411.0,1030,250,777", "3, 8 01:02:03 ,4829, 2010 ,-5087.0,"]
    bad = [",5 10:00:00,5411,1010,-100,",                           # missing_value customer_id
           "4,5 10:00:00,5411,1010,-100,12\udcff3",                  # invalid_utf8 term_id
           "x7,5 10:00:00,5411,1010,-100,", "4,5 10:00:00,-5411,1010,-100,", "4,5 10:00:00,54.5,1010,-1,",
           "4,5 24:00:00,5411,1010,-100,", "4,5 10:00,5411,1010,-100,", "4,5 10:61:00,5411,1010,-100,",
           "4,4000 10:00:00,5411,1010,-100,", "4,-1 10:00:00,5411,1010,-100,",
           "4,5 10:00:00,5411,1010,12abc,", '4,5 10:00:00,5411,1010,"1,5",',
           "4,5 10:00:00,5411,1010,nan,", "4,5 10:00:00,5411,1010,-inf,",
           "4,5 10:00:00,5411,1010,1e400,", "4,5 10:00:00,5411,1010,2e12,",
           "1,5 10:00:00,5411,1010,-100.5,123456"]                    # duplicate_row (repeats the first row)
    path = work / "validation_check.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(RAW), *good, *bad]
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")

    ev, rj = validate(scan_table(path), str(path), IngestConfig())
    ev, rj = ev.collect().to_pandas(), rj.collect().to_pandas()
    pev, prj = pandas_validate(pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors="replace"))
    ours_r = sorted(zip(rj["source_row"].tolist(), rj["reason"].tolist()))
    theirs_r = sorted(zip(prj["source_row"].tolist(), prj["reason"].tolist()))
    cols = ["source_row", "customer_id", "day", "second_of_day", "mcc_code", "tr_type", "amount"]
    same_events = ev[cols].reset_index(drop=True).astype(float).equals(pev[cols].reset_index(drop=True).astype(float))
    return {"rows": len(lines) - 1, "reasons_ours": sorted({r for _, r in ours_r}),
            "same_rejects_and_reasons": ours_r == theirs_r, "same_accepted_values": bool(same_events),
            **({} if ours_r == theirs_r else {"ours": ours_r, "pandas_validated": theirs_r})}


ROUTES = ("ours", "pandas_lean", "pandas_validated")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", help="raw transactions file (CSV); default: generate with pipeline.sources.generate")
    p.add_argument("--labels", help="gender_train.csv for --input")
    p.add_argument("--customers", type=int, default=15_000, help="customers to generate (default full size)")
    p.add_argument("--cache", default=str(ROOT / "data" / "bench"), help="generated data cache folder")
    p.add_argument("--routes", default=",".join(ROUTES))
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
    validation = check_validation(work_root / "validation")
    print(f"validation check (ours vs pandas_validated, one bad row per reason): {validation}", flush=True)
    results = {}
    for route in args.routes.split(","):
        print(f"running {route} ... (load average {os.getloadavg()[0]:.1f})", flush=True)
        results[route] = run_route(route, tx, labels, work_root / route, args.max_len)
    ours = results.get("ours", {})
    n_rows = ours.get("input_rows") or next((r["input_rows"] for r in results.values() if r.get("input_rows")), None)
    for r in results.values():
        r["rows_per_s"] = n_rows / r["seconds"] if n_rows else None
        r["ratio_vs_ours"] = r["seconds"] / ours["seconds"] if ours else None
        r["cpu_ratio_vs_ours"] = r["cpu_s"] / ours["cpu_s"] if ours else None
    agree = {route: compare_outputs(Path(ours["output"]), Path(r["output"]))
             for route, r in results.items() if route != "ours" and ours}

    print(f"\ninput: {tx} ({tx.stat().st_size / 2**20:.0f} MiB, {n_rows:,} rows)")
    print(f"{'route':17} {'wall s':>8} {'CPU s':>7} {'peak RSS GiB':>13} {'rows/s':>11} {'× ours wall':>12} {'× ours CPU':>11}")
    for route, r in results.items():
        print(f"{route:17} {r['seconds']:8.1f} {r['cpu_s']:7.1f} {r['peak_rss_gib']:13.2f} {r['rows_per_s'] or 0:11,.0f}"
              f" {r['ratio_vs_ours'] or 0:12.1f} {r['cpu_ratio_vs_ours'] or 0:11.1f}")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for route, a in agree.items():
        print(f"outputs agree ({route} vs ours): {a}")

    import polars
    report = {
        "input": str(tx), "input_bytes": tx.stat().st_size, "input_rows": n_rows, "max_len": args.max_len,
        "routes": results, "outputs_agree": agree, "validation_agrees": validation,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "polars": polars.__version__,
                    "platform": platform.platform(), "load_avg_1m_at_end": os.getloadavg()[0]},
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
