"""Benchmark: how many customers per minute a sequence model can score on this CPU at best, from its arithmetic.

Issue 16 asks ≥ 100k customers/min of neural scoring on 2 cores. This script says whether the models can reach it at
all: for each encoder at the auto preset's size for the generated data (what `txseq train` builds by default), it
counts the floating-point operations of the scoring forward pass over real generated sequences
(`torch.utils.flop_counter.FlopCounterMode`: matrix products and attention, the bulk of the work; elementwise ops
are not counted, so the ceiling below is optimistic; CPU SDPA, which torch's counter misses, is counted here), measures the CPU's own fp32 matrix-multiply rate with the
same threads (a square sgemm, the best case any framework gets), and divides:

    ceiling customers/min = 60 × sgemm FLOP/s ÷ FLOPs per customer

and beside it the model's measured rate (`pipeline.inference.predict_proba`, the scoring path, wall time with the
threads given; best of --reps) and the FLOP/s it achieves. The end-to-end figure (validate + stage + model + write +
drift) is bench/bench_scoring.py's; this one isolates the model.

    python bench/bench_roofline.py                    # 400 generated customers, 2 threads
    python bench/bench_roofline.py --customers 200 --encoders transformer performer

Writes bench/results/roofline.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import ModelConfig, build_model, comparison_encoders  # noqa: E402
from pipeline.sequences.batches import SequenceDataset  # noqa: E402
from pipeline.sources.generate import GeneratorConfig, generate  # noqa: E402
from pipeline.scoring.inference import predict_proba  # noqa: E402
from pipeline.ingest.files import ingest  # noqa: E402
from pipeline.training.presets import DataProfile, auto  # noqa: E402
from pipeline.sequences.table import SEQUENCES_FILE, VOCAB_FILE, SequenceConfig, Vocab, run_sequences  # noqa: E402
from pipeline.sequences.splits import SplitConfig  # noqa: E402

TARGET_PER_MINUTE = 100_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=400, help="generated customers scored (%(default)s)")
    p.add_argument("--profile-customers", type=int, default=15_000,
                   help="labelled customers the auto preset is sized for (%(default)s: the generated data's size)")
    p.add_argument("--encoders", nargs="+", default=list(comparison_encoders()))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "roofline.json"))
    return p.parse_args(argv)


def sgemm_flops_per_s(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """Best fp32 matrix-multiply rate of this CPU with `threads` threads (n × n by n × n, repeated ~`seconds`)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def sequences(root: Path, customers: int) -> tuple[SequenceDataset, Vocab]:
    """Generated customers → ingest → sequences (all kept, max_len as the product's default)."""
    raw = generate(root / "raw", GeneratorConfig(n_customers=customers, n_labelled=customers, seed=0, format="csv"))
    ingest([raw.transactions], root / "events")
    run_sequences(root / "events", raw.labels, root / "sequences", SequenceConfig(), SplitConfig())
    vocab = Vocab.load(root / "sequences" / VOCAB_FILE)
    return SequenceDataset(root / "sequences" / SEQUENCES_FILE), vocab


def measure(name: str, data: SequenceDataset, vocab: Vocab, profile: DataProfile, reps: int) -> dict:
    preset = auto(profile)
    model = build_model(ModelConfig(n_mcc=vocab.size_mcc, n_tr_type=vocab.size_tr_type, **preset.model_kwargs(name)))
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_CPU)
    with counter:
        predict_proba(model, data)
    flops = counter.get_total_flops()
    best = min(_timed(lambda: predict_proba(model, data)) for _ in range(reps))
    n = len(data)
    return {"encoder": name, "d_model": preset.model["d_model"], "n_layers": preset.model["n_layers"],
            "customers": n, "events": int(data.lengths.sum()), "mflop_per_customer": flops / n / 1e6,
            "model_seconds": best, "customers_per_minute": 60 * n / best, "achieved_gflop_per_s": flops / best / 1e9}


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001, ANN002, ANN003
    """FLOPs of CPU SDPA (QKᵀ and the weighted sum of V), which torch's counter does not count by itself."""
    b, h, lq, d = query
    return 2 * b * h * lq * key[-2] * d + 2 * b * h * lq * key[-2] * value[-1]


SDPA_CPU = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def _timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    peak = sgemm_flops_per_s(args.threads)
    profile = DataProfile(n_labelled=args.profile_customers, n_events=int(457 * args.profile_customers),
                          n_positive=args.profile_customers // 2)
    with tempfile.TemporaryDirectory(prefix="txseq-roofline-") as tmp:
        data, vocab = sequences(Path(tmp), args.customers)
        rows = []
        for name in args.encoders:
            row = measure(name, data, vocab, profile, args.reps)
            row["ceiling_customers_per_minute"] = 60 * peak / (row["mflop_per_customer"] * 1e6)
            row["share_of_sgemm_peak"] = row["achieved_gflop_per_s"] * 1e9 / peak
            rows.append(row)
            print(f"{name}: {row['mflop_per_customer']:.1f} MFLOP/customer, {row['customers_per_minute']:,.0f}/min "
                  f"measured, ceiling {row['ceiling_customers_per_minute']:,.0f}/min", flush=True)
    mean_len = rows[0]["events"] / rows[0]["customers"] if rows else 0.0
    print(f"\n{args.customers} generated customers (mean {mean_len:.0f} events kept), {args.threads} threads; "
          f"sgemm peak {peak / 1e9:.1f} GFLOP/s; load average {os.getloadavg()[0]:.1f}")
    print("| encoder | d_model × layers | MFLOP / customer | model-only customers/min | GFLOP/s achieved | "
          f"ceiling at sgemm peak, customers/min | ceiling ≥ {TARGET_PER_MINUTE:,}? |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['d_model']} × {r['n_layers']} | {r['mflop_per_customer']:.1f} | "
              f"{r['customers_per_minute']:,.0f} | {r['achieved_gflop_per_s']:.1f} | "
              f"{r['ceiling_customers_per_minute']:,.0f} | "
              f"{'yes' if r['ceiling_customers_per_minute'] >= TARGET_PER_MINUTE else 'no'} |")
    out = {"benchmark": "scoring roofline: FLOPs per customer vs the CPU's sgemm rate", "date":
           datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "threads": args.threads, "load_average_1min": os.getloadavg()[0], "sgemm_gflop_per_s": peak / 1e9,
           "profile_labelled_customers": args.profile_customers, "target_customers_per_minute": TARGET_PER_MINUTE,
           "models": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
