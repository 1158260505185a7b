"""Ingest: raw files -> validated events Parquet + rejects Parquet + a reconciling manifest, by `pipeline.ingest.rules`.

    raw file ──open_table──▶ strings ──validate──▶ events (schema.EVENTS_SCHEMA)   events/part-<sha16>.parquet
                                                └──▶ rejects (schema.REJECTS_SCHEMA) rejects/part-<sha16>.parquet
                                                     manifest.json: per file sha256, rows in = accepted + rejected,
                                                     rejects by reason, blank lines (not records, not counted in rows)

Output parts are named by the input file's content hash, and the manifest is written last: ingesting the same file
again is a recorded no-op. `read_events`, `read_rejects` and `ingest_rules` read an events folder back.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import polars as pl
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.ingest.rules import (
    REASONS,
    IngestConfig,
    IngestError,
    annotate,
    events_of,
    mark_ingested_repeats,
    rejects_of,
)
from pipeline.io import (
    TableError,
    atomic_path,
    check_input,
    first_line,
    folder_inputs,
    is_uri,
    join,
    open_table,
    parquet_files,
    printable,
    remove_dead_temp,
    sha256_file,
    temp_path,
    write_text_atomic,
)

MANIFEST = "manifest.json"
EVENTS_DIR = "events"
REJECTS_DIR = "rejects"
BATCH_ROWS = 500_000  # rows validated and written at a time


@dataclass
class FileReport:
    path: str
    sha256: str
    rows_in: int
    accepted: int
    rejected: int
    rejected_by_reason: dict[str, int]
    blank_lines: int = 0  # empty or whitespace-only CSV lines: not records, not in rows_in
    status: str = "ingested"  # or "already ingested (as <path>)"

    @property
    def part(self) -> str:
        return part_name(self.sha256)


@dataclass
class IngestResult:
    out_dir: Path | str  # a URI when the Spark engine wrote there
    files: list[FileReport]
    manifest: dict = field(repr=False, default_factory=dict)

    @property
    def rows_in(self) -> int:
        return sum(f.rows_in for f in self.files)

    @property
    def accepted(self) -> int:
        return sum(f.accepted for f in self.files)

    @property
    def rejected(self) -> int:
        return sum(f.rejected for f in self.files)

    @property
    def blank_lines(self) -> int:
        return sum(f.blank_lines for f in self.files)

    def reconciliation(self) -> list[dict]:
        """One row per input file of this call plus a total: rows in = accepted + rejected, rejects by reason (a
        column per reason that occurred), and the blank lines left out (a column if there were any)."""
        reasons = [r for r in REASONS if any(r in f.rejected_by_reason for f in self.files)]
        blank = {"blank_lines": self.blank_lines} if self.blank_lines else {}
        rows = []
        for f in self.files:
            rows.append({"file": f.path, "status": f.status, "sha256": f.sha256[:16], "rows_in": f.rows_in,
                         "accepted": f.accepted, "rejected": f.rejected,
                         **{r: f.rejected_by_reason.get(r, 0) for r in reasons},
                         **({"blank_lines": f.blank_lines} if blank else {})})
        rows.append({"file": "TOTAL", "status": "", "sha256": "", "rows_in": self.rows_in, "accepted": self.accepted,
                     "rejected": self.rejected,
                     **{r: sum(f.rejected_by_reason.get(r, 0) for f in self.files) for r in reasons}, **blank})
        return rows

    def summary(self) -> str:
        """One line: rows in, accepted, rejected by reason (so nobody has to open the rejects to see what was set
        aside), blank lines skipped."""
        by_reason: dict[str, int] = {}
        for f in self.files:
            for r, n in f.rejected_by_reason.items():
                by_reason[r] = by_reason.get(r, 0) + n
        reasons = ", ".join(f"{by_reason[r]:,} {r}" for r in REASONS if r in by_reason)
        return (f"{self.rows_in:,} rows in: {self.accepted:,} accepted, {self.rejected:,} rejected"
                + (f" ({reasons}; rows in {join(self.out_dir, REJECTS_DIR)})" if reasons else "")
                + (f"; {self.blank_lines:,} blank line(s) skipped" if self.blank_lines else ""))

    def format_table(self) -> str:
        rows = self.reconciliation()
        cols = list(rows[0])
        cells = [[str(r[c]) if not isinstance(r[c], int) else f"{r[c]:,}" for c in cols] for r in rows]
        width = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        line = lambda vals: "  ".join(v.rjust(w) if i >= 3 else v.ljust(w) for i, (v, w) in enumerate(zip(vals, width)))  # noqa: E731
        return "\n".join([line(cols), line(["-" * w for w in width]), *(line(r) for r in cells)])


def _load_manifest(out_dir: Path | str, files: Files | None = None) -> dict:
    path = join(out_dir, MANIFEST)
    text = (files or LocalFiles()).read_text(path)
    if text is not None:
        manifest = json.loads(text)
        if manifest.get("schema_version") != schema.SCHEMA_VERSION:
            raise IngestError(
                f"{path}: written with schema version {manifest.get('schema_version')}, this code writes "
                f"{schema.SCHEMA_VERSION}; ingest into a fresh folder"
            )
        return manifest
    return {"schema_version": schema.SCHEMA_VERSION, "polars_version": pl.__version__, "files": [], "totals": {}}


def _totals(files: list[dict]) -> dict:
    by_reason: dict[str, int] = {}
    for f in files:
        for r, n in f["rejected_by_reason"].items():
            by_reason[r] = by_reason.get(r, 0) + n
    return {
        "files": len(files),
        "rows_in": sum(f["rows_in"] for f in files),
        "accepted": sum(f["accepted"] for f in files),
        "rejected": sum(f["rejected"] for f in files),
        "rejected_by_reason": dict(sorted(by_reason.items())),
        "blank_lines": sum(f.get("blank_lines", 0) for f in files),
    }


class ParquetSink:
    """A Parquet file written batch by batch with a fixed schema (an empty file with that schema if no batch).

    Encoding measured on the full-size events (6.87M rows, `bench/`): lz4 (zstd: 15 % smaller, +0.35 CPU s to write
    and slower to read back), dictionary pages only for the low-cardinality columns (dictionary-encoding all of
    them costs ~40 % more), delta encoding for the row number and second of day, min/max statistics only where a
    reader can prune on them, and polars' string views handed to Arrow without a copy. Together ~0.9 CPU s less
    than zstd with default options, for an 11 % larger part."""

    DICTIONARY = (schema.SOURCE_FILE, schema.TERM_ID, schema.REASON, schema.CUSTOMER_ID, schema.DAY, schema.MCC_CODE,
                  schema.TR_TYPE, schema.REJECT_COLUMN)
    DELTA = (schema.SOURCE_ROW, schema.SECOND_OF_DAY)
    STATISTICS = (schema.CUSTOMER_ID, schema.DAY, schema.SOURCE_ROW)

    def __init__(self, path: Path | BinaryIO, columns: dict[str, pl.DataType]):
        self.path, self.columns, self.writer = path, columns, None

    def write(self, df: pl.DataFrame) -> None:
        if df.height:
            table = df.to_arrow(compat_level=pl.CompatLevel.newest())  # string views as they are: no copy
            if self.writer is None:
                names = table.schema.names
                self.writer = pq.ParquetWriter(
                    self.path, table.schema, compression="lz4",
                    use_dictionary=[c for c in self.DICTIONARY if c in names],
                    column_encoding={c: "DELTA_BINARY_PACKED" for c in self.DELTA if c in names},
                    write_statistics=[c for c in self.STATISTICS if c in names],
                    store_schema=False,  # readers see plain Parquet strings, not Arrow string views
                )
            self.writer.write_table(table)

    def __enter__(self) -> "ParquetSink":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()
        elif exc[0] is None:
            pl.DataFrame(schema=self.columns).write_parquet(self.path)


def parquet_bytes(frame: pl.DataFrame, columns: dict[str, pl.DataType]) -> bytes:
    """A `ParquetSink` file of `frame` as bytes (the Spark engine's workers send parts to the driver this way)."""
    buffer = io.BytesIO()
    with ParquetSink(buffer, columns) as sink:
        sink.write(frame)
    return buffer.getvalue()


def part_name(sha256: str) -> str:
    """Events and rejects part of an input, named by its content hash."""
    return f"part-{sha256[:16]}.parquet"


def part_files(out_dir: str | Path, folder: str, part: str, files: Files | None = None) -> list[Path | str]:
    """The Parquet file(s) of one part: the part file itself, or the files of a part folder (the Spark engine
    writes each part as a folder of per-partition files). A missing part stays in the list: reading it fails."""
    return (files or LocalFiles()).parquet_files(join(out_dir, folder, part))


def reconcile(path: Path, rows_in: int, accepted: int, rejected: int, last_row: int, by_reason: dict[str, int],
              blank_lines: int = 0) -> None:
    """Before the parts are renamed into place: every row read (numbered 1..n) is in exactly one of the two
    outputs, and the reasons add up; a file without a data row is an IngestError."""
    if rows_in == 0:
        blank = f" and {blank_lines:,} blank line(s)" if blank_lines else ""
        raise IngestError(f"{path}: no data rows (header only{blank})")
    if not (accepted + rejected == rows_in == last_row and rejected == sum(by_reason.values())):
        raise RuntimeError(f"{path}: reconciliation failed: {accepted} accepted + {rejected} rejected "
                           f"({by_reason}) vs {rows_in} rows read, last source row {last_row}")


FileStep = Callable[[Path | str, str, Path | str, list[Path | str], IngestConfig], FileReport]
"""One input file -> its events and rejects parts under `out_dir` (path or URI, sha256, out_dir: a staging folder,
parts of the files ingested before, config): `_ingest_file` (polars) or an engine's (`pipeline.engines.spark`)."""


def _ingest_file(path: Path, sha: str, out_dir: Path, seen: list[Path], config: IngestConfig) -> FileReport:
    source = str(path)
    part = part_name(sha)
    by_reason: dict[str, int] = {}
    rows_in = accepted = rejected = last_row = 0
    try:
        with open_table(path, config.source.delimiter) as table:
            annotated = annotate(table.lf, source, config)
            if seen:  # rows identical to ones already ingested from other files
                hashes = pl.scan_parquet(seen).select(schema.ROW_HASH).collect()[schema.ROW_HASH]
                annotated = mark_ingested_repeats(annotated, hashes)
            # One streaming pass: each batch of validated rows is split into the two outputs (two lazy sinks of the
            # same query would run the whole validation twice).
            with atomic_path(out_dir / EVENTS_DIR / part) as ev, atomic_path(out_dir / REJECTS_DIR / part) as rj, \
                    ParquetSink(ev, config.events_schema) as events_out, ParquetSink(rj, schema.REJECTS_SCHEMA) as rejects_out:
                for batch in annotated.collect_batches(chunk_size=BATCH_ROWS):
                    good, bad = events_of(batch.lazy(), config).collect(), rejects_of(batch.lazy()).collect()
                    events_out.write(good)
                    rejects_out.write(bad)
                    rows_in += batch.height
                    accepted += good.height
                    rejected += bad.height
                    last_row = max(last_row, batch[schema.SOURCE_ROW].max() or 0)
                    for r, n in bad[schema.REASON].value_counts().iter_rows():
                        by_reason[r] = by_reason.get(r, 0) + n
                reconcile(path, rows_in, accepted, rejected, last_row, by_reason, table.blank_lines)
    except TableError as e:
        raise IngestError(str(e)) from e
    except (pl.exceptions.PolarsError, OSError) as e:
        raise IngestError(f"{path}: cannot be read to the end: {printable(first_line(e), 200)}") from e
    return FileReport(source, sha, rows_in, accepted, rejected, dict(sorted(by_reason.items())), table.blank_lines)


def local_units(paths: Sequence[Path], atomic: bool) -> list[list[Path]]:
    """The inputs as units committed at once: a file, a Parquet folder (one table) or a folder of CSV files (all of
    its files); with `atomic`, everything. Checked before any is read: each exists and is a regular file or folder."""
    units = []
    for path in paths:
        try:
            check_input(path)
            units.append(folder_inputs(path) if path.is_dir() else [path])
        except TableError as e:
            raise IngestError(str(e)) from e
    return [[f for u in units for f in u]] if atomic and units else units


class Files(Protocol):
    """Where ingest reads and writes: the units to commit, each input's sha256 (the manifest's identity of a file)
    and whether it is a folder; and the output folder's files (manifest, staging, parts). `LocalFiles` for paths;
    the Spark engine's `pipeline.engines.hadoop.HadoopFiles` also reads and writes URIs (hdfs://, s3a://) through
    Spark's Hadoop client."""

    def units(self, inputs: Sequence[str | Path], atomic: bool) -> list[list[str | Path]]: ...

    def sha256(self, location: str | Path) -> str: ...

    def is_folder(self, location: str | Path) -> bool: ...

    def exists(self, location: str | Path) -> bool: ...

    def read_text(self, location: str | Path) -> str | None: ...

    def write_text(self, text: str, location: str | Path) -> None: ...

    def write_bytes(self, data: bytes, location: str | Path) -> None: ...

    def make_folder(self, location: str | Path) -> None: ...

    def staging(self, location: str | Path) -> Path | str: ...

    def replace(self, source: str | Path, target: str | Path) -> None: ...

    def remove(self, location: str | Path) -> None: ...

    def remove_dead_temp(self, folder: str | Path) -> None: ...

    def parquet_files(self, location: str | Path) -> list[Path | str]: ...


class LocalFiles:
    """Inputs and outputs on this machine's file system."""

    def units(self, inputs: Sequence[str | Path], atomic: bool) -> list[list[str | Path]]:
        return list(local_units([Path(p) for p in inputs], atomic))

    def sha256(self, location: str | Path) -> str:
        return sha256_file(location)

    def is_folder(self, location: str | Path) -> bool:
        return Path(location).is_dir()

    def exists(self, location: str | Path) -> bool:
        return Path(location).exists()

    def read_text(self, location: str | Path) -> str | None:
        """The file's text; None when there is no file."""
        return Path(location).read_text() if Path(location).exists() else None

    def write_text(self, text: str, location: str | Path) -> None:
        write_text_atomic(text, location)

    def write_bytes(self, data: bytes, location: str | Path) -> None:
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_bytes(data)

    def make_folder(self, location: str | Path) -> None:
        Path(location).mkdir(parents=True, exist_ok=True)

    def staging(self, location: str | Path) -> Path | str:
        """A new hidden staging folder beside `location` (see `pipeline.io.temp_path`)."""
        path = temp_path(location, ".staging")
        path.mkdir()
        return path

    def replace(self, source: str | Path, target: str | Path) -> None:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)

    def remove(self, location: str | Path) -> None:
        shutil.rmtree(location, ignore_errors=True)

    def remove_dead_temp(self, folder: str | Path) -> None:
        remove_dead_temp(folder)

    def parquet_files(self, location: str | Path) -> list[Path | str]:
        """A Parquet file itself, or the data files of a Parquet folder."""
        path = Path(location)
        return list(parquet_files(path)) if path.is_dir() else [path]


def _commit_unit(units: Sequence[str | Path], out_dir: Path | str, manifest: dict, config: IngestConfig,
                 file_step: FileStep | None, files: Files) -> list[FileReport]:
    """Validate `units` into a staging folder, then move every part into place and write the manifest once: all
    of the files are recorded, or (on an error) none, and nothing of them is left behind."""
    staging = files.staging(join(out_dir, "ingest"))
    try:
        reports: list[FileReport] = []
        staged: list[FileReport] = []
        recorded = {f["sha256"]: f["path"] for f in manifest["files"]  # checked once: one call each at a URI
                    if all(files.exists(join(out_dir, d, f["part"])) for d in (EVENTS_DIR, REJECTS_DIR))}
        for path in units:
            try:
                sha = files.sha256(path)
            except TableError as e:
                raise IngestError(str(e)) from e
            done = recorded | {r.sha256: r.path for r in staged}
            if sha in done:
                reports.append(FileReport(str(path), sha, 0, 0, 0, {}, status=f"already ingested (as {done[sha]})"))
                continue
            seen = [p for f in manifest["files"] if f["sha256"] != sha
                    for p in part_files(out_dir, EVENTS_DIR, f["part"], files)]
            seen += [p for r in staged for p in part_files(staging, EVENTS_DIR, r.part, files)]
            report = (file_step or _ingest_file)(path, sha, staging, seen, config)
            staged.append(report)
            reports.append(report)
        for report in staged:
            for d in (EVENTS_DIR, REJECTS_DIR):
                files.replace(join(staging, d, report.part), join(out_dir, d, report.part))
        for report in staged:
            entry = {k: v for k, v in asdict(report).items() if k != "status"}
            entry |= {"part": report.part, "config": config.to_dict(), "ingested_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            manifest["files"] = [f for f in manifest["files"] if f["sha256"] != report.sha256] + [entry]
        if staged:
            manifest["totals"] = _totals(manifest["files"])
            files.write_text(json.dumps(manifest, indent=1) + "\n", join(out_dir, MANIFEST))
        return reports
    finally:
        files.remove(staging)


def ingest(inputs: Sequence[str | Path], out_dir: str | Path, config: IngestConfig = IngestConfig(), *,
           atomic: bool = False, file_step: FileStep | None = None, files: Files | None = None) -> IngestResult:
    """Validate each input into `out_dir/events|rejects/part-<sha16>.parquet` and record it in `manifest.json`.

    An input is a file, a Parquet folder (one table) or a folder of CSV / CSV.gz files (each file its own part,
    in path order). Each input is committed as a whole (a folder: all of its files or none); with `atomic`, all of
    them together. A file whose content was ingested before (same sha256) is skipped and reported as "already
    ingested". Raises IngestError for file-level problems; its message says which inputs were committed before
    the error and which were not. `file_step` validates one file (default: polars in this process; the Spark
    engine passes its own), `files` finds, hashes and writes (default: `LocalFiles`; the Spark engine's also
    reads and writes URIs, `out_dir` included)."""
    out_dir = Path(out_dir) if not is_uri(out_dir) else str(out_dir).rstrip("/")
    files = files or LocalFiles()
    paths = [p if is_uri(p) else Path(p) for p in inputs]
    try:
        units = files.units(paths, atomic)
        one_file = len(paths) == 1 and not files.is_folder(paths[0])  # its errors need no "committed: ..." context
        files.make_folder(out_dir)
        files.remove_dead_temp(out_dir)  # staging folders of killed runs
    except TableError as e:
        raise IngestError(str(e)) from e
    manifest = _load_manifest(out_dir, files)
    if manifest["files"] and _rules(manifest).source != config.source:
        raise IngestError(f"{out_dir}: holds events of source {_rules(manifest).source.name!r}, not "
                          f"{config.source.name!r}; ingest into a fresh folder")
    reports: list[FileReport] = []
    for i, unit in enumerate(units):
        try:
            reports += _commit_unit(unit, out_dir, manifest, config, file_step, files)
        except IngestError as e:
            if one_file:
                raise
            if atomic:
                raise IngestError(f"{e} — nothing ingested (--atomic): {', '.join(map(str, paths))}") from e
            raise IngestError(f"{e} — committed: {', '.join(map(str, paths[:i])) or 'none'}; not ingested: "
                              f"{', '.join(map(str, paths[i:]))}") from e
    return IngestResult(out_dir, reports, manifest)


def read_events(out_dir: str | Path) -> pl.LazyFrame:
    """All events recorded in `out_dir/manifest.json` (EVENTS_SCHEMA), in ingestion order."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if not manifest_path.exists():
        raise IngestError(f"{out_dir}: no {MANIFEST}; run `txseq ingest` first")
    parts = event_part_files(out_dir)
    columns = ingest_rules(out_dir).events_schema
    if not parts:
        return pl.LazyFrame(schema=columns)
    return pl.scan_parquet(parts, schema=columns)


def ingest_rules(out_dir: str | Path, files: Files | None = None) -> IngestConfig:
    """The ingest rules of an events folder, as recorded in its manifest (the latest file's; every file of one
    folder has the same source): what a model trained on these events validates its input with."""
    return _rules(_load_manifest(out_dir, files))


def _rules(manifest: dict) -> IngestConfig:
    recorded = manifest["files"]
    return IngestConfig.from_dict(recorded[-1]["config"]) if recorded else IngestConfig()


def event_part_files(out_dir: Path | str, files: Files | None = None) -> list[Path | str]:
    """The events Parquet files of every input recorded in `out_dir/manifest.json`, in ingestion order."""
    return [p for f in _load_manifest(out_dir, files)["files"] for p in part_files(out_dir, EVENTS_DIR, f["part"], files)]


def read_rejects(out_dir: str | Path) -> pl.LazyFrame:
    out_dir = Path(out_dir)
    parts = [p for f in _load_manifest(out_dir)["files"] for p in part_files(out_dir, REJECTS_DIR, f["part"])]
    if not parts:
        return pl.LazyFrame(schema=schema.REJECTS_SCHEMA)
    return pl.scan_parquet(parts, schema=schema.REJECTS_SCHEMA)
