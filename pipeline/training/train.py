"""One trainer for every encoder: `fit` (train for a budget of optimiser steps, validate every `eval_every` steps,
early stopping, checkpoint/resume) and `evaluate`.

    model(batch) -> ClassifierOutput(logit (B,), aux_loss ())
    loss = BCEWithLogits(logit, label, pos_weight) + aux_loss    (aux_loss: EAM's balancing loss, weighted in the model)
    AdamW, linear warm-up then cosine decay per step, gradient clipping, bf16 autocast on CUDA (fp16 + GradScaler
    as an option), early stopping on validation ROC AUC counted in evaluations.

The budget is steps, not epochs: 300 labelled customers are ~10 batches a pass, 300,000 are ~5,000, and a recipe in
epochs gives the first a dozen updates and the second far too many. Training batches come from
`train_batches(epoch)`, a function that builds one pass's loader with its own seed (shuffle order and random crops
depend only on (seed, epoch)); `fit` starts the next pass whenever one runs out. Every evaluation ends with an
atomic checkpoint `last.pt` (model, optimiser, scheduler, scaler, RNG states, step, pass and position in it,
history, early-stopping state) and, on improvement, `best.pt`; `fit` resumes from `last.pt` when it exists and
replays the interrupted pass up to its position, so a resumed run ends exactly as an uninterrupted one. Checkpoints
are read with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.batch import Batch
from models.encoders.base import pop_stats
from pipeline.training import distributed
from pipeline.io import atomic_path
from pipeline.metrics import MemoryMonitor, Stopwatch, classification_metrics

log = logging.getLogger(__name__)
_RUNTIME_ONLY = frozenset({"progress", "device"})  # may differ between a run and its resumption


class MetricLogger(Protocol):
    """Where `fit` sends its per-epoch metrics (`pipeline.registry.tracking.MlflowLogger` in production)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe. The budget is counted in optimiser steps, not epochs, so a few hundred customers (a few
    batches per pass) and a few hundred thousand get the same number of updates; validation runs every
    `eval_every` steps and early stopping counts evaluations."""

    steps: int = 2000  # optimiser-step budget (the LR schedule spans all of it)
    eval_every: int = 100  # steps between validations, metric logs and checkpoints
    patience: int = 5  # evaluations without a better val ROC AUC before stopping
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05  # share of all steps spent warming up linearly
    min_lr_frac: float = 0.05  # cosine decays to lr * min_lr_frac
    grad_clip: float = 1.0
    pos_weight: float = 1.0  # weight of the positive class in the loss (n_negative / n_positive balances them)
    # Fine-tuning a pretrained backbone (embedding + encoder; everything but `head.`): train the head alone for the
    # first `head_only_steps` steps, then the backbone too, at `backbone_lr_scale` × the LR, warming up again
    # (linear-probe-then-fine-tune, Kumar et al. 2022: a fresh head's first large gradients do not wreck the
    # pretrained features). Defaults: one LR for all, from step 0 (training from scratch).
    head_only_steps: int = 0
    backbone_lr_scale: float = 1.0
    precision: str = "bf16"  # "bf16" | "fp16" (GradScaler) | "fp32"; CUDA only, CPU always runs fp32
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1 or self.patience < 1:
            raise ValueError(f"steps, eval_every and patience must be >= 1, got {self.steps}, {self.eval_every}, "
                             f"{self.patience}")
        if self.pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {self.pos_weight}")
        if self.head_only_steps < 0 or not 0.0 <= self.backbone_lr_scale <= 1.0:
            raise ValueError(f"head_only_steps must be >= 0 and backbone_lr_scale in [0, 1], got "
                             f"{self.head_only_steps}, {self.backbone_lr_scale}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def warmup_cosine(total_steps: int, warmup_frac: float, min_lr_frac: float) -> Callable[[int], float]:
    """LR multiplier: linear 0 -> 1 over the warm-up steps, then cosine 1 -> min_lr_frac at the last step."""
    warmup = max(1, int(round(warmup_frac * total_steps)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def backbone_schedule(base: Callable[[int], float], head_only_steps: int, warmup_steps: int, scale: float
                      ) -> Callable[[int], float]:
    """LR multiplier of the backbone: 0 while the head trains alone, then `scale` × `base`, ramped up linearly over
    `warmup_steps` from the step it is released (so the released backbone starts gently even mid-schedule)."""

    def factor(step: int) -> float:
        if step < head_only_steps:
            return 0.0
        ramp = min(1.0, (step - head_only_steps + 1) / max(1, warmup_steps)) if head_only_steps else 1.0
        return scale * ramp * base(step)

    return factor


def param_groups(model: torch.nn.Module) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(head, backbone) parameters: the classification head (`head.`) and everything that makes the embedding."""
    head, backbone = [], []
    for name, p in model.named_parameters():
        (head if name.startswith("head.") else backbone).append(p)
    return head, backbone


def _autocast(device: torch.device, precision: str):
    enabled = device.type == "cuda" and precision in {"bf16", "fp16"}
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, batches: Iterable[Batch], device: torch.device, precision: str = "bf16"
) -> dict[str, np.ndarray | float]:
    """Probabilities for every customer of `batches` (full length). Returns customer_id, label, prob, seconds."""
    model.eval()
    ids, labels, probs = [], [], []
    with Stopwatch(sync_cuda=device.type == "cuda") as sw:
        for batch in batches:
            batch = batch.to(device, non_blocking=True)
            with _autocast(device, precision):
                logit = model(batch).logit
            probs.append(torch.sigmoid(logit.float()).cpu())
            labels.append(batch.label.cpu())
            ids.append(batch.customer_id.cpu())
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.empty(0)  # noqa: E731
    return {"customer_id": cat(ids), "label": cat(labels), "prob": cat(probs), "seconds": sw.seconds}


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one row per evaluation: step, epoch (passes, fractional) + the logged metrics
    best_step: int
    best_val_auroc: float
    train_s: float
    steps_run: int
    stopped_early: bool
    n_parameters: int
    device: str
    config: dict = field(default_factory=dict)
    resumed_from_step: int | None = None  # the step of the checkpoint this run resumed from


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _save_atomic(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def _batches_from(train_batches: Callable[[int], Iterable[Batch]], epoch: int, skip: int) -> Iterator[Batch]:
    """Pass `epoch`'s batches from position `skip` on (the skipped ones are drawn, so the crops' RNG replays)."""
    it = iter(train_batches(epoch))
    for _ in range(skip):
        next(it, None)
    return it


def fingerprint_changes(recorded: Mapping[str, str] | None, current: Mapping[str, str] | None) -> str:
    """What differs between a checkpoint's fingerprint and the current one ("" when they match), e.g.
    "split_id 1a2b… -> 3c4d…". A checkpoint without a fingerprint matches only a run that passes none."""
    recorded, current = dict(recorded or {}), dict(current or {})
    if recorded == current:
        return ""
    if not recorded:
        return "the checkpoint records no fingerprint (written before fingerprints were recorded)"
    short = lambda v: "none" if v is None else (str(v)[:12] + "…" if len(str(v)) > 12 else str(v))  # noqa: E731
    return ", ".join(f"{k} {short(recorded.get(k))} -> {short(current.get(k))}"
                     for k in sorted(recorded.keys() | current.keys()) if recorded.get(k) != current.get(k))


def _move_aside(ckpt_dir: Path) -> Path:
    n = 1
    while (ckpt_dir / f"replaced-{n}").exists():
        n += 1
    aside = ckpt_dir / f"replaced-{n}"
    aside.mkdir()
    for name in ("last.pt", "best.pt"):
        if (ckpt_dir / name).exists():
            os.replace(ckpt_dir / name, aside / name)
    return aside


def fit(
    model: torch.nn.Module,
    train_batches: Callable[[int], Iterable[Batch]],
    val_batches: Callable[[], Iterable[Batch]],
    config: TrainConfig,
    logger: MetricLogger | None = None,
    checkpoint_dir: Path | None = None,
    fingerprint: Mapping[str, str] | None = None,
    name: str = "model",
) -> FitResult:
    """Train `config.steps` optimiser steps with early stopping on val ROC AUC (checked every `eval_every` steps);
    resume from `checkpoint_dir/last.pt` if present.

    `fingerprint` (what is trained: data, split, model config, preset; see `pipeline.training.run`) is stored in every
    checkpoint; a checkpoint with another fingerprint is not resumed: it is moved aside (`replaced-<n>/`) with a
    warning that names what changed, and training starts fresh. On return the model holds the best evaluation's
    weights. Metrics go to `logger.log(metrics, step=<step>)`; `name` labels the progress bar and the log line of each
    validation (logger `pipeline.training.train`, which the flows forward to Prefect).
    In a torchrun job (`pipeline.training.distributed`) every rank calls `fit` alike: each trains on its slice of the
    global batch under DDP, metrics are summed over the ranks (each rank's own under `rank<r>/`), and only rank 0 writes
    checkpoints and moves a mismatched one aside (pass a logger on rank 0 only).
    """
    ddp = distributed.current()
    device = distributed.device_for(resolve_device(config.device), ddp)
    seed_everything(config.seed)
    model.to(device)
    net = distributed.wrap(model, device, ddp)
    head, backbone = param_groups(model)
    opt = torch.optim.AdamW([{"params": head}, {"params": backbone}], lr=config.lr,
                            weight_decay=config.weight_decay)
    base = warmup_cosine(config.steps, config.warmup_frac, config.min_lr_frac)
    warmup = max(1, int(round(config.warmup_frac * config.steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [base, backbone_schedule(base, config.head_only_steps, warmup, config.backbone_lr_scale)])
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda" and config.precision == "fp16")
    pos_weight = torch.tensor(config.pos_weight, device=device)
    memory = MemoryMonitor(device)
    n_params = sum(p.numel() for p in model.parameters())
    state = {"step": 0, "epoch": 0, "in_epoch": 0, "history": [], "best_auroc": -math.inf, "best_step": -1,
             "bad_evals": 0, "train_s": 0.0, "done": False}

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    resumed_from = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt = load_checkpoint(ckpt_dir / "last.pt", device) if (ckpt_dir / "last.pt").exists() else None
        changed = fingerprint_changes(ckpt.get("fingerprint"), fingerprint) if ckpt is not None else ""
        distributed.barrier(ddp)  # every rank has read the checkpoint before rank 0 may move it
        if changed and ddp.is_main:
            aside = _move_aside(ckpt_dir)
            log.warning("not resuming %s: %s; starting fresh (old checkpoints moved to %s)",
                        ckpt_dir / "last.pt", changed, aside)
        distributed.barrier(ddp)  # no rank goes on before rank 0 has moved a mismatched one
        if ckpt is not None and not changed:
            saved = ckpt.get("config", {})
            defaults = asdict(TrainConfig())  # a field added since the checkpoint was written has its default there
            mismatch = {k for k, v in asdict(config).items()
                        if k not in _RUNTIME_ONLY and saved.get(k, defaults[k]) != v}
            if mismatch or "step" not in ckpt.get("state", {}):
                raise ValueError(f"{ckpt_dir / 'last.pt'} was written with other settings ({sorted(mismatch)}): "
                                 "resume with the same TrainConfig or use a new checkpoint folder")
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            if scaler.is_enabled():
                scaler.load_state_dict(ckpt["scaler"])
            _set_rng_state(ckpt["rng"])
            state = ckpt["state"]
            resumed_from = state["step"]
            log.info("resumed from %s at step %d", ckpt_dir / "last.pt", state["step"])
            if logger is not None:  # the evaluations run before the interruption, so the new run's curves are whole
                for row in state["history"]:
                    logger.log({k: v for k, v in row.items() if k not in ("step", "epoch")}, step=int(row["step"]))

    best_weights = None
    pass_len = _len(train_batches, 0)
    batches = _batches_from(train_batches, state["epoch"], state["in_epoch"])
    pop_stats(model)  # discard what the model's stat-reporting modules counted before this fit
    while state["step"] < config.steps and not state["done"]:
        net.train()
        memory.reset()
        round_steps = min(config.eval_every, config.steps - state["step"])
        loss_sum, n_steps, n_events, n_customers = torch.zeros((), device=device), 0, 0, 0
        bar = tqdm(total=round_steps, desc=f"{name} step {state['step']}/{config.steps}", leave=False,
                   disable=not config.progress)
        with Stopwatch(sync_cuda=device.type == "cuda") as sw:
            while n_steps < round_steps:
                global_batch = next(batches, None)
                if global_batch is None:  # this pass is over: start the next one
                    if state["in_epoch"] == 0:
                        raise ValueError("train_batches yielded no batch: nothing to train on")
                    state["epoch"] += 1
                    state["in_epoch"] = 0
                    batches = _batches_from(train_batches, state["epoch"], 0)
                    continue
                state["in_epoch"] += 1
                batch, weight = distributed.shard(global_batch, ddp)
                n_events += batch.n_events  # counted on the host copy: no device sync
                n_customers += batch.size
                batch = batch.to(device, non_blocking=True)
                with _autocast(device, config.precision):
                    out = net(batch)
                    loss = F.binary_cross_entropy_with_logits(out.logit.float(), batch.label.float(),
                                                              pos_weight=pos_weight)
                    loss = loss + out.aux_loss.float()
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss * weight).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                loss_sum += loss.detach() * (weight / ddp.world_size)
                n_steps += 1
                bar.update(1)
                if config.progress and (n_steps % 10 == 0 or n_steps == round_steps):
                    elapsed = max(bar.format_dict["elapsed"], 1e-9)
                    bar.set_postfix(loss=f"{float(loss_sum) / n_steps:.4f}", ev_s=f"{n_events / elapsed:,.0f}")
        bar.close()
        state["step"] += n_steps
        train_mem = memory.read()
        own = {"time/round_s": sw.seconds, "steps": float(n_steps),
               "throughput/train_events_per_s": n_events / max(sw.seconds, 1e-9), **train_mem}
        per_rank = distributed.gather(own, ddp)
        loss_total, n_events, n_customers = distributed.all_reduce_sum([loss_sum, n_events, n_customers], ddp)
        model_stats = pop_stats(model)  # e.g. SwitchHead's expert usage over this round's training steps
        val = evaluate(model, val_batches(), device, config.precision)
        q = classification_metrics(val["label"], val["prob"])
        metrics = {
            "train/loss": loss_total / max(n_steps, 1),
            "train/lr": sched.get_last_lr()[0],
            "train/epoch": state["epoch"] + state["in_epoch"] / max(pass_len, 1),
            "val/auroc": q["auroc"],
            "val/accuracy": q["accuracy"],
            "val/logloss": q["logloss"],
            "time/round_s": sw.seconds,
            "throughput/train_events_per_s": n_events / max(sw.seconds, 1e-9),
            "throughput/train_customers_per_s": n_customers / max(sw.seconds, 1e-9),
            **train_mem,
            **per_rank,
            **model_stats,
        }
        step = state["step"]
        state["train_s"] += sw.seconds
        state["history"].append({"step": float(step), "epoch": metrics["train/epoch"], **metrics})
        if logger is not None:
            logger.log(metrics, step=step)
        log.info("%s: step %d/%d (pass %.1f)  loss %.4f  val auroc %.4f  %.1f s  %.0f events/s", name, step,
                 config.steps, metrics["train/epoch"], metrics["train/loss"], q["auroc"], sw.seconds,
                 metrics["throughput/train_events_per_s"])

        improved = q["auroc"] > state["best_auroc"] or state["best_step"] < 0
        if improved:
            state.update(best_auroc=q["auroc"], best_step=step, bad_evals=0)
            best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            state["bad_evals"] += 1
        state["done"] = state["bad_evals"] >= config.patience
        if ckpt_dir is not None and ddp.is_main:
            if improved:
                _save_atomic({"model": best_weights, "step": step}, ckpt_dir / "best.pt")
            _save_atomic(
                {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": scaler.state_dict(), "rng": _rng_state(), "state": state, "config": asdict(config),
                 "fingerprint": dict(fingerprint or {})},
                ckpt_dir / "last.pt",
            )

    if best_weights is None and ckpt_dir is not None and (ckpt_dir / "best.pt").exists():
        best_weights = load_checkpoint(ckpt_dir / "best.pt", device)["model"]
    if best_weights is not None:
        model.load_state_dict(best_weights)
    return FitResult(
        history=state["history"], best_step=state["best_step"], best_val_auroc=float(state["best_auroc"]),
        train_s=state["train_s"], steps_run=state["step"], stopped_early=state["done"],
        n_parameters=n_params, device=str(device), config=asdict(config), resumed_from_step=resumed_from,
    )


def _len(train_batches: Callable[[int], Iterable[Batch]], epoch: int) -> int:
    """Batches in one pass (0 when the iterable has no length)."""
    try:
        return len(train_batches(epoch))  # type: ignore[arg-type]
    except TypeError:
        return 0
