"""Reading raw tables (CSV plain or .gz, Parquet file or folder) as lazy frames, and writing files atomically.

`scan_table` checks what it can see without reading the data (file exists, not empty, a header, the delimiter) and
raises `TableError` naming the file; problems found while streaming the data (a truncated .gz, a corrupt Parquet
page) surface when the frame is collected, and `pipeline.ingest` turns them into file-level errors too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import socket
import uuid
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_DELIMITERS = (",", ";")
REPLACEMENT_CHAR = "\ufffd"  # what lossy UTF-8 decoding puts in place of invalid bytes


class TableError(Exception):
    """A file-level problem with an input table; the message names the file."""


class PathError(ValueError):
    """Input/output paths that cannot be used together (an output would overwrite or land inside an input)."""


def check_io_paths(
    inputs: Iterable[str | Path], outputs: Iterable[str | Path], *, inputs_must_exist: bool = True
) -> tuple[list[Path], list[Path]]:
    """Resolve the paths of one step (`~` expanded, symlinks followed) and refuse overlapping ones.

    Every input must exist (unless `inputs_must_exist=False`); no output may be an input, lie inside an input
    folder (the next read of that folder would pick it up) or contain an input (the step would read what it
    writes), and no two outputs may coincide. Returns the resolved (inputs, outputs): the one check used by the
    CLI handlers and the flows.
    """
    ins = [Path(p).expanduser().resolve() for p in inputs]
    outs = [Path(p).expanduser().resolve() for p in outputs]
    if inputs_must_exist:
        for p in ins:
            if not p.exists():
                raise PathError(f"{p}: no such file or folder")
    for o in outs:
        for i in ins:
            if o == i:
                raise PathError(f"{o}: output is also an input; it would be overwritten")
            if o.is_relative_to(i):
                raise PathError(f"{o}: output lies inside the input folder {i}; write it elsewhere")
            if i.is_relative_to(o):
                raise PathError(f"{i}: input lies inside the output folder {o}; write the output elsewhere")
    for a, o in enumerate(outs):
        if any(o == other for other in outs[a + 1:]):
            raise PathError(f"{o}: the same path is given for two outputs")
    return ins, outs


def is_parquet(path: Path) -> bool:
    return path.is_dir() or path.name.lower().endswith(PARQUET_SUFFIXES)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def parquet_files(path: Path) -> list[Path]:
    """The data files of a Parquet file or folder (hive-partitioned or flat), sorted, hidden files skipped."""
    if path.is_file():
        return [path]
    return sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.name.lower().endswith(PARQUET_SUFFIXES)
        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )


def read_header_line(path: Path) -> str:
    """First line of a CSV (plain or gzip), decoded lossily, BOM and line ending stripped; '' for an empty file."""
    opener = gzip.open if is_gzip(path) else open
    try:
        with opener(path, "rb") as fh:
            line = fh.readline(1 << 20)
    except (OSError, EOFError, zlib.error) as e:
        raise TableError(f"{path}: cannot read the header: {e}") from e
    return line.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")


def sniff_delimiter(header: str) -> str:
    """`,` or `;`, whichever splits the header line into more fields (`,` on a tie)."""
    return max(CSV_DELIMITERS, key=lambda d: (header.count(d), d == ","))


def scan_table(path: str | Path) -> pl.LazyFrame:
    """A raw table as a lazy frame. CSV: every column a String (validation types them), invalid UTF-8 bytes
    replaced by U+FFFD (validation rejects those rows), empty fields null. Parquet: the file's own types."""
    path = Path(path)
    if not path.exists():
        raise TableError(f"{path}: no such file or folder")
    if is_parquet(path):
        files = parquet_files(path)
        if not files:
            raise TableError(f"{path}: folder holds no Parquet files")
        try:
            lf = pl.scan_parquet(files if path.is_dir() else path, hive_partitioning=path.is_dir())
            lf.collect_schema()
        except Exception as e:  # polars raises several error types for unreadable footers
            raise TableError(f"{path}: not a readable Parquet dataset: {e}") from e
        return lf
    if path.stat().st_size == 0:
        raise TableError(f"{path}: file is empty")
    header = read_header_line(path)
    if not header.strip():
        raise TableError(f"{path}: file is empty (no header line)")
    return pl.scan_csv(
        path,
        separator=sniff_delimiter(header),
        infer_schema=False,
        encoding="utf8-lossy",
        raise_if_empty=False,
    )


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes; for a Parquet folder, of its data files' relative paths and contents."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in parquet_files(path):
            h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
        return h.hexdigest()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# --- temporary names that say which process made them --------------------------------------------------------------
# `.<target name>.<host8>-<pid>-<random8>.tmp|.staging`: host8 is the first 8 hex digits of sha256(host name), so a
# later run on the same host can tell a killed run's leftovers (pid gone) from a live concurrent run's (pid alive).
_TEMP_NAME = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}\.(?:tmp|staging)$")


def _host8() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(path: str | Path, suffix: str = ".tmp") -> Path:
    """A hidden temporary name beside `path` that records this host and process (see `remove_dead_temp`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host8()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


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
    host = _host8()
    for entry in folder.iterdir():
        m = _TEMP_NAME.match(entry.name)
        if m is None or m["host"] != host or pid_alive(int(m["pid"])):
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
