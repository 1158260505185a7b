"""Scoring throughput: customers scored per minute on CPU, for every model kind, end to end.

    python bench/bench_scoring.py --train-if-missing                 # every kind, 15,000 customers, 2 threads
    python bench/bench_scoring.py --kinds transformer,gbdt --customers 3000 --repeats 2
    python bench/bench_scoring.py --kinds hybrid_performer --customers 3000   # registered by txseq train --init-from

The generated raw Parquet is cached under <data root>/bench/ (made once by `pipeline.sources.generate`). Each model kind
is the newest registered version whose `model` tag names it (with --train-if-missing, kinds not registered yet are
trained with the demo preset on the generated data first: that is the size users register). The timed part is
`pipeline.scoring.batch.score_file`, end to end: validate + stage into customer buckets, load each chunk, the
model's `predict` (sequence building + encoder), write the sorted scores, and the drift report (model loading is
timed apart); each phase in wall and CPU seconds. The library defaults of `txseq score` apply (OpenMP threads sleep
while waiting). For sequence models the model alone is also timed on --model-customers customers through the
unoptimised path (`pipeline.training.train.evaluate`, padded batches of 128) and the scoring path
(`pipeline.scoring.inference.predict_proba`), on the same sequences, and their largest probability difference is
reported.

The machine is shared: CPU seconds (user + system of this process) and customers per CPU-minute are what the run
needs whatever else runs; the 1-minute load average before and after says how busy the machine was. Prints a table
and writes bench/results/scoring.json. Target: ≥100,000 customers/min on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys

TARGET_CUSTOMERS_PER_MIN = 100_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default=None, help="comma-separated model kinds (default: every model of the comparison, "
                   "pipeline.training.presets.DEFAULT_MODELS)")
    p.add_argument("--customers", type=int, default=15_000, help="customers generated (%(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch and polars threads (%(default)s)")
    p.add_argument("--chunk-rows", type=int, default=2_000_000, help="rows scored at once (%(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per model; the fastest is reported (%(default)s)")
    p.add_argument("--model-customers", type=int, default=1_000,
                   help="customers for the model-only comparison of the two inference paths (0: skip)")
    p.add_argument("--out", default=None, help="results JSON (default: bench/results/scoring.json)")
    p.add_argument("--train-if-missing", action="store_true",
                   help="train (demo preset) and register the kinds that have no registered version yet")
    p.add_argument("--train-steps", type=int, default=None,
                   help="with --train-if-missing: optimiser steps (default: the demo preset's 80). Scoring "
                   "throughput depends on the architecture, not on how long it trained: fewer steps register the "
                   "same models sooner on a busy machine")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["POLARS_MAX_THREADS"] = str(args.threads)  # before polars is imported
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    from pipeline.settings import apply_library_defaults

    apply_library_defaults()  # as `txseq score` does, before torch loads OpenMP: waiting threads sleep, not spin

    import json
    import platform
    from datetime import UTC, datetime
    from pathlib import Path

    import polars as pl
    import torch

    from pipeline.sources.generate import GeneratorConfig, generate
    from pipeline.training.presets import DEFAULT_MODELS
    from pipeline.settings import load_settings

    torch.set_num_threads(args.threads)
    settings = load_settings()
    bench_dir = settings.data_root / "bench"
    raw = bench_dir / f"raw-{args.customers}" / "transactions.parquet"
    if not raw.exists():
        print(f"generating {args.customers:,} customers into {raw.parent} …", flush=True)
        generate(raw.parent, GeneratorConfig(n_customers=args.customers, n_labelled=min(8_400, args.customers),
                                             format="parquet"))
    n_rows = pl.scan_parquet(raw).select(pl.len()).collect().item()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else list(DEFAULT_MODELS)
    versions = registered_by_kind(settings)
    missing = [k for k in kinds if k not in versions]
    if missing:
        if not args.train_if_missing:
            print(f"no registered version for {', '.join(missing)}: train them (`txseq train --models ...`) or pass "
                  "--train-if-missing")
            return 2
        train_on(raw, bench_dir, missing, args.train_steps)
        versions = registered_by_kind(settings)

    out_json = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "scoring.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in kinds:
        uri = f"models:/{settings.registered_model}/{versions[kind]}"
        rows.append(bench_one(kind, uri, raw, bench_dir, args))
        result = {
            "benchmark": "batch scoring (pipeline.scoring.batch.score_file), every model kind",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "customers": args.customers, "rows": n_rows, "threads": args.threads, "cpu_count": os.cpu_count(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "chunk_rows": args.chunk_rows, "target_customers_per_minute": TARGET_CUSTOMERS_PER_MIN,
            "train_steps_of_models_trained_here": args.train_steps,
            "models": rows,
            "versions": {"python": platform.python_version(), "torch": torch.__version__, "polars": pl.__version__},
            "machine": platform.platform(),
        }
        out_json.write_text(json.dumps(result, indent=2) + "\n")  # after every model: a long run keeps what it measured

    print()
    print("| model | customers | seconds | customers/min | CPU s | customers/CPU-min | CPU s: stage · load · model · "
          "write · drift | load avg before → after | target (wall) | target (2 × per CPU-min) |")
    print("|---|---:|---:|---:|---:|---:|---|---|---|---|")
    for r in rows:
        phases = " · ".join(f"{v:.1f}" for v in r["phase_cpu_seconds"].values())
        print(f"| {r['kind']} (v{r['version']}) | {r['customers']:,} | {r['seconds']:.1f} | {r['customers_per_minute']:,} "
              f"| {r['cpu_seconds']:.1f} | {r['customers_per_cpu_minute']:,} | {phases} | "
              f"{r['load_average_1min_before']:.1f} → {r['load_average_1min_after']:.1f} | "
              f"{'✓' if r['meets_target'] else '✗'} | {'✓' if r['meets_target_on_2_free_cores'] else '✗'} |")
    compared = [r for r in rows if "model_only" in r]
    if compared:
        print("\nModel alone on the same sequences (unoptimised: evaluate, batches of 128; scoring: predict_proba):")
        print("| model | customers | unoptimised CPU s | scoring CPU s | speed-up (CPU) | max |Δ probability| |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in compared:
            m = r["model_only"]
            print(f"| {r['kind']} | {m['customers']:,} | {m['unoptimised_cpu_s']:.2f} | {m['scoring_cpu_s']:.2f} | "
                  f"{m['unoptimised_cpu_s'] / max(m['scoring_cpu_s'], 1e-9):.2f}× | {m['max_abs_diff']:.1e} |")
    print(f"-> {out_json}")
    return 0


def cpu_s() -> float:
    """User + system time of all this process's threads."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def registered_by_kind(settings) -> dict[str, str]:  # noqa: ANN001 - pipeline.settings.Settings
    """kind -> newest registered version of that kind."""
    from pipeline.registry.tracking import TrackingError, registered_versions

    try:
        versions = registered_versions(settings.tracking_uri, settings.registered_model)
    except TrackingError:
        return {}
    out: dict[str, str] = {}
    for v in versions:  # newest first
        out.setdefault(v.model, v.version)
    return out


def bench_one(kind: str, uri: str, raw, bench_dir, args) -> dict:  # noqa: ANN001
    import time

    import pipeline.scoring.embeddings  # noqa: F401 - this tree's, before a logged model's code copy joins sys.path
    from pipeline.scoring.batch import ScoreConfig, score_file
    from pipeline.scoring.pyfunc import load_batch_scorer
    from pipeline.settings import load_settings

    t0 = time.perf_counter()
    scorer, model = load_batch_scorer(uri, load_settings().tracking_uri)
    load_s = time.perf_counter() - t0
    runs = []
    for i in range(args.repeats):
        load_before = os.getloadavg()[0]
        c0 = cpu_s()
        r = score_file(raw, bench_dir / f"scores-{args.customers}-{kind}.parquet", scorer, model,
                       ScoreConfig(chunk_rows=args.chunk_rows))
        runs.append((r, cpu_s() - c0, load_before, os.getloadavg()[0]))
        print(f"{kind} run {i + 1}: {r.customers:,} customers in {r.seconds:.1f} s = {r.customers_per_minute:,.0f}/min "
              f"({runs[-1][1]:.1f} CPU s, load {load_before:.1f})", flush=True)
    best, cpu, before, after = min(runs, key=lambda x: x[0].seconds)
    row = {
        "kind": kind, "model_uri": uri, "version": model.version, "customers": best.customers,
        "rejected_rows": best.rejected_rows, "chunks": best.chunks, "seconds": round(best.seconds, 2),
        "phase_seconds": {k: round(v, 2) for k, v in best.phase_seconds.items()},
        "phase_cpu_seconds": {k: round(v, 2) for k, v in best.phase_cpu_seconds.items()},
        "model_load_seconds": round(load_s, 2),
        "customers_per_minute": round(best.customers_per_minute),
        "meets_target": best.customers_per_minute >= TARGET_CUSTOMERS_PER_MIN,
        "all_runs_seconds": [round(r.seconds, 2) for r, *_ in runs],
        "cpu_seconds": round(cpu, 2),
        "customers_per_cpu_minute": round(60 * best.customers / cpu) if cpu > 0 else None,
        # what 2 free cores would give if the run kept both busy: 2 × customers per CPU-minute
        "meets_target_on_2_free_cores": cpu > 0 and 2 * 60 * best.customers / cpu >= TARGET_CUSTOMERS_PER_MIN,
        "load_average_1min_before": round(before, 2), "load_average_1min_after": round(after, 2),
        "drift_psi": best.drift["psi"] if best.drift else None,
    }
    if args.model_customers and hasattr(scorer, "vocab"):
        row["model_only"] = compare_paths(scorer, raw, args.model_customers)
    return row


def compare_paths(scorer, raw, n: int) -> dict:  # noqa: ANN001 - pipeline.scoring.pyfunc.SequenceScorer
    """CPU seconds of the model alone, unoptimised (`evaluate`, 128 per batch) vs the scoring path, same sequences."""
    import numpy as np
    import polars as pl
    import torch

    from pipeline.sequences.batches import SequenceDataset, make_loader
    from pipeline.scoring.inference import predict_proba
    from pipeline.scoring.pyfunc import raw_events
    from pipeline.sequences.table import build_sequences
    from pipeline.training.train import evaluate

    ids = pl.scan_parquet(raw).select("customer_id").unique().sort("customer_id").head(n).collect()["customer_id"]
    frame = pl.scan_parquet(raw).filter(pl.col("customer_id").cast(pl.Int64).is_in(ids.cast(pl.Int64).implode())).collect()
    seq = build_sequences(raw_events(frame, scorer.ingest), scorer.vocab, scorer.sequence, labels=None)
    c0 = cpu_s()
    old = evaluate(scorer.model, make_loader(seq, batch_size=128), torch.device("cpu"), "fp32")
    c1 = cpu_s()
    got_ids, got = predict_proba(scorer.model, SequenceDataset(seq), scorer.inference)
    c2 = cpu_s()
    want = dict(zip(old["customer_id"].tolist(), old["prob"].tolist(), strict=True))
    diff = float(np.max(np.abs(got - np.array([want[i] for i in got_ids.tolist()])))) if len(got) else 0.0
    return {"customers": seq.height, "events": int(seq["length"].sum()), "unoptimised_cpu_s": round(c1 - c0, 3),
            "scoring_cpu_s": round(c2 - c1, 3), "max_abs_diff": diff}


def train_on(raw, bench_dir, kinds: list[str], steps: int | None = None) -> None:  # noqa: ANN001
    """ingest -> sequences -> train `kinds` (demo preset, `steps` optimiser steps) on the generated data, registered like
    any other run."""
    from pipeline.training.run import run_comparison
    from pipeline.ingest.files import ingest
    from pipeline.training.presets import get
    from pipeline.sequences.table import run_sequences
    from pipeline.settings import load_settings

    print(f"training {', '.join(kinds)} (demo preset) on {raw} …", flush=True)
    events, sequences = bench_dir / "events", bench_dir / "sequences"
    if not (events / "manifest.json").exists():
        ingest([raw], events)
    if not (sequences / "manifest.json").exists():
        run_sequences(events, raw.parent / "gender_train.csv", sequences)
    preset = get("demo", steps=steps, eval_every=steps)
    print(run_comparison(sequences, events, preset, models=kinds, settings=load_settings()).table, flush=True)


if __name__ == "__main__":
    sys.exit(main())
