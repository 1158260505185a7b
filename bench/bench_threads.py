"""Thread budget: CPU seconds and wall time of the GBDT and one encoder, library defaults against `pipeline.threads`.

    python bench/bench_threads.py                          # 1,500 generated customers, settings: default, 1, usable
    python bench/bench_threads.py --customers 3000 --settings default,1,2,4

Each (workload, setting) runs in a fresh process (thread pools are process-wide): `default` leaves torch, OpenMP
and BLAS as the libraries start them (one thread per core they see, spinning while they wait: what training did
before), a number applies the pipeline's library defaults (`OMP_WAIT_POLICY=PASSIVE`) and
`pipeline.threads.apply_threads(n)`, `usable` the same with the count the pipeline now chooses by itself
(`choose_threads()`: affinity and cgroup quota). Workloads: `gbdt` = `pipeline.scoring.gbdt.train_gbdt` with the demo
preset's GBDT config (features, 120 rounds, validation early stopping, test scoring); `transformer` = one epoch of
`pipeline.training.train.fit` (demo preset model, 20 steps) plus test evaluation. CPU seconds are the process's user +
system time (all threads) around the workload only. Prints a table and writes bench/results/threads.json with the load
average: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("gbdt", "transformer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_500, help="customers generated (%(default)s)")
    p.add_argument("--settings", default="default,1,usable", help="comma-separated: default, usable or a number")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: gbdt, transformer")
    p.add_argument("--out", default=None, help="results JSON (default: bench/results/threads.json)")
    p.add_argument("--worker", nargs=3, metavar=("WORKLOAD", "SETTING", "DATA"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def prepare(data: Path, customers: int) -> Path:
    """generate -> ingest -> sequences, once per size (cached under <data root>/bench/)."""
    from pipeline.sources.generate import GeneratorConfig, generate
    from pipeline.ingest.files import ingest
    from pipeline.sequences.table import SequenceConfig, run_sequences

    if not (data / "sequences" / "manifest.json").exists():
        print(f"generating {customers:,} customers into {data} …", flush=True)
        paths = generate(data / "raw", GeneratorConfig(n_customers=customers, n_labelled=customers * 56 // 100))
        ingest([paths.transactions], data / "events")
        run_sequences(data / "events", paths.labels, data / "sequences", SequenceConfig(max_len=400))
    return data


def worker(workload: str, setting: str, data: Path) -> dict:
    """One measurement in this (fresh) process."""
    import resource
    import time

    from pipeline.settings import apply_library_defaults

    if setting != "default":
        apply_library_defaults()  # before torch and scikit-learn load OpenMP
    import polars as pl
    import torch

    from pipeline.threads import apply_threads, choose_threads

    if setting != "default":
        apply_threads(choose_threads(None if setting == "usable" else int(setting)))
    from threadpoolctl import threadpool_info

    pools = sorted({p["num_threads"] for p in threadpool_info()})
    from pipeline import schema as S
    from pipeline.ingest.files import read_events
    from pipeline.metrics import classification_metrics
    from pipeline.training.presets import demo
    from pipeline.sequences.splits import Split

    split = Split.load(data / "sequences" / "split.json")
    ids = (split.train_ids(0), split.val_ids(0), split.test_ids)
    preset = demo()

    def cpu_s() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    if workload == "gbdt":
        from pipeline.scoring.gbdt import train_gbdt

        labels = pl.read_parquet(data / "sequences" / "sequences.parquet", columns=[S.CUSTOMER_ID, S.LABEL]).drop_nulls()
        events = read_events(data / "events")
        c0, t0 = cpu_s(), time.perf_counter()
        run = train_gbdt(events, labels, ids, preset.gbdt)
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        auroc = run.metrics["test/auroc"]
    else:
        from dataclasses import replace

        from models import ModelConfig, build_model
        from pipeline.sequences.batches import SequenceDataset, make_loader, numeric_stats
        from pipeline.sequences.table import Vocab
        from pipeline.training.train import evaluate, fit

        seq = data / "sequences" / "sequences.parquet"
        vocab = Vocab.load(data / "sequences" / "vocab.json")
        train_ds, val_ds, test_ds = (SequenceDataset(seq, i) for i in ids)
        cfg = ModelConfig(n_mcc=vocab.size_mcc, n_tr_type=vocab.size_tr_type, **preset.model_kwargs("transformer"))
        torch.manual_seed(0)
        model = build_model(cfg)
        model.embedding.set_numeric_stats(*numeric_stats(train_ds))
        tc = replace(preset.train, steps=20, eval_every=20, progress=False, device="cpu")
        c0, t0 = cpu_s(), time.perf_counter()
        fit(model, lambda e: make_loader(train_ds, batch_size=preset.batch_size, shuffle=True,
                                         crop_len=preset.crop_len, seed=e),
            lambda: make_loader(val_ds, batch_size=preset.eval_batch_size), tc)
        test = evaluate(model, make_loader(test_ds, batch_size=preset.eval_batch_size), torch.device("cpu"), "fp32")
        wall, cpu = time.perf_counter() - t0, cpu_s() - c0
        auroc = classification_metrics(test["label"], test["prob"])["auroc"]
    return {"workload": workload, "setting": setting, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(active)"),
            "torch_threads": torch.get_num_threads(),
            "openmp_blas_threads": pools, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
            "test_auroc": round(float(auroc), 4)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    if args.worker:
        workload, setting, data = args.worker
        print(json.dumps(worker(workload, setting, Path(data))))
        return 0

    import platform
    from datetime import UTC, datetime

    from pipeline.settings import load_settings
    from pipeline.threads import cgroup_cpu_quota, usable_cpus

    data = prepare(load_settings().data_root / "bench" / f"threads-{args.customers}", args.customers)
    rows = []
    load_before = os.getloadavg()[0]
    for workload in args.workloads.split(","):
        for setting in args.settings.split(","):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # each worker sets its own
            out = subprocess.run([sys.executable, __file__, "--worker", workload, setting, str(data)], cwd=ROOT,
                                 capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)})
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{workload} {setting}: {r['cpu_s']:.1f} CPU s, {r['wall_s']:.1f} s wall, AUC {r['test_auroc']}",
                  flush=True)
    result = {
        "benchmark": "thread budget (pipeline.threads) on the GBDT and the transformer",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "customers": args.customers,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cgroup_cpu_quota": cgroup_cpu_quota(),
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "rows": rows,
        "machine": platform.platform(),
    }
    out_json = Path(args.out) if args.out else ROOT / "bench" / "results" / "threads.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print("| workload | setting | OpenMP wait | torch threads | OpenMP/BLAS threads | CPU s | wall s | test ROC AUC |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workload']} | {r['setting']} | {r['omp_wait_policy']} | {r['torch_threads']} | "
              f"{','.join(map(str, r['openmp_blas_threads']))} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | "
              f"{r['test_auroc']:.4f} |")
    print(f"\nusable CPUs {result['usable_cpus']} of {result['logical_cpus']} logical; load average "
          f"{result['load_average_1min_before']} before, {result['load_average_1min_after']} after -> {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
