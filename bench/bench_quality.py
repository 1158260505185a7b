"""Benchmark: test ROC AUC against the label budget, for the GBDT, each encoder trained from scratch, each encoder
CoLES-pretrained then fine-tuned, and the hybrid (GBDT on aggregates + frozen CoLES embeddings), on generated data
with and without the order-only signal (`txseq generate --order-signal`).

For each signal setting (--order-signals):
  generate --customers (all labelled, --signal-strength) -> ingest -> sequences (--max-len; a fixed, stratified
  --test-fraction of the customers is the test set, the same for every budget and seed)
  pretrain each encoder once with CoLES on every non-test customer (labels unused; architecture: the auto preset of
  the smallest budget, kept by fine-tuning; the library's step budget, `PretrainConfig`, unless --pretrain-steps)
  for each budget b (--budgets; "all" = every non-test customer) and split seed s (--seeds):
      b labelled customers drawn from the non-test ones (seeded); 80% train, 20% validation
      gbdt                   the GBDT of the auto preset on the aggregates
      <enc>                  supervised, the auto preset's recipe (`pipeline.train.fit`)
      <enc>_coles            the same budget from the pretrained embedding + encoder, the library's recipe
                             (`trainers.probe_then_fine_tune`: the head starts as the linear probe of the frozen
                             embedding, then `presets.fine_tune`; the probe alone is kept when validation prefers it)
      hybrid_<enc>           the auto preset's GBDT on aggregates blended with a linear probe of the frozen pretrained
                             embedding, the weight chosen by cross-validation (`pipeline.scoring.hybrid`)
  every model: test ROC AUC on the test customers, CPU seconds (process time: the machine is shared; wall time
  would measure the neighbours); pretraining CPU seconds reported once per encoder.

    python bench/bench_quality.py                                             # defaults below
    python bench/bench_quality.py --customers 1500 --budgets 300 --seeds 0 --encoders transformer   # quick
    python bench/bench_quality.py --merge a.json,b.json --out quality.json     # one table/plot from parallel parts

Writes bench/results/quality.json and bench/results/quality.png (AUC vs budget, one panel per signal setting) and
prints a markdown table of mean ± sd over the seeds, then the issue's targets read off it (CoLES gain over
supervised at the smallest budget, best neural/hybrid against the GBDT at each budget).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import ModelConfig, build_model, comparison_encoders  # noqa: E402
from pipeline import schema as S  # noqa: E402
from pipeline.sequences.batches import SequenceDataset, make_loader, numeric_stats  # noqa: E402
from pipeline.scoring.embeddings import embed, embedding_frame  # noqa: E402
from pipeline.scoring.gbdt import train_gbdt  # noqa: E402
from pipeline.scoring.hybrid import HybridRun, fit_hybrid  # noqa: E402
from pipeline.sources.generate import GeneratorConfig, generate  # noqa: E402
from pipeline.ingest.files import ingest, read_events  # noqa: E402
from pipeline.metrics import classification_metrics, pyplot  # noqa: E402
from pipeline.training.presets import DataProfile, RunPreset, auto, fine_tune  # noqa: E402
from pipeline.training.pretrain import PretrainConfig, pretrain, pretrain_customers  # noqa: E402
from pipeline.sequences.table import SEQUENCES_FILE, SPLIT_FILE, VOCAB_FILE, SequenceConfig, Vocab, run_sequences  # noqa: E402
from pipeline.sequences.splits import Split, SplitConfig  # noqa: E402
from pipeline.training.train import FitResult, evaluate, fit  # noqa: E402
from pipeline.training.trainers import model_kind as library_model_kind, probe_then_fine_tune  # noqa: E402


def prepare(root: Path, args: argparse.Namespace, order_signal: float) -> Path:
    """Generated raw data -> events -> sequences (all customers labelled; a fixed test set). Returns the sequences
    folder."""
    cfg = GeneratorConfig(n_customers=args.customers, n_labelled=args.customers, seed=args.data_seed,
                          signal_strength=args.signal_strength, order_signal=order_signal, format="parquet")
    raw = generate(root / "raw", cfg)
    ingest([raw.transactions], root / "events")
    run_sequences(root / "events", raw.labels, root / "sequences", SequenceConfig(max_len=args.max_len),
                  SplitConfig(test_fraction=args.test_fraction, seed=args.data_seed))
    return root / "sequences"


def budget_ids(pool: np.ndarray, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`budget` customers of `pool` (seeded), 80% train / 20% validation."""
    take = np.random.default_rng([seed, budget]).permutation(pool)[:budget]
    n_val = max(2, int(round(0.2 * len(take))))
    return np.sort(take[n_val:]), np.sort(take[:n_val])


def profile(ds: SequenceDataset) -> DataProfile:
    return DataProfile(len(ds), ds.n_events, int(np.nansum(ds.label.numpy())))


def train_encoder(cfg: ModelConfig, preset: RunPreset, ds: dict, init: dict | None, seed: int) -> tuple[float, dict]:
    """The auto recipe from scratch (init None) or, from a pretrained state, the library's `<encoder>_coles`
    recipe (`trainers.probe_then_fine_tune`); returns the test ROC AUC and what was chosen."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.embedding.set_numeric_stats(*numeric_stats(ds["train"]))
    if init is not None:
        model.load_state_dict({k: v for k, v in init.items() if not k.startswith("head.")}, strict=False)
    tc = replace(preset.train if init is None else fine_tune(preset.train), seed=seed, progress=False, device="cpu")
    if MAX_STEPS:  # a smoke run's cap (the bench's figures use the auto budget)
        tc = replace(tc, steps=min(tc.steps, MAX_STEPS), eval_every=min(tc.eval_every, MAX_STEPS))

    def run_fit() -> FitResult:
        return fit(model, lambda e: make_loader(ds["train"], batch_size=preset.batch_size, shuffle=True,
                                                crop_len=preset.crop_len, seed=seed * 100_003 + e),
                   lambda: make_loader(ds["val"], batch_size=preset.eval_batch_size), tc)

    result = run_fit() if init is None else probe_then_fine_tune(model, ds["train"], ds["val"],
                                                                 preset.eval_batch_size, tc, run_fit)
    out = evaluate(model, make_loader(ds["test"], batch_size=preset.eval_batch_size), torch.device("cpu"), "fp32")
    return classification_metrics(out["label"], out["prob"])["auroc"], {"best_step": result.best_step}


MAX_STEPS: int | None = None


def cpu_seconds(fn, *a, **kw):
    t0 = time.process_time()
    value = fn(*a, **kw)
    return value, time.process_time() - t0


def run_setting(args: argparse.Namespace, order_signal: float, tmp: Path, rows: list[dict], save) -> None:
    """Runs one signal setting, appending to `rows` and calling `save()` after every model (a long run that is
    stopped still leaves its finished rows in the JSON and the plot)."""
    seq_dir = prepare(tmp / f"order-{order_signal:g}", args, order_signal)
    seq_path = seq_dir / SEQUENCES_FILE
    split, vocab = Split.load(seq_dir / SPLIT_FILE), Vocab.load(seq_dir / VOCAB_FILE)
    events = read_events(seq_dir.parent / "events")
    labels = pl.read_parquet(seq_path, columns=[S.CUSTOMER_ID, S.LABEL]).filter(pl.col(S.LABEL).is_not_null())
    test_ids = np.asarray(split.test_ids, dtype=np.int64)
    pool = np.asarray(split.trainval_ids, dtype=np.int64)
    budgets = sorted({len(pool) if b == "all" else min(int(b), len(pool)) for b in args.budgets})
    test_ds = SequenceDataset(seq_path, test_ids.tolist())

    # CoLES once per encoder, architecture of the smallest budget's auto preset (fine-tuning keeps it)
    tr0, _ = budget_ids(pool, budgets[0], 0)
    arch = auto(profile(SequenceDataset(seq_path, tr0.tolist())))
    pretrained: dict[str, tuple[ModelConfig, dict, float]] = {}
    if not args.no_pretrain:
        ids = pretrain_customers(seq_dir)
        for enc in args.encoders:
            cfg = ModelConfig(n_mcc=vocab.size_mcc, n_tr_type=vocab.size_tr_type, **arch.model_kwargs(enc))
            pc = PretrainConfig(steps=args.pretrain_steps, device="cpu")
            key = f"{order_signal:g}-{enc}-{args.customers}-{args.max_len}-{pc.budget_steps(len(ids))}"
            cached = args.cache / f"pretrain-{key}.pt" if args.cache else None
            if cached is not None and cached.exists():  # pretrained by an earlier part on the same data
                blob = torch.load(cached, weights_only=True)
                state, row = blob["state"], {**blob["row"], "cached": True}  # its CPU s counted once, there
            else:
                torch.manual_seed(0)
                model = build_model(cfg)
                model.embedding.set_numeric_stats(*numeric_stats(seq_path, ids))
                result, cpu = cpu_seconds(pretrain, model, seq_path, ids, pc)
                state = {k: v.clone() for k, v in model.state_dict().items()}
                row = {"order_signal": order_signal, "model": f"pretrain_{enc}", "budget": None, "seed": None,
                       "auroc": None, "cpu_s": cpu, "recall": result.best_recall, "n_customers": len(ids),
                       "steps": int(sum(h["pretrain/steps"] for h in result.history))}
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    torch.save({"state": state, "row": row}, cached)
            pretrained[enc] = (cfg, state, row["cpu_s"])
            rows.append(row)
            save()
            print(f"  pretrain {enc}: {len(ids)} customers, {row['steps']} steps, held-out recall {row['recall']:.3f}, "
                  f"{row['cpu_s']:.0f} CPU s", flush=True)

    for budget in budgets:
        for seed in args.seeds:
            tr, va = budget_ids(pool, budget, seed)
            ds = {"train": SequenceDataset(seq_path, tr.tolist()), "val": SequenceDataset(seq_path, va.tolist()),
                  "test": test_ds}
            preset = auto(profile(ds["train"]))

            def record(model: str, auroc: float, cpu: float, **extra: float) -> None:
                rows.append({"order_signal": order_signal, "model": model, "budget": budget, "seed": seed,
                             "auroc": float(auroc), "cpu_s": cpu, **extra})
                save()
                print(f"  order {order_signal:g}  budget {budget:5d}  seed {seed}  {model:24s} AUC {auroc:.4f}  "
                      f"{cpu:6.1f} CPU s  {extra or ''}", flush=True)

            if "gbdt" in args.kinds:
                run, cpu = cpu_seconds(train_gbdt, events, labels, (tr, va, test_ids), preset.gbdt)
                record("gbdt", run.metrics["test/auroc"], cpu)
            for enc in args.encoders:
                cfg = ModelConfig(n_mcc=vocab.size_mcc, n_tr_type=vocab.size_tr_type, **preset.model_kwargs(enc))
                if "supervised" in args.kinds:
                    (auc, info), cpu = cpu_seconds(train_encoder, cfg, preset, ds, None, seed)
                    record(enc, auc, cpu, **info)
                if enc not in pretrained:
                    continue
                p_cfg, state, _ = pretrained[enc]
                if "coles" in args.kinds:
                    (auc, info), cpu = cpu_seconds(train_encoder, p_cfg, preset, ds, state, seed)
                    record(f"{enc}_coles", auc, cpu, **info)

                def hybrid() -> HybridRun:
                    model = build_model(p_cfg)
                    model.load_state_dict(state)
                    all_ids = np.concatenate([tr, va, test_ids]).tolist()
                    emb = embedding_frame(*embed(model, SequenceDataset(seq_path, all_ids), 128))
                    return fit_hybrid(events, labels, (tr, va, test_ids), preset.gbdt, emb)

                if "hybrid" not in args.kinds:
                    continue
                run, cpu = cpu_seconds(hybrid)
                record(f"hybrid_{enc}", run.metrics["test/auroc"], cpu, blend_weight=run.weight,
                       probe_c=run.probe.c)


def summarise(rows: list[dict]) -> list[dict]:
    """mean ± sd of test AUC and mean CPU seconds per (order_signal, model, budget)."""
    out = []
    keys = sorted({(r["order_signal"], r["model"], r["budget"]) for r in rows if r["budget"] is not None},
                  key=lambda k: (k[0], k[2], k[1]))
    for sig, model, budget in keys:
        group = [r for r in rows if (r["order_signal"], r["model"], r["budget"]) == (sig, model, budget)]
        auc = np.array([r["auroc"] for r in group])
        out.append({"order_signal": sig, "model": model, "budget": budget, "n_seeds": len(group),
                    "auroc_mean": float(auc.mean()), "auroc_sd": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
                    "cpu_s_mean": float(np.mean([r["cpu_s"] for r in group]))})
    return out


def markdown_table(summary: list[dict]) -> str:
    lines = ["| order signal | budget | model | test ROC AUC (mean ± sd) | seeds | CPU s / model |",
             "|---:|---:|---|---:|---:|---:|"]
    for s in summary:
        lines.append(f"| {s['order_signal']:g} | {s['budget']} | {s['model']} | {s['auroc_mean']:.4f} ± "
                     f"{s['auroc_sd']:.4f} | {s['n_seeds']} | {s['cpu_s_mean']:.0f} |")
    return "\n".join(lines)


def targets(summary: list[dict], min_gain: float = 0.03) -> dict:
    """The issue's targets, read off the summary. Per signal setting: at the smallest budget, each encoder's CoLES
    gain over its supervised self (target: ≥ `min_gain`); at every budget, the best neural or hybrid model against
    the GBDT (target: at least as good)."""
    out: dict = {}
    for sig in sorted({s["order_signal"] for s in summary}):
        rows = {(s["budget"], s["model"]): s["auroc_mean"] for s in summary if s["order_signal"] == sig}
        low = min(b for b, _ in rows)
        gains = {}
        for (budget, model), auc in sorted(rows.items()):
            enc, kind = model_kind(model)
            if budget == low and kind == "coles" and (low, enc) in rows:
                gain = auc - rows[(low, enc)]
                gains[enc] = {"supervised": rows[(low, enc)], "coles": auc, "gain": gain, "met": gain >= min_gain}
        best = {}
        for budget in sorted({b for b, _ in rows}):
            neural = {m: a for (b, m), a in rows.items() if b == budget and m != "gbdt"}
            if neural and (budget, "gbdt") in rows:
                name = max(neural, key=neural.__getitem__)
                best[budget] = {"best": name, "auroc": neural[name], "gbdt": rows[(budget, "gbdt")],
                                "met": neural[name] >= rows[(budget, "gbdt")]}
        out[f"{sig:g}"] = {"budget": low, "min_gain": min_gain, "coles_gain": gains, "best_vs_gbdt": best}
    return out


def targets_table(tg: dict) -> str:
    lines = ["| order signal | check | model / budget | value | met |", "|---:|---|---|---:|:---:|"]
    for sig, t in tg.items():
        for enc, g in t["coles_gain"].items():
            lines.append(f"| {sig} | CoLES − supervised at {t['budget']} (≥ {t['min_gain']:g}) | {enc} | "
                         f"{g['gain']:+.4f} | {'yes' if g['met'] else 'no'} |")
        for budget, b in t["best_vs_gbdt"].items():
            lines.append(f"| {sig} | best neural/hybrid − GBDT | {b['best']} @ {budget} | "
                         f"{b['auroc'] - b['gbdt']:+.4f} | {'yes' if b['met'] else 'no'} |")
    return "\n".join(lines)


HATCH = ["", "//", ".."]
KINDS_STYLE = {"supervised": ("-", "o"), "coles": ("--", "s"), "hybrid": (":", "^")}


def model_kind(model: str) -> tuple[str, str]:
    """(encoder, kind) of a summary row's model name, as the library parses it (`trainers.model_kind`): kind
    "supervised" for an encoder trained from scratch, ("gbdt", "gbdt") for the GBDT."""
    kind, encoder = library_model_kind(model)
    return encoder or "gbdt", "supervised" if kind == "encoder" else kind


def plot(summary: list[dict], path: Path) -> None:
    """Per signal setting: AUC vs budget (colour = encoder, line and marker = supervised / CoLES / hybrid, the GBDT
    black), and a bar panel at the smallest budget, where the curves' points would sit on top of each other."""
    plt = pyplot()
    signals = sorted({s["order_signal"] for s in summary})
    encoders = sorted({model_kind(s["model"])[0] for s in summary} - {"gbdt"})
    colour = {enc: plt.get_cmap("tab10")(i % 10) for i, enc in enumerate(encoders)}
    fig, axes = plt.subplots(len(signals), 2, figsize=(13, 4.2 * len(signals)), squeeze=False)
    for (curve, bars), sig in zip(axes, signals, strict=True):
        rows = [s for s in summary if s["order_signal"] == sig]
        for model in sorted({s["model"] for s in rows}):
            enc, kind = model_kind(model)
            pts = sorted((s for s in rows if s["model"] == model), key=lambda s: s["budget"])
            ls, marker = KINDS_STYLE.get(kind, ("--", "D"))
            curve.errorbar([s["budget"] for s in pts], [s["auroc_mean"] for s in pts],
                           yerr=[s["auroc_sd"] for s in pts], capsize=3, label=model, ls=ls, marker=marker,
                           color="black" if enc == "gbdt" else colour[enc], lw=2.2 if enc == "gbdt" else 1.3)
        curve.set(xscale="log", xlabel="labelled customers (train + validation)", ylabel="test ROC AUC",
                  title=f"order signal {sig:g}: AUC vs label budget (mean ± sd over seeds)")
        curve.grid(alpha=0.3)
        curve.legend(fontsize=6.5, ncol=2)
        low = min(s["budget"] for s in rows)
        at_low = {model_kind(s["model"]): s for s in rows if s["budget"] == low}
        kinds = [k for k in KINDS_STYLE if any(kind == k for _, kind in at_low)]
        width = 0.8 / max(len(kinds), 1)
        for j, kind in enumerate(kinds):
            xs = [i for i, enc in enumerate(encoders) if (enc, kind) in at_low]
            hits = [at_low[(encoders[i], kind)] for i in xs]
            bars.bar([x + (j - (len(kinds) - 1) / 2) * width for x in xs], [s["auroc_mean"] for s in hits], width,
                     yerr=[s["auroc_sd"] for s in hits], capsize=2, hatch=HATCH[j % 3],
                     color=[colour[encoders[x]] for x in xs], edgecolor="black", alpha=0.85)
            bars.bar([0], [0], 0, label=kind, hatch=HATCH[j % 3], facecolor="white", edgecolor="black")  # legend key
        if ("gbdt", "gbdt") in at_low:
            g = at_low[("gbdt", "gbdt")]
            bars.axhline(g["auroc_mean"], color="black", ls="--", lw=1.5, label=f"gbdt {g['auroc_mean']:.3f}")
        values = [s["auroc_mean"] - s["auroc_sd"] for s in at_low.values()]
        bars.set(xticks=range(len(encoders)), ylim=(max(0.0, min(values, default=0.5) - 0.02), None),
                 ylabel="test ROC AUC", title=f"order signal {sig:g}, {low} labelled customers")
        bars.set_xticklabels(encoders, rotation=20, fontsize=8)
        bars.grid(alpha=0.3, axis="y")
        bars.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=3000, help="generated customers, all labelled (%(default)s)")
    p.add_argument("--budgets", type=lambda s: s.split(","), default=["300", "1000", "all"],
                   help="labelled customers for train + validation, comma-separated; 'all' = every non-test one")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    p.add_argument("--encoders", type=lambda s: [x for x in s.split(",") if x], default=list(comparison_encoders()),
                   help="every encoder of the comparison by default")
    p.add_argument("--order-signals", type=lambda s: [float(x) for x in s.split(",")], default=[0.0, 2.0])
    p.add_argument("--signal-strength", type=float, default=0.5, help="the generator's bag-of-events signal")
    p.add_argument("--pretrain-steps", type=int, default=0,
                   help="CoLES optimiser steps (0: the library's budget, sized from the customers)")
    p.add_argument("--cache", type=Path, default=None,
                   help="keep pretrained encoders here and reuse them (parts of one bench run in parallel)")
    p.add_argument("--merge", type=lambda s: [Path(x) for x in s.split(",")], default=None,
                   help="combine the runs of these result JSONs into --out / --plot (no training)")
    p.add_argument("--no-pretrain", action="store_true", help="supervised models and the GBDT only")
    p.add_argument("--kinds", type=lambda s: s.split(","), default=["gbdt", "supervised", "coles", "hybrid"],
                   help="which models to train, of gbdt,supervised,coles,hybrid (parts of one run in parallel)")
    p.add_argument("--max-len", type=int, default=SequenceConfig().max_len)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (%(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/quality.json")
    p.add_argument("--plot", type=Path, default=ROOT / "bench/results/quality.png")
    p.add_argument("--max-steps", type=int, default=None, help="cap the auto step budget (smoke runs only)")
    args = p.parse_args()
    global MAX_STEPS
    MAX_STEPS = args.max_steps
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    rows: list[dict] = []
    parts: list[dict] = []

    def save(complete: bool = False) -> dict:
        summary = summarise(rows)
        met = targets(summary)
        kept = ("merge", "out", "plot") if args.merge else vars(args)  # a merge's run settings are its parts'
        result = {"args": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "merge" and v else v)
                           for k, v in vars(args).items() if k in kept},
                  "complete": complete,
                  "pretrain_config": None if args.merge else asdict(replace(PretrainConfig(), steps=args.pretrain_steps)),
                  "parts": parts,
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_at_start": load_start,
                              "load_now": os.getloadavg()},
                  "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "runs": rows, "summary": summary, "table": markdown_table(summary), "targets": met,
                  "targets_table": targets_table(met)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        if summary:
            plot(summary, args.plot)
        return result

    if args.merge:  # parts run in parallel processes: one table and plot over all their runs
        seen: set[tuple] = set()
        for path in args.merge:
            part = json.loads(path.read_text())
            for row in part["runs"]:  # a model two parts both ran (same data, budget, seed: same result) counts once
                key = (row["order_signal"], row["model"], row["budget"], row["seed"])
                if row.get("cached") or key in seen:
                    continue
                seen.add(key)
                rows.append(row)
            parts.append({"file": path.name, "args": part["args"], "pretrain_config": part.get("pretrain_config"),
                          "complete": part["complete"],
                          "wall_s": part["wall_s"], "cpu_s": part["cpu_s"], "machine": part["machine"]})
        result = save(complete=all(p["complete"] for p in parts))
        print(result["table"] + "\n\n" + result["targets_table"])
        return
    with tempfile.TemporaryDirectory(prefix="txseq-bench-quality-") as tmp:
        for sig in args.order_signals:
            run_setting(args, sig, Path(tmp), rows, save)
    result = save(complete=True)
    print(result["table"] + "\n\n" + result["targets_table"])
    print(f"\n{args.out}, {args.plot}; {result['wall_s']:.0f} s wall, {result['cpu_s']:.0f} CPU s, "
          f"load {load_start[0]:.1f} -> {result['machine']['load_now'][0]:.1f}")


if __name__ == "__main__":
    main()
