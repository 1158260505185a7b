"""Fast inference of a sequence model over a whole sequences table: what batch scoring runs.

Faster than the training-time evaluation loop (`pipeline.train.evaluate`, 128 customers per batch) on CPU, with the
same scores (a test compares both):
- batches sized by a token budget: customers sorted by length are grouped by their length rounded up to a multiple
  of `length_step`, every batch of a group is padded to that length and holds ⌊max_tokens / length⌋ rows: short
  sequences come in big batches, long ones in small, and batch shapes repeat, so the CPU kernels set up per shape
  (oneDNN primitives) are reused (exact-length batches, all shapes different, measured ~5× slower);
- `torch.inference_mode` (no autograd bookkeeping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.batches import SequenceDataset


@dataclass(frozen=True)
class InferenceConfig:
    max_tokens: int = 16_384  # rows × padded length per batch
    length_step: int = 64  # batches are padded to a multiple of this


def token_budget_batches(lengths: np.ndarray, config: InferenceConfig = InferenceConfig()) -> list[tuple[np.ndarray, int]]:
    """(row indices, padded length) per batch: rows of similar length, at most `max_tokens` rows × padded length
    (one row at least).

    >>> [(rows.tolist(), t) for rows, t in token_budget_batches(np.array([5, 3, 5, 3, 9]), InferenceConfig(8, 4))]
    [([1, 3], 4), ([0], 8), ([2], 8), ([4], 12)]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) == 0:
        return []
    order = np.argsort(lengths, kind="stable")
    step = max(config.length_step, 1)
    group = (np.maximum(lengths[order], 1) + step - 1) // step  # sorted, so each group is one contiguous run
    batches = []
    for run in np.split(order, np.flatnonzero(np.diff(group)) + 1):
        padded = int((max(int(lengths[run[-1]]), 1) + step - 1) // step * step)
        rows = max(config.max_tokens // padded, 1)
        batches += [(run[i:i + rows], padded) for i in range(0, len(run), rows)]
    return batches


def predict_proba(model: torch.nn.Module, dataset: SequenceDataset,
                  config: InferenceConfig = InferenceConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(customer_id (N,), probability (N,)) of every row of `dataset`, in dataset order, on CPU."""
    model.eval()
    prob = torch.empty(len(dataset), dtype=torch.float32)
    with torch.inference_mode():
        for rows, padded in token_budget_batches(dataset.lengths.numpy(), config):
            index = torch.from_numpy(rows)
            prob[index] = torch.sigmoid(model(dataset.gather(index, pad_to=padded)).logit.float())
    return dataset.customer_id.numpy(), prob.numpy()
