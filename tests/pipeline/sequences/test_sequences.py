"""pipeline.sequences.table.build_sequences: ordering, truncation, features, labels, output schema."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import schema
from pipeline.schema import SEQUENCES_SCHEMA
from pipeline.sequences.table import SequenceConfig, build_sequences, fit_vocab, order_keys
from _sequence_events import events_frame  # on sys.path: tests/pipeline/conftest.py

# (customer_id, day, second_of_day, mcc_code, tr_type, amount); source_row = position
HAND = [
    (1, 8, 13 * 3600 + 1800, 10, 7, -99.0),  # t = 8.5625, latest
    (1, 1, 0, 20, 7, 0.0),  # t = 1.0, tie with the next row: file order decides
    (1, 1, 0, 10, 8, 1e6),  # t = 1.0
    (1, 2, 6 * 3600, 10, 7, 2.5),  # t = 2.25
    (2, 0, 60, 20, 8, -1.0),
]


def _build(rows, max_len=1200, labels=None, min_count=1):
    lf = events_frame(rows)
    return build_sequences(lf, fit_vocab(lf, min_count=min_count), SequenceConfig(max_len=max_len), labels)


def _row(df: pl.DataFrame, customer_id: int) -> dict:
    return df.filter(pl.col(schema.CUSTOMER_ID) == customer_id).to_dicts()[0]


def test_features_on_a_hand_example() -> None:
    r = _row(_build(HAND), 1)
    assert r[schema.SEQ_EVENT_TIME] == [1.0, 1.0, 2.25, 8.5625]
    assert r[schema.SEQ_MCC] == [3, 2, 2, 2]  # mcc 10 ×3 -> rank 2, 20 ×2 -> rank 3
    assert r[schema.SEQ_TR_TYPE] == [2, 3, 2, 2]  # tr 7 ×3 -> 2, 8 ×2 -> 3
    np.testing.assert_allclose(r[schema.SEQ_AMOUNT], [0.0, math.log1p(1e6), math.log(3.5), -math.log(100)], rtol=1e-6)
    assert r[schema.SEQ_HOUR] == [0.0, 0.0, 6.0, 13.5]
    assert r[schema.SEQ_WEEKDAY] == [1.0, 1.0, 2.0, 1.0]
    np.testing.assert_allclose(r[schema.SEQ_LOG_DT], [0.0, 0.0, math.log(31.0), math.log(152.5)], rtol=1e-6)
    assert (r[schema.SEQ_LENGTH], r[schema.SEQ_TOTAL]) == (4, 4)


def test_truncation_keeps_the_latest_events_and_gaps_from_the_full_history() -> None:
    r = _row(_build(HAND, max_len=2), 1)
    assert r[schema.SEQ_EVENT_TIME] == [2.25, 8.5625]
    assert r[schema.SEQ_MCC] == [2, 2]
    np.testing.assert_allclose(r[schema.SEQ_LOG_DT], [math.log(31.0), math.log(152.5)], rtol=1e-6)
    assert (r[schema.SEQ_LENGTH], r[schema.SEQ_TOTAL]) == (2, 4)
    assert _row(_build(HAND, max_len=2), 2)[schema.SEQ_LENGTH] == 1


def test_ties_keep_file_order_whatever_the_input_order() -> None:
    rows = [(1, 3, 0, 10 + i, 7, float(i), 100 - i) for i in range(6)]  # same time, source_row decreasing
    lf = events_frame(rows)
    vocab = fit_vocab(lf, min_count=1)
    want = [r[5] for r in sorted(rows, key=lambda r: r[6])]
    for seed in range(3):
        shuffled = lf.collect().sample(fraction=1.0, shuffle=True, seed=seed).lazy()
        got = build_sequences(shuffled, vocab)[schema.SEQ_AMOUNT].to_list()[0]
        np.testing.assert_allclose(got, [math.copysign(math.log1p(abs(a)), a) for a in want], atol=1e-6)
    # across files: source_file first, then source_row
    two = pl.concat([events_frame([(1, 0, 0, 1, 1, 2.0, 1)], "b.csv"), events_frame([(1, 0, 0, 1, 1, 1.0, 9)], "a.csv")])
    amounts = build_sequences(two, fit_vocab(two, min_count=1))[schema.SEQ_AMOUNT].to_list()[0]
    np.testing.assert_allclose(amounts, [math.log(2.0), math.log(3.0)], rtol=1e-6)


def test_unpackable_order_keys_fall_back_to_two_keys_with_the_same_result() -> None:
    """Huge source_row values do not fit the packed Int64 key: (event_time, tie) is sorted instead."""
    rows = [(1, 3, 0, 10, 7, 1.0, 2**60), (1, 3, 0, 10, 7, 2.0, 5), (1, 2, 9, 10, 7, 3.0, 2**61), (1, 4, 0, 10, 7, 4.0, 1)]
    lf = events_frame(rows)
    assert order_keys(lf)[1] == [schema.EVENT_TIME, "_tie"]
    assert order_keys(events_frame(HAND))[1] == ["_order"]
    got = build_sequences(lf, fit_vocab(lf, min_count=1))[schema.SEQ_AMOUNT].to_list()[0]
    np.testing.assert_allclose(got, np.log1p([3.0, 2.0, 1.0, 4.0]), rtol=1e-6)
    two_files = pl.concat([lf, events_frame([(1, 3, 0, 10, 7, 5.0, 2**62)], "a.csv")])
    assert order_keys(two_files)[1] == [schema.EVENT_TIME, schema.SOURCE_FILE, schema.SOURCE_ROW]
    got = build_sequences(two_files, fit_vocab(two_files, min_count=1))[schema.SEQ_AMOUNT].to_list()[0]
    np.testing.assert_allclose(got, np.log1p([3.0, 5.0, 2.0, 1.0, 4.0]), rtol=1e-6)


def test_labels_join_schema_and_order() -> None:
    labels = pl.DataFrame({schema.CUSTOMER_ID: [1, 3], schema.LABEL: [1, 0]})
    df = _build(HAND + [(0, 5, 5, 10, 7, 1.0)], labels=labels)
    assert dict(df.schema) == SEQUENCES_SCHEMA
    assert df[schema.CUSTOMER_ID].to_list() == [0, 1, 2]  # customer 3 has a label but no events: not a row
    assert df[schema.LABEL].to_list() == [None, 1, None]
    assert dict(_build(HAND).schema) == SEQUENCES_SCHEMA  # no labels: label column all null


def _reference(rows, max_len):
    """Per-customer Python reference (the slow obvious way)."""
    out = {}
    for cid in sorted({r[0] for r in rows}):
        evs = sorted((r for r in rows if r[0] == cid), key=lambda r: (r[1] + r[2] / 86400, r[6]))
        t = [e[1] + e[2] / 86400 for e in evs]
        dt = [0.0] + [math.log1p((b - a) * 24) for a, b in zip(t, t[1:])]
        out[cid] = (t[-max_len:], [e[5] for e in evs][-max_len:], dt[-max_len:], len(evs))
    return out


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 30), st.integers(0, 86399), st.integers(-1000, 1000)),
                min_size=1, max_size=80),
       st.integers(1, 10))
def test_matches_a_per_customer_reference(draw, max_len) -> None:
    rows = [(c, d, s, 5, 5, float(a), i + 1) for i, (c, d, s, a) in enumerate(draw)]
    df = _build(rows, max_len=max_len)
    ref = _reference(rows, max_len)
    assert df[schema.CUSTOMER_ID].to_list() == list(ref)
    for r in df.iter_rows(named=True):
        t, amount, dt, total = ref[r[schema.CUSTOMER_ID]]
        assert r[schema.SEQ_EVENT_TIME] == pytest.approx(t, abs=1e-12)
        np.testing.assert_allclose(r[schema.SEQ_AMOUNT], np.sign(amount) * np.log1p(np.abs(amount)), rtol=1e-6)
        np.testing.assert_allclose(r[schema.SEQ_LOG_DT], dt, rtol=1e-5, atol=1e-6)
        assert (r[schema.SEQ_LENGTH], r[schema.SEQ_TOTAL]) == (len(t), total)


def test_run_sequences_writes_table_vocab_split_manifest(tmp_path, monkeypatch) -> None:
    """The step end to end on a tiny validated-events folder (read through pipeline.ingest.files.read_events)."""
    import json

    from pipeline.sequences import table as sequences
    from pipeline.sequences.table import Vocab, run_sequences
    from pipeline.sequences.splits import Split, SplitConfig

    rng = np.random.default_rng(0)
    rows = [(c, int(rng.integers(0, 400)), int(rng.integers(0, 86400)), int(rng.choice([10, 20, 30, 40])),
             int(rng.choice([7, 8])), float(rng.normal()) * 100) for c in range(60) for _ in range(int(rng.integers(1, 30)))]
    events = events_frame(rows).collect()
    monkeypatch.setattr(sequences, "read_events", lambda d: events.lazy())
    labels_path = tmp_path / "gender_train.csv"
    pl.DataFrame({schema.CUSTOMER_ID: list(range(50)), schema.LABEL: [i % 2 for i in range(50)]}).write_csv(labels_path)
    monkeypatch.setattr(sequences, "read_labels", lambda p, spec: pl.read_csv(p))
    out = tmp_path / "seq"
    res = run_sequences(tmp_path / "events", labels_path, out, SequenceConfig(max_len=8, min_count=1),
                        SplitConfig(n_folds=3, seed=1))
    df = pl.read_parquet(res.sequences_path)
    assert df.height == 60 and res.n_labelled == 50 and df[schema.LABEL].null_count() == 10
    assert res.n_events_total == len(rows) and res.n_events_kept == int(df[schema.SEQ_LENGTH].sum())
    assert df[schema.SEQ_LENGTH].max() <= 8
    split = Split.load(res.split_path)
    assert len(split.test_ids) == 5 and split.split_id == res.split_id
    vocab = Vocab.load(res.vocab_path)
    assert vocab.n_customers == 55  # fitted without the 5 test customers
    manifest = json.loads(res.manifest_path.read_text())
    assert manifest["split"]["split_id"] == split.split_id and manifest["config"]["max_len"] == 8
    assert manifest["counts"]["events_total"] == len(rows)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "sequences.parquet", "split.json", "vocab.json"]


def test_cli_sequences_end_to_end_from_a_raw_csv(tmp_path, capsys) -> None:
    """raw CSV -> txseq-style ingest -> `txseq sequences` -> files and a printed summary."""
    import json

    from pipeline.ingest.files import ingest
    from pipeline.cli import main

    rng = np.random.default_rng(1)
    lines = ["customer_id,tr_datetime,mcc_code,tr_type,amount,term_id"]
    for c in range(40):
        for _ in range(int(rng.integers(1, 15))):
            lines.append(f"{c},{int(rng.integers(0, 450))} {int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:"
                         f"{int(rng.integers(0, 61)):02d},{int(rng.choice([5411, 6011, 4814]))},"
                         f"{int(rng.choice([1010, 7070]))},{float(rng.normal()) * 1000:.2f},")
    raw = tmp_path / "transactions.csv"
    raw.write_text("\n".join(lines) + "\n")
    labels = tmp_path / "gender_train.csv"
    # 30 labelled customers with transactions, and 500 labels of customers the export has no transactions for
    labels.write_text("customer_id,gender\n" + "\n".join(f"{c},{c % 2}" for c in [*range(30), *range(1000, 1500)])
                      + "\n")
    ingest([raw], tmp_path / "events")
    out = tmp_path / "sequences"
    assert main(["sequences", "--events", str(tmp_path / "events"), "--labels", str(labels), "--out", str(out),
                 "--max-len", "10", "--min-count", "1", "--folds", "3"]) == 0
    printed = capsys.readouterr().out
    assert "40 customers (30 labelled)" in printed and "split" in printed
    # left out before the split, counted and named; sizes count only customers that exist
    assert ("labels: 530 in the file, 500 of customers with no transactions left out before the split "
            "(e.g. 1000, 1001, 1002, 1003, 1004); 30 used") in printed
    assert "customers without a label: 10 (e.g. 30, 31, 32, 33, 34" in printed
    assert "test 3, 3 folds of ~9" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"]["without_transactions"] == 500
    assert manifest["labels"]["without_transactions_examples"] == [1000, 1001, 1002, 1003, 1004]
    assert manifest["labels"]["customers_without_label"] == 10 and manifest["labels"]["used"] == 30
    split = json.loads((out / "split.json").read_text())
    assert {*split["test_ids"], *(i for f in split["folds"] for i in f)} == set(range(30))
    df = pl.read_parquet(out / "sequences.parquet")
    assert df.height == 40 and df[schema.SEQ_LENGTH].max() <= 10
    assert df[schema.SEQ_TOTAL].sum() == len(lines) - 1


def test_a_table_from_before_the_label_column_was_renamed_is_refused(tmp_path, capsys) -> None:
    """A sequences table with the old `gender` target column is never read as one without labels: its readers and
    `txseq train` name the file and say how to rebuild it."""
    from pipeline.cli import main
    from pipeline.sequences.batches import SequenceDataset
    from pipeline.sequences.splits import SplitConfig, make_split
    from pipeline.sequences.table import scan_sequences

    labels = pl.DataFrame({schema.CUSTOMER_ID: list(range(20)), schema.LABEL: [i % 2 for i in range(20)]})
    df = _build([(c, c, 60 * c, 10 + c % 3, 7, 1.0) for c in range(20)], labels=labels)
    old = tmp_path / "sequences"
    old.mkdir()
    df.rename({schema.LABEL: schema.GENDER}).write_parquet(old / "sequences.parquet")
    make_split(labels, SplitConfig(n_folds=2)).save(old / "split.json")
    for read in (SequenceDataset, scan_sequences):
        with pytest.raises(ValueError, match="it has `gender`: written by an earlier txseq; rebuild it") as e:
            read(old / "sequences.parquet")
        assert str(e.value).startswith(f"{old / 'sequences.parquet'}: ")
    assert main(["train", "--sequences", str(old), "--events", str(tmp_path / "events"), "--no-register"]) == 2
    assert "it has `gender`" in capsys.readouterr().err
