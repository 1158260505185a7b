"""The sequences table -> padded `models.batch.Batch`es, straight from the Arrow list buffers.

A list column in Arrow is one flat values buffer plus row offsets. `SequenceDataset` keeps those buffers as torch
tensors (one flat (E,) tensor per categorical column, one (E, F) tensor for the numeric features); `collate` turns a
list of row indices into (B, T) tensors with one vectorised gather, no Python loop over events:

    pos   = arange(T)                              # (T,)
    valid = pos < length[:, None]                  # (B, T)
    src   = where(valid, start[:, None] + pos, 0)  # (B, T) flat index of each slot (pads read event 0)
    out   = flat[src].masked_fill(~valid, 0)       # one dense gather, then zero the padding

`LengthBucketSampler` groups customers of similar length so that little of each batch is padding, and training
may crop sequences longer than `crop_len` to a random contiguous window (as ptls's random slice).

    >>> import polars as pl
    >>> from pipeline import schema
    >>> table = pl.DataFrame({"customer_id": [1, 2], "label": [0, None], "length": [2, 1],
    ...     "event_time": [[0.5, 1.0], [3.0]], "mcc": [[2, 3], [4]], "tr_type_code": [[2, 2], [1]],
    ...     "amount_log": [[1.0, -1.0], [0.5]], "hour": [[1.0, 2.0], [3.0]], "weekday": [[0.0, 1.0], [3.0]],
    ...     "log_dt": [[0.0, 2.5], [0.0]]}, schema_overrides={"label": pl.Int8})
    >>> batch = next(iter(make_loader(table, batch_size=2, bucket=False)))
    >>> batch.mcc.tolist(), batch.valid.tolist(), batch.label.tolist()
    ([[2, 3], [4, 0]], [[True, True], [True, False]], [0.0, nan])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from models.batch import Batch
from pipeline import schema
from pipeline.sequences.table import check_sequences_columns

_LIST_COLUMNS: tuple[str, ...] = (schema.SEQ_EVENT_TIME, *schema.SEQ_CATEGORICAL, *schema.SEQ_NUMERIC)


def _as_table(source: pa.Table | pl.DataFrame | str | Path) -> pa.Table:
    if isinstance(source, pa.Table):
        return source
    if isinstance(source, pl.DataFrame):
        return source.to_arrow()
    path = Path(source)
    if path.is_dir() and (path / "sequences.parquet").exists():  # a sequences folder (the table may be a folder too)
        path = path / "sequences.parquet"
    check_sequences_columns(pq.ParquetDataset(path).schema.names, path)
    return pq.read_table(path, columns=[schema.CUSTOMER_ID, schema.LABEL, *_LIST_COLUMNS])


def _flat(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a single-chunk list column; offsets rebased to start at 0, int64."""
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if arr.null_count:
        raise ValueError("sequence list columns must not contain nulls")
    offsets = arr.offsets.to_numpy().astype(np.int64)  # accounts for a sliced array's offset
    values = arr.values  # the whole child array: index it with the offsets
    lo, hi = int(offsets[0]), int(offsets[-1])
    return values.slice(lo, hi - lo).to_numpy(zero_copy_only=False), offsets - lo


class SequenceDataset(Dataset):
    """Rows of the sequences table (optionally only `customer_ids`, in table order) as flat torch buffers.

    `__getitem__` returns the row index: the work happens in `collate`, which gathers a whole batch at once.
    """

    def __init__(self, source: pa.Table | pl.DataFrame | str | Path, customer_ids: Sequence[int] | None = None):
        table = _as_table(source)
        if customer_ids is not None:
            wanted = pa.array(np.unique(np.asarray(list(customer_ids), dtype=np.int64)))
            table = table.filter(pc.is_in(table[schema.CUSTOMER_ID].cast(pa.int64()), value_set=wanted))
        self.customer_id = torch.from_numpy(table[schema.CUSTOMER_ID].to_numpy().astype(np.int64))
        label = table[schema.LABEL].cast(pa.float32()).to_numpy(zero_copy_only=False)  # nulls -> NaN
        self.label = torch.from_numpy(np.array(label, dtype=np.float32))  # a writable copy
        flats = {c: _flat(table[c]) for c in _LIST_COLUMNS}
        offsets = flats[schema.SEQ_EVENT_TIME][1]
        for c, (_, off) in flats.items():
            if not np.array_equal(off, offsets):
                raise ValueError(f"list column {c!r} is not aligned with {schema.SEQ_EVENT_TIME!r}")
        self.offsets = torch.from_numpy(offsets)  # (N+1,)
        self.lengths = self.offsets[1:] - self.offsets[:-1]  # (N,)
        self.mcc = torch.from_numpy(flats[schema.SEQ_MCC][0].astype(np.int64))  # (E,)
        self.tr_type = torch.from_numpy(flats[schema.SEQ_TR_TYPE][0].astype(np.int64))  # (E,)
        self.event_time = torch.from_numpy(flats[schema.SEQ_EVENT_TIME][0].astype(np.float32))  # (E,)
        self.numeric = torch.from_numpy(
            np.stack([flats[c][0].astype(np.float32) for c in schema.SEQ_NUMERIC], axis=1))  # (E, F)

    def __len__(self) -> int:
        return len(self.customer_id)

    def __getitem__(self, index: int) -> int:
        return int(index)

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    def gather(self, rows: torch.Tensor, starts: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
               pad_to: int = 1) -> Batch:
        """Padded batch of `rows` (B,); each row's window is [starts, starts + lengths) within its sequence
        (default: the whole sequence). T is the longest window, or `pad_to` when that is longer."""
        rows = rows.long()
        lengths = self.lengths[rows] if lengths is None else lengths.long()  # (B,)
        starts = torch.zeros_like(lengths) if starts is None else starts.long()
        B = len(rows)
        T = max(int(lengths.max()) if B else 1, pad_to, 1)
        pos = torch.arange(T)  # (T,)
        valid = pos[None, :] < lengths[:, None]  # (B, T)
        src = (self.offsets[rows] + starts)[:, None] + pos[None, :]  # (B, T) flat index of each slot
        src = torch.where(valid, src, 0).flatten()  # padding slots read event 0, then are zeroed

        def pad(flat: torch.Tensor) -> torch.Tensor:
            if flat.shape[0] == 0:  # no events at all: nothing to read
                return flat.new_zeros((B, T, *flat.shape[1:]))
            out = flat.index_select(0, src).view(B, T, *flat.shape[1:])  # dense gather, no boolean indexing
            return out.masked_fill_(~valid.view(B, T, *([1] * (flat.dim() - 1))), 0)

        return Batch(
            mcc=pad(self.mcc), tr_type=pad(self.tr_type), numeric=pad(self.numeric), event_time=pad(self.event_time),
            valid=valid, label=self.label[rows], customer_id=self.customer_id[rows],
        )


class Collate:
    """collate_fn: row indices -> `Batch`; with `crop_len`, longer sequences become a random contiguous window.

    Crops are drawn from a numpy generator seeded with `seed` (in a DataLoader worker: with the worker's torch seed,
    which the loader derives from its own seeded generator), so a run is reproducible.
    """

    def __init__(self, dataset: SequenceDataset, crop_len: int | None = None, seed: int = 0):
        if crop_len is not None and crop_len < 1:
            raise ValueError(f"crop_len must be >= 1, got {crop_len}")
        self.dataset, self.crop_len, self.seed = dataset, crop_len, seed
        self._rng: np.random.Generator | None = None
        self._rng_owner: int | None = None

    def _generator(self) -> np.random.Generator:
        info = get_worker_info()
        owner = None if info is None else info.id
        if self._rng is None or owner != self._rng_owner:
            self._rng = np.random.default_rng(self.seed if info is None else [self.seed, torch.initial_seed() % 2**63])
            self._rng_owner = owner
        return self._rng

    def __call__(self, indices: Sequence[int]) -> Batch:
        rows = torch.as_tensor(list(indices), dtype=torch.long)
        if self.crop_len is None:
            return self.dataset.gather(rows)
        full = self.dataset.lengths[rows]  # (B,)
        lengths = full.clamp(max=self.crop_len)
        slack = (full - lengths).numpy()  # 0 where no crop is needed
        starts = np.floor(self._generator().random(len(rows)) * (slack + 1)).astype(np.int64)  # uniform in [0, slack]
        return self.dataset.gather(rows, torch.from_numpy(starts), lengths)


class SliceCollate(Collate):
    """collate_fn for CoLES pretraining: each customer -> `n_slices` random contiguous windows (ptls SampleSlices).

    A window's length is uniform in [min_len, min(max_len, length)] and its start uniform over the positions where it
    fits; a customer with at most `min_len` events gives its whole sequence every time. Rows come out customer by
    customer (B * n_slices rows; `batch.customer_id` says whose slice each row is).
    """

    def __init__(self, dataset: SequenceDataset, n_slices: int = 5, min_len: int = 15, max_len: int = 75,
                 seed: int = 0):
        if n_slices < 2 or not 1 <= min_len <= max_len:
            raise ValueError(f"need n_slices >= 2 and 1 <= min_len <= max_len, got {n_slices}, {min_len}, {max_len}")
        super().__init__(dataset, None, seed)
        self.n_slices, self.min_len, self.max_len = n_slices, min_len, max_len

    def __call__(self, indices: Sequence[int]) -> Batch:
        rows = torch.as_tensor(list(indices), dtype=torch.long).repeat_interleave(self.n_slices)  # (B*K,)
        full = self.dataset.lengths[rows].numpy()
        rng = self._generator()
        hi = np.minimum(full, self.max_len)
        lo = np.minimum(self.min_len, hi)
        lengths = np.where(full <= self.min_len, full, lo + np.floor(rng.random(len(rows)) * (hi - lo + 1)))
        starts = np.floor(rng.random(len(rows)) * (full - lengths + 1))
        return self.dataset.gather(rows, torch.from_numpy(starts.astype(np.int64)),
                                   torch.from_numpy(lengths.astype(np.int64)))


def make_slice_loader(dataset: SequenceDataset, batch_size: int = 128, n_slices: int = 5, min_len: int = 15,
                      max_len: int = 75, shuffle: bool = True, seed: int = 0, drop_last: bool = False) -> DataLoader:
    """Batches of `batch_size` customers, each as `n_slices` random windows (see `SliceCollate`)."""
    sampler = _PlainBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=SliceCollate(dataset, n_slices, min_len, max_len, seed),
                      generator=torch.Generator().manual_seed(seed))


class LengthBucketSampler(Sampler[list[int]]):
    """Batch sampler: batches of similar-length rows.

    shuffle=True: permute the rows, sort each chunk of `batch_size * bucket_batches` rows by length, cut into
    batches, shuffle the batch order; a new permutation every epoch (seed, epoch). shuffle=False: rows sorted by
    length (stable), cut in order — deterministic, the least padding, for evaluation.
    """

    def __init__(self, lengths: torch.Tensor | np.ndarray | Sequence[int], batch_size: int, shuffle: bool = True,
                 seed: int = 0, bucket_batches: int = 50, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.bucket_batches, self.drop_last = bucket_batches, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            batches = [order[i:i + bs] for i in range(0, n, bs)]
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            self.epoch += 1  # the next pass differs even if nobody calls set_epoch
            perm = rng.permutation(n)
            chunk = bs * self.bucket_batches
            batches = []
            for i in range(0, n, chunk):  # loop over chunks of rows (a few per epoch), not events
                part = perm[i:i + chunk]
                part = part[np.argsort(self.lengths[part], kind="stable")]
                batches += [part[j:j + bs] for j in range(0, len(part), bs)]
            batches = [batches[k] for k in rng.permutation(len(batches))]
        if self.drop_last:
            batches = [b for b in batches if len(b) == bs]
        for b in batches:
            yield b.tolist()


class _PlainBatchSampler(Sampler[list[int]]):
    """Batches in table order (shuffle=False) or a seeded permutation per epoch (shuffle=True)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool = False):
        self.n, self.batch_size, self.shuffle, self.seed, self.drop_last = n, batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            self.epoch += 1
        else:
            order = np.arange(self.n)
        for i in range(0, self.n, self.batch_size):
            b = order[i:i + self.batch_size]
            if len(b) == self.batch_size or not self.drop_last:
                yield b.tolist()


def make_loader(
    source: pa.Table | pl.DataFrame | str | Path | SequenceDataset,
    customer_ids: Sequence[int] | None = None,
    batch_size: int = 64,
    shuffle: bool = False,
    crop_len: int | None = None,
    seed: int = 0,
    bucket: bool = True,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader of `Batch`es over the sequences table (path, table, or a ready `SequenceDataset`).

    Training: shuffle=True, crop_len=<window>. Evaluation: shuffle=False, crop_len=None (full length up to the
    table's max_len); with bucket=True evaluation batches come in length order, not table order (use
    `batch.customer_id`).
    """
    if isinstance(source, SequenceDataset):
        if customer_ids is not None:
            raise ValueError("pass customer_ids when building the SequenceDataset, not with a ready one")
        dataset = source
    else:
        dataset = SequenceDataset(source, customer_ids)
    if bucket:
        sampler: Sampler[list[int]] = LengthBucketSampler(dataset.lengths, batch_size, shuffle, seed,
                                                          drop_last=drop_last)
    else:
        sampler = _PlainBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=Collate(dataset, crop_len, seed),
                      num_workers=num_workers, generator=generator, persistent_workers=False)


def numeric_stats(source: pa.Table | pl.DataFrame | str | Path | SequenceDataset,
                  customer_ids: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (population, float64 accumulation) of each numeric feature over the events of `customer_ids`,
    shape (F,) in `schema.SEQ_NUMERIC` order; std is floored at 1e-6 so normalising never divides by 0."""
    if isinstance(source, SequenceDataset):
        flat = source.numeric  # (E, F)
        if customer_ids is not None:
            wanted = torch.as_tensor(np.unique(np.asarray(list(customer_ids), dtype=np.int64)))
            keep_row = torch.isin(source.customer_id, wanted)  # (N,)
            flat = flat[torch.repeat_interleave(keep_row, source.lengths)]  # event mask from its row's flag
    else:
        flat = SequenceDataset(source, customer_ids).numeric
    x = flat.double()
    if len(x) == 0:
        return torch.zeros(len(schema.SEQ_NUMERIC)), torch.ones(len(schema.SEQ_NUMERIC))
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp(min=1e-6)
    return mean.float(), std.float()
