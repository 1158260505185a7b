"""pipeline.sequences.batches: Arrow buffers -> Batch, masks, crops, length buckets, numeric stats."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.batch import Batch
from pipeline import schema
from pipeline.sequences.batches import Collate, LengthBucketSampler, SequenceDataset, make_loader, numeric_stats
from pipeline.schema import SEQUENCES_SCHEMA


def _table(lengths, seed=0, genders=None) -> pl.DataFrame:
    """A sequences table whose event values encode (row, position) so gathers are checkable: mcc = 2 + pos,
    event_time = 1000 * row + pos, amount_log = row + pos / 1000."""
    rng = np.random.default_rng(seed)
    n = len(lengths)
    rows = {
        schema.CUSTOMER_ID: [100 + i for i in range(n)],
        schema.LABEL: genders if genders is not None else [int(g) if g < 2 else None for g in rng.integers(0, 3, n)],
        schema.SEQ_LENGTH: list(lengths),
        schema.SEQ_TOTAL: list(lengths),
        schema.SEQ_EVENT_TIME: [[1000.0 * i + p for p in range(L)] for i, L in enumerate(lengths)],
        schema.SEQ_MCC: [[2 + p for p in range(L)] for L in lengths],
        schema.SEQ_TR_TYPE: [[2 + (p % 3) for p in range(L)] for L in lengths],
        schema.SEQ_AMOUNT: [[i + p / 1000 for p in range(L)] for i, L in enumerate(lengths)],
        schema.SEQ_HOUR: [[float(p % 24) for p in range(L)] for L in lengths],
        schema.SEQ_WEEKDAY: [[float(p % 7) for p in range(L)] for L in lengths],
        schema.SEQ_LOG_DT: [[0.5 * p for p in range(L)] for L in lengths],
    }
    return pl.DataFrame(rows, schema=SEQUENCES_SCHEMA)


def _naive(table: pl.DataFrame, idx: list[int]) -> dict[str, torch.Tensor]:
    """Row-by-row reference padding."""
    rows = [table.row(i, named=True) for i in idx]
    T = max(max(r[schema.SEQ_LENGTH] for r in rows), 1)
    out = {"mcc": torch.zeros(len(rows), T, dtype=torch.long), "valid": torch.zeros(len(rows), T, dtype=torch.bool),
           "numeric": torch.zeros(len(rows), T, len(schema.SEQ_NUMERIC)), "event_time": torch.zeros(len(rows), T)}
    for b, r in enumerate(rows):
        L = r[schema.SEQ_LENGTH]
        out["mcc"][b, :L] = torch.tensor(r[schema.SEQ_MCC])
        out["valid"][b, :L] = True
        out["event_time"][b, :L] = torch.tensor(r[schema.SEQ_EVENT_TIME])
        for f, c in enumerate(schema.SEQ_NUMERIC):
            out["numeric"][b, :L, f] = torch.tensor(r[c])
    return out


def test_collate_masks_and_padding() -> None:
    table = _table([3, 1, 0, 5], genders=[1, None, 0, 0])
    batch = Collate(SequenceDataset(table))([0, 1, 2, 3])
    assert isinstance(batch, Batch) and batch.size == 4
    assert batch.valid.sum(1).tolist() == [3, 1, 0, 5]
    assert batch.mcc.shape == batch.tr_type.shape == batch.valid.shape == batch.event_time.shape == (4, 5)
    assert batch.numeric.shape == (4, 5, len(schema.SEQ_NUMERIC))
    assert (batch.mcc[~batch.valid] == 0).all() and (batch.tr_type[~batch.valid] == 0).all()
    assert (batch.numeric[~batch.valid] == 0).all() and (batch.event_time[~batch.valid] == 0).all()
    assert (batch.mcc[batch.valid] >= 2).all()
    assert batch.mcc.dtype == batch.tr_type.dtype == batch.customer_id.dtype == torch.long
    assert batch.valid.dtype == torch.bool and batch.numeric.dtype == torch.float32
    assert batch.customer_id.tolist() == [100, 101, 102, 103]
    assert batch.label[0] == 1 and math.isnan(batch.label[1]) and batch.label[2] == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.data())
def test_collate_matches_a_per_row_reference(lengths, data) -> None:
    table = _table(lengths)
    idx = data.draw(st.lists(st.integers(0, len(lengths) - 1), min_size=1, max_size=8))
    batch = Collate(SequenceDataset(table))(idx)
    ref = _naive(table, idx)
    for k, v in ref.items():
        assert torch.equal(getattr(batch, k), v), k


def test_dataset_restricts_to_customer_ids_and_reads_a_parquet_path(tmp_path) -> None:
    table = _table([2, 3, 4, 5])
    path = tmp_path / "sequences.parquet"
    table.write_parquet(path)
    ds = SequenceDataset(path, customer_ids=[103, 101, 999])
    assert ds.customer_id.tolist() == [101, 103] and ds.lengths.tolist() == [3, 5]
    batch = Collate(ds)([1])
    assert batch.event_time[0].tolist() == [3000.0, 3001.0, 3002.0, 3003.0, 3004.0]
    # a sliced Arrow table (non-zero list offsets) reads the right events
    sliced = SequenceDataset(table.to_arrow().slice(2, 2))
    assert Collate(sliced)([0]).event_time[0].tolist() == [2000.0, 2001.0, 2002.0, 2003.0]


@pytest.mark.parametrize("crop_len", [1, 4, 7])
def test_crop_keeps_a_contiguous_window_of_crop_len(crop_len) -> None:
    lengths = [2, 7, 20, 50]
    ds = SequenceDataset(_table(lengths))
    collate = Collate(ds, crop_len=crop_len, seed=1)
    starts = set()
    for _ in range(20):
        batch = collate([0, 1, 2, 3])
        assert batch.valid.sum(1).tolist() == [min(L, crop_len) for L in lengths]
        for b, L in enumerate(lengths):
            t = batch.event_time[b][batch.valid[b]]
            pos = (t - 1000.0 * b).long()
            assert (pos.diff() == 1).all() and 0 <= pos[0] and pos[-1] < L  # contiguous, inside the sequence
            if L > crop_len:
                starts.add((b, int(pos[0])))
            else:
                assert pos[0] == 0
    assert len(starts) > 4  # windows move
    again = Collate(ds, crop_len=crop_len, seed=1)([0, 1, 2, 3])
    assert torch.equal(again.event_time, Collate(ds, crop_len=crop_len, seed=1)([0, 1, 2, 3]).event_time)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_bucket_sampler_covers_every_index_once(shuffle, drop_last) -> None:
    lengths = np.random.default_rng(0).integers(1, 500, 1037)
    sampler = LengthBucketSampler(lengths, batch_size=32, shuffle=shuffle, seed=3, bucket_batches=16,
                                  drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    if drop_last:
        assert all(len(b) == 32 for b in batches) and len(flat) == 1037 // 32 * 32
    else:
        assert sorted(flat) == list(range(1037))
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.25 * np.ptp(lengths)  # batches hold similar lengths
    if shuffle:
        assert list(sampler) != batches  # the next epoch differs
        assert list(LengthBucketSampler(lengths, 32, True, seed=3, bucket_batches=16, drop_last=drop_last)) == batches


def test_make_loader_train_and_eval() -> None:
    table = _table(list(range(1, 41)))
    seen = []
    for batch in make_loader(table, customer_ids=None, batch_size=8, shuffle=True, crop_len=10, seed=0):
        assert batch.valid.shape[1] <= 10
        seen += batch.customer_id.tolist()
    assert sorted(seen) == list(range(100, 140))
    ev = list(make_loader(table, customer_ids=[100, 139], batch_size=8, shuffle=False))
    assert len(ev) == 1 and ev[0].valid.sum(1).tolist() == [1, 40]
    plain = list(make_loader(table, batch_size=16, bucket=False))
    assert [b.size for b in plain] == [16, 16, 8] and plain[0].customer_id.tolist() == list(range(100, 116))


def test_numeric_stats_over_valid_events() -> None:
    table = _table([3, 1, 4])
    mean, std = numeric_stats(table, customer_ids=[100, 102])
    ds = SequenceDataset(table, [100, 102])
    want = ds.numeric.double()
    assert mean.shape == std.shape == (len(schema.SEQ_NUMERIC),)
    torch.testing.assert_close(mean, want.mean(0).float())
    torch.testing.assert_close(std, want.std(0, unbiased=False).clamp(min=1e-6).float())
    m2, s2 = numeric_stats(SequenceDataset(table), customer_ids=[100, 102])
    torch.testing.assert_close(m2, mean) and torch.testing.assert_close(s2, std)
