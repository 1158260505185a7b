"""pipeline.sequences.table.Vocab / fit_vocab: frequency ranks fitted on training customers, unknowns at scoring
time."""

from __future__ import annotations

import polars as pl

from pipeline import schema
from pipeline.sequences.table import SequenceConfig, Vocab, build_sequences, fit_vocab
from _sequence_events import events_frame  # on sys.path: tests/pipeline/conftest.py

# customer 1: mcc 10 ×3, 20 ×2, 30 ×1; customer 2 (held out): mcc 99 ×5
ROWS = [(1, 0, 0, 10, 7, 1.0), (1, 0, 1, 10, 7, 1.0), (1, 0, 2, 10, 8, 1.0), (1, 0, 3, 20, 8, 1.0),
        (1, 0, 4, 20, 9, 1.0), (1, 0, 5, 30, 9, 1.0)] + [(2, 1, s, 99, 7, 1.0) for s in range(5)]


def test_frequency_ranks_min_count_and_training_customers_only() -> None:
    v = fit_vocab(events_frame(ROWS), customer_ids=[1], min_count=2)
    assert v.mcc == {10: 2, 20: 3}  # 30 is rarer than min_count, 99 belongs to a held-out customer
    assert v.tr_type == {7: 2, 8: 3, 9: 4}  # equal counts: the smaller code ranks first
    assert (v.size_mcc, v.size_tr_type) == (4, 5)
    assert (v.n_events, v.n_customers) == (6, 1)


def test_unseen_and_rare_codes_encode_as_unknown_at_scoring_time() -> None:
    v = fit_vocab(events_frame(ROWS), customer_ids=[1], min_count=2)
    scoring = events_frame([(5, 0, 0, 10, 7, 1.0), (5, 0, 1, 30, 8, 1.0), (5, 0, 2, 12345, 555, 1.0),
                            (5, 0, 3, 99, 9, 1.0)])
    seq = build_sequences(scoring, v, SequenceConfig())
    assert seq[schema.SEQ_MCC].to_list() == [[2, 1, 1, 1]]
    assert seq[schema.SEQ_TR_TYPE].to_list() == [[2, 3, 1, 4]]


def test_null_code_encodes_as_unknown() -> None:
    lf = events_frame([(1, 0, 0, 10, 7, 1.0), (1, 0, 1, 10, 7, 1.0)])
    lf = lf.with_columns(pl.when(pl.col(schema.SOURCE_ROW) == 2).then(None).otherwise(pl.col(schema.MCC_CODE))
                         .alias(schema.MCC_CODE))
    v = fit_vocab(lf, min_count=1)
    assert v.mcc == {10: 2}
    assert build_sequences(lf, v)[schema.SEQ_MCC].to_list() == [[2, 1]]


def test_save_load_roundtrip(tmp_path) -> None:
    v = fit_vocab(events_frame(ROWS), min_count=1)
    assert Vocab.load(v.save(tmp_path / "vocab.json")) == v
