"""Quality metrics, timers and peak-memory probes shared by the trainer, the GBDT baseline and the report.

Quality: `classification_metrics(y, p)` -> ROC AUC, accuracy (threshold 0.5), log-loss; `roc_points` for the curve.
Cost: `Stopwatch` (wall time), `MemoryMonitor` (CUDA max allocated / max reserved, reset per epoch, and the process
peak RSS, reset per epoch where Linux allows it). Plots go to PNG files with the Agg backend.

>>> classification_metrics(np.array([0, 1, 1, 0]), np.array([0.2, 0.9, 0.6, 0.4]))["auroc"]
1.0
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

GIB = float(1 << 30)
_EPS = 1e-7


def classification_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """ROC AUC, accuracy and log-loss of probabilities `prob` for 0/1 labels `y_true` (AUC is NaN with one class)."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.clip(np.asarray(prob, dtype=np.float64).ravel(), _EPS, 1.0 - _EPS)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} must be non-empty and the same shape")
    from sklearn import metrics as skm  # lazily: importing scikit-learn costs seconds that scoring need not pay

    auroc = float(skm.roc_auc_score(y, p)) if np.unique(y).size == 2 else float("nan")
    return {
        "auroc": auroc,
        "accuracy": float(np.mean((p >= threshold) == (y > 0.5))),
        "logloss": float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))),
    }


def roc_points(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) of the ROC curve."""
    from sklearn import metrics as skm

    fpr, tpr, _ = skm.roc_curve(np.asarray(y_true).ravel(), np.asarray(prob).ravel())
    return fpr, tpr


class Stopwatch:
    """Wall-clock timer: `with Stopwatch() as sw: ...; sw.seconds` (monotonic, includes CUDA sync when asked)."""

    def __init__(self, sync_cuda: bool = False) -> None:
        self.sync_cuda = sync_cuda and torch.cuda.is_available()
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> "Stopwatch":
        if self.sync_cuda:
            torch.cuda.synchronize()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sync_cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self._start


def peak_rss_gib() -> float:
    """Peak resident set size of this process (VmHWM on Linux; getrusage elsewhere) in GiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return maxrss / GIB if sys.platform == "darwin" else maxrss * 1024 / GIB


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux: write "5" to /proc/self/clear_refs). False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class MemoryMonitor:
    """Peak memory over a window (an epoch): call `reset()` at its start and `read()` at its end.

    On CUDA the figures are `torch.cuda.max_memory_allocated/reserved` (what the EAM paper reports); the process peak
    RSS is always reported (per window on Linux, else since process start: `rss_resettable` says which).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rss_resettable: bool = True

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss_resettable = _reset_peak_rss()

    def read(self) -> dict[str, float]:
        out = {"mem/rss_peak_gib": peak_rss_gib()}
        if self.device.type == "cuda":
            out["mem/cuda_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / GIB
            out["mem/cuda_reserved_gib"] = torch.cuda.max_memory_reserved(self.device) / GIB
        return out


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str = "ROC (test)") -> Path:
    """One ROC curve per name: {name: (fpr, tpr, auroc)} -> PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    if curves:  # an empty plot (no model had a test curve) has no legend to draw
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training_curves(history: Sequence[Mapping[str, float]], path: Path, title: str = "training") -> Path:
    """Train loss and validation ROC AUC per evaluation (history rows hold `step`, `train/loss`, `val/auroc`) -> PNG."""
    plt = pyplot()
    steps = [h["step"] for h in history]
    fig, ax1 = plt.subplots(figsize=(5.5, 3.5))
    ax1.plot(steps, [h["train/loss"] for h in history], "o-", c="tab:blue", label="train/loss")
    ax1.set(xlabel="optimiser step", ylabel="train loss", title=title)
    ax2 = ax1.twinx()
    ax2.plot(steps, [h["val/auroc"] for h in history], "s-", c="tab:orange", label="val/auroc")
    ax2.set_ylabel("validation ROC AUC")
    fig.legend(loc="upper center", ncol=2, fontsize=8, bbox_to_anchor=(0.5, 0.9))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
