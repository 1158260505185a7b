"""pipeline.io: table scanning (CSV/.gz/Parquet file and folder), delimiter sniffing, hashing, atomic writes."""

from __future__ import annotations

import re

import bz2
import gzip
import hashlib
import io
import lzma
import os
import zipfile
from pathlib import Path

import polars as pl
import pytest

from hypothesis import given
from hypothesis import strategies as st

from pipeline.io import (
    PathError,
    TableError,
    check_input,
    check_io_paths,
    folder_kind,
    folder_sha256,
    is_uri,
    location,
    open_table,
    printable,
    scan_table,
    sniff_kind,
    sha256_file,
    sniff_delimiter,
    write_parquet_atomic,
    write_text_atomic,
)

CSV = "customer_id,tr_datetime,mcc_code,tr_type,amount,term_id\n1,0 10:00:00,5411,1010,-1.5,\n2,3 11:00:60,6011,2010,-20,007\n"


def test_sniff_delimiter() -> None:
    assert sniff_delimiter("a,b,c") == ","
    assert sniff_delimiter("a;b;c") == ";"
    assert sniff_delimiter("mcc_code;mcc_description") == ";"
    assert sniff_delimiter("single") == ","


@pytest.mark.parametrize("kind", ["csv", "semicolon", "gz", "bom"])
def test_csv_variants_read_as_strings(tmp_path: Path, kind: str) -> None:
    text = CSV.replace(",", ";") if kind == "semicolon" else CSV
    path = tmp_path / ("t.csv.gz" if kind == "gz" else "t.csv")
    data = text.encode()
    if kind == "bom":
        data = b"\xef\xbb\xbf" + data
    path.write_bytes(gzip.compress(data) if kind == "gz" else data)
    df = scan_table(path).collect()
    assert df.columns[:2] == ["customer_id", "tr_datetime"]
    assert all(dtype == pl.String for dtype in df.dtypes)
    assert df.rows() == [("1", "0 10:00:00", "5411", "1010", "-1.5", None), ("2", "3 11:00:60", "6011", "2010", "-20", "007")]


def test_parquet_file_and_hive_folder(tmp_path: Path) -> None:
    df = pl.DataFrame({"customer_id": [1, 2, 3], "amount": [-1.0, 2.0, 3.5], "part": ["a", "b", "a"]})
    df.write_parquet(tmp_path / "one.parquet")
    df.write_parquet(tmp_path / "hive", partition_by="part")
    assert scan_table(tmp_path / "one.parquet").collect().equals(df)
    back = scan_table(tmp_path / "hive").collect().sort("customer_id")
    assert back.select(df.columns).with_columns(pl.col("part").cast(pl.String)).equals(df)


def test_sha256_of_file_and_folder(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(CSV)
    assert sha256_file(path) == hashlib.sha256(CSV.encode()).hexdigest()
    folder = tmp_path / "f"
    folder.mkdir()
    pl.DataFrame({"x": [1]}).write_parquet(folder / "a.parquet")
    first = sha256_file(folder)
    pl.DataFrame({"x": [2]}).write_parquet(folder / "b.parquet")
    assert sha256_file(folder) != first


def test_folder_sha256_is_the_formula_of_a_local_folder_in_any_listing_order(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    (folder / "day=2").mkdir(parents=True)
    (folder / "day=10").mkdir()
    for name in ("day=2/a.parquet", "day=10/a.parquet", "b.parquet"):
        pl.DataFrame({"x": [len(name)]}).write_parquet(folder / name)
    listing = [(p.relative_to(folder).as_posix(), sha256_file(p)) for p in folder.rglob("*.parquet")]
    assert folder_sha256(listing) == folder_sha256(reversed(listing)) == sha256_file(folder)


@given(st.from_regex(r"[a-z][a-z0-9+.-]{1,8}", fullmatch=True), st.from_regex(r"[a-z0-9_.-]{0,12}", fullmatch=True))
def test_uris_are_kept_as_text_and_paths_become_paths(scheme: str, rest: str) -> None:
    uri = f"{scheme}://host/{rest}"
    if scheme == "file":
        assert location(uri) == Path(f"/{rest}") and not is_uri(uri)
    else:
        assert location(uri) == uri and is_uri(uri)
    assert location(f"data/{scheme}/{rest}") == Path(f"data/{scheme}/{rest}")
    assert not is_uri(Path(uri))  # a Path is a path
    assert location("C:/exports/a.csv") == Path("C:/exports/a.csv")  # a drive letter is no scheme


def test_check_io_paths_passes_uris_on_and_refuses_overlapping_ones(tmp_path: Path) -> None:
    local = tmp_path / "a.csv"
    local.write_text(CSV)
    ins, outs = check_io_paths(["hdfs://nn:8020/exports/a.csv", str(local), local.as_uri()],
                               [tmp_path / "out", "s3a://bucket/events/"])
    assert ins == ["hdfs://nn:8020/exports/a.csv", local, local] and outs == [tmp_path / "out", "s3a://bucket/events/"]
    with pytest.raises(PathError, match=r"s3a:/bucket/events: a URI turned into a path \(its // lost\)"):
        check_io_paths([local], [Path("s3a://bucket/events")])
    cases = {"hdfs://nn/exports/a.csv": "output is also an input",
             "hdfs://nn/exports/a.csv/x.parquet": "output lies inside the input folder hdfs://nn/exports/a.csv",
             "hdfs://nn/exports": "input lies inside the output folder hdfs://nn/exports"}
    for output, message in cases.items():
        with pytest.raises(PathError, match=re.escape(message)):
            check_io_paths(["hdfs://nn/exports/a.csv"], [output])
    check_io_paths(["hdfs://nn/exports/a.csv"], ["hdfs://nn/exports/a.csv.scores", "hdfs://other/exports/a.csv"])
    with pytest.raises(PathError, match="the same path is given for two outputs"):
        check_io_paths([local], ["hdfs://nn/o", "hdfs://nn/o"])
    with pytest.raises(PathError, match="file:// URI names this machine's files"):
        check_io_paths(["file://otherhost/a.csv"], [tmp_path / "out"])


def test_folder_kind_is_one_rule_for_any_listing() -> None:
    assert folder_kind("f", ["2026/a.csv", "b.csv.gz"]) == "csv"
    assert folder_kind("f", ["day=1/part-0.parquet", "x.pq"]) == "parquet"
    for names, message in ((["a.csv", "b.parquet"], "both CSV and Parquet"), ([], "no CSV or Parquet"),
                           (["a.csv", "notes.txt"], r"1 file\(s\) that are neither CSV .*: notes.txt")):
        with pytest.raises(TableError, match=f"^f: .*{message}"):
            folder_kind("f", names)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="nope.csv: no such file"):
        scan_table(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(TableError, match="empty.csv: file is empty"):
        scan_table(tmp_path / "empty.csv")
    (tmp_path / "blank.csv").write_text("\n\n")
    with pytest.raises(TableError, match="blank.csv"):
        scan_table(tmp_path / "blank.csv")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(TableError, match="holds no Parquet"):
        scan_table(tmp_path / "empty_dir")
    (tmp_path / "bad.parquet").write_bytes(b"garbage")
    with pytest.raises(TableError, match="bad.parquet"):
        scan_table(tmp_path / "bad.parquet")


def test_atomic_writes_leave_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out" / "x.parquet"
    write_parquet_atomic(pl.DataFrame({"a": [1]}), target)
    assert pl.read_parquet(target)["a"].to_list() == [1]
    with pytest.raises(Exception):
        write_parquet_atomic(pl.LazyFrame({"a": ["x"]}).select(pl.col("a").cast(pl.Int64, strict=True)), target)
    assert pl.read_parquet(target)["a"].to_list() == [1]  # old content intact
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.parquet"]  # no temp file left
    write_text_atomic("hello", tmp_path / "t.txt")
    assert (tmp_path / "t.txt").read_text() == "hello"


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_dead_processes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    import os

    from pipeline.io import remove_dead_temp, temp_path

    mine = temp_path(tmp_path / "scores.parquet", ".staging")  # this (live) process
    mine.mkdir()
    (mine / "part.parquet").write_bytes(b"x")
    host8, pid, rand = mine.name.split(".")[-2].split("-")
    assert pid == str(os.getpid())
    dead = _dead_pid()
    dead_dir = tmp_path / f".scores.parquet.{host8}-{dead}-0123abcd.staging"
    dead_dir.mkdir()
    (dead_dir / "part.parquet").write_bytes(b"x")
    dead_file = tmp_path / f".scores.parquet.{host8}-{dead}-89abcdef.tmp"
    dead_file.write_bytes(b"x")
    other_host = tmp_path / f".scores.parquet.{'0' * 8 if host8 != '0' * 8 else '1' * 8}-{dead}-0123abcd.tmp"
    other_host.write_bytes(b"x")
    legacy = tmp_path / ".scores.parquet.0123456789ab.tmp"  # the old name: owner unknown
    legacy.write_bytes(b"x")
    user = tmp_path / "scores.parquet"
    user.write_bytes(b"x")
    assert sorted(remove_dead_temp(tmp_path)) == sorted([dead_dir, dead_file])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, other_host, legacy, user))
    assert remove_dead_temp(tmp_path / "missing") == []


def test_printable_escapes_and_cuts() -> None:
    assert printable("amount") == "amount"
    assert printable(b"a\x00b\rc\x1b[31m\xff") == r"a\x00b\rc\x1b[31m\xff"
    long = printable("x" * 500, 20)
    assert long == "x" * 20 + "… (500 characters)"
    assert all(c.isprintable() for c in printable(bytes(range(256)), 1000))


def test_special_files_are_refused_before_anything_opens_them(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "zero.csv").symlink_to("/dev/zero")
    with pytest.raises(TableError, match="named pipe"):
        check_input(tmp_path / "pipe.csv")
    with pytest.raises(TableError, match=r"symlink to /dev/zero\): is a character device"):
        with open_table(tmp_path / "zero.csv"):
            pass
    check_input(tmp_path)  # a folder is fine


def _zip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("t.csv", data)
    return buf.getvalue()


@pytest.mark.parametrize(("name", "make", "kind", "message"), [
    ("t.csv.gz", _zip, "a ZIP archive", "named .gz but it is a ZIP archive, not gzip"),
    ("t.csv", bz2.compress, "a bzip2 file", "it is a bzip2 file, not a CSV"),
    ("t.csv", lzma.compress, "an xz file", "it is an xz file, not a CSV"),
    ("t.parquet", _zip, "a ZIP archive", "not a readable Parquet file: it is a ZIP archive"),
])
def test_what_a_misnamed_file_is_is_said(tmp_path: Path, name: str, make, kind: str, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(make(CSV.encode() * 50))
    assert sniff_kind(path) == kind
    with pytest.raises(TableError, match=message):
        with open_table(path):
            pass


def test_parquet_bytes_named_csv(tmp_path: Path) -> None:
    pl.DataFrame({"x": [1]}).write_parquet(tmp_path / "t.csv")
    with pytest.raises(TableError, match="it is a Parquet file, not a CSV; name it .parquet"):
        scan_table(tmp_path / "t.csv")
