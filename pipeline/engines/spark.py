"""Spark engine: `txseq ingest|sequences|score --engine spark` on a cluster (or `local[*]`), same outputs as polars.

Spark only reads, numbers, shuffles and schedules; every rule runs in the polars code the polars engine runs, called
on Arrow tables through `applyInArrow` / `mapInArrow` in the Python workers:

    ingest    read (CSV strings / Parquet types) ─number rows─▶ group by (file, hash(raw customer_id) % n)
              ──validate_combined──▶ group by parsed customer_id % n [cogroup: row hashes of earlier files]
              ──mark_ingested_repeats, split_combined──▶ part bytes ─driver─▶ events/part-<sha16>.parquet/b-<n>.parquet
    sequences events ─code_counts per batch─▶ sum ─rank_codes (driver)─▶ vocab
              events ─range-partition by customer_id─▶ build_sequences ─part bytes─▶ sequences.parquet/part-<n>.parquet
    score     read ─number rows─▶ validate_combined (as ingest) ──▶ reject rows ─driver─▶ rejects file
              valid rows ─range-partition by customer_id─▶ the model's scorer ──▶ score rows ─driver─▶ one sorted file
                                                            └─▶ DriftMonitor bin counts ─sum (driver)─▶ drift report

Rules that need more than one row see all the rows they need: repeats of a row of the same file
(`duplicate_row`) share their raw customer_id text, so one validation group holds them all; repeats of rows
ingested before (`duplicate_of_ingested_row`) share the parsed customer_id, so the second grouping puts a file's
rows beside the earlier files' row hashes of the same customers; a customer's events are one sequence-building or
scoring group. Rows are numbered as the polars scan numbers them (1-based per file, header excluded) from
`_metadata.file_block_start` and `monotonically_increasing_id`, so rejects name the same rows.

The Python workers make the Parquet parts with the project's own writers (the same dtypes, e.g. the UInt64 row
hash that Spark SQL has no type for) and send their bytes back as rows; the driver fetches them partition by
partition (`_gather`: computed in parallel and kept on the workers' disks first) and writes them into a staging
folder it moves into place when the counts reconcile. Score and reject rows of scoring come back as rows (one per
customer, and what was set aside). So the workers share no folder with the driver: inputs and outputs may be at any
URI Spark's Hadoop client reads and writes (hdfs://, s3a://, ...: `pipeline.engines.hadoop`), or paths on the
driver. Only a CSV input's clean copy (made on the driver) is staged where the workers read it: beside the output.
Outputs are folders of parts, which every reader of this project reads like the single file the polars engine
writes.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline import raw_csv, schema
from pipeline.ingest.files import (
    EVENTS_DIR,
    REJECTS_DIR,
    FileReport,
    IngestResult,
    event_part_files,
    ingest,
    parquet_bytes,
    part_name,
    reconcile,
)
from pipeline.ingest.rules import (
    REJECT_TEXT_PREFIX,
    IngestConfig,
    IngestError,
    check_columns,
    mark_ingested_repeats,
    split_combined,
    validate_combined,
)
from pipeline.engines.hadoop import HadoopFiles
from pipeline.io import (
    TableError,
    clean_csv_copy,
    is_parquet,
    is_uri,
    join,
    location,
    scan_table,
    sha256_file,
    sibling,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from pipeline.scoring.batch import ModelRef, ScoreConfig, ScoreResult
    from pipeline.scoring.drift import DriftMonitor, Reference
    from pipeline.sequences.table import SequenceConfig, SequencesResult
    from pipeline.sequences.splits import SplitConfig

JAVA_HINT = "install a JDK 17+ (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
_BUCKET = "_bucket"
_SOURCE = "_source"
_COMBINED: dict[str, pl.DataType] = {
    **schema.EVENTS_SCHEMA,
    **{REJECT_TEXT_PREFIX + c: pl.String() for c in schema.RAW_COLUMNS},
    schema.REJECT_COLUMN: pl.String(),
    schema.REASON: pl.String(),
}
_COUNTS = {"kind": pl.String(), "n": pl.Int64(), "last_row": pl.Int64()}  # kind: "accepted" or a reject reason
_PARTS = {"what": pl.String(), "name": pl.String(), "data": pl.Binary(),  # a part file: its folder, name, bytes
          "kind": pl.String(), "n": pl.Int64(), "last_row": pl.Int64()}  # or counts: as in _COUNTS


class SparkError(RuntimeError):
    """Spark cannot start or run as asked: pyspark or a Java 17+ runtime missing (the message says what to install), a
    malformed --spark-conf, or a job out of JVM memory (the message names the setting to raise)."""


@dataclass(frozen=True)
class SparkConfig:
    master: str | None = "local[*]"  # None: the one spark-submit gave
    conf: tuple[tuple[str, str], ...] = ()  # any spark.* setting, applied after the defaults below
    partition_rows: int = 1_000_000  # rows per customer partition: one Python task holds this many in memory


def parse_conf(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """["spark.executor.memory=8g", ...] -> (("spark.executor.memory", "8g"), ...); SparkError naming a bad item."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SparkError(f"--spark-conf {item!r}: expected KEY=VALUE, e.g. spark.executor.memory=8g")
        out.append((key.strip(), value))
    return tuple(out)


def java_version(java: str) -> int | None:
    """Major version of a `java` executable (8 for "1.8.0_x"), None when it does not run."""
    try:
        text = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if m is None:
        return None
    major = int(m[1])
    return int(m[2] or 0) if major == 1 else major


def check_spark() -> None:
    """Raise SparkError (what to install) unless pyspark imports and a Java 17+ runtime is found."""
    from pipeline.settings import java_home

    try:
        import pyspark  # noqa: F401
    except ImportError as e:
        raise SparkError("pyspark is not installed: pip install -e '.[spark]' (pyspark>=4,<5 with pandas<3)") from e
    home = java_home()
    java = str(home / "bin" / "java") if home is not None else shutil.which("java")
    if java is None:
        raise SparkError(f"no Java runtime found (no `java` on PATH, JAVA_HOME unset): {JAVA_HINT}")
    version = java_version(java)
    if version is None or version < 17:
        raise SparkError(f"{java} is {'not runnable' if version is None else f'Java {version}'}; Spark 4 needs "
                               f"Java 17+: {JAVA_HINT}")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def local_memory_defaults(master: str | None, physical_bytes: int | None) -> dict[str, str]:
    """In local mode the driver JVM does all the work, and Spark's 1 GiB default heap runs out on a few million rows
    (measured: scoring 6.85M rows on local[2]); give it a quarter of the machine's memory (at least 1 GiB, at most
    32 GiB). On a cluster (or under spark-submit) the cluster's settings rule. `--spark-conf` overrides either."""
    if master is None or not master.startswith("local") or not physical_bytes:
        return {}
    gib = max(1, min(32, physical_bytes // 4 // 2**30))
    return {"spark.driver.memory": f"{gib}g"}


def session(config: SparkConfig = SparkConfig()) -> SparkSession:
    """The active SparkSession, or a new one: `config.master` (None: spark-submit's), the workers on this Python
    (unless PYSPARK_PYTHON / spark.pyspark.python say otherwise), no console progress bars, then `config.conf`. Its
    `spark.hadoop.*` items reach the Hadoop configuration of an active session too (file system settings of this
    call's inputs); other static settings of an active session stay as they were."""
    from pipeline.settings import default_spark_python

    check_spark()
    from pyspark.sql import SparkSession

    default_spark_python(sys.executable)

    builder = SparkSession.builder.appName("txseq")
    if config.master is not None:
        builder = builder.master(config.master)
    defaults = {"spark.ui.showConsoleProgress": "false",
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                **local_memory_defaults(config.master, _physical_memory())}
    for key, value in (*defaults.items(), *config.conf):
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    hadoop = spark._jsc.hadoopConfiguration()
    for key, value in config.conf:  # as Spark does at start, also for a session this process had already: a
        if key.startswith("spark.hadoop."):  # second flow run's credentials or mount tables must not be dropped
            hadoop.set(key.removeprefix("spark.hadoop."), value)
    return spark


# --- Arrow <-> Spark plumbing ------------------------------------------------------------------------------------
def _spark_type(dtype: pl.DataType) -> str:
    """Spark SQL type (DDL) of a polars dtype; UInt64 travels as its bit pattern in a long."""
    if isinstance(dtype, pl.List):
        return f"array<{_spark_type(dtype.inner)}>"
    return {pl.Int64: "long", pl.UInt64: "long", pl.Int32: "int", pl.Int8: "tinyint", pl.Float64: "double",
            pl.Float32: "float", pl.String: "string", pl.Binary: "binary"}[dtype.base_type()]


def _ddl(columns: dict[str, pl.DataType]) -> str:
    return ", ".join(f"`{c}` {_spark_type(t)}" for c, t in columns.items())


def _arrow_schema(columns: dict[str, pl.DataType]) -> pa.Schema:
    """The Arrow schema Spark expects back for `_ddl(columns)` (plain strings, UInt64 as int64)."""
    def arrow(t: pl.DataType) -> pa.DataType:
        if isinstance(t, pl.List):
            return pa.list_(arrow(t.inner))
        return {pl.Int64: pa.int64(), pl.UInt64: pa.int64(), pl.Int32: pa.int32(), pl.Int8: pa.int8(),
                pl.Float64: pa.float64(), pl.Float32: pa.float32(), pl.String: pa.string(),
                pl.Binary: pa.binary()}[t.base_type()]
    return pa.schema([(c, arrow(t)) for c, t in columns.items()])


def _to_spark(df: pl.DataFrame, columns: dict[str, pl.DataType]) -> pa.Table:
    """A polars frame as the Arrow table Spark expects for `columns` (UInt64 reinterpreted as Int64)."""
    df = df.select([pl.col(c).reinterpret(signed=True) if t == pl.UInt64 else pl.col(c).cast(t) for c, t in columns.items()])
    return df.to_arrow().cast(_arrow_schema(columns))


def _from_spark(table: pa.Table, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """An Arrow table from Spark back to `columns`' dtypes (a long that carried a UInt64 reinterpreted back)."""
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(
        [pl.col(c).reinterpret(signed=False) if t == pl.UInt64 and df.schema[c] == pl.Int64 else pl.col(c).cast(t)
         for c, t in columns.items() if c in df.columns]
    )


def _grouped(fn: Callable[..., pa.Table], *args: Any, cogroup: bool = False) -> Callable[..., pa.Table]:
    """`fn` with leading `args` bound, as a plain function of (key, table), or (key, left, right) for a cogroup:
    pyspark reads the UDF kind and arity from the signature and fails on a `functools.partial` (4.3)."""
    def grouped(key, table):  # noqa: ANN001, ANN202 - type hints would change how pyspark calls it
        return fn(*args, _key(key), table)

    def cogrouped(key, left, right):  # noqa: ANN001, ANN202
        return fn(*args, _key(key), left, right)

    return cogrouped if cogroup else grouped


def _key(key: tuple) -> tuple:
    """A group key as Python values (pyspark hands Arrow scalars)."""
    return tuple(k.as_py() if hasattr(k, "as_py") else k for k in key)


def _error_line(e: BaseException) -> str:
    """The useful line of a Spark error: a Python worker's own exception, else the first line."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    python = [x for x in lines if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", x)]
    return (python[-1] if python else lines[0] if lines else type(e).__name__)[:500]


def failure(what: str, e: BaseException) -> Exception:
    """The error to raise for a failed Spark job on `what`: running out of JVM memory is the engine's sizing, not the
    input's fault, and says which setting to raise; anything else is the input's `cannot be read to the end`."""
    if "OutOfMemoryError" in str(e):
        return SparkError(f"{what}: Spark ran out of memory (java.lang.OutOfMemoryError); give it more with "
                          "--spark-conf spark.driver.memory=8g (local mode) or spark.executor.memory=8g (a cluster), "
                          "or smaller partitions")
    return IngestError(f"{what}: cannot be read to the end: {_error_line(e)}")


def _spark_errors() -> tuple[type[BaseException], ...]:
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    return (Py4JJavaError, PySparkException)


def _staging(target: Path) -> Path:
    path = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.staging")
    path.mkdir(parents=True)
    return path


def _move_into_place(staging: Path, target: Path) -> None:
    """Replace whatever is at `target` (a file or folder from an earlier run) with the `staging` folder."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    staging.rename(target)


def _local_path(uri: str) -> str:
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme in ("", "file") else uri


def _partitions(spark: SparkSession, rows: int, partition_rows: int) -> int:
    return max(spark.sparkContext.defaultParallelism, math.ceil(rows / max(partition_rows, 1)))


# --- reading and numbering raw rows ------------------------------------------------------------------------------
def read_numbered(spark: SparkSession, path: str | Path, allow_extra: bool, per_file: bool, scratch: Path | str
                  ) -> tuple[DataFrame, int, int]:
    """A raw table as (DataFrame of SOURCE_ROW, `_source`, the raw columns present [+ raw_csv.FLAG]; rows read;
    blank lines left out).

    CSV: first the checks and the bounded clean copy of `io.open_table` (`io.clean_csv_copy`, on the driver, into
    `scratch`, a folder or URI the workers must see; a CSV at a URI is first copied to the driver), read by Spark
    with every column a string; Parquet: the file's own types, read by Spark where it lies (a URI: through Spark's Hadoop client). Rows
    are numbered 1..n in file order (a Parquet folder: its files in sorted order, numbered on across them, as polars
    scans it; `per_file`: numbered per file, `_source` naming each file, as scoring does). Raises IngestError for
    what the header or footer already shows."""
    from pyspark.sql import functions as F

    source = str(path)
    local = not is_uri(path)
    blank_lines = 0
    try:
        parquet = is_parquet(Path(_local_path(source))) if local else HadoopFiles(spark).is_parquet(source)
        if parquet:
            if local:
                scan_table(Path(_local_path(source))).collect_schema()  # the checks polars makes, same messages
            df = spark.read.parquet(source)
        else:
            name = f"clean-{uuid.uuid4().hex[:8]}.csv"  # not hidden: Spark skips ".x" and "_x" files
            with tempfile.TemporaryDirectory(prefix="txseq-clean-") as tmp:
                clean = scratch / name if isinstance(scratch, Path) else Path(tmp, name)
                sep, stats = clean_copy(spark, source, clean) if not local else clean_csv_copy(Path(source), clean)
                where = str(clean) if isinstance(scratch, Path) else HadoopFiles(spark).put(clean, f"{scratch}/{name}")
            blank_lines = stats.blank_lines
            df = spark.read.csv(where, header=True, sep=sep, inferSchema=False, encoding="UTF-8",
                                mode="PERMISSIVE", enforceSchema=False)
    except TableError as e:
        raise IngestError(str(e)) from e
    names = [n.strip().lstrip("\ufeff") for n in df.columns]
    check_columns([n for n in names if n != raw_csv.FLAG], source, allow_extra)
    wanted = (*schema.RAW_COLUMNS, raw_csv.FLAG)
    raw = {n: original for n, original in zip(names, df.columns) if n in wanted}
    located = df.select(
        *[F.col(f"`{original}`").alias(n) for n, original in raw.items()],
        F.col("_metadata.file_path").alias("_file"), F.col("_metadata.file_block_start").alias("_start"),
        F.monotonically_increasing_id().alias("_mono"),
    )
    blocks = sorted(
        located.groupBy("_file", "_start").agg(F.count("*").alias("n"), F.min("_mono").alias("m0")).collect(),
        key=lambda r: (Path(_local_path(r["_file"])), r["_start"]),
    )
    bases, seen, file = [], 0, None
    for b in blocks:  # row number = rows of the blocks before + position in the block + 1
        if per_file and b["_file"] != file:
            seen, file = 0, b["_file"]
        name = _local_path(b["_file"]) if per_file and parquet else source
        bases.append((b["_file"], b["_start"], seen - b["m0"] + 1, name))
        seen += b["n"]
    rows = sum(b["n"] for b in blocks)
    if not bases:
        return located.select(F.lit(0).cast("long").alias(schema.SOURCE_ROW), F.lit(source).alias(_SOURCE),
                              *raw), 0, blank_lines
    base = spark.createDataFrame(bases, "_file string, _start long, _base long, _source string")
    numbered = located.join(F.broadcast(base), ["_file", "_start"]).select(
        (F.col("_base") + F.col("_mono")).alias(schema.SOURCE_ROW), F.col(_SOURCE), *raw,
    )
    return numbered, rows, blank_lines


def clean_copy(spark: SparkSession, uri: str, clean: Path) -> tuple[str, raw_csv.FilterStats]:
    """`io.clean_csv_copy` of a CSV at a URI: copied next to `clean` first (the driver reads it once, as for a local
    CSV), then cleaned; messages name the URI, not the copy."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    copy = clean.with_name(f"raw-{uuid.uuid4().hex[:8]}{'.csv.gz' if name.lower().endswith('.gz') else '.csv'}")
    try:
        HadoopFiles(spark).fetch(uri, copy)
        return clean_csv_copy(copy, clean)
    except TableError as e:
        raise TableError(str(e).replace(str(copy), uri)) from None
    finally:
        copy.unlink(missing_ok=True)


def _validate_group(config: IngestConfig, key: tuple, table: pa.Table) -> pa.Table:
    """One (file, customer bucket) of raw rows -> `validate_combined` rows, raw text kept for every row."""
    source = key[0]
    frame = _from_spark(table, {}).drop(_SOURCE)
    out = validate_combined(frame.lazy(), source, config, numbered=True, all_texts=True).collect()
    return _to_spark(out, _COMBINED)


def validated(spark: SparkSession, numbered: DataFrame, rows: int, config: IngestConfig, partition_rows: int) -> DataFrame:
    """Numbered raw rows -> `validate_combined` rows, grouped by (file, hash of the raw customer_id)."""
    from pyspark.sql import functions as F

    n = _partitions(spark, rows, partition_rows)
    key = F.pmod(F.xxhash64(F.col(schema.CUSTOMER_ID)), F.lit(n))
    return numbered.groupBy(F.col(_SOURCE), key.alias(_BUCKET)).applyInArrow(_grouped(_validate_group, config),
                                                                              _ddl(_COMBINED))


# --- ingest ------------------------------------------------------------------------------------------------------
def _ingest_group(key: tuple, left: pa.Table, right: pa.Table | None = None) -> pa.Table:
    """One customer bucket of validated rows [+ the row hashes of earlier files] -> its events and rejects part
    files (as bytes, written by the project's Parquet writer: exact dtypes such as the UInt64 row hash, which Spark
    SQL cannot write) and its counts (see `_PARTS`)."""
    combined = _from_spark(left, _COMBINED).lazy()
    if right is not None and right.num_rows:
        combined = mark_ingested_repeats(combined, pl.from_arrow(right)[schema.ROW_HASH])
    events, rejects = (f.sort(schema.SOURCE_ROW).collect() for f in split_combined(combined))
    name = f"b-{int(key[-1]):05d}.parquet"
    counts = rejects.group_by(schema.REASON).agg(pl.len().cast(pl.Int64).alias("n"))
    last = max(events[schema.SOURCE_ROW].max() or 0, rejects[schema.SOURCE_ROW].max() or 0)
    kinds = ["accepted", *counts[schema.REASON].to_list()]
    return pa.table({
        "what": [EVENTS_DIR, REJECTS_DIR] + [None] * len(kinds),
        "name": [name, name] + [None] * len(kinds),
        "data": [parquet_bytes(events, schema.EVENTS_SCHEMA), parquet_bytes(rejects, schema.REJECTS_SCHEMA)]
        + [None] * len(kinds),
        "kind": [None, None, *kinds],
        "n": [None, None, events.height, *counts["n"].to_list()],
        "last_row": [None, None] + [last] * len(kinds),
    }, schema=_arrow_schema(_PARTS))


GATHER_BYTES = 256 << 20  # the most part bytes the driver fetches at once


def _gather(files: HadoopFiles, parts: DataFrame, folders: dict[str, Path | str]) -> list[Any]:
    """Run `parts` (rows of `_PARTS`) on the workers in parallel, kept on their disks; then fetch them in chunks of
    about `GATHER_BYTES` (one Spark job each: a job per partition would cost more than the bytes) and write each
    part's bytes to `folders[what]/name` (a path or a URI: the workers need no folder shared with the driver).
    Returns the rows without bytes (counts), as dicts."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    parts = parts.persist(StorageLevel.DISK_ONLY)
    try:
        total = parts.agg(F.sum(F.length("data"))).first()[0] or 0  # runs the workers and fills the cache
        chunks = math.ceil(total / GATHER_BYTES)
        if chunks <= 1:  # the usual case: one Arrow transfer (about twice as fast as pickled rows)
            rows: Iterator[dict[str, Any]] = iter(parts.toArrow().to_pylist())
        else:  # bounded memory: one chunk of partitions at a time
            rows = (row.asDict() for row in parts.coalesce(chunks).toLocalIterator())
        counts = []
        for row in rows:
            if row["data"] is None:
                counts.append(row)
            else:
                files.write_bytes(bytes(row["data"]), join(folders[row["what"]], row["name"]))
        return counts
    finally:
        parts.unpersist()


@dataclass(frozen=True)
class SparkEngine:
    """The three steps on one SparkSession; `config.partition_rows` sizes the customer partitions."""

    spark: Any
    config: SparkConfig = SparkConfig()

    @classmethod
    def start(cls, config: SparkConfig = SparkConfig()) -> "SparkEngine":
        return cls(session(config), config)

    def _run(self, what: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except _spark_errors() as e:
            raise failure(what, e) from e

    # ingest ------------------------------------------------------------------------------------------------------
    def ingest(self, inputs: Sequence[str | Path], out_dir: str | Path, config: IngestConfig = IngestConfig(), *,
               atomic: bool = False) -> IngestResult:
        """`pipeline.ingest.files.ingest` with each file validated on Spark: the same manifest, parts and counts.
        Inputs are paths or URIs of any file system Spark's Hadoop client reads (hdfs://, s3a://, ...; see
        `pipeline.engines.hadoop`: the driver lists and hashes them through the JVM)."""
        return ingest([location(i) for i in inputs], out_dir, config, atomic=atomic, file_step=self._ingest_file,
                      files=HadoopFiles(self.spark))

    def _ingest_file(self, path: Path | str, sha: str, out_dir: Path | str, seen: list[Path | str],
                     config: IngestConfig) -> FileReport:
        """One input -> `out_dir` (the unit's staging folder, a path or a URI)/events|rejects/<part>/b-<n>.parquet;
        the workers send each part's bytes to the driver, which writes them (see `_gather`)."""
        from pyspark.sql import functions as F

        files = HadoopFiles(self.spark)
        part = part_name(sha)
        scratch = join(out_dir, "scratch")  # the clean copy of a CSV, read by the workers
        files.make_folder(scratch)
        numbered, rows_in, blank_lines = read_numbered(self.spark, path, config.allow_extra_columns, per_file=False,
                                                       scratch=scratch)
        if rows_in == 0:
            reconcile(path, 0, 0, 0, 0, {}, blank_lines)
        combined = validated(self.spark, numbered, rows_in, config, self.config.partition_rows)
        n = _partitions(self.spark, rows_in, self.config.partition_rows)
        by_customer = F.pmod(F.coalesce(F.col(schema.CUSTOMER_ID), F.col(schema.SOURCE_ROW)), F.lit(n))
        grouped = combined.groupBy(by_customer.alias(_BUCKET))
        if seen:
            earlier = self.spark.read.parquet(*map(str, seen)).select(schema.CUSTOMER_ID, schema.ROW_HASH)
            parts = grouped.cogroup(earlier.groupBy(F.pmod(F.col(schema.CUSTOMER_ID), F.lit(n)).alias(_BUCKET)))
            parts = parts.applyInArrow(_grouped(_ingest_group, cogroup=True), _ddl(_PARTS))
        else:
            parts = grouped.applyInArrow(_grouped(_ingest_group), _ddl(_PARTS))
        folders = {EVENTS_DIR: join(out_dir, EVENTS_DIR, part), REJECTS_DIR: join(out_dir, REJECTS_DIR, part)}
        rows = self._run(str(path), lambda: _gather(files, parts, folders))
        files.remove(scratch)
        accepted = sum(r["n"] for r in rows if r["kind"] == "accepted")
        by_reason: dict[str, int] = {}
        for r in rows:
            if r["kind"] != "accepted":
                by_reason[r["kind"]] = by_reason.get(r["kind"], 0) + r["n"]
        rejected = sum(by_reason.values())
        reconcile(path, rows_in, accepted, rejected, max((r["last_row"] for r in rows), default=0), by_reason,
                  blank_lines)
        return FileReport(str(path), sha, rows_in, accepted, rejected, dict(sorted(by_reason.items())), blank_lines)

    # sequences ---------------------------------------------------------------------------------------------------
    def run_sequences(self, events_dir: str | Path, labels_path: str | Path | None, out_dir: str | Path,
                      config: SequenceConfig | None = None, split_config: SplitConfig | None = None) -> SequencesResult:
        """`pipeline.sequences.table.run_sequences` on Spark: vocab counts summed over partitions, `build_sequences` on
        customer ranges; writes sequences.parquet as a folder of parts in customer order. `events_dir` and `out_dir`
        may be URIs: the workers send the parts' bytes to the driver (see `_gather`), which writes the folder (for a
        URI, locally first and then uploaded, the manifest last)."""
        import dataclasses

        from pyspark.sql import functions as F

        from pipeline.sequences.table import (
            MANIFEST_FILE,
            SEQUENCES_FILE,
            SPLIT_FILE,
            VOCAB_FILE,
            SequenceConfig,
            Vocab,
            cover_labels,
            rank_codes,
            record_sequences,
        )
        from pipeline.sequences.splits import SplitConfig, make_split

        config, split_config = config or SequenceConfig(), split_config or SplitConfig()
        t0 = time.perf_counter()
        files = HadoopFiles(self.spark)
        events_dir, out_dir = location(events_dir), location(out_dir)
        try:
            if not files.exists(join(events_dir, "manifest.json")):
                raise IngestError(f"{events_dir}: no manifest.json; run `txseq ingest` first")
            parts = event_part_files(events_dir, files)
        except TableError as e:
            raise IngestError(str(e)) from e
        columns = [c for c in schema.EVENTS_SCHEMA if c not in (schema.ROW_HASH, schema.TR_DATETIME, schema.TERM_ID)]
        if parts:
            events = self.spark.read.parquet(*map(str, parts)).select(*columns)
        else:
            events = self.spark.createDataFrame([], _ddl({c: schema.EVENTS_SCHEMA[c] for c in columns}))
        # labels of customers without events are left out before the split, as on polars (the ids come to the driver,
        # which holds the labels and the split anyway)
        customers = [r[0] for r in self._run(str(events_dir), events.select(schema.CUSTOMER_ID).distinct().collect)]
        labels, labels_sha256 = self._labels(labels_path)
        labels, coverage = cover_labels(labels, customers)
        split = make_split(labels, split_config)
        test = self.spark.createDataFrame([(int(i),) for i in split.test_ids], "customer_id long")
        train = events.join(F.broadcast(test), on=schema.CUSTOMER_ID, how="left_anti")
        counted = train.select(schema.CUSTOMER_ID, schema.MCC_CODE, schema.TR_TYPE).mapInArrow(
            _code_counts, "column string, code long, n long").groupBy("column", "code").agg(F.sum("n").alias("n"))
        counts = pl.DataFrame(self._run(str(events_dir), counted.collect), schema=["column", "code", "n"], orient="row")
        totals = self._run(str(events_dir), train.agg(F.count("*").alias("n"),
                                                     F.countDistinct(schema.CUSTOMER_ID).alias("c")).first)
        ranked = {c: rank_codes(counts.filter(pl.col("column") == c).select(pl.col("code").alias(c), "n"), c,
                                config.min_count) for c in (schema.MCC_CODE, schema.TR_TYPE)}
        vocab = Vocab(mcc=ranked[schema.MCC_CODE], tr_type=ranked[schema.TR_TYPE], min_count=config.min_count,
                      n_events=int(totals["n"]), n_customers=int(totals["c"]))

        with tempfile.TemporaryDirectory(prefix="txseq-sequences-") as tmp:
            local_out = out_dir if isinstance(out_dir, Path) else Path(tmp, "out")
            local_out.mkdir(parents=True, exist_ok=True)
            target = local_out / SEQUENCES_FILE
            staging = _staging(target)
            try:
                n = _partitions(self.spark, self._run(str(events_dir), events.count), self.config.partition_rows)
                build = partial(_build_partition, vocab, config, labels)
                written = events.repartitionByRange(n, schema.CUSTOMER_ID).mapInArrow(build, _ddl(_PARTS))
                self._run(str(events_dir), lambda: _gather(files, written, {SEQUENCES_FILE: staging}))
                if not any(staging.iterdir()):  # no events at all: one empty part with the table's schema
                    from pipeline.schema import SEQUENCES_SCHEMA

                    pl.DataFrame(schema=SEQUENCES_SCHEMA).write_parquet(staging / "part-00000.parquet")
                _move_into_place(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            result = record_sequences(events_dir, labels_path, local_out, config, split_config, vocab, split,
                                      coverage, t0, labels_sha256=labels_sha256, files=files)
            if isinstance(out_dir, Path):
                return result
            for name in (SEQUENCES_FILE, VOCAB_FILE, SPLIT_FILE, MANIFEST_FILE):  # the manifest last: it says "done"
                files.put(local_out / name, str(join(out_dir, name)))
        return dataclasses.replace(result, out_dir=out_dir, sequences_path=join(out_dir, SEQUENCES_FILE),
                                   vocab_path=join(out_dir, VOCAB_FILE), split_path=join(out_dir, SPLIT_FILE),
                                   manifest_path=join(out_dir, MANIFEST_FILE))

    def _labels(self, labels_path: str | Path | None) -> tuple[pl.DataFrame, str | None]:
        """(the labels table, its sha256 when the manifest cannot hash `labels_path` itself). At a URI, read once
        into a local copy that gives both (the driver holds the labels and the split anyway)."""
        from pipeline.sequences.table import labels_or_none

        if labels_path is None or not is_uri(labels_path):
            return labels_or_none(labels_path), None
        uri = str(labels_path)
        with tempfile.TemporaryDirectory(prefix="txseq-labels-") as tmp:
            copy = HadoopFiles(self.spark).fetch(uri, Path(tmp) / uri.rstrip("/").rsplit("/", 1)[-1])
            try:
                return labels_or_none(copy), sha256_file(copy)
            except IngestError as e:
                raise IngestError(str(e).replace(str(copy), uri)) from None

    # scoring -----------------------------------------------------------------------------------------------------
    @contextmanager
    def shipped_model(self, model: ModelRef, tracking_uri: str) -> Iterator[ShippedScorer]:
        """The artifacts of the model version `model` names, downloaded once by the driver and shipped to every
        executor (`SparkContext.addFile`): the workers score with the very version the driver resolved (an alias
        moved during the run cannot split the scores between two versions) and need not reach the tracking
        store (a SQLite file on the driver, say)."""
        from pipeline.scoring.pyfunc import download_model

        with tempfile.TemporaryDirectory(prefix="txseq-model-") as tmp:
            # a name not added to this SparkContext before (addFile refuses a known name with other content)
            shipped = download_model(model, tracking_uri, Path(tmp, f"txseq-model-{uuid.uuid4().hex[:12]}"))
            self.spark.sparkContext.addFile(str(shipped), recursive=True)
            yield ShippedScorer(shipped.name)

    def score_file(self, source: str | Path, output: str | Path, scorer_factory: Callable[[], Any], model: ModelRef,
                   config: ScoreConfig | None = None, rejects: str | Path | None = None,
                   ingest_config: IngestConfig | None = None, reference: Reference | None = None) -> ScoreResult:
        """`pipeline.scoring.batch.score_file` on Spark. `scorer_factory()` (picklable: it runs in each worker,
        once per Python worker) returns the scorer; rows are validated with `ingest_config` (the model's).
        With the model's drift `reference`, each worker counts its customers' events into a `DriftMonitor`'s bins
        and the driver adds the counts up: the same `<stem>.drift.json` / `.drift.png` as the polars engine.

        The workers send their score, reject and drift-count parts to the driver (`_gather`), which puts them
        together as the polars engine does: `output` and `rejects` may be paths or URIs (uploaded with
        `HadoopFiles.put`), and no folder needs to be shared with the workers except, for a CSV input, the hidden
        staging folder beside `output` that holds its clean copy."""
        from pyspark import StorageLevel
        from pyspark.sql import functions as F

        from pipeline.io import base_name, write_parquet_atomic
        from pipeline.schema import SCORES_SCHEMA
        from pipeline.scoring.batch import ScoreConfig, ScoreResult, default_rejects_path, probability_histogram
        from pipeline.scoring.drift import DriftMonitor

        started = time.perf_counter()
        config = config or ScoreConfig()
        ingest_config = ingest_config or config.ingest or IngestConfig()
        source, output = location(source), location(output)
        rejects = location(rejects) if rejects is not None else default_rejects_path(output)
        files = HadoopFiles(self.spark)
        scored_at = datetime.now(UTC)
        with tempfile.TemporaryDirectory(prefix="txseq-score-") as tmp:
            local_output = output if isinstance(output, Path) else Path(tmp, "output", base_name(output))
            local_rejects = rejects if isinstance(rejects, Path) else Path(tmp, "rejects", base_name(rejects))
            for path in (local_output, local_rejects):
                path.parent.mkdir(parents=True, exist_ok=True)
            got = {what: Path(tmp, "parts", what) for what in ("rejects", "scores", "drift")}
            scratch = files.staging(output)  # the clean copy of a CSV input, which the workers read
            try:
                numbered, rows_in, _ = read_numbered(self.spark, source, ingest_config.allow_extra_columns,
                                                     per_file=True, scratch=scratch)
                if rows_in == 0:
                    raise IngestError(f"{source}: no data rows (header only)")
                combined = validated(self.spark, numbered, rows_in, ingest_config, self.config.partition_rows)
                combined = combined.persist(StorageLevel.DISK_ONLY)  # read twice; the heap is for work
                bad = combined.filter(F.col(schema.REASON).isNotNull()).mapInArrow(_reject_part, _ddl(_PARTS))
                self._run(str(source), lambda: _gather(files, bad, got))
                good = combined.filter(F.col(schema.REASON).isNull()).select(*schema.EVENTS_SCHEMA)
                n = _partitions(self.spark, rows_in, self.config.partition_rows)
                scored = good.repartitionByRange(n, schema.CUSTOMER_ID).mapInArrow(
                    partial(_score_part, scorer_factory, model, scored_at, reference), _ddl(_PARTS))
                self._run(str(source), lambda: _gather(files, scored, got))
                combined.unpersist()
            finally:
                files.remove(scratch)
            reject_parts = sorted(got["rejects"].glob("*.parquet"))
            score_parts = sorted(got["scores"].glob("*.parquet"))
            rejected = pl.scan_parquet(reject_parts) if reject_parts else pl.LazyFrame(schema=schema.REJECTS_SCHEMA)
            write_parquet_atomic(rejected.cast(schema.REJECTS_SCHEMA).sort(schema.SOURCE_FILE, schema.SOURCE_ROW),
                                 local_rejects)
            scores = pl.scan_parquet(score_parts) if score_parts else pl.LazyFrame(schema=SCORES_SCHEMA)
            write_parquet_atomic(scores.sort(schema.CUSTOMER_ID), local_output)
            drift, drift_files = None, []
            if reference is not None:
                monitor = DriftMonitor(reference, config.drift_psi_threshold)
                for part in sorted(got["drift"].glob("*.json")):
                    _add_drift_counts(monitor, json.loads(part.read_text()))
                probabilities = pl.read_parquet(local_output, columns=[schema.PROBABILITY])[schema.PROBABILITY]
                report = monitor.report(probabilities.to_numpy())
                drift, drift_files = report.to_dict(), list(report.write(local_output.with_suffix("")))
            histogram = probability_histogram(local_output)
            rejected_rows = pl.scan_parquet(local_rejects).select(pl.len()).collect().item()
            customers = pl.scan_parquet(local_output).select(pl.len()).collect().item()
            if not isinstance(rejects, Path):
                files.put(local_rejects, rejects)
            if not isinstance(output, Path):
                drift_files = [files.put(f, str(sibling(output, f.name))) for f in drift_files]
                files.put(local_output, output)
        return ScoreResult(
            output=output, rejects=rejects, input_rows=rows_in, rejected_rows=int(rejected_rows),
            customers=int(customers), chunks=len(score_parts), model_name=model.name, model_version=model.version,
            seconds=time.perf_counter() - started, histogram=histogram, drift=drift,
            drift_files=[str(f) for f in drift_files],
        )


# --- functions run by the Python workers -------------------------------------------------------------------------
def _batches_frame(batches: Iterator[pa.RecordBatch], columns: dict[str, pl.DataType]) -> pl.DataFrame | None:
    """All batches of one partition as one frame (None when the partition is empty)."""
    tables = [b for b in batches if b.num_rows]
    if not tables:
        return None
    return _from_spark(pa.Table.from_batches(tables), columns)


def _partition_id() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.partitionId() if context is not None else 0


def _code_counts(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    from pipeline.sequences.table import code_counts

    for batch in batches:
        frame = pl.from_arrow(pa.Table.from_batches([batch])).lazy()
        for column in (schema.MCC_CODE, schema.TR_TYPE):
            counts = code_counts(frame, column).collect()
            out = counts.select(pl.lit(column).alias("column"), pl.col(column).cast(pl.Int64).alias("code"), "n")
            yield from _to_spark(out, {"column": pl.String(), "code": pl.Int64(), "n": pl.Int64()}).to_batches()


def _build_partition(vocab: Any, config: Any, labels: pl.DataFrame,
                     batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One customer range of events -> `build_sequences` -> the bytes of part-<partition>.parquet (sorted by
    customer; a `_PARTS` row for `_gather`)."""
    from pipeline.sequences.table import PARQUET_OPTIONS, SEQUENCES_FILE, build_sequences

    frame = _batches_frame(batches, schema.EVENTS_SCHEMA)
    if frame is None:
        return
    seq = build_sequences(frame.lazy(), vocab, config, labels)
    buffer = io.BytesIO()
    seq.write_parquet(buffer, **PARQUET_OPTIONS)
    yield from _part_row(SEQUENCES_FILE, buffer.getvalue(), seq.height).to_batches()


def _part_row(what: str, data: bytes, n: int, extension: str = "parquet") -> pa.Table:
    """One `_PARTS` row: a file named after the partition, for `_gather`."""
    return pa.table({"what": [what], "name": [f"part-{_partition_id():05d}.{extension}"], "data": [data],
                     "kind": [None], "n": [n], "last_row": [None]}, schema=_arrow_schema(_PARTS))


def _reject_part(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Validated rows with a reason -> their rejects part (`split_combined`, as the polars engine writes them)."""
    frame = _batches_frame(batches, _COMBINED)
    if frame is None:
        return
    rejects = split_combined(frame.lazy())[1].collect()
    yield from _part_row("rejects", parquet_bytes(rejects, schema.REJECTS_SCHEMA), rejects.height).to_batches()


_SCORERS: dict[Any, Any] = {}  # one scorer per Python worker process and factory (workers are reused)


def _score_part(scorer_factory: Callable[[], Any], model: Any, scored_at: datetime, reference: Reference | None,
                batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """One customer range of validated events -> the scorer -> its scores part (one row per customer), and with a
    `reference`, the partition's drift bin counts as JSON (whole customers: the per-customer features count
    right)."""
    from pipeline.scoring.batch import ScoreConfig, _conform, _predict
    from pipeline.scoring.drift import DriftMonitor

    frame = _batches_frame(batches, schema.EVENTS_SCHEMA)
    if frame is None:
        return
    if scorer_factory not in _SCORERS:
        _SCORERS[scorer_factory] = scorer_factory()
    scored = _conform(_predict(_SCORERS[scorer_factory], frame, ScoreConfig()), frame, model, scored_at)
    buffer = io.BytesIO()
    scored.write_parquet(buffer)
    yield from _part_row("scores", buffer.getvalue(), scored.height).to_batches()
    if reference is not None:
        monitor = DriftMonitor(reference)
        monitor.observe(frame)
        counts = {"counts": {k: v.tolist() for k, v in monitor.counts.items()}, "unknown": monitor.unknown,
                  "events": monitor.events}
        yield from _part_row("drift", json.dumps(counts).encode(), frame.height, "json").to_batches()


def _add_drift_counts(monitor: DriftMonitor, counts: dict[str, Any]) -> None:
    """Add one partition's bin counts (from `_score_part`) to the driver's monitor."""
    for name, n in counts["counts"].items():
        monitor.counts[name] += np.asarray(n, dtype=np.int64)
    for name, n in counts["unknown"].items():
        monitor.unknown[name] += int(n)
    monitor.events += int(counts["events"])


@dataclass(frozen=True)
class ShippedScorer:
    """A picklable scorer factory: the batch scorer of the model folder shipped to the executors under `name`
    (`SparkEngine.shipped_model`), loaded in the worker from its local copy."""

    name: str

    def __call__(self) -> Any:
        from pyspark import SparkFiles

        from pipeline.scoring.pyfunc import load_batch_scorer

        return load_batch_scorer(SparkFiles.get(self.name))[0]
