"""Batch scoring: raw transactions in, one row of scores per customer out, in customer-partitioned chunks.

The model is any `Scorer`: a callable from a raw-transactions DataFrame (pandas or polars) to one row per customer
with `customer_id`, `probability`, `prediction`. In production that is the scorer inside the MLflow pyfunc model
(`pipeline.scoring.pyfunc.load_batch_scorer`), which is handed the rows validated here; this module never imports
mlflow, so it is tested with plain functions as well.

    input (file or folder) ──validate (as ingest)──▶ rejects.parquet
                           └──▶ staging buckets: hash(customer_id) % n_buckets, one streaming pass
    buckets ──packed into chunks of ≤ chunk_rows──▶ scorer(chunk) ──▶ scores.parquet (temp name, then rename)
                                                └──▶ drift monitor ──▶ <scores stem>.drift.json / .drift.png

A scorer with a `reference` (training-time statistics stored with the model, `pipeline.scoring.drift`) gets a drift
report with every scored batch; models registered before that have none and get no report.

Every customer's whole history falls in one bucket, so a chunk holds complete histories and inputs larger than
memory are scored one chunk at a time. Only the staging pass and the final sort of the (small) scores table run
over the whole input; both stream.

Landing-folder mode (each new file of a folder scored once, with a ledger) is `pipeline.scoring.landing`.
"""

from __future__ import annotations

import gzip
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.scoring.drift import PSI_THRESHOLD, DriftMonitor, Reference, warning_line
from pipeline.ingest.rules import IngestConfig, IngestError, check_columns, split_combined, validate_combined
from pipeline.io import (
    TableError,
    base_name,
    check_input,
    check_readable,
    is_gzip,
    is_parquet,
    open_table,
    parquet_files,
    printable,
    remove_dead_temp,
    scan_table,
    sibling,
    temp_path,
    write_parquet_atomic,
)

log = logging.getLogger(__name__)
class Scorer(Protocol):
    """`predict(raw transactions DataFrame) -> DataFrame` with one row per customer: customer_id, probability,
    prediction (pandas or polars in, pandas or polars out). Any pyfunc's predict, or a plain function, will do."""

    def __call__(self, raw: Any) -> Any: ...


@runtime_checkable
class EventScorer(Protocol):
    """A scorer that takes the validated EVENTS_SCHEMA rows (`pipeline.scoring.pyfunc`'s do): it is handed the rows
    validated here, so they are not validated a second time inside the model."""

    def score_events(self, events: pl.LazyFrame) -> Any: ...


@runtime_checkable
class RuleBound(Protocol):
    """A scorer that carries the ingest rules (source mapping, limits) its model was trained with."""

    ingest: IngestConfig


@runtime_checkable
class DriftReferenced(Protocol):
    """A scorer that carries the training-time statistics its drift report compares against."""

    reference: Reference | None


def scorer_rules(scorer: Any) -> IngestConfig | None:
    """The ingest rules stored with the scorer's model, or None (a plain function: the caller's or the default)."""
    return scorer.ingest if isinstance(scorer, RuleBound) else None


def scorer_reference(scorer: Any) -> Reference | None:
    """The drift reference stored with the scorer's model, or None (no drift report)."""
    return scorer.reference if isinstance(scorer, DriftReferenced) else None


DATA_SUFFIXES: tuple[str, ...] = (".parquet", ".csv", ".csv.gz")
_BUCKET = "_bucket"
# Bytes per raw row, on the low side, to size the staging buckets before the rows are counted.
_BYTES_PER_ROW = {".parquet": 8, ".gz": 8, ".csv": 30}


@dataclass(frozen=True)
class ModelRef:
    """Which model scored: written into every output row and into the landing ledger."""

    name: str
    version: str
    uri: str = ""
    run_id: str = ""  # the MLflow run that logged the model (scoring runs go to its experiment)


@dataclass(frozen=True)
class ScoreConfig:
    chunk_rows: int = 2_000_000  # validated rows handed to the scorer at once (memory ∝ this)
    pandas_input: bool = False  # hand the scorer pandas (what `pyfunc.predict` documents) instead of polars
    ingest: IngestConfig | None = None  # row validation; None: the scorer's own (`scorer.ingest`), else the default
    drift_psi_threshold: float = PSI_THRESHOLD  # a feature whose PSI exceeds this is reported as drifted


@dataclass
class ScoreResult:
    output: Path | str  # a URI when the Spark engine wrote it to one
    rejects: Path | str
    input_rows: int
    rejected_rows: int
    customers: int
    chunks: int
    model_name: str
    model_version: str
    seconds: float
    histogram: list[dict[str, float]]  # probability histogram: bin_start, bin_end, customers
    phase_seconds: dict[str, float] = field(default_factory=dict)  # validate+stage, load chunks, model, write
    phase_cpu_seconds: dict[str, float] = field(default_factory=dict)  # the same phases in CPU time (all threads)
    drift: dict[str, Any] | None = None  # `DriftReport.to_dict()`; None for a model stored without a reference
    drift_files: list[str] = field(default_factory=list)  # <scores stem>.drift.json, .drift.png

    @property
    def drift_warning(self) -> str | None:
        """One line naming the drifted features, or None (no report, or nothing above the threshold)."""
        return warning_line(self.drift)

    @property
    def output_name(self) -> str:
        return base_name(self.output)

    @property
    def customers_per_minute(self) -> float:
        return 60.0 * self.customers / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(output=str(self.output), rejects=str(self.rejects), customers_per_minute=self.customers_per_minute)
        return d


def default_rejects_path(output: Path | str) -> Path | str:
    """`<name>.rejects.parquet` beside the scores (a path, or a URI for the Spark engine)."""
    return sibling(output, f"{base_name(output).removesuffix('.parquet')}.rejects.parquet")


def input_files(source: Path) -> list[Path]:
    """The raw files behind `source`: the file itself, or the Parquet files of a folder (hidden ones skipped)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"no input at {source}")
    files = parquet_files(source)
    if not files:
        raise FileNotFoundError(f"no Parquet files under {source}")
    return files


def check_inputs(source: Path, ingest: IngestConfig | None = None) -> list[Path]:
    """The files behind `source`, each checked as far as it can be without reading its rows: it exists, has a
    readable header or Parquet footer, the required columns (none nested) and a data row, and a CSV can be read to its
    end (a .gz that ends early). Raises IngestError naming the file, so a bad input is reported before a model is
    loaded (a corrupt Parquet page still surfaces while scoring, also as IngestError). The columns are checked
    against the model's export format (`ingest.source`) when given: before a model is loaded, it is not known."""
    try:
        files = input_files(Path(source))
    except FileNotFoundError as e:
        raise IngestError(str(e)) from e
    for f in files:
        try:
            check_input(f)
            found = scan_table(f, ingest.source.delimiter if ingest else None).collect_schema()
            if not is_parquet(f):
                check_readable(f)  # a truncated .gz is found here, before the model is loaded
        except TableError as e:
            raise IngestError(str(e)) from e
        if ingest is not None:
            _check_columns(found, f, ingest)
    try:
        if is_parquet(files[0]):  # a Parquet file or folder: the footers hold the row counts
            empty = pl.scan_parquet(files).select(pl.len()).collect().item() == 0
        else:  # a CSV input is one file
            empty = not _csv_has_a_row(files[0])
    except (pl.exceptions.PolarsError, OSError, EOFError) as e:
        raise IngestError(f"{source}: cannot be read: {printable(str(e), 200)}") from e
    if empty:
        raise IngestError(f"{source}: no data rows (header only)")
    return files


def check_input_columns(files: Sequence[Path], ingest: IngestConfig) -> None:
    """Each file's header or Parquet schema has the columns of the model's export format (`ingest.source`), none
    nested: an IngestError names the file and the missing column. Reads no rows."""
    for f in files:
        try:
            found = scan_table(f, ingest.source.delimiter).collect_schema()
        except TableError as e:
            raise IngestError(str(e)) from e
        _check_columns(found, f, ingest)


def _check_columns(found: pl.Schema, path: Path, ingest: IngestConfig) -> None:
    names = {n.strip().lstrip("\ufeff"): t for n, t in found.items()}
    check_columns(list(names), str(path), allow_extra=True, dtypes=names, source=ingest.source)


def _csv_has_a_row(path: Path) -> bool:
    """A non-blank line after the header (plain or gzip; reads up to the first one, a line at a time)."""
    with (gzip.open if is_gzip(path) else open)(path, "rb") as fh:
        fh.readline(1 << 20)
        return any(line.strip() for line in iter(lambda: fh.readline(1 << 20), b""))


def score_file(
    source: Path,
    output: Path,
    scorer: Scorer,
    model: ModelRef,
    config: ScoreConfig = ScoreConfig(),
    rejects: Path | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Score the raw transactions at `source` (file or folder) into `output`; bad rows go to `rejects`.

    Rows are validated with the model's own ingest settings (`scorer.ingest`, stored with the model) unless
    `config.ingest` is set. Rejects and scores appear under their final names only when the whole run succeeded
    (each written to a temp name, then renamed; rejects first).
    `on_chunk(done, total)` is called after each chunk (a heartbeat for landing claims, a progress hook).
    """
    started = time.perf_counter()
    source, output = Path(source), Path(output)
    rejects = Path(rejects) if rejects is not None else default_rejects_path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rejects.parent.mkdir(parents=True, exist_ok=True)
    ingest = config.ingest or scorer_rules(scorer) or IngestConfig()
    files = check_inputs(source, ingest)
    scored_at = datetime.now(UTC)
    for folder in {output.parent, rejects.parent}:  # what killed runs left here (their process is gone)
        for leftover in remove_dead_temp(folder):
            log.info("removed %s, left by a scoring run that was killed", leftover)
    staging = temp_path(output, ".staging")
    reference = scorer_reference(scorer)
    monitor = DriftMonitor(reference, config.drift_psi_threshold) if reference is not None else None
    phases = dict.fromkeys(("stage", "load", "model", "write", "drift"), 0.0)
    phases_cpu = dict(phases)  # CPU time of this process: what a phase costs whatever else the machine runs
    clock, cpu_clock = time.perf_counter(), time.process_time()

    def lap(phase: str) -> None:
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), time.process_time()
        phases[phase] += now - clock
        phases_cpu[phase] += cpu_now - cpu_clock
        clock, cpu_clock = now, cpu_now

    try:
        buckets, reject_parts = _stage(files, staging, config, ingest)
        if not buckets and pl.scan_parquet(reject_parts).select(pl.len()).collect().item() == 0:
            raise IngestError(f"{source}: no data rows (header only)")
        chunks = _pack(buckets, config.chunk_rows)
        lap("stage")
        unsorted = staging / "scores-unsorted.parquet"
        with pq.ParquetWriter(unsorted, _arrow_scores_schema()) as writer:
            for i, chunk in enumerate(chunks):
                frame = pl.read_parquet([p for b in chunk for p in b.files], columns=list(schema.EVENTS_SCHEMA))
                lap("load")
                scored = _conform(_predict(scorer, frame, config), frame, model, scored_at)
                lap("model")
                writer.write_table(scored.to_arrow().cast(_arrow_scores_schema()))
                if on_chunk is not None:
                    on_chunk(i + 1, len(chunks))
                lap("write")
                if monitor is not None:
                    monitor.observe(frame)
                    lap("drift")
        write_parquet_atomic(pl.scan_parquet(reject_parts).cast(schema.REJECTS_SCHEMA), rejects)
        write_parquet_atomic(pl.scan_parquet(unsorted).sort(schema.CUSTOMER_ID), output)
        lap("write")
        drift, drift_files = None, []
        if monitor is not None:
            report = monitor.report(pl.read_parquet(output, columns=[schema.PROBABILITY])[schema.PROBABILITY].to_numpy())
            drift, drift_files = report.to_dict(), [str(p) for p in report.write(output.with_suffix(""))]
            lap("drift")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    rejected_rows = pl.scan_parquet(rejects).select(pl.len()).collect().item()
    customers = pl.scan_parquet(output).select(pl.len()).collect().item()
    return ScoreResult(
        output=output,
        rejects=rejects,
        input_rows=sum(b.rows for b in buckets) + rejected_rows,
        rejected_rows=rejected_rows,
        customers=int(customers),
        chunks=len(chunks),
        model_name=model.name,
        model_version=model.version,
        seconds=time.perf_counter() - started,
        histogram=probability_histogram(output),
        phase_seconds=phases,
        phase_cpu_seconds=phases_cpu,
        drift=drift,
        drift_files=drift_files,
    )


def probability_histogram(scores: Path, bins: int = 10) -> list[dict[str, float]]:
    """Customers per probability bin [i/bins, (i+1)/bins) (the last bin includes 1.0)."""
    counts = (
        pl.scan_parquet(scores)
        .select((pl.col(schema.PROBABILITY) * bins).floor().clip(0, bins - 1).cast(pl.Int32).alias("bin"))
        .group_by("bin")
        .agg(pl.len().alias("n"))
        .collect()
    )
    by_bin = dict(zip(counts["bin"].to_list(), counts["n"].to_list(), strict=True))
    return [{"bin_start": i / bins, "bin_end": (i + 1) / bins, "customers": int(by_bin.get(i, 0))} for i in range(bins)]


def summary_markdown(results: list[ScoreResult]) -> str:
    """Customers scored, rejects, model version and probability histogram of each scored input."""
    if not results:
        return "# Scoring summary\n\nNo new files to score."
    lines = ["# Scoring summary", "", "| output | model | customers | input rows | rejected rows | seconds |"]
    lines.append("|---|---|---:|---:|---:|---:|")
    for r in results:
        lines.append(
            f"| `{r.output_name}` | {r.model_name} v{r.model_version} | {r.customers} | {r.input_rows} "
            f"| {r.rejected_rows} | {r.seconds:.1f} |"
        )
    lines += ["", "## Probability histogram (all outputs)", "", "| probability | customers | |", "|---|---:|---|"]
    total = [sum(r.histogram[i]["customers"] for r in results) for i in range(len(results[0].histogram))]
    peak = max(total) or 1
    for b, n in zip(results[0].histogram, total, strict=True):
        lines.append(f"| {b['bin_start']:.1f}–{b['bin_end']:.1f} | {n} | {'█' * round(20 * n / peak)} |")
    return "\n".join(lines)


# --- staging: one streaming pass, validated rows into customer buckets ------------------------------------------


@dataclass(frozen=True)
class _Bucket:
    files: tuple[Path, ...]
    rows: int


def is_data_file(p: Path) -> bool:
    """A file batch scoring reads (Parquet, CSV, gzipped CSV)."""
    return p.name.endswith(DATA_SUFFIXES)


def _estimated_rows(files: Sequence[Path]) -> int:
    total = 0
    for f in files:
        if f.suffix == ".parquet":
            total += pl.scan_parquet(f).select(pl.len()).collect().item()
        else:
            total += f.stat().st_size // _BYTES_PER_ROW.get(f.suffix, 8)
    return total


def _stage(files: Sequence[Path], staging: Path, config: ScoreConfig, ingest: IngestConfig) -> tuple[list[_Bucket], list[Path]]:
    """Validate every file as ingest does: accepted rows land in hash buckets, rejected rows in reject parts."""
    n_buckets = int(min(4096, max(1, 4 * math.ceil(_estimated_rows(files) / config.chunk_rows))))
    staging.mkdir(parents=True)
    reject_parts = []
    for i, f in enumerate(files):
        try:
            # One pass: accepted rows into their customer bucket, rejected rows into bucket `n_buckets`, then
            # split (two sinks of validate()'s two frames would run the validation twice).
            bucket = pl.when(pl.col(schema.REASON).is_null()).then(pl.col(schema.CUSTOMER_ID).hash(seed=0) % n_buckets)
            folder = staging / "events" / f"{i:05d}"
            with open_table(f, ingest.source.delimiter) as table:  # a CSV is read through its checked, bounded copy
                combined = validate_combined(table.lf, str(f), ingest)
                combined.with_columns(bucket.fill_null(n_buckets).alias(_BUCKET)).sink_parquet(
                    pl.PartitionBy(folder, key=_BUCKET, include_key=False), mkdir=True,
                    compression="lz4", statistics=False,  # read back whole, once: cheap to write, nothing to prune
                )
            part = staging / "rejects" / f"{i:05d}.parquet"
            part.parent.mkdir(exist_ok=True)
            rejected = sorted((folder / f"{_BUCKET}={n_buckets}").glob("*.parquet"))
            if rejected:
                split_combined(pl.scan_parquet(rejected))[1].sink_parquet(part)
                shutil.rmtree(folder / f"{_BUCKET}={n_buckets}")
            else:
                pl.DataFrame(schema=schema.REJECTS_SCHEMA).write_parquet(part)
        except TableError as e:
            raise IngestError(str(e)) from e
        except (pl.exceptions.PolarsError, OSError) as e:  # a truncated .gz, a corrupt Parquet page
            first_line = (str(e).strip() or type(e).__name__).splitlines()[0]
            raise IngestError(f"{f}: cannot be read to the end: {printable(first_line, 200)}") from e
        reject_parts.append(part)
    by_key: dict[int, list[Path]] = {}
    for p in sorted((staging / "events").glob(f"*/{_BUCKET}=*/*.parquet")):
        by_key.setdefault(int(p.parent.name.split("=", 1)[1]), []).append(p)
    buckets = [
        _Bucket(tuple(ps), int(pl.scan_parquet(ps).select(pl.len()).collect().item()))
        for _, ps in sorted(by_key.items())
    ]
    return buckets, reject_parts


def _pack(buckets: Sequence[_Bucket], chunk_rows: int) -> list[list[_Bucket]]:
    """Consecutive buckets grouped into chunks of at most `chunk_rows` rows (a bigger bucket is a chunk alone)."""
    chunks: list[list[_Bucket]] = []
    rows = 0
    for b in buckets:
        if b.rows == 0:
            continue
        if not chunks or rows + b.rows > chunk_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(b)
        rows += b.rows
    return chunks


def _predict(scorer: Scorer, events: pl.DataFrame, config: ScoreConfig) -> Any:
    if isinstance(scorer, EventScorer):
        return scorer.score_events(events.lazy())
    raw = events.select(schema.RAW_COLUMNS)
    return scorer(raw.to_pandas() if config.pandas_input else raw)


def _arrow_scores_schema() -> pa.Schema:
    return pl.DataFrame(schema=schema.SCORES_SCHEMA).to_arrow().schema


def _conform(scored: Any, frame: pl.DataFrame, model: ModelRef, scored_at: datetime) -> pl.DataFrame:
    """The scorer's output as one row per customer of the chunk, with the score columns and their dtypes."""
    out = scored if isinstance(scored, pl.DataFrame) else pl.from_pandas(scored)
    missing = {schema.CUSTOMER_ID, schema.PROBABILITY, schema.PREDICTION} - set(out.columns)
    if missing:
        raise ValueError(f"scorer output lacks columns {sorted(missing)}; got {out.columns}")
    expected = frame.get_column(schema.CUSTOMER_ID).n_unique()
    if out.height != expected or out.get_column(schema.CUSTOMER_ID).n_unique() != expected:
        raise ValueError(f"scorer returned {out.height} rows for {expected} customers; expected one row each")
    return out.select(
        pl.col(schema.CUSTOMER_ID).cast(pl.Int64),
        pl.col(schema.PROBABILITY).cast(pl.Float64),
        pl.col(schema.PREDICTION).cast(pl.Int32),
        pl.lit(model.name, pl.String).alias(schema.MODEL_NAME),
        pl.lit(str(model.version), pl.String).alias(schema.MODEL_VERSION),
        pl.lit(scored_at, pl.Datetime("us", "UTC")).alias(schema.SCORED_AT),
    )
