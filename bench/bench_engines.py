"""Engines: polars vs Spark local[N] on ingest, sequences and scoring (wall, CPU s incl. the JVM and Python workers,
peak RSS of the whole process tree), with the outputs checked equal; and DDP training, 1 vs 2 processes (s/epoch).

    python bench/bench_engines.py                         # the full generated size: 15,000 customers (~6.86M rows)
    python bench/bench_engines.py --customers 3000        # quicker (~1.4M rows)

Measured (2026-12-02, 2 cores at load ~20): the 3,000-customer run took ~45 min, Spark ~30 of them; the full size
would take ~2 h at that load. Scoring writes and compares the drift report too (the GBDT stores a reference).

The data (plain CSV, splittable by Spark) and a GBDT model (trained with `txseq train --models gbdt`, untimed) are
made under <data root>/bench-engines/. Each step is timed in this process: CPU is the user+system time of this
process and every descendant alive at the end of the step (the JVM, Spark's Python workers), plus what each of them
has waited for of its exited children (Spark's finished workers), sampled with psutil;
peak RSS is the largest sum of their resident sets, sampled every 0.2 s. Spark's session start is timed apart.
"ingest (URI)" ingests the same CSV through a `viewfs://` URI (a Hadoop mount table over the raw folder) into events
at another: what reading an hdfs:// or s3a:// export and writing there add on the driver (the JVM's sha256, the copy
through Hadoop's FileSystem, the clean copy staged at the URI, the parts uploaded).
Prints a table and writes bench/results/engines.json (with the load average: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=15_000, help="customers generated (%(default)s)")
    p.add_argument("--master", default="local[2]", help="Spark master (%(default)s)")
    p.add_argument("--threads", type=int, default=2, help="polars/torch threads (%(default)s)")
    p.add_argument("--ddp-customers", type=int, default=1_024, help="sequences in the DDP benchmark (%(default)s)")
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "engines.json"))
    return p.parse_args(argv)


class TreeMeter:
    """CPU seconds and peak RSS of this process and its descendants over a block."""

    def __init__(self) -> None:
        import psutil

        self.me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def _tree(self) -> list[Any]:
        return [self.me, *self.me.children(recursive=True)]

    def _cpu(self) -> dict[int, float]:
        out = {}
        for p in self._tree():
            try:
                t = p.cpu_times()  # + its children that exited and were waited for (Spark's finished workers)
                out[p.pid] = t.user + t.system + t.children_user + t.children_system
            except Exception:  # noqa: BLE001 - a worker that exited between listing and reading
                pass
        return out

    def _rss(self) -> None:
        while not self._stop.wait(0.2):
            total = 0
            for p in self._tree():
                try:
                    total += p.memory_info().rss
                except Exception:  # noqa: BLE001
                    pass
            self.peak = max(self.peak, total)

    @contextmanager
    def measure(self, row: dict[str, Any]):
        before = self._cpu()
        self.peak, self._stop = 0, threading.Event()
        sampler = threading.Thread(target=self._rss, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        yield
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        self._stop.set()
        sampler.join()
        after = self._cpu()
        row["cpu_s"] = round(sum(v - before.get(pid, 0.0) for pid, v in after.items()), 2)
        row["peak_rss_gib"] = round(self.peak / 2**30, 3)


def shuffle_bytes(engine: Any) -> int | None:
    """Shuffle bytes written by every completed stage so far (Spark's monitoring REST API on the driver UI); None
    when the UI does not answer (it can take minutes on a loaded machine): the step is still timed."""
    import urllib.request

    sc = engine.spark.sparkContext
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/stages?status=complete"
    for attempt in range(3):
        try:
            with urllib.request.urlopen(url, timeout=120) as response:
                return sum(int(s.get("shuffleWriteBytes", 0)) for s in json.load(response))
        except OSError as e:
            print(f"Spark UI did not answer ({e}); attempt {attempt + 1} of 3", flush=True)
    return None


def ddp_epoch_seconds(nproc: int, customers: int, threads: int, work: Path) -> dict[str, float]:
    """Seconds per epoch of `bench/_ddp_epoch.py` with `nproc` processes (same global batch and seed)."""
    out = work / f"ddp-{nproc}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(max(threads // nproc, 1))}
    script = [str(ROOT / "bench" / "_ddp_epoch.py"), str(out), str(customers)]
    if nproc == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *script]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["POLARS_MAX_THREADS"] = str(args.threads)
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    import polars as pl

    from pipeline.scoring.batch import ScoreConfig, score_file
    from pipeline.engines.spark import SparkConfig, SparkEngine
    from pipeline.sources.generate import GeneratorConfig, generate
    from pipeline.ingest.files import ingest, read_events, read_rejects
    from pipeline.scoring.pyfunc import load_batch_scorer
    from pipeline.sequences.table import run_sequences
    from pipeline.settings import load_settings

    settings = load_settings()
    work = settings.data_root / "bench-engines" / f"c{args.customers}"
    raw = work / "raw"
    if not (raw / "transactions.csv").exists():
        print(f"generating {args.customers:,} customers into {raw} …", flush=True)
        generate(raw, GeneratorConfig(n_customers=args.customers, n_labelled=min(8_400, args.customers), format="csv"))
    csv, labels = raw / "transactions.csv", raw / "gender_train.csv"
    n_rows = pl.scan_csv(csv, infer_schema=False).select(pl.len()).collect().item()
    meter = TreeMeter()
    rows: list[dict[str, Any]] = []

    spark_engine: list[Any] = []

    def step(engine: str, name: str, fn: Callable[[], Any]) -> Any:
        row: dict[str, Any] = {"engine": engine, "step": name}
        print(f"{engine} {name} …", flush=True)
        shuffled = shuffle_bytes(spark_engine[0]) if spark_engine else 0
        with meter.measure(row):
            result = fn()
        if spark_engine:
            now = shuffle_bytes(spark_engine[0])
            row["shuffle_write_bytes"] = now - shuffled if now is not None and shuffled is not None else None
        row["rows_per_s"] = round(n_rows / row["wall_s"]) if name != "spark start" else None
        rows.append(row)
        return result

    out = {e: work / e for e in ("polars", "spark")}
    for d in out.values():
        shutil.rmtree(d, ignore_errors=True)
    step("polars", "ingest", lambda: ingest([csv], out["polars"] / "events"))
    step("polars", "sequences", lambda: run_sequences(out["polars"] / "events", labels, out["polars"] / "sequences"))

    # the model both engines score with: a GBDT, trained and registered once (untimed)
    env = {**os.environ, "TXSEQ_DATA_ROOT": str(work / "root"), "TXSEQ_REGISTERED_MODEL": "bench-engines",
           "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    tracking = f"sqlite:///{work / 'root' / 'mlflow' / 'mlflow.db'}"
    if not (work / "root" / "mlflow" / "mlflow.db").exists():
        subprocess.run([sys.executable, "-m", "pipeline.cli", "train", "--sequences", str(out["polars"] / "sequences"),
                        "--events", str(out["polars"] / "events"), "--preset", "tiny", "--models", "gbdt",
                        "--device", "cpu", "--run", "bench"], check=True, env=env, stdout=subprocess.DEVNULL)
    uri = "models:/bench-engines@champion"
    scorer, model = load_batch_scorer(uri, tracking)
    step("polars", "score", lambda: score_file(csv, out["polars"] / "scores.parquet", scorer, model,
                                               ScoreConfig(), rejects=out["polars"] / "scores.rejects.parquet"))

    engine = step("spark", "spark start", lambda: SparkEngine.start(SparkConfig(master=args.master)))
    spark_engine.append(engine)
    step("spark", "ingest", lambda: engine.ingest([csv], out["spark"] / "events"))
    step("spark", "sequences", lambda: engine.run_sequences(out["spark"] / "events", labels, out["spark"] / "sequences"))
    def spark_score() -> Any:  # the model shipped to the workers, as `txseq score --engine spark` does
        with engine.shipped_model(model, tracking) as shipped:
            return engine.score_file(csv, out["spark"] / "scores.parquet", shipped, model,
                                     ingest_config=scorer.ingest, reference=getattr(scorer, "reference", None))

    step("spark", "score", spark_score)

    # the same CSV at a URI only Hadoop opens (a viewfs mount table over the raw folder), as an hdfs:// export is, and
    # the events written to one: the driver hashes the input in the JVM and copies it through Hadoop's FileSystem
    # before the clean copy (staged at the URI for the workers), and uploads the parts the workers send it
    conf = engine.spark._jsc.hadoopConfiguration()
    conf.set("fs.viewfs.mounttable.bench.link./raw", raw.as_uri())
    (out["spark"] / "lake").mkdir(parents=True)
    conf.set("fs.viewfs.mounttable.bench.link./lake", (out["spark"] / "lake").as_uri())
    step("spark", "ingest (URI)", lambda: engine.ingest(["viewfs://bench/raw/transactions.csv"],
                                                        "viewfs://bench/lake/events"))

    key = ["source_file", "source_row"]
    same = {
        "events_from_uri": read_events(out["spark"] / "lake" / "events").drop("source_file").collect().sort("source_row")
        .equals(read_events(out["polars"] / "events").drop("source_file").collect().sort("source_row")),
        "events": read_events(out["spark"] / "events").collect().sort(key).equals(
            read_events(out["polars"] / "events").collect().sort(key)),
        "rejects": read_rejects(out["spark"] / "events").collect().sort(key).equals(
            read_rejects(out["polars"] / "events").collect().sort(key)),
        "sequences": pl.read_parquet(out["spark"] / "sequences" / "sequences.parquet").equals(
            pl.read_parquet(out["polars"] / "sequences" / "sequences.parquet")),
    }
    a = pl.read_parquet(out["polars"] / "scores.parquet")
    b = pl.read_parquet(out["spark"] / "scores.parquet")
    same["scores_max_abs_diff"] = float((a["probability"] - b["probability"]).abs().max()) \
        if a["customer_id"].equals(b["customer_id"]) else None
    drift = [out[e] / "scores.drift.json" for e in ("polars", "spark")]
    same["drift_report"] = drift[0].read_text() == drift[1].read_text() if all(p.exists() for p in drift) else None
    print("outputs equal:", same, flush=True)

    ddp = {}
    if not args.skip_ddp:
        for nproc in (1, 2):
            print(f"DDP {nproc} process(es) …", flush=True)
            ddp[nproc] = ddp_epoch_seconds(nproc, args.ddp_customers, args.threads, work)

    by = {(r["engine"], r["step"]): r for r in rows}
    print(f"\n{n_rows:,} rows, {args.customers:,} customers; Spark {args.master}; load avg {os.getloadavg()}")
    print(f"{'step':<13} {'engine':<7} {'wall s':>8} {'CPU s':>8} {'peak RSS GiB':>13} {'rows/s':>10} "
          f"{'shuffle B/row':>14} {'spark/polars wall':>18}")
    for r in rows:
        ratio = ""
        base = by.get(("polars", r["step"].removesuffix(" (URI)")))
        if r["engine"] == "spark" and base is not None:
            ratio = f"{r['wall_s'] / max(base['wall_s'], 1e-9):.1f}x"
        shuffle = f"{r['shuffle_write_bytes'] / n_rows:.0f}" if r.get("shuffle_write_bytes") else ""
        print(f"{r['step']:<13} {r['engine']:<7} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['peak_rss_gib']:>13.2f} "
              f"{r['rows_per_s'] or '':>10} {shuffle:>14} {ratio:>18}")
    for nproc, d in ddp.items():
        print(f"DDP {nproc} process(es): {d['epoch_s']:.2f} s/epoch (mean of epochs 2..), final train loss {d['loss']:.6f}")
    result = {
        "when": datetime.now(UTC).isoformat(), "host": platform.node(), "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(), "customers": args.customers, "rows": n_rows, "spark_master": args.master,
        "threads": args.threads, "steps": rows, "outputs_equal": same, "ddp": ddp,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
