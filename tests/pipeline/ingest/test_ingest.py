"""Ingest: per-row reasons, reconciliation, idempotence, overlapping files, file-level errors, the real sample."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from pipeline import schema
from pipeline.cli import main
from pipeline.ingest.rules import IngestConfig, IngestError, validate
from pipeline.ingest.files import ingest, read_events, read_rejects
from pipeline.ingest.labels import read_labels
from pipeline.settings import shared_data_dir

HEADER = "customer_id,tr_datetime,mcc_code,tr_type,amount,term_id"
GOOD = [
    "101,0 10:48:07,5912,1010,-12570.39,",
    "101,5 16:50:60,6010,7070,134754.95,888990",  # seconds 60 read as 59
    "102,456 00:00:00,5411,1110,-5087,00192060",  # amount without ".0", term_id with leading zeros
    "102,456 00:00:00,5411,1110,-5087,00192060",  # repeated date-only record: kept (see ingest docstring)
    "103,12 7:05:00,4814,1030,-1572.14, 302534 ",  # one-digit hour, spaces around term_id
    "5411.0,3 23:59:59,5411.0,1010,1e3,x",  # spreadsheet integers
]
BAD = {  # row -> (reason, column)
    ",0 10:00:00,5411,1010,-1.0,": ("missing_value", "customer_id"),
    "104,0 10:00:00,5411,1010,,": ("missing_value", "amount"),
    "abc,0 10:00:00,5411,1010,-1.0,": ("not_an_integer", "customer_id"),
    "104,0 10:00:00,54x1,1010,-1.0,": ("not_an_integer", "mcc_code"),
    "104,0 10:00:00,5411,1010.5,-1.0,": ("not_an_integer", "tr_type"),
    "-104,0 10:00:00,5411,1010,-1.0,": ("not_an_integer", "customer_id"),
    "99999999999999999999,0 10:00:00,5411,1010,-1.0,": ("not_an_integer", "customer_id"),
    "104,0 24:00:00,5411,1010,-1.0,": ("unparseable_datetime", "tr_datetime"),
    "104,0 10:60:00,5411,1010,-1.0,": ("unparseable_datetime", "tr_datetime"),
    "104,0 10:00:61,5411,1010,-1.0,": ("unparseable_datetime", "tr_datetime"),
    "104,2020-01-01 10:00:00,5411,1010,-1.0,": ("unparseable_datetime", "tr_datetime"),
    "104,10:00:00,5411,1010,-1.0,": ("unparseable_datetime", "tr_datetime"),
    "104,-1 10:00:00,5411,1010,-1.0,": ("day_out_of_range", "tr_datetime"),
    "104,3651 10:00:00,5411,1010,-1.0,": ("day_out_of_range", "tr_datetime"),
    "104,0 10:00:00,5411,1010,\"1,5\",": ("unparseable_amount", "amount"),
    "104,0 10:00:00,5411,1010,12.3.4,": ("unparseable_amount", "amount"),
    "104,0 10:00:00,5411,1010,nan,": ("non_finite_amount", "amount"),
    "104,0 10:00:00,5411,1010,-inf,": ("non_finite_amount", "amount"),
    "104,0 10:00:00,5411,1010,1e13,": ("amount_out_of_range", "amount"),
    "104,0 10:00:00,5411,1010,1e400,": ("amount_out_of_range", "amount"),
}
DUPLICATE = "101,0 10:48:07,5912,1010,-12570.39,"  # == GOOD[0]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


@pytest.fixture()
def mixed_csv(tmp_path: Path) -> Path:
    return _write(tmp_path / "mixed.csv", [*GOOD, *BAD, DUPLICATE])


def test_good_rows_parse_to_typed_events(tmp_path: Path) -> None:
    events, rejects = validate(pl.scan_csv(_write(tmp_path / "g.csv", GOOD), infer_schema=False), "g.csv")
    ev = events.collect()
    assert rejects.collect().height == 0
    assert ev.schema == pl.Schema(schema.EVENTS_SCHEMA)
    assert ev[schema.CUSTOMER_ID].to_list() == [101, 101, 102, 102, 103, 5411]
    assert ev[schema.DAY].to_list() == [0, 5, 456, 456, 12, 3]
    assert ev[schema.SECOND_OF_DAY].to_list() == [
        10 * 3600 + 48 * 60 + 7, 16 * 3600 + 50 * 60 + 59, 0, 0, 7 * 3600 + 5 * 60, 86399]
    assert ev[schema.EVENT_TIME][1] == pytest.approx(5 + (16 * 3600 + 50 * 60 + 59) / 86400)
    assert ev[schema.TR_DATETIME][1] == "5 16:50:60"  # the original text is kept
    assert ev[schema.AMOUNT].to_list() == [-12570.39, 134754.95, -5087.0, -5087.0, -1572.14, 1000.0]
    assert ev[schema.TERM_ID].to_list() == [None, "888990", "00192060", "00192060", "302534", "x"]
    assert ev[schema.MCC_CODE][-1] == 5411 and ev[schema.SOURCE_ROW].to_list() == [1, 2, 3, 4, 5, 6]
    assert ev[schema.ROW_HASH][2] == ev[schema.ROW_HASH][3] and ev[schema.ROW_HASH].n_unique() == 5


def test_every_reject_reason_with_its_column_and_source_row(mixed_csv: Path) -> None:
    events, rejects = validate(pl.scan_csv(mixed_csv, infer_schema=False), str(mixed_csv))
    rj = rejects.collect()
    assert rj.schema == pl.Schema(schema.REJECTS_SCHEMA)
    expected = [(len(GOOD) + 1 + i, r, c) for i, (r, c) in enumerate(BAD.values())]
    expected.append((len(GOOD) + len(BAD) + 1, "duplicate_row", None))
    assert list(rj.select(schema.SOURCE_ROW, schema.REASON, schema.REJECT_COLUMN).iter_rows()) == expected
    assert rj[schema.CUSTOMER_ID][0] is None and rj[schema.AMOUNT][-2] == "1e400"  # raw text kept
    assert events.collect().height == len(GOOD)


def test_first_failing_check_wins() -> None:
    lf = pl.LazyFrame({c: [v] for c, v in zip(schema.RAW_COLUMNS, ["x", "bad", "y", "z", "nan", None])})
    _, rejects = validate(lf, "t")
    assert rejects.collect().row(0, named=True)[schema.REASON] == "not_an_integer"


def test_invalid_utf8_rows_are_rejected_not_altered(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + "\n" + GOOD[0] + "\n").encode() + b"105,0 10:00:00,5411,1010,-1.0,caf\xe9\n")
    result = ingest([path], tmp_path / "out")
    assert (result.accepted, result.rejected) == (1, 1)
    bad = read_rejects(tmp_path / "out").collect().row(0, named=True)
    assert (bad[schema.REASON], bad[schema.REJECT_COLUMN], bad[schema.SOURCE_ROW]) == ("invalid_utf8", "term_id", 2)


def test_dedupe_date_only_option(tmp_path: Path) -> None:
    path = _write(tmp_path / "g.csv", GOOD)
    _, rejects = validate(pl.scan_csv(path, infer_schema=False), "g", IngestConfig(dedupe_date_only=True))
    assert rejects.collect()[schema.SOURCE_ROW].to_list() == [4]


def test_reconciliation_counts_and_manifest(mixed_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = ingest([mixed_csv], out)
    n = len(GOOD) + len(BAD) + 1
    assert (result.rows_in, result.accepted, result.rejected) == (n, len(GOOD), len(BAD) + 1)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    (entry,) = manifest["files"]
    assert entry["rows_in"] == entry["accepted"] + entry["rejected"] == n
    assert entry["rejected_by_reason"]["not_an_integer"] == 5 and entry["rejected_by_reason"]["duplicate_row"] == 1
    assert sum(entry["rejected_by_reason"].values()) == entry["rejected"]
    assert len(entry["sha256"]) == 64 and (out / "events" / entry["part"]).exists()
    assert manifest["totals"]["rows_in"] == n
    table = result.format_table()
    assert "TOTAL" in table and "duplicate_row" in table and str(mixed_csv) in table
    assert read_events(out).collect().height == len(GOOD)
    assert read_rejects(out).collect().height == len(BAD) + 1


def test_same_file_twice_is_a_recorded_no_op(mixed_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest([mixed_csv], out)
    before = read_events(out).collect()
    copy = tmp_path / "copy-of-mixed.csv"
    copy.write_bytes(mixed_csv.read_bytes())
    again = ingest([mixed_csv, copy], out)
    assert [f.status.split(" (")[0] for f in again.files] == ["already ingested", "already ingested"]
    assert again.rows_in == 0
    assert_frame_equal(read_events(out).collect(), before)
    assert len(json.loads((out / "manifest.json").read_text())["files"]) == 1
    assert len(list((out / "events").iterdir())) == 1


def test_overlapping_files_do_not_duplicate_rows(tmp_path: Path) -> None:
    rows = [f"{c},{d} 1{c % 10}:00:00,5411,1010,-{c}{d}.5," for c in range(20) for d in range(1, 4)]
    first = _write(tmp_path / "jan.csv", rows[:40])
    second = _write(tmp_path / "feb.csv", rows[30:])  # rows 30..39 were already in the first export
    result = ingest([first, second], tmp_path / "out")
    assert [f.accepted for f in result.files] == [40, 20]
    assert result.files[1].rejected_by_reason == {"duplicate_of_ingested_row": 10}
    events = read_events(tmp_path / "out").collect()
    assert events.height == len(rows) and events[schema.ROW_HASH].n_unique() == len(rows)


def test_csv_semicolon_gzip_and_parquet_give_identical_events(mixed_csv: Path, tmp_path: Path) -> None:
    good = _write(tmp_path / "good.csv", GOOD)
    semi = tmp_path / "semi.csv"
    semi.write_text(good.read_text().replace(",", ";"))
    gz = tmp_path / "good.csv.gz"
    gz.write_bytes(gzip.compress(good.read_bytes()))
    typed = pl.read_csv(good, schema_overrides={schema.TERM_ID: pl.String, schema.CUSTOMER_ID: pl.String,
                                                schema.MCC_CODE: pl.String})
    pq_file = tmp_path / "good.parquet"
    typed.write_parquet(pq_file)
    hive = tmp_path / "hive"
    typed.with_columns(part=pl.col(schema.TR_TYPE) % 2).write_parquet(hive, partition_by="part")

    def events(path: Path, **kw) -> pl.DataFrame:
        out = tmp_path / f"out-{path.name}"
        ingest([path], out, IngestConfig(**kw))
        return read_events(out).drop(schema.SOURCE_FILE, schema.SOURCE_ROW).sort(schema.ROW_HASH).collect()

    reference = events(good)
    for other in (events(semi), events(gz), events(pq_file), events(hive, allow_extra_columns=True)):
        assert_frame_equal(other, reference)


def test_real_sample_ingests_with_only_its_double_postings_rejected(tmp_path: Path) -> None:
    real = shared_data_dir()
    if real is None:
        pytest.skip("../shared not present")
    result = ingest([real / "transactions_sample_unlabelled.csv.gz"], tmp_path / "out")
    assert result.rows_in == 57_968
    # the 5 rejected rows repeat an earlier row to the second (adjacent double postings of one customer's payments)
    assert result.files[0].rejected_by_reason == {"duplicate_row": 5}
    events = read_events(tmp_path / "out").collect()
    assert events.height == 57_963
    assert events.filter(pl.col(schema.TR_DATETIME).str.ends_with(":60")).height == 849
    assert events[schema.DAY].min() == 0 and events[schema.DAY].max() == 456
    assert (events[schema.SECOND_OF_DAY] < 86400).all()


# ---- file-level errors -------------------------------------------------------------------------------------------


def _ingest_error(path: Path, tmp_path: Path, **kw) -> str:
    out = tmp_path / "out"
    with pytest.raises(IngestError) as e:
        ingest([path], out, IngestConfig(**kw))
    assert not any(p.is_file() for p in out.rglob("*"))  # nothing half-written
    assert str(path) in str(e.value)
    return str(e.value)


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    assert "empty" in _ingest_error(tmp_path / "empty.csv", tmp_path)
    assert "header only" in _ingest_error(_write(tmp_path / "header.csv", []), tmp_path)


def test_missing_and_unknown_columns_are_named(tmp_path: Path) -> None:
    no_amount = tmp_path / "no_amount.csv"
    no_amount.write_text("customer_id,tr_datetime,mcc_code,tr_type\n1,0 10:00:00,5411,1010\n")
    msg = _ingest_error(no_amount, tmp_path)
    assert "missing column(s) amount" in msg and "found: customer_id, tr_datetime, mcc_code, tr_type" in msg
    extra = tmp_path / "extra.csv"
    extra.write_text(HEADER + ",channel,region\n" + GOOD[0] + ",web,7\n")
    msg = _ingest_error(extra, tmp_path)
    assert "unknown column(s) channel, region" in msg
    result = ingest([extra], tmp_path / "ok", IngestConfig(allow_extra_columns=True))
    assert result.accepted == 1


def test_term_id_column_is_optional(tmp_path: Path) -> None:
    path = tmp_path / "no_term.csv"
    path.write_text("customer_id,tr_datetime,mcc_code,tr_type,amount\n1,0 10:00:00,5411,1010,-3.5\n")
    ingest([path], tmp_path / "out")
    assert read_events(tmp_path / "out").collect()[schema.TERM_ID].to_list() == [None]


def test_wrong_delimiter_hints_at_it(tmp_path: Path) -> None:
    tabbed = tmp_path / "tabbed.csv"
    tabbed.write_text(HEADER.replace(",", "\t") + "\n" + GOOD[0].replace(",", "\t") + "\n")
    assert "delimiter" in _ingest_error(tabbed, tmp_path)


def test_truncated_gzip_is_a_file_error_not_fewer_rows(tmp_path: Path) -> None:
    lines = [f"{i},{i % 400} 10:00:{i % 60:02d},5411,1010,-{i}.25,{i}" for i in range(50_000)]
    data = gzip.compress(("\n".join([HEADER, *lines]) + "\n").encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert "cut.csv.gz" in _ingest_error(cut, tmp_path)


def test_corrupt_parquet(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    assert "Parquet" in _ingest_error(bad, tmp_path)


def test_missing_input(tmp_path: Path) -> None:
    assert "no such file" in _ingest_error(tmp_path / "nope.csv", tmp_path)


def test_cli_ingest_prints_reconciliation_and_fails_cleanly(mixed_csv: Path, tmp_path: Path, capsys) -> None:
    assert main(["ingest", str(mixed_csv), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "TOTAL" in printed and "manifest.json" in printed
    (tmp_path / "empty.csv").write_bytes(b"")
    assert main(["ingest", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty.csv" in err and "Traceback" not in err


# ---- labels ------------------------------------------------------------------------------------------------------


def test_read_labels(tmp_path: Path) -> None:
    path = tmp_path / "gender_train.csv"
    path.write_text("customer_id,gender\n10928546,1\n69348468,0\n")
    labels = read_labels(path)
    assert labels.schema == pl.Schema({schema.CUSTOMER_ID: pl.Int64, schema.LABEL: pl.Int8})
    assert labels.rows() == [(10928546, 1), (69348468, 0)]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("1,2\n", "row 1: gender not 0/1"),
        ("1,0\nx,1\n", "row 2: customer_id not an integer"),
        ("1,0\n1,1\n", "row 2: repeated customer_id"),
        (",1\n", "row 1: missing customer_id"),
    ],
)
def test_bad_labels_fail_with_the_rows(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("customer_id,gender\n" + body)
    with pytest.raises(IngestError, match=problem):
        read_labels(path)


def test_real_labels_are_valid() -> None:
    real = shared_data_dir()
    if real is None:
        pytest.skip("../shared not present")
    labels = read_labels(real / "gender_train.csv")
    assert labels.height == 8400 and labels[schema.LABEL].sum() == 3713


# ---- property: datetime parsing -------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3650), st.integers(0, 23), st.integers(0, 59), st.integers(0, 60)),
                min_size=1, max_size=50))
def test_valid_datetimes_parse_exactly(stamps: list[tuple[int, int, int, int]]) -> None:
    texts = [f"{d} {h:02d}:{m:02d}:{s:02d}" for d, h, m, s in stamps]
    n = len(texts)
    lf = pl.LazyFrame({schema.CUSTOMER_ID: ["1"] * n, schema.TR_DATETIME: texts, schema.MCC_CODE: ["5411"] * n,
                       schema.TR_TYPE: ["1010"] * n, schema.AMOUNT: [f"-{i}.5" for i in range(n)],
                       schema.TERM_ID: [None] * n})
    events, rejects = validate(lf, "prop")
    ev = events.collect()
    assert rejects.collect().height == 0
    assert ev[schema.DAY].to_list() == [d for d, *_ in stamps]
    assert ev[schema.SECOND_OF_DAY].to_list() == [h * 3600 + m * 60 + min(s, 59) for _, h, m, s in stamps]
    assert ev[schema.EVENT_TIME].to_list() == pytest.approx([d + (h * 3600 + m * 60 + min(s, 59)) / 86400 for d, h, m, s in stamps])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.integers(0, 3650), st.integers(24, 99), st.integers(0, 59), st.integers(0, 59)),
    st.tuples(st.integers(0, 3650), st.integers(0, 23), st.integers(60, 99), st.integers(0, 59)),
    st.tuples(st.integers(0, 3650), st.integers(0, 23), st.integers(0, 59), st.integers(61, 99)),
), min_size=1, max_size=30))
def test_out_of_range_clock_values_are_unparseable(stamps: list[tuple[int, int, int, int]]) -> None:
    n = len(stamps)
    lf = pl.LazyFrame({schema.CUSTOMER_ID: [str(i) for i in range(n)],
                       schema.TR_DATETIME: [f"{d} {h:02d}:{m:02d}:{s:02d}" for d, h, m, s in stamps],
                       schema.MCC_CODE: ["5411"] * n, schema.TR_TYPE: ["1010"] * n, schema.AMOUNT: ["-1.0"] * n,
                       schema.TERM_ID: [None] * n})
    _, rejects = validate(lf, "prop")
    assert rejects.collect()[schema.REASON].to_list() == ["unparseable_datetime"] * n


def test_repeat_check_in_buckets_equals_in_one_go(mixed_csv: Path, monkeypatch) -> None:
    import pipeline.ingest.rules as ingest_module

    def rejected_rows() -> list[tuple[int, str]]:
        _, rejects = validate(pl.scan_csv(mixed_csv, infer_schema=False), "m", IngestConfig(dedupe_date_only=True))
        return list(rejects.collect().select(schema.SOURCE_ROW, schema.REASON).iter_rows())

    whole = rejected_rows()
    monkeypatch.setattr(ingest_module, "DEDUP_BUCKET_ROWS", 3)
    assert rejected_rows() == whole
    assert [r for r in whole if r[1] == "duplicate_row"] == [(4, "duplicate_row"), (len(GOOD) + len(BAD) + 1, "duplicate_row")]


# ---- typed (Parquet) numeric columns: checked as numbers, same outcome as through their text -------------------


_TYPED_ROWS = [  # customer_id, tr_datetime, mcc_code, tr_type, amount, term_id
    (101, "0 10:48:07", 5912, 1010, -12570.39, None),
    (101, "0 10:48:07", 5912, 1010, -12570.39, None),  # repeat: duplicate_row
    (102, "1 10:00:00", 5411, 1010, 0.0, "t"),
    (102, "1 10:00:00", 5411, 1010, -0.0, "t"),  # text "-0.0" != "0.0": not a repeat
    (None, "1 10:00:00", 5411, 1010, 1.0, None),  # missing_value customer_id
    (103, "1 10:00:00", None, 1010, 1.0, None),  # missing_value mcc_code
    (103, "1 10:00:00", 5411, 1010, None, None),  # missing_value amount
    (-104, "1 10:00:00", 5411, 1010, 1.0, None),  # not_an_integer customer_id
    (104, "1 10:00:00", -5411, 1010, 1.0, None),  # not_an_integer mcc_code
    (104, "1 10:00:00", 5411, 2**31, 1.0, None),  # not_an_integer tr_type (above Int32)
    (104, "1 10:00:00", 5411, 1010, float("nan"), None),  # non_finite_amount
    (104, "1 10:00:00", 5411, 1010, float("inf"), None),
    (104, "1 10:00:00", 5411, 1010, -float("inf"), None),
    (104, "1 10:00:00", 5411, 1010, 1e20, None),  # amount_out_of_range
    (104, "1 10:00:00", 5411, 1010, -1e12, None),  # |x| == max: kept
    (-105, "x", None, -1, float("nan"), None),  # several faults: the first check wins (missing mcc_code)
    (105, "1 25:00:00", 5411, 1010, float("nan"), None),  # unparseable_datetime before non_finite_amount
    (106, "2 00:00:00", 4814, 1030, 5.5, None),
]
_TYPED_COLUMNS = {schema.CUSTOMER_ID: pl.Int64, schema.TR_DATETIME: pl.String, schema.MCC_CODE: pl.Int32,
                  schema.TR_TYPE: pl.Int64, schema.AMOUNT: pl.Float64, schema.TERM_ID: pl.String}


def _typed_frame(rows: list[tuple], dtypes: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=dtypes, orient="row")


def _validated(lf: pl.LazyFrame, **kw) -> tuple[pl.DataFrame, pl.DataFrame]:
    events, rejects = validate(lf, "f", **kw)
    return events.collect(), rejects.collect()


def test_typed_parquet_and_its_csv_text_give_identical_events_and_rejects(tmp_path: Path) -> None:
    from pipeline.io import scan_table

    typed = _typed_frame(_TYPED_ROWS, _TYPED_COLUMNS)
    typed = pl.concat([typed, typed.with_columns(  # float ids: 5411.0 is the integer 5411, 5411.5 is not
        pl.Series(schema.MCC_CODE, [5411.0, 5411.5] + [4814.0] * (typed.height - 2)))], how="diagonal_relaxed")
    pq_file, csv_file = tmp_path / "t.parquet", tmp_path / "t.csv"
    typed.write_parquet(pq_file)
    typed.select(pl.all().cast(pl.String)).write_csv(csv_file)  # the same values as text
    assert pl.read_parquet_schema(pq_file)[schema.CUSTOMER_ID] == pl.Int64  # the typed route is taken
    ev_pq, rj_pq = _validated(scan_table(pq_file))
    ev_csv, rj_csv = _validated(scan_table(csv_file))
    assert_frame_equal(ev_pq.drop(schema.SOURCE_FILE), ev_csv.drop(schema.SOURCE_FILE))
    assert_frame_equal(rj_pq.drop(schema.SOURCE_FILE), rj_csv.drop(schema.SOURCE_FILE))
    # the mcc column became Float64 in the concatenation, so the text route is used for it; check the typed ones
    first = _validated(_typed_frame(_TYPED_ROWS, _TYPED_COLUMNS).lazy())[1]
    assert list(first.select(schema.SOURCE_ROW, schema.REASON, schema.REJECT_COLUMN).iter_rows()) == [
        (2, "duplicate_row", None), (5, "missing_value", "customer_id"), (6, "missing_value", "mcc_code"),
        (7, "missing_value", "amount"), (8, "not_an_integer", "customer_id"), (9, "not_an_integer", "mcc_code"),
        (10, "not_an_integer", "tr_type"), (11, "non_finite_amount", "amount"), (12, "non_finite_amount", "amount"),
        (13, "non_finite_amount", "amount"), (14, "amount_out_of_range", "amount"), (16, "missing_value", "mcc_code"),
        (17, "unparseable_datetime", "tr_datetime"),
    ]
    assert first[schema.AMOUNT].to_list()[7:10] == ["NaN", "inf", "-inf"]  # rejects keep the raw text


_INT_DTYPES = [pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64]


@st.composite
def _typed_rows(draw) -> tuple[list[tuple], dict[str, pl.DataType]]:
    dtypes = {schema.CUSTOMER_ID: draw(st.sampled_from(_INT_DTYPES)), schema.TR_DATETIME: pl.String,
              schema.MCC_CODE: draw(st.sampled_from(_INT_DTYPES)), schema.TR_TYPE: draw(st.sampled_from(_INT_DTYPES)),
              schema.AMOUNT: pl.Float64, schema.TERM_ID: pl.String}

    def ints(dtype: pl.DataType):
        bits = int(str(dtype).lstrip("UInt"))
        lo, hi = (0, 2**bits - 1) if str(dtype).startswith("U") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        return st.one_of(st.none(), st.integers(lo, hi), st.sampled_from([v for v in (0, 1, 5411, 2**31 - 1, 2**31,
                                                                                        2**63 - 1, 2**63) if lo <= v <= hi]))

    amount = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([0.0, -0.0, 1e12, -1e12, 1e12 + 1, 1e300, 5e-324, -12570.39]))
    row = st.tuples(ints(dtypes[schema.CUSTOMER_ID]), st.sampled_from(["0 10:48:07", "1 00:00:00", "3651 10:00:00", "x"]),
                    ints(dtypes[schema.MCC_CODE]), ints(dtypes[schema.TR_TYPE]), amount,
                    st.sampled_from([None, "", "t1"]))
    rows = draw(st.lists(row, min_size=1, max_size=30))
    rows += draw(st.lists(st.sampled_from(rows), max_size=5))  # exact repeats
    return rows, dtypes


@settings(max_examples=60, deadline=None)
@given(_typed_rows())
def test_typed_numeric_columns_validate_exactly_as_their_text(case: tuple[list[tuple], dict[str, pl.DataType]]) -> None:
    rows, dtypes = case
    lf = _typed_frame(rows, dtypes).lazy()
    fast_events, fast_rejects = _validated(lf)
    text_events, text_rejects = _validated(lf, text_only=True)
    assert_frame_equal(fast_events, text_events)
    assert_frame_equal(fast_rejects, text_rejects)
    assert fast_events.height + fast_rejects.height == len(rows)


def test_combined_validation_splits_into_the_same_events_and_rejects(mixed_csv: Path) -> None:
    from pipeline.ingest.rules import split_combined, validate_combined

    for lf in (pl.scan_csv(mixed_csv, infer_schema=False), _typed_frame(_TYPED_ROWS, _TYPED_COLUMNS).lazy()):
        events, rejects = (x.collect() for x in validate(lf, "f"))
        combined = validate_combined(lf, "f").collect()
        assert combined.height == events.height + rejects.height
        split_events, split_rejects = (x.collect() for x in split_combined(combined.lazy()))
        assert_frame_equal(split_events, events)
        assert_frame_equal(split_rejects, rejects)
        assert rejects.height > 0 and events.height > 0


# ---- numbers: ids are identifiers, codes keep their zero padding, ASCII digits only (README "Decisions") ----------

_DIGITS = {"ascii": "0123456789", "arabic_indic": "٠١٢٣٤٥٦٧٨٩", "fullwidth": "０１２３４５６７８９"}


def _written(n: int, sign: str, zeros: int, digits: str) -> str:
    return sign + "0" * zeros + "".join(_DIGITS[digits][int(c)] for c in str(n))


def _expected_id_reason(text: str, sign: str, zeros: int, digits: str) -> str | None:
    if digits != "ascii" or sign:
        return "not_an_integer"
    return "ambiguous_id" if text[0] == "0" and len(text) > 1 else None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**12), st.sampled_from(["", "+"]), st.integers(0, 2),
                          st.sampled_from(list(_DIGITS))), min_size=1, max_size=30))
def test_integer_text_forms(forms: list[tuple[int, str, int, str]]) -> None:
    """customer_id: plain ASCII digits only ('+101' not an integer, '0102' an ambiguous id); mcc_code / tr_type:
    leading zeros are zero padding ('0742' is 742), a sign or non-ASCII digits are not an integer."""
    n = len(forms)
    texts = [_written(*f) for f in forms]
    base = {schema.TR_DATETIME: [f"{i} 10:00:00" for i in range(n)], schema.AMOUNT: ["-1.5"] * n,
            schema.TERM_ID: [None] * n}
    as_id = pl.LazyFrame({schema.CUSTOMER_ID: texts, schema.MCC_CODE: ["5411"] * n, schema.TR_TYPE: ["1010"] * n, **base})
    as_code = pl.LazyFrame({schema.CUSTOMER_ID: [str(i) for i in range(n)], schema.MCC_CODE: texts,
                            schema.TR_TYPE: ["1010"] * n, **base})
    for lf, column in ((as_id, schema.CUSTOMER_ID), (as_code, schema.MCC_CODE)):
        events, rejects = (f.collect() for f in validate(lf, "t"))
        reasons = dict(zip(rejects[schema.SOURCE_ROW], rejects[schema.REASON]))
        values = dict(zip(events[schema.SOURCE_ROW], events[column]))
        for i, ((value, sign, zeros, digits), text) in enumerate(zip(forms, texts), start=1):
            if column == schema.CUSTOMER_ID:
                expected = _expected_id_reason(text, sign, zeros, digits)
            else:
                expected = "not_an_integer" if sign or digits != "ascii" or value > 2**31 - 1 else None
            assert reasons.get(i) == expected, (column, text)
            if expected is None:
                assert values[i] == value


@pytest.mark.parametrize("day", ["٥", "５", "+5", "5٥"])
def test_a_day_in_other_digits_is_an_unparseable_datetime(day: str) -> None:
    lf = pl.LazyFrame({schema.CUSTOMER_ID: ["1"], schema.TR_DATETIME: [f"{day} 10:00:00"], schema.MCC_CODE: ["5411"],
                       schema.TR_TYPE: ["1010"], schema.AMOUNT: ["-1"], schema.TERM_ID: [None]})
    assert validate(lf, "t")[1].collect()[schema.REASON].to_list() == ["unparseable_datetime"]


# ---- inputs as units: folders of CSV, --atomic, staging -----------------------------------------------------------


def test_a_folder_of_csv_files_is_one_unit(tmp_path: Path) -> None:
    folder = tmp_path / "daily"
    folder.mkdir()
    _write(folder / "b.csv", GOOD[:2])
    (folder / "a.csv.gz").write_bytes(gzip.compress(("\n".join([HEADER, *GOOD[4:]]) + "\n").encode()))
    result = ingest([folder], tmp_path / "out")
    assert [Path(f.path).name for f in result.files] == ["a.csv.gz", "b.csv"] and result.accepted == 4
    (folder / "c.csv").write_text(HEADER + "\n")  # header only: the folder fails, nothing of it is recorded
    with pytest.raises(IngestError, match=r"c\.csv: no data rows .* committed: none; not ingested: "):
        ingest([folder], tmp_path / "out2")
    assert not (tmp_path / "out2" / "manifest.json").exists()
    assert not [p for p in (tmp_path / "out2").rglob("*") if p.is_file()]


@pytest.mark.parametrize("extra", ["notes.txt", "data.zip"])
def test_a_folder_with_other_files_is_refused(tmp_path: Path, extra: str) -> None:
    folder = tmp_path / "daily"
    folder.mkdir()
    _write(folder / "a.csv", GOOD[:2])
    (folder / extra).write_text("x")
    with pytest.raises(IngestError, match=f"neither CSV .* nor Parquet: {extra}"):
        ingest([folder], tmp_path / "out")


def test_duplicate_names_and_nested_columns_are_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("customer_id,tr_datetime,mcc_code,tr_type,amount,amount\n1,0 10:00:00,5411,1010,-1,-2\n")
    for allow in (False, True):
        with pytest.raises(IngestError, match=r"column\(s\) amount appear more than once") as e:
            ingest([path], tmp_path / "out", IngestConfig(allow_extra_columns=allow))
        assert "duplicated" not in str(e.value)
    nested = tmp_path / "nested.parquet"
    pl.DataFrame({schema.CUSTOMER_ID: [1], schema.TR_DATETIME: ["0 10:00:00"], schema.MCC_CODE: [5411],
                  schema.TR_TYPE: [1010], schema.AMOUNT: [{"value": -1.5}]}).write_parquet(nested)
    with pytest.raises(IngestError, match=r"column amount holds Struct.* expected one value per row \(a number\)"):
        ingest([nested], tmp_path / "out")


def test_blank_lines_and_reasons_in_manifest_summary_and_reconciliation(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("\n".join([HEADER, "", GOOD[0], "  ", GOOD[1], GOOD[1], "104,0 10:00:00,5411,1010", ""]) + "\n")
    result = ingest([path], tmp_path / "out")
    (entry,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["files"]
    assert (entry["rows_in"], entry["blank_lines"]) == (4, 3)
    assert entry["rejected_by_reason"] == {"duplicate_row": 1, "wrong_field_count": 1}
    assert result.summary().endswith("(1 wrong_field_count, 1 duplicate_row; rows in "
                                     f"{tmp_path / 'out' / 'rejects'}); 3 blank line(s) skipped")
    total = result.reconciliation()[-1]
    assert (total["wrong_field_count"], total["duplicate_row"], total["blank_lines"]) == (1, 1, 3)
