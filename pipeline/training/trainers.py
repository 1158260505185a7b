"""Training one model, behind one interface: typed inputs read from the typed manifests, a `Trainer` per kind of
model (encoder trained from scratch or fine-tuned from CoLES, GBDT, hybrid), a typed result. The comparison
(`pipeline.training.run`) runs any `Trainer` the same way: no branch on a model's name outside `trainer_for`.

    TrainingInputs.load(sequences/, events/, fold) ──▶ trainer_for(name, pretrained).train(inputs, preset, context)
                                                     ──▶ TrainedModel (report row, params, pyfunc config + files, plots)
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl
import torch

from models import ModelConfig, build_model, canonical_encoder_name
from pipeline.training import distributed
from pipeline import schema as S
from pipeline.sequences.batches import SequenceDataset, make_loader, numeric_stats
from pipeline.scoring.calibration import ThresholdRule
from pipeline.scoring.gbdt import train_gbdt
from pipeline.ingest.files import read_events
from pipeline.metrics import classification_metrics, plot_training_curves, roc_points
from pipeline.registry.model_card import ModelCard, card_metrics
from pipeline.training.presets import RunPreset, fine_tune
from pipeline.scoring.pyfunc import save_gbdt_artifacts, save_sequence_artifacts
from pipeline.training.scoring_card import decision_metrics, fit_scoring_card
from pipeline.sequences.table import (
    MANIFEST_FILE,
    SEQUENCES_FILE,
    SPLIT_FILE,
    VOCAB_FILE,
    SequenceConfig,
    TableRules,
    Vocab,
    scan_sequences,
)
from pipeline.sequences.splits import Split
from pipeline.threads import hardware
from pipeline.registry.tracking import Tracker
from pipeline.training.train import FitResult, MetricLogger, TrainConfig, evaluate, fit, resolve_device

# logged every epoch by `fit`: the run summary does not repeat them
PER_EPOCH = frozenset({"mem/rss_peak_gib", "mem/cuda_peak_gib", "mem/cuda_reserved_gib",
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


@dataclass(frozen=True)
class TableCounts:
    """The sequences manifest's counts that a model card reports."""

    events_total: int = 0
    customers: int = 0

    @classmethod
    def of(cls, counts: dict) -> TableCounts:
        return cls(int(counts.get("events_total", 0)), int(counts.get("customers", 0)))


@dataclass
class TrainingInputs:
    """What every model of one comparison shares, read from the typed manifests (`TableRules`)."""

    sequences_dir: Path
    events: pl.LazyFrame
    split: Split
    fold: int
    vocab: Vocab
    rules: TableRules  # sequence, ingest and label rules of the table: they travel with every model
    manifest_sha256: str | None
    labels: dict[int, int]  # labelled customers of the sequences table: id -> target (0/1)
    counts: TableCounts = field(default_factory=lambda: TableCounts())

    @property
    def sequence_config(self) -> SequenceConfig:
        return self.rules.sequence

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
        train_ids, val_ids, test_ids = self.ids
        return ModelCard(model, preset.name, self.split.split_id, self.fold, self.manifest_sha256,
                         self.counts.events_total, self.counts.customers, len(self.labels),
                         len(train_ids), len(val_ids), len(test_ids), card_metrics(metrics),
                         float(metrics.get("time/train_s", float("nan"))), hardware(device, threads))

    @classmethod
    def load(cls, sequences_dir: Path, events_dir: Path, fold: int) -> TrainingInputs:
        manifest = json.loads((sequences_dir / MANIFEST_FILE).read_text()) if (sequences_dir / MANIFEST_FILE).exists() else {}
        rules = TableRules.of(manifest)
        labelled = (scan_sequences(sequences_dir / SEQUENCES_FILE).select(S.CUSTOMER_ID, S.LABEL)
                    .filter(pl.col(S.LABEL).is_not_null()).sort(S.CUSTOMER_ID).collect())
        return cls(
            sequences_dir=sequences_dir,
            events=read_events(Path(events_dir)),
            split=Split.load(sequences_dir / SPLIT_FILE),
            fold=fold,
            vocab=Vocab.load(sequences_dir / VOCAB_FILE),
            rules=rules,
            manifest_sha256=_sha256(sequences_dir / MANIFEST_FILE),
            labels=dict(zip(labelled[S.CUSTOMER_ID].to_list(), labelled[S.LABEL].to_list(), strict=True)),
            counts=TableCounts.of(manifest.get("counts", {})),
        )


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _peak(history: Sequence[dict[str, float]], key: str) -> float:
    values = [h[key] for h in history if key in h]
    return max(values) if values else float("nan")


@dataclass
class TrainedModel:
    """What training one model gives the comparison: the report row, the params to log, the pyfunc's config.json
    content and files, plots, per-step curves to log and the tags of its registered version."""

    row: ModelResult
    params: dict
    config: dict
    files: dict[str, Path]
    plots: list[Path] = field(default_factory=list)
    version_tags: dict[str, str] = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)  # metric key -> value per step
    per_step: frozenset[str] = frozenset()  # metrics already logged step by step (by `fit`)


@dataclass(frozen=True)
class TrainContext:
    """Where one model trains: its MLflow run, the run folder (checkpoints, artifacts), its fingerprint."""

    tracker: Tracker
    run_id: str
    run_dir: Path
    fingerprint: dict[str, str]
    workers: int = 0  # DataLoader workers


class Trainer(Protocol):
    """One kind of model. `model_config` defines it (part of its fingerprint); `train` fits, tests and saves it."""

    name: str

    def model_config(self, inputs: TrainingInputs, preset: RunPreset) -> dict: ...

    def train(self, inputs: TrainingInputs, preset: RunPreset, context: TrainContext) -> TrainedModel: ...


@dataclass(frozen=True)
class EncoderTrainer:
    """A sequence encoder with a classification head, from scratch or (`init_uri`) fine-tuned from a CoLES
    pretrained encoder; every rank of a torchrun job fits it (`fit_model`)."""

    encoder: str
    init_uri: str | None = None

    @property
    def name(self) -> str:
        return f"{self.encoder}_coles" if self.init_uri is not None else self.encoder

    def model_config(self, inputs: TrainingInputs, preset: RunPreset) -> dict:
        if self.init_uri is not None:  # defined by the pretrained model; the head starts as its linear probe
            return {"init_from": self.init_uri, "head": "probe_then_fine_tune",
                    "fine_tuned_share": FINE_TUNED_SHARE}
        return ModelConfig(n_mcc=inputs.vocab.size_mcc, n_tr_type=inputs.vocab.size_tr_type,
                           **preset.model_kwargs(self.encoder)).to_dict()

    def _init(self, inputs: TrainingInputs) -> tuple[ModelConfig, dict] | None:
        return _load_init(self.init_uri, inputs) if self.init_uri is not None else None

    def fit_model(self, inputs: TrainingInputs, preset: RunPreset, run_dir: Path, fingerprint: dict[str, str],
                  workers: int = 0) -> None:
        """`fit` only (a torchrun rank other than 0: no evaluation, tracking or artifacts)."""
        _fit_encoder(self.name, inputs, preset, _encoder_datasets(inputs.sequences_dir, inputs), None, run_dir,
                     fingerprint, workers, self._init(inputs))

    def train(self, inputs: TrainingInputs, preset: RunPreset, context: TrainContext) -> TrainedModel:
        trained = _train_encoder(self.name, inputs, preset, _encoder_datasets(inputs.sequences_dir, inputs),
                                 context.tracker, context.run_id, context.run_dir, context.fingerprint,
                                 context.workers, self._init(inputs))
        if self.init_uri is not None:
            trained.params["init_from"] = self.init_uri
        return trained


@dataclass(frozen=True)
class GBDTTrainer:
    """Gradient boosting on per-customer aggregates (`pipeline.sequences.features`)."""

    name: str = "gbdt"

    def model_config(self, inputs: TrainingInputs, preset: RunPreset) -> dict:
        return asdict(preset.gbdt)

    def train(self, inputs: TrainingInputs, preset: RunPreset, context: TrainContext) -> TrainedModel:
        return _train_gbdt(inputs, preset, context.run_id, context.run_dir)


@dataclass(frozen=True)
class HybridTrainer:
    """The GBDT on aggregates blended with a linear probe of the frozen CoLES embedding (`pipeline.scoring.hybrid`)."""

    encoder: str
    init_uri: str

    @property
    def name(self) -> str:
        return f"hybrid_{self.encoder}"

    def model_config(self, inputs: TrainingInputs, preset: RunPreset) -> dict:
        return {"init_from": self.init_uri, "hybrid": "gbdt_probe_blend", **asdict(preset.gbdt)}

    def train(self, inputs: TrainingInputs, preset: RunPreset, context: TrainContext) -> TrainedModel:
        return _train_hybrid(self.name, inputs, preset, self.init_uri, context.run_id, context.run_dir)


def trainer_for(name: str, pretrained: dict[str, str]) -> Trainer:
    """The trainer of model `name` (`pretrained`: encoder -> URI of its CoLES-pretrained model)."""
    kind, encoder = model_kind(name)
    if kind in ("coles", "hybrid") and encoder not in pretrained:
        raise ValueError(f"model {name!r} needs a pretrained {encoder} encoder: pass --init-from models:/... "
                         f"(given: {sorted(pretrained) or 'none'})")
    if kind == "gbdt":
        return GBDTTrainer()
    if kind == "hybrid":
        return HybridTrainer(encoder, pretrained[encoder])
    return EncoderTrainer(encoder, pretrained[encoder] if kind == "coles" else None)


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


def canonical_model_name(name: str) -> str:
    """A model name as the registry and reports spell it (encoder aliases resolved)."""
    kind, encoder = model_kind(name)
    return {"gbdt": "gbdt", "encoder": encoder, "coles": f"{encoder}_coles", "hybrid": f"hybrid_{encoder}"}[kind]


def _encoder_datasets(sequences_dir: Path, data: TrainingInputs) -> dict:
    seq_path = sequences_dir / SEQUENCES_FILE
    train_ids, val_ids, test_ids = data.ids
    datasets = {"train": SequenceDataset(seq_path, train_ids), "val": SequenceDataset(seq_path, val_ids),
                "test": SequenceDataset(seq_path, test_ids)}
    datasets["stats"] = numeric_stats(datasets["train"])
    return datasets


def _fit_encoder(name: str, data: TrainingInputs, preset: RunPreset, datasets: dict, logger: MetricLogger | None,
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
    tc = preset.train if init is None else fine_tune(preset.train)  # linear probe, then a gentler fine-tune

    def run_fit() -> FitResult:
        return fit(
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

    result = run_fit() if init is None else probe_then_fine_tune(model, train_ds, val_ds, preset.eval_batch_size, tc,
                                                                 run_fit, logger)
    return model, cfg, result


def probe_then_fine_tune(model: torch.nn.Module, train_ds: SequenceDataset, val_ds: SequenceDataset,
                         eval_batch_size: int, config: TrainConfig, run_fit: Callable[[], FitResult],
                         logger: MetricLogger | None = None) -> FitResult:
    """A pretrained encoder under a new head: the head starts as the linear probe of the frozen embedding of the
    training customers (`embeddings.probe_head`, L2 strength chosen by cross-validation), then `run_fit` fine-tunes
    the whole model from there. The probe alone competes with the fine-tuned model's best evaluation on validation
    ROC AUC and is kept when at least as good (`best_step` 0): on a few hundred labels fine-tuning often only
    overfits what the probe already reads, with thousands it moves the features. Otherwise the model ends as the
    average of the probe's and the fine-tuned weights (`weight_average`, α = `FINE_TUNED_SHARE`), whose validation
    ROC AUC the result reports."""
    from pipeline.scoring.embeddings import probe_head

    device = distributed.device_for(resolve_device(config.device), distributed.current())

    def val_auroc() -> float:
        val = evaluate(model, make_loader(val_ds, batch_size=eval_batch_size), device, config.precision)
        return float(classification_metrics(val["label"], val["prob"])["auroc"])

    probe = probe_head(model, train_ds, eval_batch_size, config.seed, device)
    probe_auc = val_auroc()
    if logger is not None:
        logger.log({"val/probe_auroc": probe_auc, "train/probe_c": probe.c}, step=0)
    probe_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = run_fit()
    if probe_auc >= result.best_val_auroc or not np.isfinite(result.best_val_auroc):
        model.load_state_dict(probe_state)
        return replace(result, best_step=0, best_val_auroc=probe_auc)
    model.load_state_dict(weight_average(model, probe_state, model.state_dict(), FINE_TUNED_SHARE))
    averaged_auc = val_auroc()
    if logger is not None:
        logger.log({"val/averaged_auroc": averaged_auc}, step=result.best_step)
    return replace(result, best_val_auroc=averaged_auc)


FINE_TUNED_SHARE = 0.5  # α of `weight_average` in `probe_then_fine_tune` (WiSE-FT's default)


def weight_average(model: torch.nn.Module, start: dict[str, torch.Tensor], end: dict[str, torch.Tensor],
                   alpha: float) -> dict[str, torch.Tensor]:
    """(1 − α)·start + α·end for each floating-point parameter of `model`; buffers (numeric statistics, a
    Performer's random features, counters) are `end`'s. WiSE-FT (Wortsman et al., CVPR 2022): the linear probe of the
    pretrained encoder and the model fine-tuned from it lie in one basin, and their average keeps what fine-tuning
    learned while undoing part of what it overfitted. On a few hundred labels the fine-tuned checkpoint is the best of
    up to twenty evaluations on some sixty validation customers, so its validation AUC flatters it (measured:
    docs/readme/training.md, "<encoder>_coles")."""
    params = {name for name, _ in model.named_parameters()}
    return {k: torch.lerp(start[k], v, alpha) if k in params and v.is_floating_point() else v for k, v in end.items()}


def _load_init(uri: str, data: TrainingInputs) -> tuple[ModelConfig, dict]:
    from pipeline.training.pretrain import load_pretrained

    cfg, state, _ = load_pretrained(uri, data.vocab)
    return cfg, state


def _train_encoder(name: str, data: TrainingInputs, preset: RunPreset, datasets: dict, tracker: Tracker, run_id: str,
                   run_dir: Path, fingerprint: dict[str, str], workers: int = 0,
                   init: tuple[ModelConfig, dict] | None = None) -> TrainedModel:
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
                                            data.rules.ingest, preset.eval_batch_size, scoring.decision,
                                            scoring.reference, label=data.rules.label)
    params = {"model": cfg.to_dict(), "train": result.config, "batch_size": preset.batch_size,
              "crop_len": preset.crop_len, "device": result.device, **scoring.tags()}
    if result.resumed_from_step is not None:  # continued from the checkpoint of an interrupted run
        params["resumed_from_step"] = result.resumed_from_step
    row = ModelResult(name, metrics, result.steps_run, run_id, roc=roc_points(test["label"], test["prob"]))
    return TrainedModel(row, params, config, files, [art / "training_curve.png"], scoring.tags(), per_step=PER_EPOCH)


def _train_gbdt(data: TrainingInputs, preset: RunPreset, run_id: str, run_dir: Path) -> TrainedModel:
    labels = pl.DataFrame({S.CUSTOMER_ID: list(data.labels), S.LABEL: list(data.labels.values())},
                          schema={S.CUSTOMER_ID: pl.Int64, S.LABEL: pl.Int8})
    run = train_gbdt(data.events, labels, data.ids, preset.gbdt)
    scoring = fit_scoring_card(data.events, data.ids[0], run.val_label, run.val_prob, run.test_prob,
                          ThresholdRule.parse(preset.threshold_rule))
    art = run_dir / "models" / "gbdt"
    config, files = save_gbdt_artifacts(art / "pyfunc", run.model, run.spec, data.rules.ingest, scoring.decision,
                                        scoring.reference, label=data.rules.label)
    metrics = {**run.metrics, **decision_metrics(scoring.decision, run.test_label, run.test_prob)}
    row = ModelResult("gbdt", metrics, None, run_id, roc=roc_points(run.test_label, run.test_prob))
    return TrainedModel(row, {"gbdt": asdict(preset.gbdt), **scoring.tags()}, config, files, [], scoring.tags(),
                        curves={"gbdt/val_auroc_per_round": list(run.val_auroc_per_round)})


def _train_hybrid(name: str, data: TrainingInputs, preset: RunPreset, init_uri: str, run_id: str,
                  run_dir: Path) -> TrainedModel:
    """The GBDT on aggregates blended with a linear probe of the frozen CoLES embedding (`pipeline.scoring.hybrid`);
    registered as its own pyfunc."""
    from pipeline.scoring.embeddings import embed, embedding_frame, save_hybrid_artifacts
    from pipeline.scoring.hybrid import fit_hybrid
    from pipeline.training.pretrain import load_pretrained

    _, _, embedder = load_pretrained(init_uri, data.vocab)
    labels = (pl.read_parquet(data.sequences_dir / SEQUENCES_FILE, columns=[S.CUSTOMER_ID, S.LABEL])
              .filter(pl.col(S.LABEL).is_not_null()))
    ids = [i for part in data.ids for i in part]
    t0 = time.perf_counter()
    emb = embedding_frame(*embed(embedder.model, SequenceDataset(data.sequences_dir / SEQUENCES_FILE, ids),
                                 preset.eval_batch_size))
    embed_s = time.perf_counter() - t0
    run = fit_hybrid(data.events, labels, data.ids, preset.gbdt, emb)
    run.metrics["time/train_s"] += embed_s
    scoring = fit_scoring_card(data.events, data.ids[0], run.val_label, run.val_prob, run.test_prob,
                               ThresholdRule.parse(preset.threshold_rule))
    art = run_dir / "models" / name
    config, files = save_hybrid_artifacts(art / "pyfunc", run.gbdt.model, run.gbdt.spec, embedder, scoring.decision,
                                          scoring.reference, run.probe, run.weight, pretrained=init_uri)
    metrics = {**run.metrics, **decision_metrics(scoring.decision, run.test_label, run.test_prob)}
    row = ModelResult(name, metrics, None, run_id, roc=roc_points(run.test_label, run.test_prob))
    params = {"gbdt": asdict(preset.gbdt), "init_from": init_uri, "hybrid.blend_weight": run.weight,
              "hybrid.probe_c": run.probe.c, **scoring.tags()}
    return TrainedModel(row, params, config, files, [], scoring.tags(),
                        curves={"gbdt/val_auroc_per_round": list(run.gbdt.val_auroc_per_round)})
