"""Self-supervised CoLES pretraining of any encoder on every non-test customer with transactions, labelled or not.

    sequences.parquet ─ all customers but the split's test ids ─▶ 90% fit / 10% held out (seeded)
    fit:      batch of 128 customers ─SliceCollate─▶ 5 random windows of 15–75 events each ─model.embed─▶ L2-normalise
              ─▶ contrastive loss (margin 0.5, 5 hard negatives) ─▶ Adam 2e-3
    held out: the same slices (fixed seed) ─▶ recall@(slices-1): does a slice find its own customer's other slices?

The recipe is pytorch-lifestream's (CoLES). Loss, held-out recall@k, time and throughput go to the logger once per
epoch; the weights of the epoch with the best held-out recall are kept. `pretrain_customers` lists the customers a
pretraining run may see: never a test customer, so that a later test score stays honest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from models import ModelConfig, build_model, canonical_encoder_name
from models.classifier import SequenceClassifier
from models.coles import contrastive_loss, recall_at_k
from pipeline import schema as S
from pipeline.sequences.batches import SequenceDataset, make_slice_loader, numeric_stats
from pipeline.scoring.embeddings import save_embedding_artifacts
from pipeline.metrics import MemoryMonitor, Stopwatch, pyplot
from pipeline.training.presets import RunPreset
from pipeline.scoring.pyfunc import embedding_signature, log_model
from pipeline.sequences.table import MANIFEST_FILE, SEQUENCES_FILE, SPLIT_FILE, VOCAB_FILE, TableRules, Vocab
from pipeline.settings import Settings
from pipeline.sequences.splits import Split
from pipeline.registry.tracking import TAG_SPLIT_ID, process_tags, setup
from pipeline.training.train import MetricLogger, resolve_device, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """The CoLES recipe (pytorch-lifestream's) and its budget in optimiser steps: `steps`, or when 0, `passes`
    passes over the customers, never fewer than `min_steps` nor more than `max_steps`. The budget is split into
    `epochs` rounds: after each, held-out recall is measured and logged and the best round's weights are kept.
    Why 100 passes and a 2,000-step floor: on 2,250 generated customers, 2,000 steps instead of 600 lifted the
    fine-tuned Transformer at 300 labels from 0.774 to 0.798 test ROC AUC (3 seeds; held-out recall 0.618 → 0.637;
    `bench/bench_quality.py`); ptls trains CoLES for 100+ epochs. A small export pays minutes of CPU once per
    encoder; a large one is capped by `max_steps`."""

    epochs: int = 10  # evaluation rounds the step budget is split into
    steps: int = 0  # optimiser-step budget; 0 = sized from the customers (`budget_steps`)
    passes: int = 100
    min_steps: int = 2_000
    max_steps: int = 20_000
    batch_size: int = 128  # customers per batch (each gives n_slices rows)
    lr: float = 2e-3
    weight_decay: float = 0.0
    n_slices: int = 5
    min_len: int = 15
    max_len: int = 75
    margin: float = 0.5
    n_negatives: int = 5
    heldout_fraction: float = 0.1  # customers kept out of training to measure recall@k
    grad_clip: float = 1.0
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.steps < 0 or not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"epochs must be >= 1, steps >= 0 and 1 <= min_steps <= max_steps, got {self.epochs}, "
                             f"{self.steps}, {self.min_steps}, {self.max_steps}")

    def budget_steps(self, n_customers: int) -> int:
        """Optimiser steps for `n_customers` training customers: `steps`, or `passes` passes clamped to
        [min_steps, max_steps]."""
        if self.steps:
            return self.steps
        per_pass = max(1, -(-n_customers // self.batch_size))
        return int(min(self.max_steps, max(self.min_steps, self.passes * per_pass)))


@dataclass
class PretrainResult:
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int = -1
    best_recall: float = -math.inf
    train_s: float = 0.0
    n_fit: int = 0
    n_heldout: int = 0
    config: dict = field(default_factory=dict)


def pretrain_customers(sequences_dir: Path) -> list[int]:
    """Every customer of the sequences table with at least one event, except the split's test customers."""
    test = Split.load(Path(sequences_dir) / SPLIT_FILE).test_ids
    ids = (pl.scan_parquet(Path(sequences_dir) / SEQUENCES_FILE)
           .filter((pl.col(S.SEQ_LENGTH) > 0) & ~pl.col(S.CUSTOMER_ID).is_in(pl.Series(test, dtype=pl.Int64)))
           .select(S.CUSTOMER_ID).collect()[S.CUSTOMER_ID])
    return sorted(int(i) for i in ids)


def _heldout_split(ids: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    ids = np.asarray(sorted(ids), dtype=np.int64)
    n_out = int(round(fraction * len(ids)))
    n_out = min(max(n_out, 2), len(ids) - 2) if len(ids) >= 4 else 0
    perm = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[perm[n_out:]].tolist()), sorted(ids[perm[:n_out]].tolist())


@torch.no_grad()
def heldout_recall(model: SequenceClassifier, dataset: SequenceDataset, config: PretrainConfig,
                   device: torch.device) -> float:
    """Mean recall@(n_slices-1) over batches of held-out customers, the same slices every time (seeded)."""
    model.eval()
    values, weights = [], []
    loader = make_slice_loader(dataset, config.batch_size, config.n_slices, config.min_len, config.max_len,
                               shuffle=False, seed=config.seed + 1)
    for batch in loader:
        if batch.size < 2 * config.n_slices:  # a lone customer: nothing to retrieve against
            continue
        z = F.normalize(model.embed(batch.to(device))[0].float(), dim=1)
        values.append(float(recall_at_k(z, batch.customer_id.to(device), config.n_slices - 1)))
        weights.append(batch.size)
    return float(np.average(values, weights=weights)) if values else float("nan")


def pretrain(model: SequenceClassifier, sequences: str | Path | pl.DataFrame, customer_ids: Sequence[int],
             config: PretrainConfig, logger: MetricLogger | None = None) -> PretrainResult:
    """CoLES-train `model`'s embedding + encoder in place on `customer_ids` (its head is not used).

    On return the model holds the weights of the epoch with the best held-out recall@k."""
    device = resolve_device(config.device)
    seed_everything(config.seed)
    model.to(device)
    fit_ids, held_ids = _heldout_split(customer_ids, config.heldout_fraction, config.seed)
    fit_ds = SequenceDataset(sequences, fit_ids)
    held_ds = SequenceDataset(sequences, held_ids) if held_ids else None
    if len(fit_ds) < 2:
        raise ValueError(f"CoLES needs at least 2 customers with transactions to contrast, got {len(fit_ds)}")
    params = [p for name, p in model.named_parameters() if not name.startswith(("head.", "cls_token"))]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    result = PretrainResult(n_fit=len(fit_ds), n_heldout=len(held_ids), config=asdict(config))
    memory = MemoryMonitor(device)
    total = config.budget_steps(len(fit_ds))
    rounds = min(config.epochs, total)
    best, best_score, pass_no, batches = None, -math.inf, 0, iter(())
    for epoch in range(rounds):
        model.train()
        memory.reset()
        loss_sum, n_steps, n_events = 0.0, 0, 0
        round_steps = total * (epoch + 1) // rounds - total * epoch // rounds
        with Stopwatch(sync_cuda=device.type == "cuda") as sw:
            while n_steps < round_steps:
                batch = next(batches, None)
                if batch is None:  # the pass is over (or none started): a new one, fresh order and slices
                    batches = iter(make_slice_loader(fit_ds, config.batch_size, config.n_slices, config.min_len,
                                                     config.max_len, shuffle=True,
                                                     seed=config.seed * 100_003 + pass_no,
                                                     drop_last=len(fit_ds) > config.batch_size))
                    pass_no += 1
                    continue
                n_events += batch.n_events
                batch = batch.to(device)
                pooled, aux = model.embed(batch)
                z = F.normalize(pooled.float(), dim=1)
                loss = contrastive_loss(z, batch.customer_id, config.margin, config.n_negatives) + aux.float()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                loss_sum += float(loss.detach())
                n_steps += 1
        recall = heldout_recall(model, held_ds, config, device) if held_ds is not None else float("nan")
        metrics = {"pretrain/loss": loss_sum / max(n_steps, 1), f"pretrain/recall_at_{config.n_slices - 1}": recall,
                   "pretrain/steps": float(n_steps), "time/epoch_s": sw.seconds,
                   "throughput/train_events_per_s": n_events / max(sw.seconds, 1e-9), **memory.read()}
        result.history.append({"epoch": float(epoch), **metrics})
        result.train_s += sw.seconds
        if logger is not None:
            logger.log(metrics, step=epoch)
        log.info("pretrain epoch %d  loss %.4f  held-out recall@%d %.4f  %.1f s  %.0f events/s", epoch,
                 metrics["pretrain/loss"], config.n_slices - 1, recall, sw.seconds,
                 metrics["throughput/train_events_per_s"])
        score = recall if math.isfinite(recall) else -metrics["pretrain/loss"]  # no held-out customers: the loss
        if best is None or score > best_score:
            best_score, result.best_recall, result.best_epoch = score, recall, epoch
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best)
    return result


@dataclass
class PretrainRun:
    """A finished pretraining: its MLflow run, the registered model's URI (None when not registered), the result."""

    encoder: str
    run_id: str
    model_uri: str | None
    result: PretrainResult
    n_customers: int
    customers_sha256: str


def customers_digest(ids: Sequence[int]) -> str:
    """sha256 of the sorted customer ids, one per line: names the set a pretrained encoder saw."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(ids)).encode()).hexdigest()


def pretrained_name(registered_model: str, encoder: str) -> str:
    """Registry name of the CoLES-pretrained `encoder` that belongs to `registered_model`."""
    return f"{registered_model}-coles-{encoder}"


def run_pretraining(sequences_dir: Path, events_dir: Path, encoder: str, preset: RunPreset,
                    config: PretrainConfig = PretrainConfig(), *, settings: Settings,
                    register: bool = True, experiment: str = "txseq") -> PretrainRun:
    """Pretrain `encoder` (architecture from `preset`) with CoLES on every non-test customer, log to MLflow, and
    register it as `<registered model>-coles-<encoder>`: a pyfunc from raw transactions to embeddings whose
    version tags and `customers.json` artifact record the customers it saw (the split's test customers never)."""
    tracker = setup(settings, experiment)
    sequences_dir, encoder = Path(sequences_dir), canonical_encoder_name(encoder)
    split = Split.load(sequences_dir / SPLIT_FILE)
    vocab = Vocab.load(sequences_dir / VOCAB_FILE)
    manifest = json.loads((sequences_dir / MANIFEST_FILE).read_text()) if (sequences_dir / MANIFEST_FILE).exists() else {}
    rules = TableRules.of(manifest)
    seq_cfg = rules.sequence
    ids = pretrain_customers(sequences_dir)
    assert not set(ids) & set(split.test_ids), "a test customer reached pretraining"
    seq_path = sequences_dir / SEQUENCES_FILE
    cfg = ModelConfig(n_mcc=vocab.size_mcc, n_tr_type=vocab.size_tr_type, **preset.model_kwargs(encoder))
    torch.manual_seed(config.seed)
    model = build_model(cfg)
    model.embedding.set_numeric_stats(*numeric_stats(seq_path, ids))
    digest = customers_digest(ids)
    tags = {"txseq.kind": "pretrain", "txseq.model": encoder, **process_tags()}
    with tracker.run(f"pretrain-{encoder}", tags=tags) as run_id:
        tracker.log_params(run_id, {"pretrain": asdict(config), "model": cfg.to_dict(), "preset": preset.name,
                                    "split_id": split.split_id, "data.n_customers": len(ids),
                                    "data.customers_sha256": digest})
        result = pretrain(model, seq_path, ids, config, tracker.logger(run_id))
        out = settings.runs_dir / f"pretrain-{encoder}-{run_id[:8]}"
        customers = out / "customers.json"
        customers.parent.mkdir(parents=True, exist_ok=True)
        customers.write_text(json.dumps({"split_id": split.split_id, "n": len(ids), "sha256": digest,
                                         "customer_ids": ids}))
        curve = _plot_pretraining(result, out / "pretraining.png", encoder)
        for path in (customers, curve):
            tracker.log_artifact(run_id, path, "files")
        tracker.log_metrics(run_id, {"pretrain/best_recall": result.best_recall, "time/train_s": result.train_s},
                            step=max(result.best_epoch, 0))
        uri = None
        if register:
            config_json, files = save_embedding_artifacts(out / "pyfunc", model.cpu(), cfg, vocab, seq_cfg,
                                                          rules.ingest, preset.eval_batch_size,
                                                          split_id=split.split_id, customers_sha256=digest)
            name = pretrained_name(settings.registered_model, encoder)
            version = log_model(
                tracker, run_id, artifacts_dir=out / "pyfunc", config=config_json, files=files, registered_model=name,
                version_tags={"kind": "coles", "encoder": encoder, TAG_SPLIT_ID: split.split_id,
                              "n_customers": str(len(ids)), "customers_sha256": digest, "run_id": run_id,
                              "test_customers_seen": "0"},
                model_signature=embedding_signature(cfg.d_model, rules.ingest.source),
            )
            uri = f"models:/{name}/{version.version}"
    return PretrainRun(encoder, run_id, uri, result, len(ids), digest)


def _plot_pretraining(result: PretrainResult, path: Path, title: str) -> Path:
    plt = pyplot()
    epochs = [h["epoch"] for h in result.history]
    fig, ax1 = plt.subplots(figsize=(5.5, 3.5))
    ax1.plot(epochs, [h["pretrain/loss"] for h in result.history], "o-", c="tab:blue")
    ax1.set(xlabel="epoch", ylabel="contrastive loss", title=f"CoLES pretraining: {title}")
    ax2 = ax1.twinx()
    key = next((k for k in result.history[0] if k.startswith("pretrain/recall_at_")), None) if result.history else None
    if key:
        ax2.plot(epochs, [h[key] for h in result.history], "s-", c="tab:orange")
        ax2.set_ylabel(f"held-out {key.split('/')[1]}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def load_pretrained(model_uri: str, vocab: Vocab | None = None) -> tuple[ModelConfig, dict[str, torch.Tensor], Any]:
    """(model config, state dict, EmbeddingScorer) of a registered pretrained encoder; with `vocab`, refuses one
    whose vocabulary differs (its codes would mean other MCCs)."""
    from pipeline.scoring.embeddings import EmbeddingScorer
    from pipeline.scoring.pyfunc import load_batch_scorer

    scorer, _ = load_batch_scorer(model_uri)
    if not isinstance(scorer, EmbeddingScorer):
        raise ValueError(f"{model_uri} is not a pretrained encoder (txseq pretrain registers those)")
    if vocab is not None and (dict(scorer.vocab.mcc), dict(scorer.vocab.tr_type)) != (dict(vocab.mcc),
                                                                                        dict(vocab.tr_type)):
        raise ValueError(f"{model_uri} was pretrained with another vocabulary than this sequences folder's: "
                         "pretrain on the same `txseq sequences` output")
    return scorer.model_config, {k: v.detach().clone() for k, v in scorer.model.state_dict().items()}, scorer
