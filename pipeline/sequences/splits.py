"""The evaluation split every model shares, following the pytorch-lifestream gender protocol.

A fixed, seeded, stratified 10 % of the labelled customers is the test set; the rest is cut into K stratified folds
(fold k = validation ids of run k; the other K-1 folds train). The split is a plain JSON file with a content hash
(`split_id`), so a run can record exactly which split it used.

    >>> labels = pl.DataFrame({"customer_id": range(100), "label": [i % 2 for i in range(100)]})
    >>> split = make_split(labels, SplitConfig(test_fraction=0.1, n_folds=5, seed=1))
    >>> len(split.test_ids), len(split.val_ids(0)), len(split.train_ids(0))
    (10, 18, 72)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline import schema
from pipeline.io import write_text_atomic


@dataclass(frozen=True)
class SplitConfig:
    test_fraction: float = 0.1
    n_folds: int = 5
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.n_folds < 2:
            raise ValueError(f"n_folds must be >= 2, got {self.n_folds}")


@dataclass(frozen=True)
class Split:
    """Test ids and K validation folds (sorted id tuples); `split_id` hashes the content."""

    test_ids: tuple[int, ...]
    folds: tuple[tuple[int, ...], ...]
    seed: int
    test_fraction: float
    split_id: str

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    @property
    def trainval_ids(self) -> tuple[int, ...]:
        """All labelled, non-test customers (the union of the folds), sorted."""
        return tuple(sorted(i for f in self.folds for i in f))

    @property
    def labelled_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.test_ids + self.trainval_ids))

    def val_ids(self, fold: int) -> tuple[int, ...]:
        self._check_fold(fold)
        return self.folds[fold]

    def train_ids(self, fold: int) -> tuple[int, ...]:
        self._check_fold(fold)
        return tuple(sorted(i for k, f in enumerate(self.folds) if k != fold for i in f))

    def _check_fold(self, fold: int) -> None:
        if not 0 <= fold < len(self.folds):
            raise IndexError(f"fold {fold} out of range: the split has {len(self.folds)} folds")

    def to_dict(self) -> dict:
        return {
            "split_id": self.split_id,
            "seed": self.seed,
            "test_fraction": self.test_fraction,
            "n_folds": self.n_folds,
            "test_ids": list(self.test_ids),
            "folds": [list(f) for f in self.folds],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_text_atomic(json.dumps(self.to_dict(), indent=1) + "\n", path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        test_ids = tuple(int(i) for i in d["test_ids"])
        folds = tuple(tuple(int(i) for i in f) for f in d["folds"])
        split_id = _content_hash(test_ids, folds, int(d["seed"]), float(d["test_fraction"]))
        if split_id != d["split_id"]:
            raise ValueError(f"{path}: split_id {d['split_id']} does not match its content ({split_id})")
        return cls(test_ids, folds, int(d["seed"]), float(d["test_fraction"]), split_id)


def make_split(labels: pl.DataFrame, config: SplitConfig = SplitConfig()) -> Split:
    """Stratified test set + K stratified folds over the labelled customers in `labels` (customer_id, label).

    Deterministic in (set of labelled customers, their labels, config): input row order does not matter. Per class,
    ids are sorted and permuted with the seeded generator; the first ~test_fraction of them go to test (`_test_quota`), the
    rest are dealt round-robin into the folds, so each fold's class balance is within one customer of the others'.
    """
    df = labels.select(pl.col(schema.CUSTOMER_ID).cast(pl.Int64), pl.col(schema.LABEL).cast(pl.Int64))
    if df[schema.CUSTOMER_ID].null_count() or df[schema.LABEL].null_count():
        raise ValueError("labels contain null customer ids or labels")
    if df[schema.CUSTOMER_ID].n_unique() != df.height:
        raise ValueError("labels contain duplicate customer ids")
    rng = np.random.default_rng(config.seed)
    test: list[np.ndarray] = []
    folds: list[list[np.ndarray]] = [[] for _ in range(config.n_folds)]
    offset = 0  # continue the round-robin across classes so fold sizes stay balanced overall
    classes = sorted(df[schema.LABEL].unique().to_list())
    for cls, n_test in zip(classes, _test_quota(df, classes, config.test_fraction)):
        ids = np.sort(df.filter(pl.col(schema.LABEL) == cls)[schema.CUSTOMER_ID].to_numpy())
        ids = ids[rng.permutation(len(ids))]
        test.append(ids[:n_test])
        rest = ids[n_test:]
        which = (np.arange(len(rest)) + offset) % config.n_folds
        offset = (offset + len(rest)) % config.n_folds
        for k in range(config.n_folds):
            folds[k].append(rest[which == k])
    test_ids = tuple(int(i) for i in np.sort(np.concatenate(test))) if test else ()
    fold_ids = tuple(tuple(int(i) for i in np.sort(np.concatenate(f))) if f else () for f in folds)
    return Split(test_ids, fold_ids, config.seed, config.test_fraction,
                 _content_hash(test_ids, fold_ids, config.seed, config.test_fraction))


def _test_quota(df: pl.DataFrame, classes: list[int], fraction: float) -> list[int]:
    """Test-set size per class: round(fraction * n) in total, shared by largest remainder (so 10 % of 50 is 5
    even when each class's exact share is 2.5)."""
    sizes = np.array([int((df[schema.LABEL] == c).sum()) for c in classes], dtype=np.int64)
    exact = fraction * sizes
    quota = np.floor(exact).astype(np.int64)
    left = int(np.floor(fraction * sizes.sum() + 0.5)) - int(quota.sum())
    for k in np.argsort(-(exact - quota), kind="stable")[:max(left, 0)]:
        quota[k] += 1
    return quota.tolist()


def _content_hash(test_ids: tuple[int, ...], folds: tuple[tuple[int, ...], ...], seed: int, test_fraction: float) -> str:
    payload = json.dumps({"test": list(test_ids), "folds": [list(f) for f in folds], "seed": seed,
                          "test_fraction": test_fraction}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
