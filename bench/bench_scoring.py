"""Scoring throughput: customers scored per minute on CPU, generated full-size dataset, registered champion model.

    python bench/bench_scoring.py                       # 15,000 customers (~6.85M rows), 2 threads
    python bench/bench_scoring.py --model models:/txseq-gender/3 --threads 2 --repeats 2

The generated raw Parquet is cached under <data root>/bench/ (made once by `pipeline.generate`). The timed part is
`pipeline.batch_scoring.score_file`, end to end: validate + stage into customer buckets, load each chunk, the model's
`predict`, write the sorted scores (model loading is timed apart). Prints a table and writes
bench/results/scoring.json. Target: ≥100,000 customers/min on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys

TARGET_CUSTOMERS_PER_MIN = 100_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model URI (default: models:/<registered model>@champion)")
    p.add_argument("--customers", type=int, default=15_000, help="customers generated (%(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch and polars threads (%(default)s)")
    p.add_argument("--chunk-rows", type=int, default=2_000_000, help="rows scored at once (%(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs; the best is reported (%(default)s)")
    p.add_argument("--out", default=None, help="results JSON (default: bench/results/scoring.json)")
    p.add_argument("--train-if-missing", default=None, metavar="MODEL",
                   help="when --model cannot be loaded, ingest the generated data, build sequences and train MODEL "
                   "(e.g. gbdt, transformer) with the demo preset first; it registers as champion if there is none")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # before polars is imported
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")

    import json
    import platform
    import resource
    import time
    from datetime import UTC, datetime
    from pathlib import Path

    import polars as pl
    import torch

    from pipeline.batch_scoring import ScoreConfig, score_file
    from pipeline.generate import GeneratorConfig, generate
    from pipeline.scoring import load_batch_scorer
    from pipeline.settings import load_settings

    torch.set_num_threads(args.threads)
    settings = load_settings()
    model_uri = args.model or f"models:/{settings.registered_model}@champion"
    bench_dir = settings.data_root / "bench"
    raw = bench_dir / f"raw-{args.customers}" / "transactions.parquet"
    if not raw.exists():
        print(f"generating {args.customers:,} customers into {raw.parent} …", flush=True)
        generate(raw.parent, GeneratorConfig(n_customers=args.customers, n_labelled=min(8_400, args.customers), format="parquet"))
    n_rows = pl.scan_parquet(raw).select(pl.len()).collect().item()

    try:
        load_batch_scorer(model_uri)
    except Exception as e:  # noqa: BLE001 - say what to do instead of a traceback
        if not args.train_if_missing:
            print(f"cannot load {model_uri}: {e}\nTrain and register a model first (`txseq demo`, `txseq train`, "
                  "or --train-if-missing gbdt).")
            return 2
        train_on(raw, bench_dir, args.train_if_missing)
    t0 = time.perf_counter()
    scorer, model = load_batch_scorer(model_uri)
    load_s = time.perf_counter() - t0

    def cpu_s() -> float:  # user + system time of all this process's threads
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    runs, cpu = [], []
    load_before = os.getloadavg()[0]
    for i in range(args.repeats):
        out = bench_dir / f"scores-{args.customers}.parquet"
        c0 = cpu_s()
        r = score_file(raw, out, scorer, model, ScoreConfig(chunk_rows=args.chunk_rows))
        runs.append(r)
        cpu.append(cpu_s() - c0)
        print(f"run {i + 1}: {r.customers:,} customers in {r.seconds:.1f} s = {r.customers_per_minute:,.0f}/min "
              f"({cpu[-1]:.1f} CPU s)", flush=True)
    best_i = min(range(len(runs)), key=lambda i: runs[i].seconds)
    best = runs[best_i]

    result = {
        "benchmark": "batch scoring (pipeline.batch_scoring.score_file)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_uri": model_uri,
        "model": f"{model.name} v{model.version}",
        "customers": best.customers,
        "rows": n_rows,
        "rejected_rows": best.rejected_rows,
        "chunks": best.chunks,
        "chunk_rows": args.chunk_rows,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "seconds": round(best.seconds, 2),
        "phase_seconds": {k: round(v, 2) for k, v in best.phase_seconds.items()},
        "model_load_seconds": round(load_s, 2),
        "customers_per_minute": round(best.customers_per_minute),
        "target_customers_per_minute": TARGET_CUSTOMERS_PER_MIN,
        "meets_target": best.customers_per_minute >= TARGET_CUSTOMERS_PER_MIN,
        "all_runs_seconds": [round(r.seconds, 2) for r in runs],
        # CPU time is what the run needs whatever else the machine does; load average says how busy it was.
        "cpu_seconds": round(cpu[best_i], 2),
        "customers_per_cpu_minute": round(60 * best.customers / cpu[best_i]) if cpu[best_i] > 0 else None,
        "load_average_1min_before": round(load_before, 2),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "polars": pl.__version__},
        "machine": platform.platform(),
    }
    out_json = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "scoring.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")

    phases = " · ".join(f"{k} {v:.1f} s" for k, v in best.phase_seconds.items())
    print()
    print("| model | customers | rows | threads | seconds | customers/min | target |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {result['model']} | {best.customers:,} | {n_rows:,} | {args.threads} | {best.seconds:.1f} "
        f"| {best.customers_per_minute:,.0f} | {TARGET_CUSTOMERS_PER_MIN:,} {'✓' if result['meets_target'] else '✗'} |"
    )
    print(f"phases: {phases}; {cpu[best_i]:.1f} CPU s; model load {load_s:.1f} s (not timed); "
          f"1-min load average before: {load_before:.1f} -> {out_json}")
    return 0


def train_on(raw, bench_dir, model: str) -> None:
    """ingest -> sequences -> train `model` (demo preset) on the generated data, registered like any other run."""
    from pipeline.compare import run_comparison
    from pipeline.ingest import ingest
    from pipeline.presets import get
    from pipeline.sequences import run_sequences

    print(f"training {model} (demo preset) on {raw} …", flush=True)
    events, sequences = bench_dir / "events", bench_dir / "sequences"
    ingest([raw], events)
    run_sequences(events, raw.parent / "gender_train.csv", sequences)
    print(run_comparison(sequences, events, get("demo"), models=[model]).table, flush=True)


if __name__ == "__main__":
    sys.exit(main())
