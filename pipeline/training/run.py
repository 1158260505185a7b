"""The comparison: train a chosen set of models (encoders and the GBDT) on one split under one parent MLflow run,
register each as a pyfunc model, and write the report (Markdown table + quality-vs-time/memory PNG).

    sequences/ (table, vocab, split) + events/ ──▶ for each model: nested run ─ fit ─ test ─ log ─ register ─ champion?
                                                ──▶ data/runs/<run>/report.md, report.png (also on the parent run)

Each version's champion decision is made as it is registered (`pipeline.registry.versions`, rule in
`pipeline.registry.champion`). A model is identified by its fingerprint (sequences manifest digest, split id, fold,
model config, preset): its checkpoints resume only under the same fingerprint, and a re-run of the same `--run` name
reuses the version it already registered instead of registering the same model twice.
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
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipeline.training import distributed
from pipeline import schema as S
from pipeline.registry.champion import ChampionRule
from pipeline.metrics import plot_roc
from pipeline.training.presets import DataProfile, RunPreset, get
from pipeline.registry.versions import (
    FIT_IDS_ARTIFACT_DIR,
    FIT_IDS_FILE,
    TAG_FINGERPRINT,
    TAG_FIT_IDS,
    DecisionData,
    PyfuncScorer,
    decide_pending,
    write_fit_ids,
)
from pipeline.training.report import write_report
from pipeline.scoring.pyfunc import log_model, score_with_model
from pipeline.sequences.table import SEQUENCES_FILE, SPLIT_FILE, Vocab, scan_sequences
from pipeline.settings import Settings
from pipeline.sequences.splits import Split
from pipeline.threads import apply_threads, choose_threads, loader_workers
from pipeline.registry.tracking import TAG_DECISION, TAG_SPLIT_ID, TAG_TEST_AUROC, Tracker, process_tags, setup
from pipeline.training.train import resolve_device
from pipeline.training.trainers import (
    EncoderTrainer,
    ModelResult,
    TrainContext,
    TrainingInputs,
    canonical_model_name,
    trainer_for,
)

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
TAG_RUN_NAME = "txseq.run_name"  # on the parent and every nested run of one comparison (its checkpoints folder)


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


def fingerprint_key(fp: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:32]


def follow_comparison(sequences_dir: Path, events_dir: Path, preset: RunPreset, models: Sequence[str] | None,
                      fold: int, run_dir: Path, threads: int | None = None, *, settings: Settings,
                      init_from: Sequence[str] = ()) -> None:
    """A torchrun rank other than 0: the same `fit` of every neural model as rank 0's `run_comparison`, in the same
    order, with the same fingerprint, and nothing else (no tracking, registry, report or checkpoint). A model whose
    registered version rank 0 reuses (`train_one`) is skipped: rank 0 says which (`distributed.from_main`)."""
    n_threads = choose_threads(threads or settings.threads)
    apply_threads(n_threads)
    ddp = distributed.current()
    data = TrainingInputs.load(Path(sequences_dir), Path(events_dir), fold)
    pretrained = _pretrained_encoders(init_from, data.vocab)
    defaults = (*preset.models, *[m for e in pretrained for m in (f"{e}_coles", f"hybrid_{e}")])
    for name in (canonical_model_name(m) for m in (models or defaults)):
        trainer = trainer_for(name, pretrained)
        if not isinstance(trainer, EncoderTrainer):  # GBDT-based: rank 0 alone
            continue
        fingerprint = data.fingerprint(name, trainer.model_config(data, preset), preset)
        if distributed.from_main(False, ddp):
            log.info("%s: rank 0 reuses its registered version: not trained", name)
            continue
        trainer.fit_model(data, preset, run_dir, fingerprint, loader_workers(n_threads))


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


def default_run_name(preset_name: str) -> str:
    """Unique even for two runs started in the same second (a shared name would share checkpoints)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{preset_name}-{os.urandom(2).hex()}"


def data_profile(sequences_dir: Path, fold: int = 0) -> DataProfile:
    """The labelled training customers of fold `fold`, their events and positives: what the `auto` preset is sized
    from."""
    split = Split.load(Path(sequences_dir) / SPLIT_FILE)
    ids = pl.Series(split.train_ids(fold), dtype=pl.Int64)
    rows = (scan_sequences(Path(sequences_dir) / SEQUENCES_FILE)
            .filter(pl.col(S.CUSTOMER_ID).is_in(ids) & pl.col(S.LABEL).is_not_null())
            .select(pl.len().alias("n"), pl.col(S.SEQ_LENGTH).sum().alias("events"),
                    (pl.col(S.LABEL) == 1).sum().alias("pos"))
            .collect().row(0))
    return DataProfile(n_labelled=int(rows[0]), n_events=int(rows[1] or 0), n_positive=int(rows[2] or 0))


def resolve_preset(name: str, sequences_dir: Path, fold: int = 0, **train_overrides) -> RunPreset:
    """`presets.get`, with `auto` sized from this sequences folder's fold."""
    profile = data_profile(sequences_dir, fold) if name == "auto" else None
    return get(name, profile, **train_overrides)


def _decision_data(data: TrainingInputs, rule: ChampionRule) -> DecisionData:
    return DecisionData(data.labels, PyfuncScorer(data.events, score_with_model), rule)


def start_comparison(
    sequences_dir: Path,
    events_dir: Path,
    preset: RunPreset,
    models: Sequence[str] | None = None,
    fold: int = 0,
    *,
    settings: Settings,
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
    n_threads = choose_threads(threads or settings.threads)
    applied = apply_threads(n_threads)
    log.info("threads: %d (usable CPUs %d), DataLoader workers %d", applied.threads, applied.usable_cpus,
             applied.loader_workers)
    tracker = setup(settings, experiment)
    sequences_dir = Path(sequences_dir)
    data = TrainingInputs.load(sequences_dir, Path(events_dir), fold)
    pretrained = _pretrained_encoders(init_from, data.vocab)
    defaults = (*preset.models, *[m for e in pretrained for m in (f"{e}_coles", f"hybrid_{e}")])
    models = tuple(canonical_model_name(m) for m in (models or defaults))
    for m in models:
        trainer_for(m, pretrained)  # a model that needs a pretrained encoder not given: ValueError before training
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


def _reuse(tracker: Tracker, plan: ComparisonPlan, name: str, version: str, run_id: str, data: TrainingInputs
           ) -> ModelResult:
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
    from pipeline.training.pretrain import load_pretrained

    out: dict[str, str] = {}
    for uri in uris:
        cfg, _, _ = load_pretrained(uri, vocab)
        if cfg.encoder in out:
            raise ValueError(f"two pretrained {cfg.encoder} encoders given: {out[cfg.encoder]} and {uri}")
        out[cfg.encoder] = uri
    return out


def end_comparison_runs(run_name_suffix: str, status: str, reason: str, settings: Settings,
                        experiment: str = "txseq") -> list[str]:
    """End the RUNNING runs (parent and nested) of the comparisons whose run name ends with `run_name_suffix` as
    `status`: KILLED for a cancelled flow run, FAILED for a crashed one (the flows' hooks call this)."""
    tracker = setup(settings, experiment)
    return tracker.end_running_runs(f"tags.`{TAG_RUN_NAME}` LIKE '%{run_name_suffix}'", status, reason)


def train_one(plan: ComparisonPlan, name: str) -> ModelResult:
    """Train, test, log and (optionally) register one model as a nested run under the plan's parent run; the
    champion decision for its version is made as it is registered. When this run name already registered a version
    for the same fingerprint (a re-run after a crash), that version is reused: one trained model, one version."""
    tracker = setup(plan.settings, plan.experiment)
    apply_threads(plan.threads)  # this task may run in another thread or process than `start_comparison`
    data = TrainingInputs.load(plan.sequences_dir, plan.events_dir, plan.fold)
    train_ids, val_ids, test_ids = data.ids
    preset, run_dir = plan.preset, plan.run_dir
    registered = plan.settings.registered_model
    trainer = trainer_for(name, plan.init_from)
    fingerprint = data.fingerprint(name, trainer.model_config(data, preset), preset)
    fp_key = fingerprint_key(fingerprint)
    done = tracker.versions(registered, {TAG_FINGERPRINT: fp_key, TAG_RUN_NAME: plan.run_name}) if plan.register \
        else []
    if isinstance(trainer, EncoderTrainer):  # the other ranks of a torchrun job (`follow_comparison`) train it with us, or skip it too
        distributed.from_main(bool(done), distributed.current())
    if done:
        return _reuse(tracker, plan, name, done[-1].version, done[-1].run_id, data)
    log.info("training %s", name)
    tags = {"txseq.model": name, TAG_RUN_NAME: plan.run_name, **process_tags()}
    with tracker.run(name, parent_run_id=plan.parent_run_id, tags=tags) as child:
        trained = trainer.train(data, preset, TrainContext(tracker, child, run_dir, fingerprint,
                                                           loader_workers(plan.threads)))
        row, params = trained.row, trained.params
        for key, values in trained.curves.items():
            for step, value in enumerate(values):
                if math.isfinite(value):
                    tracker.log_metrics(child, {key: value}, step=step)
        tracker.log_params(child, {**plan.common, **params, "fingerprint": fp_key})
        tracker.log_metrics(child, {k: v for k, v in row.metrics.items() if k not in trained.per_step},
                            step=row.steps or 0)
        roc_png = plot_roc({name: (*row.roc, row.metrics["test/auroc"])}, run_dir / "models" / name / "roc.png",
                           title=f"{name}: ROC (test)")
        for path in [roc_png, *trained.plots, *trained.files.values()]:
            tracker.log_artifact(child, path, "files")
        if plan.register:
            fit_path, fit_digest = write_fit_ids(train_ids, val_ids, run_dir / "models" / name / FIT_IDS_FILE)
            tracker.log_artifact(child, fit_path, FIT_IDS_ARTIFACT_DIR)
            card = data.card(name, preset, row.metrics, str(params.get("device", "cpu")), plan.threads)
            with tracker.registry_lock(plan.settings.artifact_root, registered):
                version = log_model(
                    tracker, child, artifacts_dir=run_dir / "models" / name / "pyfunc", config=trained.config,
                    files=trained.files,
                    registered_model=registered,
                    version_tags={TAG_SPLIT_ID: data.split.split_id, TAG_TEST_AUROC: f"{row.metrics['test/auroc']:.6f}",
                                  "model": name, "preset": preset.name, "run_id": child, TAG_FIT_IDS: fit_digest,
                                  TAG_FINGERPRINT: fp_key, TAG_RUN_NAME: plan.run_name, **card.to_tags(),
                                  **trained.version_tags},
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
    data = TrainingInputs.load(plan.sequences_dir, plan.events_dir, plan.fold)
    train_ids, val_ids, test_ids = data.ids
    results = list(results)
    header = (f"# Comparison `{plan.run_name}`\n\npreset `{plan.preset.name}`, split `{data.split.split_id}` fold "
              f"{plan.fold}: {len(train_ids):,} train / {len(val_ids):,} validation / {len(test_ids):,} test "
              f"customers; device {resolve_device(plan.preset.train.device)}.\n\n")
    table, report_md, report_png, roc_all = write_report(plan.run_dir, header, results, plan.settings.registered_model,
                                                         failed)
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
    *,
    settings: Settings,
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
    plan = start_comparison(sequences_dir, events_dir, preset, models, fold, settings=settings, run_name=run_name,
                            register=register, experiment=experiment, rule=rule, threads=threads, init_from=init_from)
    results: list[ModelResult] = []
    try:
        for name in plan.models:
            results.append(train_one(plan, name))
    except BaseException:
        setup(plan.settings, plan.experiment).end_run(plan.parent_run_id, "FAILED")
        raise
    return finish_comparison(plan, results)


