"""Benchmark: forward+backward time and peak memory of each sequence encoder vs sequence length.

Encoders: every entry of models.ENCODERS (transformer = SDPA and transformer_materialized = softmax(QKᵀ/√d)V built
explicitly are the baselines), each with its config's defaults unless overridden with --set; lengths 256, 1k, 4k,
16k by default. Every case (encoder × length × device) runs in a fresh
subprocess, so one case's allocator state cannot leak into the next. In the child:

  build the encoder (train mode, dropout 0) and the input x (B, T, D) with requires_grad, all positions valid
  warm-up: one forward+backward (lazy initialisation, thread pools, the ∞-former's ridge tables)
  baseline: RSS now (model, input and torch itself resident), after gc and glibc malloc_trim; the child runs with
            MALLOC_MMAP_THRESHOLD_=65536 so that tensors ≥ 64 KiB are mmapped and RSS follows live memory
  reset the peak: write "5" to /proc/self/clear_refs (Linux), which sets VmHWM to the current RSS;
                  on CUDA torch.cuda.reset_peak_memory_stats() and the allocated bytes as baseline
  reps × [forward, loss = Σ hidden² + aux_loss, backward], timed with perf_counter (cuda.synchronize on GPU)
  CPU peak memory = VmHWM − baseline RSS: what the training steps add on top of the resident model and input.
  CUDA: max_memory_allocated − baseline allocated, and max_memory_reserved (the caching allocator's footprint).
  Where clear_refs is unavailable the CPU figure is ru_maxrss − baseline RSS (an upper bound, flagged in the JSON).

Cases predicted to exceed the memory or time budget (extrapolated from the same encoder's shorter lengths) are
skipped and listed as such, and so is a case whose child dies or times out.

    python bench/bench_encoders.py                                    # CPU (+ CUDA when present), defaults below
    python bench/bench_encoders.py --lengths 256 1024 --reps 1        # quick
    python bench/bench_encoders.py --device cuda --batch 8 --heads 8 --head-dim 64
    python bench/bench_encoders.py --encoders performer eam --set performer.nb_features=64 eam.window=32

Writes bench/results/encoders.json and bench/results/encoders.png (log–log time and memory vs length) and prints
a markdown table with speed-ups and memory savings relative to SDPA and to the materialised baseline.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import ENCODERS  # noqa: E402  (after the sys.path line)

ENCODER_ORDER = list(ENCODERS)
LABELS = {name: getattr(entry.encoder_cls, "label", name) for name, entry in ENCODERS.items()}
MIB = 2**20
# glibc: serve every allocation ≥ 64 KiB with mmap (the default threshold adapts upwards after the first large free,
# after which freed blocks stay in the heap and RSS stops tracking live memory)
CHILD_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


# --- the child: one case ----------------------------------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_free_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so the baseline RSS holds only live memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _maxrss_kib() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux


def run_case(args: argparse.Namespace) -> dict:
    import torch

    from models import build_encoder

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    d_model = args.heads * args.head_dim
    enc = build_encoder(args.encoder, d_model, args.layers, args.heads, ff_mult=4, dropout=0.0,
                        config=encoder_config(args.encoder, args.set)).to(device).train()
    x = torch.randn(args.batch, args.length, d_model, device=device, requires_grad=True)
    valid = torch.ones(args.batch, args.length, dtype=torch.bool, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step() -> None:
        out = enc(x, valid)
        (out.hidden.square().sum() + out.aux_loss).backward()
        enc.zero_grad(set_to_none=True)
        x.grad = None

    for _ in range(args.warmup):
        step()
    sync()
    gc.collect()
    _release_free_heap()
    baseline_kib = _status_kib("VmRSS") or _maxrss_kib()
    exact_peak = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.reps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    peak_kib = (_status_kib("VmHWM") if exact_peak else None) or _maxrss_kib()
    result = {
        "times_s": times,
        "time_s": sorted(times)[len(times) // 2],
        "time_s_min": min(times),
        "rss_peak_mib": max(peak_kib - baseline_kib, 0) / 1024,
        "rss_baseline_mib": baseline_kib / 1024,
        "rss_method": "VmHWM after clear_refs" if exact_peak else "ru_maxrss (upper bound)",
        "n_parameters": sum(p.numel() for p in enc.parameters()),
    }
    if device.type == "cuda":
        result["cuda_max_allocated_mib"] = (torch.cuda.max_memory_allocated() - cuda_base) / MIB
        result["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
        result["gpu"] = torch.cuda.get_device_name(device)
    return result


def encoder_config(encoder: str, overrides: list[str]) -> object:
    """The encoder's config class with its defaults, except the ``ENCODER.FIELD=VALUE`` overrides naming it (VALUE is
    a Python literal; lists become tuples)."""
    config = ENCODERS[encoder].config_cls()
    changes = {}
    for item in overrides:
        target, _, value = item.partition("=")
        name, _, field = target.partition(".")
        if not value or not field:
            raise SystemExit(f"--set {item!r}: expected ENCODER.FIELD=VALUE")
        if name not in ENCODERS or field not in {f.name for f in dataclasses.fields(ENCODERS[name].config_cls)}:
            raise SystemExit(f"--set {item!r}: {name!r} has no config field {field!r}")
        if name == encoder:
            parsed = ast.literal_eval(value)
            changes[field] = tuple(parsed) if isinstance(parsed, list) else parsed
    return dataclasses.replace(config, **changes)


# --- the driver -------------------------------------------------------------------------------------------------------
def peak_mib(r: dict) -> float | None:
    """The memory figure that is compared: CUDA max allocated on GPU, extra peak RSS on CPU."""
    if r.get("status") != "ok":
        return None
    return r["cuda_max_allocated_mib"] if r["device"] == "cuda" else r["rss_peak_mib"]


def predict(done: list[dict], length: int, key: str, floor_exponent: float, default_exponent: float) -> float | None:
    """Extrapolate a figure to ``length`` from the same encoder's measured shorter lengths (power law)."""
    pts = [(r["length"], r[key]) for r in done if r.get("status") == "ok" and r.get(key)]
    if not pts:
        return None
    (l1, v1) = pts[-1]
    exponent = default_exponent
    if len(pts) >= 2:
        (l0, v0) = pts[-2]
        if v0 > 0 and v1 > 0:
            exponent = max(floor_exponent, math.log(v1 / v0) / math.log(l1 / l0))
    return v1 * (length / l1) ** exponent


def plan_skip(args: argparse.Namespace, done: list[dict], encoder: str, device: str, length: int) -> str | None:
    if any(r.get("status") != "ok" for r in done):
        return "a shorter length of this encoder already exceeded a budget"
    mem_key = "cuda_max_allocated_mib" if device == "cuda" else "rss_peak_mib"
    mem = predict(done, length, mem_key, 1.0, 2.0)  # one point only: assume quadratic (cautious, any encoder)
    if mem is not None and mem / 1024 > args.mem_budget_gb:
        return f"predicted peak {mem / 1024:.1f} GiB > budget {args.mem_budget_gb} GiB"
    t = predict(done, length, "time_s", 1.0, 2.0)
    if t is not None and t * (args.reps + args.warmup) > args.time_budget_s:
        return f"predicted {t:.0f} s per step × {args.reps + args.warmup} > budget {args.time_budget_s:.0f} s"
    return None


def run_child(args: argparse.Namespace, encoder: str, device: str, length: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--encoder", encoder, "--device", device,
           "--length", str(length)] + shared_flags(args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.time_budget_s * 2 + 120,
                              env={**os.environ, "PYTHONPATH": str(ROOT), **CHILD_MALLOC_ENV})
    except subprocess.TimeoutExpired:
        return {"status": "skipped", "reason": f"timed out after {args.time_budget_s * 2 + 120:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        killed = proc.returncode in (-9, 137)
        return {"status": "skipped" if killed else "failed",
                "reason": "killed (out of memory)" if killed else f"exit {proc.returncode}: {tail[0][:200]}"}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def shared_flags(args: argparse.Namespace) -> list[str]:
    return ["--batch", str(args.batch), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
            "--layers", str(args.layers), "--reps", str(args.reps), "--warmup", str(args.warmup),
            "--threads", str(args.threads), "--set", *args.set]


def add_ratios(results: list[dict]) -> None:
    """speedup_vs_X = time(X) / time(encoder); mem_saving_vs_X = memory(X) / memory(encoder); > 1 = better than X."""
    index = {(r["device"], r["encoder"], r["length"]): r for r in results}
    for r in results:
        if r["status"] != "ok":
            continue
        for base, tag in (("transformer", "sdpa"), ("transformer_materialized", "materialized")):
            b = index.get((r["device"], base, r["length"]))
            ok = b is not None and b["status"] == "ok"
            r[f"speedup_vs_{tag}"] = b["time_s"] / r["time_s"] if ok else None
            m_b, m_r = (peak_mib(b) if ok else None), peak_mib(r)
            r[f"mem_saving_vs_{tag}"] = m_b / m_r if (m_b and m_r) else None


def fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{suffix}"


def markdown_table(results: list[dict]) -> str:
    lines = []
    for device in sorted({r["device"] for r in results}):
        mem_name = "CUDA max alloc MiB" if device == "cuda" else "peak RSS MiB"
        lines += [f"**{device}**", "",
                  f"| encoder | length | time / step (s) | {mem_name} | speed-up vs SDPA | speed-up vs materialised "
                  "| memory saving vs SDPA | memory saving vs materialised |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for enc in ENCODER_ORDER:
            for r in sorted((r for r in results if r["device"] == device and r["encoder"] == enc), key=lambda r: r["length"]):
                if r["status"] != "ok":
                    lines.append(f"| {LABELS[enc]} | {r['length']} | {r['status']}: {r['reason']} | | | | | |")
                    continue
                mem = peak_mib(r)
                if device == "cuda":
                    mem_s = f"{mem:.0f} (reserved {r['cuda_max_reserved_mib']:.0f})"
                else:
                    mem_s = f"{mem:.0f}"
                lines.append(
                    f"| {LABELS[enc]} | {r['length']} | {r['time_s']:.3f} | {mem_s} | {fmt(r['speedup_vs_sdpa'], '.2f', '×')} "
                    f"| {fmt(r['speedup_vs_materialized'], '.2f', '×')} | {fmt(r['mem_saving_vs_sdpa'], '.2f', '×')} "
                    f"| {fmt(r['mem_saving_vs_materialized'], '.2f', '×')} |"
                )
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"cpu": "-", "cuda": "--"}
    for device in sorted({r["device"] for r in results}):
        for enc in ENCODER_ORDER:
            ok = sorted((r for r in results if r["device"] == device and r["encoder"] == enc and r["status"] == "ok"),
                        key=lambda r: r["length"])
            if not ok:
                continue
            lengths = [r["length"] for r in ok]
            label = f"{LABELS[enc]} ({device})"
            ax_t.plot(lengths, [r["time_s"] for r in ok], styles.get(device, "-"), marker="o", label=label)
            ax_m.plot(lengths, [max(peak_mib(r), 0.1) for r in ok], styles.get(device, "-"), marker="o", label=label)
    all_lengths = sorted({r["length"] for r in results})
    for ax, title, ylabel in ((ax_t, "forward + backward time", "seconds per step"),
                              (ax_m, "peak memory of a step", "MiB (CPU: extra peak RSS; CUDA: max allocated)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(all_lengths, [f"{n // 1024}k" if n >= 1024 else str(n) for n in all_lengths])
        ax.minorticks_off()
        ax.set_xlabel("sequence length (events)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=ENCODER_ORDER, choices=ENCODER_ORDER)
    p.add_argument("--lengths", nargs="+", type=int, default=[256, 1024, 4096, 16384])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="all = CPU, and CUDA when present")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=16, help="d_model = heads × head-dim")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    p.add_argument("--set", nargs="*", default=[], metavar="ENCODER.FIELD=VALUE",
                   help="override a field of an encoder's config (default: the config class's defaults)")
    p.add_argument("--mem-budget-gb", type=float, default=6.0)
    p.add_argument("--time-budget-s", type=float, default=200.0, help="per case, warm-up and reps included")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/encoders.json")
    p.add_argument("--plot", type=Path, default=ROOT / "bench/results/encoders.png")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--encoder", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        print(json.dumps(run_case(args)))
        return

    import torch

    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    results: list[dict] = []
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    for device in devices:
        for enc in args.encoders:
            done: list[dict] = []
            for length in sorted(args.lengths):
                case = {"device": device, "encoder": enc, "length": length}
                reason = plan_skip(args, done, enc, device, length)
                outcome = {"status": "skipped", "reason": reason} if reason else run_child(args, enc, device, length)
                case.update(outcome)
                done.append(case)
                results.append(case)
                summary = (f"{case['time_s']:.3f} s, {peak_mib(case):.0f} MiB" if case["status"] == "ok"
                           else f"{case['status']}: {case['reason']}")
                print(f"[{time.perf_counter() - started:6.0f} s] {device:4s} {enc:25s} {length:6d}  {summary}", flush=True)
    add_ratios(results)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "encoder", "length", "out", "plot")},
        "d_model": args.heads * args.head_dim,
        "step": "forward, loss = Σ hidden² + aux_loss, backward (train mode, dropout 0), all positions valid",
        "time": "median over reps of the wall time of one step, after warm-up (cuda.synchronize around it on GPU)",
        "memory_cpu": "peak RSS during the timed steps minus the RSS just before them (model, input, torch resident): "
                      "VmHWM reset with /proc/self/clear_refs; each case in a fresh subprocess run with "
                      "MALLOC_MMAP_THRESHOLD_=65536 and malloc_trim(0) before the baseline, so RSS follows live memory",
        "memory_cuda": "torch.cuda.max_memory_allocated minus allocated before the steps; max_memory_reserved as is",
        "ratios": "speedup_vs_X = time(X)/time(encoder), mem_saving_vs_X = memory(X)/memory(encoder); > 1 = better",
        "skips": "a case is skipped when its time or memory, extrapolated from the same encoder's shorter lengths, "
                 "exceeds the budget, or when the child is killed or times out",
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str) + "\n")
    plot(results, args.plot)
    print()
    print(markdown_table(results))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
