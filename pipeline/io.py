"""Reading raw tables (CSV plain or .gz, Parquet file or folder) as lazy frames, and writing files atomically.

`open_table` is the way raw inputs are read: it checks what it can see before reading the data (a regular file or
folder, not a FIFO or a device; what the file really is by its magic bytes; a header without repeated names; the
delimiter), then streams a CSV through `pipeline.raw_csv` (bounded memory: blank lines counted and dropped, records
of the wrong field count or length flagged) into a temporary plain copy that polars scans. Errors are `TableError`s
naming the file; anything echoed from the file goes through `printable` (escaped, cut). `scan_table` scans a table
as it is (Parquet, or a clean CSV such as labels) without that pass.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import tempfile
import uuid
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import polars as pl
import pyarrow.parquet as pq

from pipeline import raw_csv

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".csv.gz")
ECHO_CHARS = 80  # the most characters of file content any message repeats
CSV_DELIMITERS = (",", ";")
REPLACEMENT_CHAR = "\ufffd"  # what lossy UTF-8 decoding puts in place of invalid bytes


class TableError(Exception):
    """A file-level problem with an input table; the message names the file."""


class PathError(ValueError):
    """Input/output paths that cannot be used together (an output would overwrite or land inside an input)."""


def is_uri(location: str | Path) -> bool:
    """`hdfs://…`, `s3a://…`, `viewfs://…`: a location only a Hadoop client (the Spark engine) opens. A Path, a
    plain path and a `file://` URI are not."""
    if isinstance(location, Path):
        return False
    parsed = urlparse(location)
    return len(parsed.scheme) > 1 and parsed.scheme != "file" and location.startswith(f"{parsed.scheme}:/")


def location(text: str | Path) -> Path | str:
    """An input as given on the CLI or a flow: a path, a `file://` URI (as Hadoop tools write them) as its path,
    another URI (hdfs://, s3a://) kept as text for the Spark engine, which reads it through Spark's Hadoop client."""
    if isinstance(text, Path) or is_uri(text):
        return text
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise PathError(f"{text}: a file:// URI names this machine's files (file:///path)")
        return Path(unquote(parsed.path))
    return Path(text)


def check_io_paths(
    inputs: Iterable[str | Path], outputs: Iterable[str | Path], *, inputs_must_exist: bool = True
) -> tuple[list[Path | str], list[Path | str]]:
    """Resolve the paths of one step (`~` expanded, symlinks followed) and refuse overlapping ones.

    Every input must exist (unless `inputs_must_exist=False`); no output may be an input, lie inside an input
    folder (the next read of that folder would pick it up) or contain an input (the step would read what it
    writes), and no two outputs may coincide. A URI (hdfs://, s3a://: see `is_uri`) is returned as given, for the
    Spark engine to check and open (URIs are compared as text). Returns the resolved (inputs, outputs): the one
    check used by the CLI handlers and the flows.
    """
    given = [location(p) for p in inputs]
    inputs = [p.expanduser() for p in given if isinstance(p, Path)]
    ins = [p.resolve() for p in inputs]
    given_out = [location(p) for p in outputs]
    for p in (*given, *given_out):
        if isinstance(p, Path) and is_uri(str(p)):  # Path("hdfs://nn/x") is hdfs:/nn/x: a local path by accident
            raise PathError(f"{p}: a URI turned into a path (its // lost); pass URIs as text")
    outs = [p.expanduser().resolve() if isinstance(p, Path) else p for p in given_out]
    if inputs_must_exist:
        for path, p in zip(inputs, ins):
            if not p.exists():
                raise PathError(f"{p}: no such file or folder")
            try:
                check_input(path)
            except TableError as e:
                raise PathError(str(e)) from e
    uri_ins = [str(p).rstrip("/") for p in given if isinstance(p, str)]
    for o in outs:
        for i in (ins if isinstance(o, Path) else uri_ins):
            inside = o.is_relative_to(i) if isinstance(o, Path) else o.rstrip("/").startswith(i + "/")
            contains = i.is_relative_to(o) if isinstance(o, Path) else i.startswith(o.rstrip("/") + "/")
            if o == i or (isinstance(o, str) and o.rstrip("/") == i):
                raise PathError(f"{o}: output is also an input; it would be overwritten")
            if inside:
                raise PathError(f"{o}: output lies inside the input folder {i}; write it elsewhere")
            if contains:
                raise PathError(f"{i}: input lies inside the output folder {o}; write the output elsewhere")
    for a, o in enumerate(outs):
        if any(o == other for other in outs[a + 1:]):
            raise PathError(f"{o}: the same path is given for two outputs")
    resolved = iter(ins)
    return [p if isinstance(p, str) else next(resolved) for p in given], outs


def base_name(location: str | Path) -> str:
    """The last part of a path or URI (`scores.parquet` of `hdfs://nn/out/scores.parquet`)."""
    return location.name if isinstance(location, Path) else location.rstrip("/").rsplit("/", 1)[-1]


def join(location: Path | str, *names: str) -> Path | str:
    """`names` under a folder given as a path or a URI."""
    return Path(location).joinpath(*names) if not is_uri(location) else "/".join([str(location).rstrip("/"), *names])


def sibling(location: str | Path, name: str) -> Path | str:
    """`name` in the folder of a path or URI."""
    if isinstance(location, Path):
        return location.with_name(name)
    return f"{location.rstrip('/').rsplit('/', 1)[0]}/{name}"


def printable(text: str | bytes, limit: int = ECHO_CHARS) -> str:
    """File content made safe to print in a one-line message: control and other non-printable characters (NUL, CR,
    ESC, invalid bytes) escaped as \\xNN / \\uNNNN, and cut to `limit` characters ("…" and the full length after)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    cut = text[:limit]
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in cut)
    return out if len(text) <= limit else f"{out}… ({len(text):,} characters)"


def check_input(path: Path) -> None:
    """An input must be a regular file or a folder (followed through symlinks); a FIFO, a device (/dev/zero) or a
    socket would never end or block on open, so it is refused before anything opens it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise TableError(f"{path}: no such file or folder") from None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file")
    link = f" (a symlink to {os.path.realpath(path)})" if path.is_symlink() else ""
    raise TableError(f"{path}{link}: is {kind}, not a regular file or folder; copy the data into a file first")


_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive"), (b"PK\x05\x06", "an empty ZIP archive"), (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "an xz file"), (b"\x28\xb5\x2f\xfd", "a zstd file"), (b"\x04\x22\x4d\x18", "an LZ4 frame"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"), (b"Rar!\x1a\x07", "a RAR archive"), (b"PAR1", "a Parquet file"),
    (b"ARROW1", "an Arrow IPC file"), (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an OLE2 file (old Excel .xls?)"),
    (b"%PDF-", "a PDF"), (b"SQLite format 3\x00", "an SQLite database"), (b"Obj\x01", "an Avro file"),
)


def sniff_kind(path: Path) -> str | None:
    """What a file is by its first bytes ("a ZIP archive", "gzip", "a Parquet file", …), None for anything else."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if re.match(rb"BZh[1-9]1AY&SY", head):
        return "a bzip2 file"
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _check_kind(path: Path) -> None:
    """Refuse a file whose bytes are not what its name says (or, for CSV, a format read as CSV would garble),
    saying what it is. Gzip is recognised by its bytes whatever the name; unknown bytes are left to the reader."""
    kind = sniff_kind(path)
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        if kind not in (None, "a Parquet file"):
            raise TableError(f"{path}: not a readable Parquet file: it is {kind}")
    elif name.endswith(".gz") and kind not in (None, "gzip"):
        raise TableError(f"{path}: named .gz but it is {kind}, not gzip; extract it first")
    elif kind not in (None, "gzip"):
        hint = "; name it .parquet" if kind == "a Parquet file" else "; extract or decompress it first (gzip is read as is)"
        raise TableError(f"{path}: it is {kind}, not a CSV{hint}")


def is_parquet(path: Path) -> bool:
    return path.is_dir() or path.name.lower().endswith(PARQUET_SUFFIXES)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == raw_csv.GZIP_MAGIC


def hidden(relative: str) -> bool:
    """A folder entry readers skip (Spark's and polars' rule): any part of its relative path starts with "." or "_"."""
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _data_files(folder: Path) -> list[Path]:
    """Every non-hidden entry of a folder (recursively; names starting with "." or "_" skipped), sorted."""
    return sorted(p for p in folder.rglob("*") if not p.is_dir() and not hidden(p.relative_to(folder).as_posix()))


def parquet_files(path: Path) -> list[Path]:
    """The data files of a Parquet file or folder (hive-partitioned or flat), sorted, hidden files skipped."""
    if path.is_file():
        return [path]
    return [p for p in _data_files(path) if p.is_file() and p.name.lower().endswith(PARQUET_SUFFIXES)]


def folder_kind(folder: str | Path, names: list[str]) -> str:
    """"csv" (each file its own table) or "parquet" (one dataset) for a folder holding the non-hidden files `names`
    (relative paths); TableError for a folder with no data, with both kinds, or with any other file (it would be
    silently left out). The one rule for local folders and for folders at a URI (`pipeline.engines.hadoop`)."""
    other = [n for n in names if not n.lower().endswith(PARQUET_SUFFIXES + CSV_SUFFIXES)]
    if other:
        shown = ", ".join(printable(n) for n in other[:5])
        raise TableError(f"{folder}: holds {len(other)} file(s) that are neither CSV (.csv, .csv.gz) nor Parquet: "
                         f"{shown}{' …' if len(other) > 5 else ''}; move them out")
    csvs = [n for n in names if n.lower().endswith(CSV_SUFFIXES)]
    if csvs and len(csvs) < len(names):
        raise TableError(f"{folder}: holds both CSV and Parquet files; give them as separate inputs")
    if not names:
        raise TableError(f"{folder}: folder holds no CSV or Parquet files")
    return "csv" if csvs else "parquet"


def folder_inputs(folder: Path) -> list[Path]:
    """What a folder given as an input holds: itself for a Parquet dataset (one table), or its CSV / CSV.gz files,
    sorted by path (each its own table); see `folder_kind`. An entry that is not a regular file (a FIFO or device)
    is refused (see check_input)."""
    files = _data_files(folder)
    for f in files:
        check_input(f)
    if folder_kind(folder, [f.relative_to(folder).as_posix() for f in files]) == "csv":
        return files
    return [folder]


def read_header_line(path: Path) -> str:
    """First line of a CSV (plain or gzip), decoded lossily, BOM and line ending stripped; '' for an empty file."""
    try:
        with raw_csv.open_bytes(path) as fh:
            line = raw_csv.read_header(fh)
    except (OSError, EOFError, zlib.error) as e:
        raise TableError(f"{path}: cannot read the header: {printable(str(e))}") from e
    except raw_csv.CsvReadError as e:
        raise TableError(f"{path}: {printable(str(e), 200)}") from e
    return line.decode("utf-8", errors="replace")


def sniff_delimiter(header: str) -> str:
    """`,` or `;`, whichever splits the header line into more fields (`,` on a tie)."""
    return max(CSV_DELIMITERS, key=lambda d: (header.count(d), d == ","))


def _check_names(path: Path, names: list[str]) -> None:
    """A column name written twice is a file-level error naming it (polars would rename one `<name>_duplicated_0`)."""
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:
        raise TableError(f"{path}: column(s) {', '.join(printable(n) for n in twice)} appear more than once in the "
                         "header; keep one of each")


def _scan_parquet(path: Path) -> pl.LazyFrame:
    files = parquet_files(path)
    if not files:
        raise TableError(f"{path}: folder holds no Parquet files")
    try:
        _check_names(path, pq.read_schema(files[0]).names)
        lf = pl.scan_parquet(files if path.is_dir() else path, hive_partitioning=path.is_dir())
        lf.collect_schema()
    except TableError:
        raise
    except Exception as e:  # polars and pyarrow raise several error types for unreadable footers
        raise TableError(f"{path}: not a readable Parquet dataset: {printable(first_line(e))}") from e
    return lf


def _csv_header(path: Path, delimiter: str | None = None) -> tuple[str, str]:
    """(header line, delimiter) of a CSV after the file-level checks (not empty, a header line); the delimiter is
    `delimiter` when given (a declared source's), else sniffed."""
    if path.stat().st_size == 0:
        raise TableError(f"{path}: file is empty")
    header = read_header_line(path)
    if not header.strip():
        raise TableError(f"{path}: file is empty (no header line)")
    return header, delimiter or sniff_delimiter(header)


def scan_table(path: str | Path, delimiter: str | None = None) -> pl.LazyFrame:
    """A table as it is, as a lazy frame: Parquet with the file's own types; a CSV with every column a String,
    invalid UTF-8 bytes replaced by U+FFFD and empty fields null, read directly (for clean, small CSVs such as
    labels: raw transactions go through `open_table`)."""
    path = Path(path)
    check_input(path)
    if path.is_file():
        _check_kind(path)
    if is_parquet(path):
        return _scan_parquet(path)
    header, sep = _csv_header(path, delimiter)
    _check_names(path, raw_csv.header_names(header.encode(), sep))
    return pl.scan_csv(path, separator=sep, infer_schema=False, encoding="utf8-lossy", raise_if_empty=False)


@dataclass(frozen=True)
class RawTable:
    """A raw input opened by `open_table`: its rows as a lazy frame, and the blank lines left out of them."""

    lf: pl.LazyFrame
    blank_lines: int = 0


@contextmanager
def open_table(path: str | Path, delimiter: str | None = None) -> Iterator[RawTable]:
    """A raw input file or Parquet folder, checked (module docstring) and opened for one validation pass.

    Parquet is scanned as it is. A CSV (plain or gzip) is streamed through `raw_csv.filter_csv` into a temporary
    plain copy (removed when the block ends): its frame has the header's columns plus `raw_csv.FLAG`, the reason
    why a record could not be read as one (wrong field count, too long), null for the others."""
    path = Path(path)
    check_input(path)
    if path.is_dir() and not parquet_files(path):
        raise TableError(f"{path}: is a folder of CSV files, not one table; give its files")
    if is_parquet(path):
        if path.is_file():
            _check_kind(path)
        yield RawTable(_scan_parquet(path))
        return
    with tempfile.TemporaryDirectory(prefix="txseq-csv-") as tmp:
        clean = Path(tmp) / "clean.csv"
        sep, stats = clean_csv_copy(path, clean, delimiter)
        yield RawTable(pl.scan_csv(clean, separator=sep, infer_schema=False, encoding="utf8-lossy",
                                   raise_if_empty=False), stats.blank_lines)


def clean_csv_copy(path: Path, clean: Path, delimiter: str | None = None) -> tuple[str, raw_csv.FilterStats]:
    """The checks `open_table` makes on a raw CSV, then its bounded clean copy written to `clean` (one record a
    line, `raw_csv.FLAG` column added, blank lines counted and left out): (delimiter, stats). The Spark engine
    writes the copy where its workers can read it."""
    _check_kind(path)
    header, sep = _csv_header(path, delimiter)
    _check_names(path, raw_csv.header_names(header.encode(), sep))
    try:
        return sep, raw_csv.filter_csv(path, clean, sep)
    except raw_csv.CsvReadError as e:
        raise TableError(f"{path}: {printable(str(e), 200)}") from e


def check_readable(path: Path) -> None:
    """Read a CSV input to its end (decompressing a gzip, bounded memory): a truncated gzip raises TableError."""
    try:
        raw_csv.check_readable(path)
    except raw_csv.CsvReadError as e:
        raise TableError(f"{path}: {printable(str(e), 200)}") from e


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (polars' errors run to several), or its type's name."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes; for a Parquet folder, of its data files' relative paths and contents."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        return folder_sha256((f.relative_to(path).as_posix(), sha256_file(f)) for f in parquet_files(path))
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_sha256(files: Iterable[tuple[str, str]]) -> str:
    """sha256 of a Parquet folder from its data files' (relative path, sha256), in path order: the one formula for
    local folders and folders at a URI (`pipeline.engines.hadoop`)."""
    h = hashlib.sha256()
    for rel, sha in sorted(files, key=lambda f: f[0].split("/")):
        h.update(f"{rel}\0{sha}\n".encode())
    return h.hexdigest()


# --- temporary names that say which process made them --------------------------------------------------------------
# `.<target name>.<host8>-<pid>-<random8>.tmp|.staging`: host8 is the first 8 hex digits of sha256(host name), so a
# later run on the same host can tell a killed run's leftovers (pid gone) from a live concurrent run's (pid alive).
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}\.(?:tmp|staging)$")


def _host8() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(name: str, suffix: str = ".tmp") -> str:
    """A hidden temporary name for `name` that records this host and process (see `remove_dead_temp`)."""
    return f".{name}.{_host8()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def temp_path(path: str | Path, suffix: str = ".tmp") -> Path:
    """`temp_name` beside `path`."""
    path = Path(path)
    return path.with_name(temp_name(path.name, suffix))


def is_dead_temp(name: str) -> bool:
    """A `temp_name` of this host whose process is gone: what a killed run left behind."""
    m = _TEMP_NAME.match(name)
    return m is not None and m["host"] == _host8() and not pid_alive(int(m["pid"]))


def pid_alive(pid: int) -> bool:
    """A process with this id runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temp(folder: str | Path) -> list[Path]:
    """Remove the temp files and staging folders (named by `temp_path`) directly in `folder` whose process is gone:
    what a killed run leaves behind. Entries of a live process (a concurrent run), of another host (its processes
    cannot be checked from here) and names of any other shape are left alone. Returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not is_dead_temp(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        if not entry.exists():
            removed.append(entry)
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path in the target's folder; renamed onto `path` if the block succeeds, removed if not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp file lives in a private staging folder that is removed as a whole: a writer that fails can still
    # create its file a moment after raising (polars' streaming sink does), and it cannot do so once the folder
    # is gone, so nothing is left behind.
    staging = temp_path(path, ".staging")
    staging.mkdir()
    tmp_path = staging / path.name  # created by the writer: umask perms
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_parquet_atomic(df: pl.DataFrame | pl.LazyFrame, path: str | Path) -> Path:
    """Write (or stream, for a LazyFrame) to a temp name in the same folder, then `os.replace`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(df, pl.LazyFrame):
            df.sink_parquet(tmp)
        else:
            df.write_parquet(tmp)
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
