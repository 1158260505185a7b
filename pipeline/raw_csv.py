"""A bounded streaming pass over a raw CSV (plain or gzip) that hands polars a clean, plain copy.

Polars decompresses a .gz whole, keeps a blank line as a row of nulls, holds a record whole however long it is, pads
a row with too few fields and refuses the whole file for one row with too many. This pass reads the input in
`READ_BYTES` blocks (so memory is bounded by `READ_BYTES + MAX_RECORD_BYTES`, whatever the input) and writes:

    header line (names as written, BOM dropped) + FLAG column
    every record on one line, with the same fields,      + ""                   (FLAG empty: read as null)
    a record whose field count differs from the header's + "wrong_field_count"  (padded with empty fields, or its
                                                           extra fields joined into the last one: nothing lost)
    a record longer than MAX_RECORD_BYTES                 + "record_too_long"   (empty fields: the text is not kept)
    blank lines (empty or whitespace only)               -> dropped and counted; they are not records

A record is one line: the Sberbank export never puts a line break inside a quoted field, and a quote left open at
the end of a line is closed there (the record then usually has the wrong field count), so one stray quote cannot
turn the rest of a file into one field. Lines without quotes whose field count is right (all of a clean file) are
copied block by block without being parsed.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

READ_BYTES = 1 << 22  # 4 MiB read at a time
MAX_RECORD_BYTES = 1 << 20  # 1 MiB: a Sberbank record is ~60 bytes; a longer one is rejected, never held whole
FLAG = "_txseq_record_problem"  # the column this pass adds; ingest turns it into the reject reason
WRONG_FIELD_COUNT = "wrong_field_count"
RECORD_TOO_LONG = "record_too_long"
GZIP_MAGIC = b"\x1f\x8b"
_BLANK_RUN = re.compile(rb"\n[\n \t\r\f\v]*\n")  # a line end followed by blank lines


class CsvReadError(Exception):
    """The input cannot be read as CSV to the end (truncated gzip, over-long header); the caller names the file."""


@dataclass(frozen=True)
class FilterStats:
    records: int  # data records written (blank lines excluded)
    blank_lines: int
    flagged: int  # records written with a FLAG reason


def open_bytes(path: Path) -> BinaryIO:
    """The file's bytes, decompressed if it is gzip (by its magic bytes, whatever its name)."""
    fh = open(path, "rb")
    if fh.read(2) == GZIP_MAGIC:
        fh.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    fh.seek(0)
    return fh


def _lines(fh: BinaryIO) -> Iterator[bytes | None]:
    """Blocks of whole lines (each ending in b"\\n", CRLF turned into LF), or None for each line longer than
    MAX_RECORD_BYTES (skipped without being held). The last line gets a b"\\n" if it lacks one."""
    pending = b""
    skipping = False
    while True:
        try:
            block = fh.read(READ_BYTES)
        except (OSError, EOFError, zlib.error) as e:
            raise CsvReadError(f"cannot be read to the end: {e}") from e
        if not block:
            break
        if skipping:
            cut = block.find(b"\n")
            if cut < 0:
                continue
            skipping, block = False, block[cut + 1:]
            yield None
        buf = pending + block
        end = buf.rfind(b"\n")
        if end < 0:
            pending = buf
        else:
            pending = buf[end + 1:]
            whole = buf[: end + 1]
            yield whole.replace(b"\r\n", b"\n") if b"\r" in whole else whole
        if len(pending) > MAX_RECORD_BYTES:
            pending, skipping = b"", True
    if skipping:
        yield None
    elif pending:
        yield pending.replace(b"\r\n", b"\n").removesuffix(b"\r") + b"\n"


def _parse(line: bytes, sep: str) -> list[str]:
    """One line's fields as Python's csv module reads them (bytes kept through surrogateescape)."""
    text = line.decode("utf-8", "surrogateescape")
    try:
        return next(csv.reader([text], delimiter=sep, strict=False), [])
    except csv.Error:  # e.g. a NUL byte on old Pythons: split plainly
        return text.split(sep)


def _write(fields: list[str], sep: str, flag: str) -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=sep, lineterminator="\n").writerow([*fields, flag])
    return out.getvalue().encode("utf-8", "surrogateescape")


def _uniform(block: bytes, sep: int, n_sep: int) -> int:
    """The number of lines of `block` if every one holds exactly `n_sep` separators and none is longer than
    MAX_RECORD_BYTES (counted in numpy, not line by line), else 0."""
    a = np.frombuffer(block, np.uint8)
    ends = np.flatnonzero(a == 10)  # one per line: a block ends with b"\n"
    per_line = np.diff(np.searchsorted(np.flatnonzero(a == sep), ends), prepend=0)
    longest = int(np.diff(ends, prepend=-1).max()) - 1
    return len(ends) if bool((per_line == n_sep).all()) and longest <= MAX_RECORD_BYTES else 0


def read_header(fh: BinaryIO) -> bytes:
    """The first line (BOM and line end dropped); raises CsvReadError if it is longer than MAX_RECORD_BYTES."""
    try:
        line = fh.readline(MAX_RECORD_BYTES + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise CsvReadError(f"cannot read the header: {e}") from e
    if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
        raise CsvReadError(f"the header line is longer than {MAX_RECORD_BYTES:,} bytes")
    return line.removeprefix(b"\xef\xbb\xbf").rstrip(b"\r\n")


def header_names(header: bytes, sep: str) -> list[str]:
    return [n.strip() for n in _parse(header, sep)] if header.strip() else []


def filter_csv(src: Path, dst: Path, sep: str) -> FilterStats:
    """Write the clean copy of `src` described in the module docstring to `dst`; returns its counts."""
    records = blanks = flagged = 0
    with open_bytes(src) as fh, open(dst, "wb") as out:
        names = header_names(read_header(fh), sep)
        n = len(names)
        out.write(_write(names, sep, FLAG))
        bsep, quote, comma_count = sep.encode(), b'"', n - 1
        for block in _lines(fh):
            if block is None:
                out.write(_write([""] * n, sep, RECORD_TOO_LONG))
                records += 1
                flagged += 1
                continue
            if block.startswith(b"\n") or b"\n\n" in block:  # runs of empty lines, dropped in C, not line by line
                kept = _BLANK_RUN.sub(b"\n", b"\n" + block)[1:]
                blanks += block.count(b"\n") - kept.count(b"\n")
                if not kept:
                    continue
                block = kept
            if comma_count and quote not in block and (n_lines := _uniform(block, bsep[0], comma_count)):
                out.write(block.replace(b"\n", bsep + b"\n"))  # every line right: an empty FLAG field each
                records += n_lines
                continue
            for line in block.split(b"\n")[:-1]:
                if not line.strip():
                    blanks += 1
                    continue
                records += 1
                if len(line) > MAX_RECORD_BYTES:
                    out.write(_write([""] * n, sep, RECORD_TOO_LONG))
                    flagged += 1
                    continue
                if quote not in line and line.count(bsep) == comma_count:
                    out.write(line + bsep + b"\n")
                    continue
                fields = _parse(line, sep)
                if len(fields) == n:
                    out.write(_write(fields, sep, ""))  # quoted fields, written back with balanced quotes
                    continue
                fixed = fields[: n - 1] + [sep.join(fields[n - 1:])] if len(fields) > n else fields + [""] * (n - len(fields))
                out.write(_write(fixed, sep, WRONG_FIELD_COUNT))
                flagged += 1
    return FilterStats(records, blanks, flagged)


def check_readable(path: Path) -> None:
    """Read the whole file (decompressing a gzip) in bounded blocks: a truncated or corrupt gzip raises
    CsvReadError. Cheap next to loading a model, so scoring checks its inputs with it first."""
    with open_bytes(path) as fh:
        try:
            while fh.read(READ_BYTES):
                pass
        except (OSError, EOFError, zlib.error) as e:
            raise CsvReadError(f"cannot be read to the end: {e}") from e
