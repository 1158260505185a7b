"""The comparison: train a chosen set of models (encoders and the GBDT) on one split under one parent MLflow run,
register each as a pyfunc model, and write the report (Markdown table + quality-vs-time/memory PNG).

    sequences/ (table, vocab, split) + events/ ──▶ for each model: nested run ─ fit ─ test ─ log ─ register ─ champion?
                                                ──▶ data/runs/<run>/report.md, report.png (also on the parent run)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from models import ModelConfig, build_model, canonical_encoder_name
from pipeline import schema as S
from pipeline.batches import SequenceDataset, make_loader, numeric_stats
from pipeline.gbdt import train_gbdt
from pipeline.ingest import IngestConfig, read_events
from pipeline.metrics import classification_metrics, plot_roc, plot_training_curves, pyplot, roc_points
from pipeline.presets import DataProfile, RunPreset, get
from pipeline.scoring import log_model, save_gbdt_artifacts, save_sequence_artifacts, score_with_model
from pipeline.sequences import MANIFEST_FILE, SEQUENCES_FILE, SPLIT_FILE, VOCAB_FILE, SequenceConfig, Vocab
from pipeline.settings import Settings, load_settings
from pipeline.splits import Split
from pipeline.tracking import TAG_SPLIT_ID, TAG_TEST_AUROC, Tracker, process_tags, setup
from pipeline.train import evaluate, fit, resolve_device

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
TAG_RUN_NAME = "txseq.run_name"  # on the parent and every nested run of one comparison (its checkpoints folder)
# logged every epoch by `fit`: the run summary does not repeat them
_PER_EPOCH = frozenset({"mem/rss_peak_gib", "mem/cuda_peak_gib", "mem/cuda_reserved_gib",
                        "throughput/train_events_per_s"})


@dataclass
class ModelResult:
    """One row of the report."""

    model: str
    metrics: dict[str, float]
    steps: int | None  # optimiser steps run (None for the GBDT)
    run_id: str
    version: str | None = None
    champion: str = ""
    roc: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


@dataclass
class ComparisonResult:
    run_name: str
    run_dir: Path
    parent_run_id: str
    results: list[ModelResult]
    table: str
    report_md: Path
    report_png: Path


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _peak(history: Sequence[dict[str, float]], key: str) -> float:
    values = [h[key] for h in history if key in h]
    return max(values) if values else float("nan")


@dataclass
class _Data:
    """What every model of one comparison shares."""

    sequences_dir: Path
    events: pl.LazyFrame
    split: Split
    fold: int
    vocab: Vocab
    sequence_config: SequenceConfig
    manifest_sha256: str | None

    @property
    def ids(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return self.split.train_ids(self.fold), self.split.val_ids(self.fold), self.split.test_ids


def model_kind(name: str) -> tuple[str, str | None]:
    """("gbdt", None) | ("encoder", encoder) | ("coles", encoder) for `<encoder>_coles` (fine-tuned from a CoLES
    pretrained encoder) | ("hybrid", encoder) for `hybrid_<encoder>` (GBDT on aggregates + frozen embeddings)."""
    if name == "gbdt":
        return "gbdt", None
    if name.endswith("_coles"):
        return "coles", canonical_encoder_name(name.removesuffix("_coles"))
    if name.startswith("hybrid_"):
        return "hybrid", canonical_encoder_name(name.removeprefix("hybrid_"))
    return "encoder", canonical_encoder_name(name)


def _model_name(name: str) -> str:
    kind, encoder = model_kind(name)
    return {"gbdt": "gbdt", "encoder": encoder, "coles": f"{encoder}_coles", "hybrid": f"hybrid_{encoder}"}[kind]


def _train_encoder(name: str, data: _Data, preset: RunPreset, datasets: dict, tracker: Tracker, run_id: str,
                   run_dir: Path, init: tuple[ModelConfig, dict] | None = None) -> tuple[ModelResult, dict, dict]:
    """Train encoder model `name` from scratch, or (`init`: a pretrained encoder's config and weights) fine-tune its
    embedding and encoder with a new head."""
    train_ds, val_ds, test_ds = datasets["train"], datasets["val"], datasets["test"]
    _, encoder = model_kind(name)
    if init is None:
        cfg = ModelConfig(n_mcc=data.vocab.size_mcc, n_tr_type=data.vocab.size_tr_type, **preset.model_kwargs(encoder))
    else:
        cfg = init[0]
    torch.manual_seed(preset.train.seed)
    model = build_model(cfg)
    model.embedding.set_numeric_stats(*datasets["stats"])
    if init is not None:  # the pretrained embedding (with its numeric statistics) and encoder; the head starts fresh
        model.load_state_dict({k: v for k, v in init[1].items() if not k.startswith("head.")}, strict=False)
    tc = preset.train
    result = fit(
        model,
        lambda epoch: make_loader(train_ds, batch_size=preset.batch_size, shuffle=True, crop_len=preset.crop_len,
                                  seed=tc.seed * 100_003 + epoch),
        lambda: make_loader(val_ds, batch_size=preset.eval_batch_size),
        tc,
        tracker.logger(run_id),
        run_dir / "checkpoints" / name,
        name=name,
    )
    device = resolve_device(tc.device)
    test = evaluate(model, make_loader(test_ds, batch_size=preset.eval_batch_size), device, tc.precision)
    q = classification_metrics(test["label"], test["prob"])
    metrics = {
        **{f"test/{k}": v for k, v in q.items()},
        "val/best_auroc": result.best_val_auroc,
        "time/train_s": result.train_s,
        "throughput/train_events_per_s": float(np.mean([h["throughput/train_events_per_s"] for h in result.history])),
        "throughput/infer_customers_per_s": len(test["prob"]) / max(float(test["seconds"]), 1e-9),
        "params/n_parameters": float(result.n_parameters),
        "mem/rss_peak_gib": _peak(result.history, "mem/rss_peak_gib"),
        "mem/cuda_peak_gib": _peak(result.history, "mem/cuda_peak_gib"),
        "mem/cuda_reserved_gib": _peak(result.history, "mem/cuda_reserved_gib"),
        "train/steps": float(result.steps_run),
        "train/best_step": float(result.best_step),
    }
    art = run_dir / "models" / name
    plot_training_curves(result.history, art / "training_curve.png", title=name)
    config, files = save_sequence_artifacts(art / "pyfunc", model.cpu(), cfg, data.vocab, data.sequence_config,
                                            IngestConfig(), preset.eval_batch_size)
    params = {"model": cfg.to_dict(), "train": result.config, "batch_size": preset.batch_size,
              "crop_len": preset.crop_len, "device": result.device}
    if result.resumed_from_step is not None:  # continued from the checkpoint of an interrupted run
        params["resumed_from_step"] = result.resumed_from_step
    row = ModelResult(name, metrics, result.steps_run, run_id, roc=roc_points(test["label"], test["prob"]))
    return row, params, {"config": config, "files": files, "plots": [art / "training_curve.png"]}


def _train_gbdt(data: _Data, preset: RunPreset, run_id: str, run_dir: Path) -> tuple[ModelResult, dict, dict]:
    labels = (pl.read_parquet(data.sequences_dir / SEQUENCES_FILE, columns=[S.CUSTOMER_ID, S.GENDER])
              .filter(pl.col(S.GENDER).is_not_null()))
    run = train_gbdt(data.events, labels, data.ids, preset.gbdt)
    art = run_dir / "models" / "gbdt"
    config, files = save_gbdt_artifacts(art / "pyfunc", run.model, run.spec, IngestConfig())
    row = ModelResult("gbdt", run.metrics, None, run_id, roc=roc_points(run.test_label, run.test_prob))
    return row, {"gbdt": asdict(preset.gbdt)}, {
        "config": config, "files": files, "plots": [], "val_curve": run.val_auroc_per_round}


def _train_hybrid(name: str, data: _Data, preset: RunPreset, init_uri: str, run_id: str,
                  run_dir: Path) -> tuple[ModelResult, dict, dict]:
    """The GBDT on [aggregate features | frozen CoLES embedding] of each customer; registered as its own pyfunc."""
    from pipeline.embeddings import embed, embedding_frame, save_hybrid_artifacts
    from pipeline.pretrain import load_pretrained

    _, _, embedder = load_pretrained(init_uri, data.vocab)
    labels = (pl.read_parquet(data.sequences_dir / SEQUENCES_FILE, columns=[S.CUSTOMER_ID, S.GENDER])
              .filter(pl.col(S.GENDER).is_not_null()))
    ids = [i for part in data.ids for i in part]
    t0 = time.perf_counter()
    emb = embedding_frame(*embed(embedder.model, SequenceDataset(data.sequences_dir / SEQUENCES_FILE, ids),
                                 preset.eval_batch_size))
    embed_s = time.perf_counter() - t0
    run = train_gbdt(data.events, labels, data.ids, preset.gbdt, extra_features=emb)
    run.metrics["time/train_s"] += embed_s
    art = run_dir / "models" / name
    config, files = save_hybrid_artifacts(art / "pyfunc", run.model, run.spec, embedder, pretrained=init_uri)
    row = ModelResult(name, run.metrics, None, run_id, roc=roc_points(run.test_label, run.test_prob))
    return row, {"gbdt": asdict(preset.gbdt), "init_from": init_uri}, {
        "config": config, "files": files, "plots": [], "val_curve": run.val_auroc_per_round}


@dataclass(frozen=True)
class ComparisonPlan:
    """A comparison under way (its parent run is open): what `train_one` needs, as paths, ids and configs only, so
    that each model can be trained by its own task, thread or process."""

    run_name: str
    run_dir: Path
    parent_run_id: str
    sequences_dir: Path
    events_dir: Path
    preset: RunPreset
    models: tuple[str, ...]
    fold: int
    settings: Settings
    register: bool
    experiment: str
    common: dict = field(default_factory=dict)  # params logged on the parent run and on every model's run
    init_from: dict[str, str] = field(default_factory=dict)  # encoder -> URI of its CoLES-pretrained model


def _load_data(sequences_dir: Path, events_dir: Path, fold: int) -> _Data:
    manifest = json.loads((sequences_dir / MANIFEST_FILE).read_text()) if (sequences_dir / MANIFEST_FILE).exists() else {}
    seq_cfg = manifest.get("config", {})
    return _Data(
        sequences_dir=sequences_dir,
        events=read_events(Path(events_dir)),
        split=Split.load(sequences_dir / SPLIT_FILE),
        fold=fold,
        vocab=Vocab.load(sequences_dir / VOCAB_FILE),
        sequence_config=SequenceConfig(**{k: seq_cfg[k] for k in ("max_len", "min_count") if k in seq_cfg}),
        manifest_sha256=_sha256(sequences_dir / MANIFEST_FILE),
    )


def data_profile(sequences_dir: Path, fold: int = 0) -> DataProfile:
    """The labelled training customers of fold `fold`, their events and positives: what the `auto` preset is sized
    from."""
    split = Split.load(Path(sequences_dir) / SPLIT_FILE)
    ids = pl.Series(split.train_ids(fold), dtype=pl.Int64)
    rows = (pl.scan_parquet(Path(sequences_dir) / SEQUENCES_FILE)
            .filter(pl.col(S.CUSTOMER_ID).is_in(ids) & pl.col(S.GENDER).is_not_null())
            .select(pl.len().alias("n"), pl.col(S.SEQ_LENGTH).sum().alias("events"),
                    (pl.col(S.GENDER) == 1).sum().alias("pos"))
            .collect().row(0))
    return DataProfile(n_labelled=int(rows[0]), n_events=int(rows[1] or 0), n_positive=int(rows[2] or 0))


def resolve_preset(name: str, sequences_dir: Path, fold: int = 0, **train_overrides) -> RunPreset:
    """`presets.get`, with `auto` sized from this sequences folder's fold."""
    profile = data_profile(sequences_dir, fold) if name == "auto" else None
    return get(name, profile, **train_overrides)


def start_comparison(
    sequences_dir: Path,
    events_dir: Path,
    preset: RunPreset,
    models: Sequence[str] | None = None,
    fold: int = 0,
    settings: Settings | None = None,
    run_name: str | None = None,
    register: bool = True,
    experiment: str = "txseq",
    init_from: Sequence[str] = (),
) -> ComparisonPlan:
    """Open the parent run of a comparison and log what every model shares; `train_one` each model, then
    `finish_comparison`. The store is preflighted here, before any training.

    `init_from`: URIs of CoLES-pretrained encoders (`txseq pretrain`); each adds `<encoder>_coles` (fine-tuned from
    it) and `hybrid_<encoder>` to the default models."""
    settings = settings or load_settings()
    tracker = setup(settings, experiment)
    sequences_dir = Path(sequences_dir)
    data = _load_data(sequences_dir, Path(events_dir), fold)
    pretrained = _pretrained_encoders(init_from, data.vocab)
    defaults = (*preset.models, *[m for e in pretrained for m in (f"{e}_coles", f"hybrid_{e}")])
    models = tuple(_model_name(m) for m in (models or defaults))
    for m in models:
        kind, encoder = model_kind(m)
        if kind in ("coles", "hybrid") and encoder not in pretrained:
            raise ValueError(f"model {m!r} needs a pretrained {encoder} encoder: pass --init-from models:/... "
                             f"(given: {sorted(pretrained) or 'none'})")
    # default: unique even for two runs started in the same second (a shared name would share checkpoints)
    run_name = run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{preset.name}-{os.urandom(2).hex()}"
    run_dir = settings.runs_dir / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids, test_ids = data.ids
    common = {"split_id": data.split.split_id, "fold": fold, "data.sequences_manifest_sha256": data.manifest_sha256,
              "data.n_train": len(train_ids), "data.n_val": len(val_ids), "data.n_test": len(test_ids),
              "git_commit": git_commit() or "unknown", "preset": preset.name}
    # A run of the same name left RUNNING by a killed process is marked FAILED; this one resumes its checkpoints.
    stale = tracker.fail_stale_runs(TAG_RUN_NAME, run_name)
    tags = {"txseq.kind": "comparison", TAG_RUN_NAME: run_name, **process_tags()}
    if stale:
        tags["txseq.resumes_failed_runs"] = ",".join(stale)
    parent = tracker.start_run(run_name, tags=tags)
    tracker.log_params(parent, {**common, "models": ",".join(models), "preset_config": preset.to_dict()})
    return ComparisonPlan(run_name, run_dir, parent, sequences_dir, Path(events_dir), preset, models, fold, settings,
                          register, experiment, common, pretrained)


def _pretrained_encoders(uris: Sequence[str], vocab: Vocab) -> dict[str, str]:
    """encoder -> URI for each pretrained model (loaded once here: a wrong URI or vocabulary fails before training)."""
    from pipeline.pretrain import load_pretrained

    out: dict[str, str] = {}
    for uri in uris:
        cfg, _, _ = load_pretrained(uri, vocab)
        if cfg.encoder in out:
            raise ValueError(f"two pretrained {cfg.encoder} encoders given: {out[cfg.encoder]} and {uri}")
        out[cfg.encoder] = uri
    return out


def end_comparison_runs(run_name_suffix: str, status: str, reason: str, settings: Settings | None = None,
                        experiment: str = "txseq") -> list[str]:
    """End the RUNNING runs (parent and nested) of the comparisons whose run name ends with `run_name_suffix` as
    `status`: KILLED for a cancelled flow run, FAILED for a crashed one (the flows' hooks call this)."""
    tracker = setup(settings or load_settings(), experiment)
    return tracker.end_running_runs(f"tags.`{TAG_RUN_NAME}` LIKE '%{run_name_suffix}'", status, reason)


def train_one(plan: ComparisonPlan, name: str) -> ModelResult:
    """Train, test, log and (optionally) register one model as a nested run under the plan's parent run.
    The champion alias is decided later, by `finish_comparison`."""
    tracker = setup(plan.settings, plan.experiment)
    data = _load_data(plan.sequences_dir, plan.events_dir, plan.fold)
    train_ids, val_ids, test_ids = data.ids
    preset, run_dir = plan.preset, plan.run_dir
    log.info("training %s", name)
    tags = {"txseq.model": name, TAG_RUN_NAME: plan.run_name, **process_tags()}
    with tracker.run(name, parent_run_id=plan.parent_run_id, tags=tags) as child:
        kind, encoder = model_kind(name)
        if kind in ("gbdt", "hybrid"):
            if kind == "gbdt":
                row, params, art = _train_gbdt(data, preset, child, run_dir)
            else:
                row, params, art = _train_hybrid(name, data, preset, plan.init_from[encoder], child, run_dir)
            for step, auc in enumerate(art["val_curve"]):
                if math.isfinite(auc):
                    tracker.log_metrics(child, {"gbdt/val_auroc_per_round": auc}, step=step)
        else:
            seq_path = plan.sequences_dir / SEQUENCES_FILE
            datasets = {"train": SequenceDataset(seq_path, train_ids), "val": SequenceDataset(seq_path, val_ids),
                        "test": SequenceDataset(seq_path, test_ids)}
            datasets["stats"] = numeric_stats(datasets["train"])
            init = None
            if kind == "coles":
                from pipeline.pretrain import load_pretrained

                cfg, state, _ = load_pretrained(plan.init_from[encoder], data.vocab)
                init = (cfg, state)
            row, params, art = _train_encoder(name, data, preset, datasets, tracker, child, run_dir, init)
            if init is not None:
                params["init_from"] = plan.init_from[encoder]
        tracker.log_params(child, {**plan.common, **params})
        per_epoch = set() if kind in ("gbdt", "hybrid") else _PER_EPOCH
        tracker.log_metrics(child, {k: v for k, v in row.metrics.items() if k not in per_epoch},
                            step=row.steps or 0)
        roc_png = plot_roc({name: (*row.roc, row.metrics["test/auroc"])}, run_dir / "models" / name / "roc.png",
                           title=f"{name}: ROC (test)")
        for path in [roc_png, *art["plots"], *art["files"].values()]:
            tracker.log_artifact(child, path, "files")
        if plan.register:
            version = log_model(
                tracker, child, artifacts_dir=run_dir / "models" / name / "pyfunc", config=art["config"],
                files=art["files"],
                registered_model=plan.settings.registered_model,
                version_tags={TAG_SPLIT_ID: data.split.split_id, TAG_TEST_AUROC: f"{row.metrics['test/auroc']:.6f}",
                              "model": name, "preset": preset.name, "run_id": child},
            )
            row.version = version.version
    return row


def champion_evaluator(data: _Data) -> Callable[[str], tuple[float, str]]:
    """`pipeline.tracking.ChampionEvaluator` for this comparison's split: a model URI -> its ROC AUC on the split's
    test customers (the labelled customers of the sequences table with a test id, the ones every model of the
    comparison was tested on), scored through the model's pyfunc from their validated events. A test customer the
    model returns no score for (its own stored validation rejected all of the customer's rows) counts as 0.5 and is
    named in the route. Results are cached per URI: the champion is re-scored once per comparison."""
    labels = (pl.read_parquet(data.sequences_dir / SEQUENCES_FILE, columns=[S.CUSTOMER_ID, S.GENDER])
              .filter(pl.col(S.GENDER).is_not_null()
                      & pl.col(S.CUSTOMER_ID).is_in(pl.Series(data.split.test_ids, dtype=pl.Int64)))
              .sort(S.CUSTOMER_ID))
    cache: dict[str, tuple[float, str]] = {}

    def evaluate_champion(model_uri: str) -> tuple[float, str]:
        if model_uri not in cache:
            events = data.events.filter(pl.col(S.CUSTOMER_ID).is_in(labels[S.CUSTOMER_ID]))
            scores = pl.from_pandas(score_with_model(model_uri, events)).select(
                pl.col(S.CUSTOMER_ID).cast(pl.Int64), pl.col(S.PROBABILITY).cast(pl.Float64))
            joined = labels.join(scores, on=S.CUSTOMER_ID, how="left")
            missing = joined[S.PROBABILITY].null_count()
            prob = joined[S.PROBABILITY].fill_null(0.5).to_numpy()
            auroc = classification_metrics(joined[S.GENDER].to_numpy(), prob)["auroc"]
            route = f"its pyfunc on the validated events of the {labels.height} test customers"
            cache[model_uri] = (auroc, route + (f", {missing} of them unscored (counted as 0.5)" if missing else ""))
        return cache[model_uri]

    return evaluate_champion


def finish_comparison(plan: ComparisonPlan, results: Sequence[ModelResult], failed: Sequence[str] = ()) -> ComparisonResult:
    """Move the champion alias (registered versions, in plan order), write the report of the models that trained,
    log it on the parent run and close that run (FAILED when some model in `failed` did not train)."""
    tracker = setup(plan.settings, plan.experiment)
    data = _load_data(plan.sequences_dir, plan.events_dir, plan.fold)
    train_ids, val_ids, test_ids = data.ids
    results = list(results)
    evaluate_champion = champion_evaluator(data)  # for a champion measured on another split: re-scored on this one
    for r in results:  # one at a time, in plan order: models trained in parallel cannot race for the alias
        if r.version is not None:
            decision = tracker.promote_champion(plan.settings.registered_model, r.version, r.metrics["test/auroc"],
                                                data.split.split_id, evaluate_champion)
            r.champion = decision.reason
    table = markdown_table(results)
    not_trained = f"\n\nNot trained (failed): {', '.join(failed)}.\n" if failed else ""
    header = (f"# Comparison `{plan.run_name}`\n\npreset `{plan.preset.name}`, split `{data.split.split_id}` fold "
              f"{plan.fold}: {len(train_ids):,} train / {len(val_ids):,} validation / {len(test_ids):,} test "
              f"customers; device {resolve_device(plan.preset.train.device)}.\n\n")
    report_md = plan.run_dir / "report.md"
    report_md.write_text(header + table + "\n" + not_trained)
    report_png = plot_report(results, plan.run_dir / "report.png")
    roc_all = plot_roc({r.model: (*r.roc, r.metrics["test/auroc"]) for r in results if r.roc is not None},
                       plan.run_dir / "roc_test.png")
    for path in (report_md, report_png, roc_all):
        tracker.log_artifact(plan.parent_run_id, path)
    for r in results:
        tracker.log_metrics(plan.parent_run_id, {f"{r.model}/test_auroc": r.metrics["test/auroc"],
                                                 f"{r.model}/train_s": r.metrics["time/train_s"]})
    tracker.end_run(plan.parent_run_id, "FAILED" if failed else "FINISHED")
    return ComparisonResult(plan.run_name, plan.run_dir, plan.parent_run_id, results, table, report_md, report_png)


def run_comparison(
    sequences_dir: Path,
    events_dir: Path,
    preset: RunPreset,
    models: Sequence[str] | None = None,
    fold: int = 0,
    settings: Settings | None = None,
    run_name: str | None = None,
    register: bool = True,
    experiment: str = "txseq",
    init_from: Sequence[str] = (),
) -> ComparisonResult:
    """Train `models` (default: the preset's, plus the fine-tuned and hybrid models of each `init_from` pretrained
    encoder) on fold `fold`, one after the other, track, register and report. Resumes the checkpoints of `run_name`
    when that run folder already exists. (`flows/train.py` runs the same three steps with one Prefect task per
    model.)"""
    plan = start_comparison(sequences_dir, events_dir, preset, models, fold, settings, run_name, register, experiment,
                            init_from)
    results: list[ModelResult] = []
    try:
        for name in plan.models:
            results.append(train_one(plan, name))
    except BaseException:
        setup(plan.settings, plan.experiment).end_run(plan.parent_run_id, "FAILED")
        raise
    return finish_comparison(plan, results)


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, spec)


def markdown_table(results: Sequence[ModelResult]) -> str:
    """model | test ROC AUC | accuracy | log-loss | train s | steps | best step | CUDA peak GiB | RSS peak GiB | params"""
    lines = ["| model | test ROC AUC | accuracy | log-loss | train time (s) | steps | best step | "
             "CUDA peak (GiB) | RSS peak (GiB) | parameters |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        m = r.metrics
        lines.append(
            f"| {r.model} | {_fmt(m['test/auroc'], '.4f')} | {_fmt(m['test/accuracy'], '.4f')} | "
            f"{_fmt(m['test/logloss'], '.4f')} | {_fmt(m['time/train_s'], '.1f')} | "
            f"{r.steps if r.steps is not None else '—'} | {_fmt(m.get('train/best_step'), '.0f')} | "
            f"{_fmt(m.get('mem/cuda_peak_gib'), '.2f')} | "
            f"{_fmt(m.get('mem/rss_peak_gib'), '.2f')} | {_fmt(m['params/n_parameters'], ',.0f')} |"
        )
    return "\n".join(lines)


def plot_report(results: Sequence[ModelResult], path: Path) -> Path:
    """Test ROC AUC against training time and against peak memory (CUDA when measured, else RSS)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for r in results:
        m = r.metrics
        mem = m.get("mem/cuda_peak_gib", float("nan"))
        mem = mem if math.isfinite(mem) else m.get("mem/rss_peak_gib", float("nan"))
        for ax, x in zip(axes, (m["time/train_s"], mem), strict=True):
            ax.scatter([x], [m["test/auroc"]], s=40)
            ax.annotate(r.model, (x, m["test/auroc"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    cuda = any(math.isfinite(r.metrics.get("mem/cuda_peak_gib", float("nan"))) for r in results)
    axes[0].set(xlabel="training time (s)", ylabel="test ROC AUC", title="quality vs training time")
    axes[1].set(xlabel=f"peak {'CUDA allocated' if cuda else 'process RSS'} memory (GiB)",
                title="quality vs peak memory")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
