"""The comparison: train a chosen set of models (encoders and the GBDT) on one split under one parent MLflow run,
register each as a pyfunc model, and write the report (Markdown table + quality-vs-time/memory PNG).

    sequences/ (table, vocab, split) + events/ ──▶ for each model: nested run ─ fit ─ test ─ log ─ register ─ champion?
                                                ──▶ data/runs/<run>/report.md, report.png (also on the parent run)

Each version's champion decision is made as it is registered (`pipeline.registry`, rule in `pipeline.champion`). A
model is identified by its fingerprint (sequences manifest digest, split id, fold, model config, preset): its
checkpoints resume only under the same fingerprint, and a re-run of the same `--run` name reuses the version it
already registered instead of registering the same model twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from models import ModelConfig, build_model, canonical_encoder_name
from pipeline import distributed
from pipeline import schema as S
from pipeline.batches import SequenceDataset, make_loader, numeric_stats
from pipeline.calibration import ThresholdRule
from pipeline.champion import ChampionRule
from pipeline.gbdt import train_gbdt
from pipeline.ingest import IngestConfig, read_events
from pipeline.metrics import classification_metrics, plot_roc, plot_training_curves, pyplot, roc_points
from pipeline.model_card import ModelCard, card_metrics
from pipeline.scoring_card import decision_metrics, fit_scoring_card
from pipeline.presets import DataProfile, RunPreset, fine_tune, get
from pipeline.registry import (
    FIT_IDS_ARTIFACT_DIR,
    FIT_IDS_FILE,
    TAG_FINGERPRINT,
    TAG_FIT_IDS,
    DecisionData,
    PyfuncScorer,
    decide_pending,
    write_fit_ids,
)
from pipeline.scoring import log_model, save_gbdt_artifacts, save_sequence_artifacts, score_with_model
from pipeline.sequences import MANIFEST_FILE, SEQUENCES_FILE, SPLIT_FILE, VOCAB_FILE, SequenceConfig, Vocab
from pipeline.settings import Settings, load_settings
from pipeline.splits import Split
from pipeline.threads import apply_threads, choose_threads, hardware, loader_workers
from pipeline.tracking import TAG_DECISION, TAG_SPLIT_ID, TAG_TEST_AUROC, Tracker, process_tags, setup
from pipeline.train import FitResult, MetricLogger, evaluate, fit, resolve_device

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
    labels: dict[int, int]  # labelled customers of the sequences table: id -> gender
    manifest: dict = field(default_factory=dict)

    @property
    def ids(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(train, validation, test) ids of the split that are labelled customers of the sequences table: a split
        written before labels without transactions were left out may name customers that do not exist."""
        return tuple(tuple(i for i in ids if i in self.labels)  # type: ignore[return-value]
                     for ids in (self.split.train_ids(self.fold), self.split.val_ids(self.fold), self.split.test_ids))

    def fingerprint(self, model: str, model_config: dict, preset: RunPreset) -> dict[str, str]:
        """What identifies one trained model: resume and re-registration match on it."""
        digest = hashlib.sha256(json.dumps(model_config, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {"sequences_manifest_sha256": str(self.manifest_sha256), "split_id": self.split.split_id,
                "fold": str(self.fold), "model": model, "model_config_sha256": digest, "preset": preset.name}

    def card(self, model: str, preset: RunPreset, metrics: dict[str, float], device: str, threads: int) -> ModelCard:
        counts = self.manifest.get("counts", {})
        train_ids, val_ids, test_ids = self.ids
        return ModelCard(model, preset.name, self.split.split_id, self.fold, self.manifest_sha256,
                         int(counts.get("events_total", 0)), int(counts.get("customers", 0)), len(self.labels),
                         len(train_ids), len(val_ids), len(test_ids), card_metrics(metrics),
                         float(metrics.get("time/train_s", float("nan"))), hardware(device, threads))


def fingerprint_key(fp: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:32]


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


def _encoder_datasets(sequences_dir: Path, data: _Data) -> dict:
    seq_path = sequences_dir / SEQUENCES_FILE
    train_ids, val_ids, test_ids = data.ids
    datasets = {"train": SequenceDataset(seq_path, train_ids), "val": SequenceDataset(seq_path, val_ids),
                "test": SequenceDataset(seq_path, test_ids)}
    datasets["stats"] = numeric_stats(datasets["train"])
    return datasets


def _fit_encoder(name: str, data: _Data, preset: RunPreset, datasets: dict, logger: MetricLogger | None,
                 run_dir: Path, fingerprint: dict[str, str], workers: int = 0,
                 init: tuple[ModelConfig, dict] | None = None) -> tuple[torch.nn.Module, ModelConfig, FitResult]:
    """Build encoder model `name` and `fit` it from scratch, or (`init`: a pretrained encoder's config and weights)
    fine-tune its embedding and encoder with a new head (every rank of a distributed run calls this alike)."""
    train_ds, val_ds = datasets["train"], datasets["val"]
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
    tc = preset.train if init is None else fine_tune(preset.train)
    result = fit(
        model,
        lambda epoch: make_loader(train_ds, batch_size=preset.batch_size, shuffle=True, crop_len=preset.crop_len,
                                  seed=tc.seed * 100_003 + epoch, num_workers=workers),
        lambda: make_loader(val_ds, batch_size=preset.eval_batch_size, num_workers=workers),
        tc,
        logger,
        run_dir / "checkpoints" / name,
        fingerprint=fingerprint,
        name=name,
    )
    return model, cfg, result


def _load_init(uri: str, data: _Data) -> tuple[ModelConfig, dict]:
    from pipeline.pretrain import load_pretrained

    cfg, state, _ = load_pretrained(uri, data.vocab)
    return cfg, state


def follow_comparison(sequences_dir: Path, events_dir: Path, preset: RunPreset, models: Sequence[str] | None,
                      fold: int, run_dir: Path, threads: int | None = None, settings: Settings | None = None,
                      init_from: Sequence[str] = ()) -> None:
    """A torchrun rank other than 0: the same `fit` of every neural model as rank 0's `run_comparison`, in the same
    order, with the same fingerprint, and nothing else (no tracking, registry, report or checkpoint). A model whose
    registered version rank 0 reuses (`train_one`) is skipped: rank 0 says which (`distributed.from_main`)."""
    settings = settings or load_settings()
    n_threads = choose_threads(threads or settings.threads)
    apply_threads(n_threads)
    ddp = distributed.current()
    data = _load_data(Path(sequences_dir), Path(events_dir), fold)
    pretrained = _pretrained_encoders(init_from, data.vocab)
    defaults = (*preset.models, *[m for e in pretrained for m in (f"{e}_coles", f"hybrid_{e}")])
    for name in (_model_name(m) for m in (models or defaults)):
        kind, encoder = model_kind(name)
        if kind not in ("encoder", "coles"):  # GBDT-based: rank 0 alone
            continue
        fingerprint = data.fingerprint(name, _model_config(name, data, preset, pretrained), preset)
        if distributed.from_main(False, ddp):
            log.info("%s: rank 0 reuses its registered version: not trained", name)
            continue
        init = _load_init(pretrained[encoder], data) if kind == "coles" else None
        _fit_encoder(name, data, preset, _encoder_datasets(Path(sequences_dir), data), None, run_dir, fingerprint,
                     loader_workers(n_threads), init)


def _train_encoder(name: str, data: _Data, preset: RunPreset, datasets: dict, tracker: Tracker, run_id: str,
                   run_dir: Path, fingerprint: dict[str, str], workers: int = 0,
                   init: tuple[ModelConfig, dict] | None = None) -> tuple[ModelResult, dict, dict]:
    test_ds, val_ds, tc = datasets["test"], datasets["val"], preset.train
    model, cfg, result = _fit_encoder(name, data, preset, datasets, tracker.logger(run_id), run_dir, fingerprint,
                                      workers, init)
    device = resolve_device(tc.device)
    test = evaluate(model, make_loader(test_ds, batch_size=preset.eval_batch_size, num_workers=workers), device,
                    tc.precision)
    q = classification_metrics(test["label"], test["prob"])
    val = evaluate(model, make_loader(val_ds, batch_size=preset.eval_batch_size), device, tc.precision)
    scoring = fit_scoring_card(data.events, data.ids[0], val["label"], val["prob"], test["prob"],
                          ThresholdRule.parse(preset.threshold_rule))
    metrics = {
        **{f"test/{k}": v for k, v in q.items()},
        **decision_metrics(scoring.decision, test["label"], test["prob"]),
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
                                            IngestConfig(), preset.eval_batch_size, scoring.decision, scoring.reference)
    params = {"model": cfg.to_dict(), "train": result.config, "batch_size": preset.batch_size,
              "crop_len": preset.crop_len, "device": result.device, **scoring.tags()}
    if result.resumed_from_step is not None:  # continued from the checkpoint of an interrupted run
        params["resumed_from_step"] = result.resumed_from_step
    row = ModelResult(name, metrics, result.steps_run, run_id, roc=roc_points(test["label"], test["prob"]))
    return row, params, {"config": config, "files": files, "plots": [art / "training_curve.png"],
                         "version_tags": scoring.tags()}


def _train_gbdt(data: _Data, preset: RunPreset, run_id: str, run_dir: Path) -> tuple[ModelResult, dict, dict]:
    labels = pl.DataFrame({S.CUSTOMER_ID: list(data.labels), S.GENDER: list(data.labels.values())},
                          schema={S.CUSTOMER_ID: pl.Int64, S.GENDER: pl.Int8})
    run = train_gbdt(data.events, labels, data.ids, preset.gbdt)
    scoring = fit_scoring_card(data.events, data.ids[0], run.val_label, run.val_prob, run.test_prob,
                          ThresholdRule.parse(preset.threshold_rule))
    art = run_dir / "models" / "gbdt"
    config, files = save_gbdt_artifacts(art / "pyfunc", run.model, run.spec, IngestConfig(), scoring.decision,
                                        scoring.reference)
    metrics = {**run.metrics, **decision_metrics(scoring.decision, run.test_label, run.test_prob)}
    row = ModelResult("gbdt", metrics, None, run_id, roc=roc_points(run.test_label, run.test_prob))
    return row, {"gbdt": asdict(preset.gbdt), **scoring.tags()}, {
        "config": config, "files": files, "plots": [], "val_curve": run.val_auroc_per_round,
        "version_tags": scoring.tags()}


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
    scoring = fit_scoring_card(data.events, data.ids[0], run.val_label, run.val_prob, run.test_prob,
                               ThresholdRule.parse(preset.threshold_rule))
    art = run_dir / "models" / name
    config, files = save_hybrid_artifacts(art / "pyfunc", run.model, run.spec, embedder, scoring.decision,
                                          scoring.reference, pretrained=init_uri)
    metrics = {**run.metrics, **decision_metrics(scoring.decision, run.test_label, run.test_prob)}
    row = ModelResult(name, metrics, None, run_id, roc=roc_points(run.test_label, run.test_prob))
    return row, {"gbdt": asdict(preset.gbdt), "init_from": init_uri, **scoring.tags()}, {
        "config": config, "files": files, "plots": [], "val_curve": run.val_auroc_per_round,
        "version_tags": scoring.tags()}


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
    rule: ChampionRule = ChampionRule()
    threads: int = 1
    init_from: dict[str, str] = field(default_factory=dict)  # encoder -> URI of its CoLES-pretrained model


def _load_data(sequences_dir: Path, events_dir: Path, fold: int) -> _Data:
    manifest = json.loads((sequences_dir / MANIFEST_FILE).read_text()) if (sequences_dir / MANIFEST_FILE).exists() else {}
    seq_cfg = manifest.get("config", {})
    labelled = (pl.read_parquet(sequences_dir / SEQUENCES_FILE, columns=[S.CUSTOMER_ID, S.GENDER])
                .filter(pl.col(S.GENDER).is_not_null()).sort(S.CUSTOMER_ID))
    return _Data(
        sequences_dir=sequences_dir,
        events=read_events(Path(events_dir)),
        split=Split.load(sequences_dir / SPLIT_FILE),
        fold=fold,
        vocab=Vocab.load(sequences_dir / VOCAB_FILE),
        sequence_config=SequenceConfig(**{k: seq_cfg[k] for k in ("max_len", "min_count") if k in seq_cfg}),
        manifest_sha256=_sha256(sequences_dir / MANIFEST_FILE),
        labels=dict(zip(labelled[S.CUSTOMER_ID].to_list(), labelled[S.GENDER].to_list(), strict=True)),
        manifest=manifest,
    )


def default_run_name(preset_name: str) -> str:
    """Unique even for two runs started in the same second (a shared name would share checkpoints)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{preset_name}-{os.urandom(2).hex()}"


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
def _decision_data(data: _Data, rule: ChampionRule) -> DecisionData:
    return DecisionData(data.labels, PyfuncScorer(data.events, score_with_model), rule)


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
    rule: ChampionRule = ChampionRule(),
    threads: int | None = None,
    init_from: Sequence[str] = (),
) -> ComparisonPlan:
    """Open the parent run of a comparison and log what every model shares; `train_one` each model, then
    `finish_comparison`. The store is preflighted here, before any training. `threads` (default: settings.threads,
    else the CPUs this process may use) limits torch, OpenMP and BLAS.

    `init_from`: URIs of CoLES-pretrained encoders (`txseq pretrain`); each adds `<encoder>_coles` (fine-tuned from
    it) and `hybrid_<encoder>` to the default models."""
    settings = settings or load_settings()
    n_threads = choose_threads(threads or settings.threads)
    applied = apply_threads(n_threads)
    log.info("threads: %d (usable CPUs %d), DataLoader workers %d", applied.threads, applied.usable_cpus,
             applied.loader_workers)
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
    run_name = run_name or default_run_name(preset.name)
    run_dir = settings.runs_dir / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    train_ids, val_ids, test_ids = data.ids
    ghosts = sorted(set(data.split.labelled_ids) - data.labels.keys())
    if ghosts:  # a split written before `sequences` left out labels without transactions
        log.warning("%d customers of split %s have no labelled sequence (e.g. %s): left out; rebuild the sequences "
                    "folder to get a split over existing customers only", len(ghosts), data.split.split_id, ghosts[:5])
    common = {"split_id": data.split.split_id, "fold": fold, "data.sequences_manifest_sha256": data.manifest_sha256,
              "data.n_train": len(train_ids), "data.n_val": len(val_ids), "data.n_test": len(test_ids),
              "git_commit": git_commit() or "unknown", "preset": preset.name, "threads": n_threads}
    if register:  # versions a killed run registered without a decision are decided before anything new
        with tracker.registry_lock(settings.artifact_root, settings.registered_model):
            decide_pending(tracker, settings.registered_model, _decision_data(data, rule))
    # A run of the same name left RUNNING by a killed process is marked FAILED; this one resumes its checkpoints.
    stale = tracker.fail_stale_runs(TAG_RUN_NAME, run_name)
    tags = {"txseq.kind": "comparison", TAG_RUN_NAME: run_name, **process_tags()}
    if stale:
        tags["txseq.resumes_failed_runs"] = ",".join(stale)
    parent = tracker.start_run(run_name, tags=tags)
    tracker.log_params(parent, {**common, "models": ",".join(models), "preset_config": preset.to_dict()})
    return ComparisonPlan(run_name, run_dir, parent, sequences_dir, Path(events_dir), preset, models, fold, settings,
                          register, experiment, common, rule, n_threads, pretrained)


def _model_config(name: str, data: _Data, preset: RunPreset, plan_init_from: dict[str, str]) -> dict:
    """The configuration that defines the model `name` (part of its fingerprint)."""
    kind, encoder = model_kind(name)
    if kind == "gbdt":
        return asdict(preset.gbdt)
    if kind in ("coles", "hybrid"):  # defined by the pretrained model too
        return {"init_from": plan_init_from.get(encoder, ""), **(asdict(preset.gbdt) if kind == "hybrid" else {})}
    return ModelConfig(n_mcc=data.vocab.size_mcc, n_tr_type=data.vocab.size_tr_type,
                       **preset.model_kwargs(encoder)).to_dict()


def _reuse(tracker: Tracker, plan: ComparisonPlan, name: str, version: str, run_id: str, data: _Data) -> ModelResult:
    """A version this run name already registered for the same training: report it, make sure it is decided."""
    registered = plan.settings.registered_model
    log.info("%s: already registered as %s v%s by run %s (same fingerprint): not trained or registered again",
             name, registered, version, run_id)
    with tracker.registry_lock(plan.settings.artifact_root, registered):
        decide_pending(tracker, registered, _decision_data(data, plan.rule))
    return ModelResult(name, tracker.run_metrics(run_id), None, run_id, version,
                       tracker.version(registered, version).tags.get(TAG_DECISION, ""))
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
    """Train, test, log and (optionally) register one model as a nested run under the plan's parent run; the
    champion decision for its version is made as it is registered. When this run name already registered a version
    for the same fingerprint (a re-run after a crash), that version is reused: one trained model, one version."""
    tracker = setup(plan.settings, plan.experiment)
    apply_threads(plan.threads)  # this task may run in another thread or process than `start_comparison`
    data = _load_data(plan.sequences_dir, plan.events_dir, plan.fold)
    train_ids, val_ids, test_ids = data.ids
    preset, run_dir = plan.preset, plan.run_dir
    registered = plan.settings.registered_model
    fingerprint = data.fingerprint(name, _model_config(name, data, preset, plan.init_from), preset)
    fp_key = fingerprint_key(fingerprint)
    done = tracker.versions(registered, {TAG_FINGERPRINT: fp_key, TAG_RUN_NAME: plan.run_name}) if plan.register \
        else []
    if model_kind(name)[0] in ("encoder", "coles"):  # the other ranks of a torchrun job (`follow_comparison`) train it with us, or skip it too
        distributed.from_main(bool(done), distributed.current())
    if done:
        return _reuse(tracker, plan, name, done[-1].version, done[-1].run_id, data)
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
            init = None
            if kind == "coles":
                init = _load_init(plan.init_from[encoder], data)
            row, params, art = _train_encoder(name, data, preset, _encoder_datasets(plan.sequences_dir, data), tracker,
                                              child, run_dir, fingerprint, loader_workers(plan.threads), init)
            if init is not None:
                params["init_from"] = plan.init_from[encoder]
        tracker.log_params(child, {**plan.common, **params, "fingerprint": fp_key})
        per_epoch = set() if kind in ("gbdt", "hybrid") else _PER_EPOCH
        tracker.log_metrics(child, {k: v for k, v in row.metrics.items() if k not in per_epoch},
                            step=row.steps or 0)
        roc_png = plot_roc({name: (*row.roc, row.metrics["test/auroc"])}, run_dir / "models" / name / "roc.png",
                           title=f"{name}: ROC (test)")
        for path in [roc_png, *art["plots"], *art["files"].values()]:
            tracker.log_artifact(child, path, "files")
        if plan.register:
            fit_path, fit_digest = write_fit_ids(train_ids, val_ids, run_dir / "models" / name / FIT_IDS_FILE)
            tracker.log_artifact(child, fit_path, FIT_IDS_ARTIFACT_DIR)
            card = data.card(name, preset, row.metrics, str(params.get("device", "cpu")), plan.threads)
            with tracker.registry_lock(plan.settings.artifact_root, registered):
                version = log_model(
                    tracker, child, artifacts_dir=run_dir / "models" / name / "pyfunc", config=art["config"],
                    files=art["files"],
                    registered_model=registered,
                    version_tags={TAG_SPLIT_ID: data.split.split_id, TAG_TEST_AUROC: f"{row.metrics['test/auroc']:.6f}",
                                  "model": name, "preset": preset.name, "run_id": child, TAG_FIT_IDS: fit_digest,
                                  TAG_FINGERPRINT: fp_key, TAG_RUN_NAME: plan.run_name, **card.to_tags(),
                                  **art["version_tags"]},
                )
                row.version = version.version
                decisions = decide_pending(tracker, registered, _decision_data(data, plan.rule))
            row.champion = decisions[row.version].reason if row.version in decisions else \
                tracker.version(registered, row.version).tags.get(TAG_DECISION, "")
    return row


def finish_comparison(plan: ComparisonPlan, results: Sequence[ModelResult], failed: Sequence[str] = ()) -> ComparisonResult:
    """Write the report of the models that trained (with each version's champion decision, made at registration),
    log it on the parent run and close that run (FAILED when some model in `failed` did not train)."""
    tracker = setup(plan.settings, plan.experiment)
    data = _load_data(plan.sequences_dir, plan.events_dir, plan.fold)
    train_ids, val_ids, test_ids = data.ids
    results = list(results)
    table = markdown_table(results)
    decisions = "".join(f"- {r.model}: v{r.version}: {r.champion}\n" for r in results if r.version is not None)
    if decisions:
        table += f"\n\nChampion decisions ({plan.settings.registered_model}, made as each version was registered):\n\n" \
                 + decisions.rstrip("\n")
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
    rule: ChampionRule = ChampionRule(),
    threads: int | None = None,
    init_from: Sequence[str] = (),
) -> ComparisonResult:
    """Train `models` (default: the preset's, plus the fine-tuned and hybrid models of each `init_from` pretrained
    encoder) on fold `fold`, one after the other, track, register (deciding the champion for each version as it is
    registered) and report. Resumes the checkpoints of `run_name` when that run folder already exists and the
    fingerprint matches. (`flows/train.py` runs the same three steps with one Prefect task per model.)"""
    plan = start_comparison(sequences_dir, events_dir, preset, models, fold, settings, run_name, register, experiment,
                            rule, threads, init_from)
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
