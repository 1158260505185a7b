"""Fast inference of a sequence model over a whole sequences table: what batch scoring runs.

Same scores as the training-time evaluation loop (`pipeline.training.train.evaluate`, a fixed 128 customers per padded
batch; a test compares both), with:
- batches filled to a token budget: customers sorted by length are cut into consecutive batches of at most
  `max_tokens` = rows × longest length, so short sequences come in big batches and long ones in small, and padding
  stays small (neighbours in length order). The budget is small on purpose: a batch of 16k tokens keeps the
  activations of one layer (16k × d_model floats, and the attention tiles) in the CPU's L2/L3 cache; 131k tokens
  per batch cost 1.2–2× the CPU time (demo-size models, bench/bench_scoring.py --model-customers);
- `torch.inference_mode` (no autograd bookkeeping).

`embed_customers` is the same loop over `model.embed` (the pooled customer embedding): what the hybrid model's
frozen encoder runs at scoring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from models.batch import Batch
from pipeline.sequences.batches import SequenceDataset


@dataclass(frozen=True)
class InferenceConfig:
    max_tokens: int = 16_384  # rows × padded length per batch (13 customers at the 1,200-event cap, 40 at 400)


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
    prob = _per_customer(lambda batch: torch.sigmoid(model(batch).logit.float())[:, None], model, dataset, config)
    return dataset.customer_id.numpy(), prob[:, 0].numpy()


def embed_customers(model: torch.nn.Module, dataset: SequenceDataset,
                    config: InferenceConfig = InferenceConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(customer_id (N,), embedding (N, D)) of every row of `dataset` (`model.embed`'s pooled output), in dataset
    order, on CPU."""
    emb = _per_customer(lambda batch: model.embed(batch)[0].float(), model, dataset, config)
    return dataset.customer_id.numpy(), emb.numpy()


def _per_customer(forward: Callable[[Batch], torch.Tensor], model: torch.nn.Module, dataset: SequenceDataset,
                  config: InferenceConfig) -> torch.Tensor:
    """`forward` (a batch -> (B, K) rows) over token-budget batches of `dataset`, scattered back to dataset order:
    (N, K) float32."""
    model.eval()
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for rows in token_budget_batches(dataset.lengths.numpy(), config):
            index = torch.from_numpy(rows)
            got = forward(dataset.gather(index))  # (B, K)
            if out is None:
                out = torch.empty(len(dataset), got.shape[1], dtype=torch.float32)
            out[index] = got
    return out if out is not None else torch.empty(0, 1, dtype=torch.float32)
