"""pipeline.raw_csv: the bounded CSV pass gives, block by block, what a plain line-by-line reading gives."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import raw_csv

N = 4  # header fields in these tests


def reference(data: bytes, max_record: int) -> tuple[list[list[str]], int]:
    """(rows of the clean copy after the header, blank lines) read line by line with the csv module."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")[1:]
    if lines and lines[-1] == b"":
        lines.pop()
    rows, blanks = [], 0
    for line in lines:
        if not line.strip():
            blanks += 1
        elif len(line) > max_record:
            rows.append([""] * N + [raw_csv.RECORD_TOO_LONG])
        else:
            fields = next(csv.reader([line.decode("utf-8", "surrogateescape")], strict=False), [])
            if len(fields) == N:
                rows.append([*fields, ""])
            elif len(fields) > N:
                rows.append([*fields[: N - 1], ",".join(fields[N - 1:]), raw_csv.WRONG_FIELD_COUNT])
            else:
                rows.append([*fields, *[""] * (N - len(fields)), raw_csv.WRONG_FIELD_COUNT])
    return rows, blanks


def filtered(path: Path, tmp: Path) -> tuple[list[str], list[list[str]], raw_csv.FilterStats]:
    stats = raw_csv.filter_csv(path, tmp / "clean.csv", ",")
    text = (tmp / "clean.csv").read_bytes().decode("utf-8", "surrogateescape")
    header, *rows = list(csv.reader(io.StringIO(text, newline="")))
    return header, rows, stats


field = st.text(st.sampled_from("ab1-.  \""), max_size=6)
record = st.one_of(
    st.lists(field, min_size=N, max_size=N).map(lambda f: ",".join(f)),  # mostly right
    st.lists(field, min_size=1, max_size=N + 2).map(lambda f: ",".join(f)),  # any field count
    st.sampled_from(["", " ", "\t", "\r"]),  # blank
    st.integers(30, 90).map(lambda n: "x" * n),  # long (limit 40 below)
)


@settings(max_examples=150, deadline=None)
@given(records=st.lists(record, max_size=40), crlf=st.booleans(), read_bytes=st.sampled_from([7, 64, 1 << 22]),
       gz=st.booleans(), final_newline=st.booleans())
def test_blocks_agree_with_a_line_by_line_reading(tmp_path_factory, records: list[str], crlf: bool, read_bytes: int,
                                                   gz: bool, final_newline: bool) -> None:
    tmp = tmp_path_factory.mktemp("raw")
    newline = "\r\n" if crlf else "\n"
    data = newline.join(["a,b,c,d", *records]).encode() + (newline.encode() if final_newline else b"")
    path = tmp / ("t.csv.gz" if gz else "t.csv")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(raw_csv, "READ_BYTES", read_bytes)
        mp.setattr(raw_csv, "MAX_RECORD_BYTES", 40)
        header, rows, stats = filtered(path, tmp)
    expected, blanks = reference(data, 40)
    assert header == ["a", "b", "c", "d", raw_csv.FLAG]
    assert rows == expected
    assert (stats.records, stats.blank_lines) == (len(expected), blanks)
    assert stats.flagged == sum(r[-1] != "" for r in expected)


def test_a_record_longer_than_the_limit_is_skipped_in_bounded_reads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(raw_csv, "READ_BYTES", 16)
    monkeypatch.setattr(raw_csv, "MAX_RECORD_BYTES", 32)
    path = tmp_path / "t.csv"
    path.write_bytes(b"a,b,c,d\n1,2,3,4\n" + b"9" * 1000 + b",2,3,4\n5,6,7,8\n" + b"7" * 500)  # the last has no newline
    _, rows, stats = filtered(path, tmp_path)
    assert rows == [["1", "2", "3", "4", ""], ["", "", "", "", "record_too_long"], ["5", "6", "7", "8", ""],
                    ["", "", "", "", "record_too_long"]]
    assert (stats.records, stats.flagged) == (4, 2)


def test_truncated_gzip_and_long_header_are_read_errors(tmp_path: Path, monkeypatch) -> None:
    data = gzip.compress(b"a,b,c,d\n" + b"".join(b"%d,2,3,4\n" % i for i in range(5000)))
    (tmp_path / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(raw_csv.CsvReadError, match="cannot be read to the end"):
        raw_csv.filter_csv(tmp_path / "cut.csv.gz", tmp_path / "clean.csv", ",")
    with pytest.raises(raw_csv.CsvReadError, match="cannot be read to the end"):
        raw_csv.check_readable(tmp_path / "cut.csv.gz")
    monkeypatch.setattr(raw_csv, "MAX_RECORD_BYTES", 10)
    (tmp_path / "wide.csv").write_bytes(b"a" * 50 + b"\n1\n")
    with pytest.raises(raw_csv.CsvReadError, match="header line is longer"):
        raw_csv.filter_csv(tmp_path / "wide.csv", tmp_path / "clean.csv", ",")
