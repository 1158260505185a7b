"""Fast inference of a sequence model over a whole sequences table: what batch scoring runs.

Same scores as the training-time evaluation loop (`pipeline.train.evaluate`, a fixed 128 customers per padded
batch; a test compares both), with:
- batches filled to a token budget: customers sorted by length are cut into consecutive batches of at most
  `max_tokens` = rows × longest length, so short sequences come in big batches and long ones in small, padding
  stays small (neighbours in length order), and there are few batches (on CPU each extra batch shape costs more
  than the padding it saves: measured in bench/bench_scoring.py);
- `torch.inference_mode` (no autograd bookkeeping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.batches import SequenceDataset


@dataclass(frozen=True)
class InferenceConfig:
    max_tokens: int = 131_072  # rows × padded length per batch (~110 customers at the 1,200-event cap)


def token_budget_batches(lengths: np.ndarray, config: InferenceConfig = InferenceConfig()) -> list[np.ndarray]:
    """Row indices in batches of consecutive lengths (sorted), each at most `max_tokens` rows × longest length
    (one row at least).

    >>> [b.tolist() for b in token_budget_batches(np.array([5, 3, 5, 3, 9]), InferenceConfig(max_tokens=10))]
    [[1, 3], [0, 2], [4]]
    """
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        # rows start..end-1 fit when (end - start) * lengths[order[end - 1]] <= max_tokens (lengths ascend)
        span = np.arange(1, len(order) - start + 1) * lengths[order[start:]]
        end = start + max(int(np.searchsorted(span > config.max_tokens, True)), 1)
        batches.append(order[start:end])
        start = end
    return batches


def predict_proba(model: torch.nn.Module, dataset: SequenceDataset,
                  config: InferenceConfig = InferenceConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(customer_id (N,), probability (N,)) of every row of `dataset`, in dataset order, on CPU."""
    model.eval()
    prob = torch.empty(len(dataset), dtype=torch.float32)
    with torch.inference_mode():
        for rows in token_budget_batches(dataset.lengths.numpy(), config):
            index = torch.from_numpy(rows)
            prob[index] = torch.sigmoid(model(dataset.gather(index)).logit.float())
    return dataset.customer_id.numpy(), prob.numpy()
