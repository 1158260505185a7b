"""The ingest rules: raw rows (strings, or typed Parquet values) -> validated, typed events + rejects with a reason.
Shared by ingest (`pipeline.ingest.files`), batch scoring and the pyfunc, so every route validates alike.

    raw rows ──validate──▶ events (schema.EVENTS_SCHEMA)
                       └──▶ rejects (schema.REJECTS_SCHEMA): the raw text, the reason and the offending column

Per-row checks, first failing one wins (reason code, offending column):
    wrong_field_count     a CSV record with more or fewer fields than the header (the Sberbank export writes an
                          empty term_id as a trailing empty field, so a missing last field is not read as empty)
    record_too_long       a CSV record longer than raw_csv.MAX_RECORD_BYTES (1 MiB; its text is not kept)
    missing_value         a required field is empty                                   (that column)
    invalid_utf8          a field held bytes that are not UTF-8 (read lossily)        (that column)
    not_an_integer        customer_id / mcc_code / tr_type not an ASCII base-10 integer without a sign ("+101"
                          is refused; "5411.0" is read as 5411)                        (that column)
    ambiguous_id          customer_id written with leading zeros ("0102"): an identifier, it would merge with
                          "102" if read as a number (codes keep their zero padding: mcc "0742" is 742)
    unparseable_datetime  tr_datetime not "<day> HH:MM:SS" (hour 0-23, minute 0-59, second 0-60; 60 reads as 59)
    day_out_of_range      day < 0 or day > max_day
    unparseable_amount    amount not a decimal number ("1,5" is not silently read as 1.5)
    non_finite_amount     NaN / inf
    amount_out_of_range   |amount| > max_abs_amount
    duplicate_row         identical (raw text) to an earlier row of the same file, first kept; date-only records
                          ("<day> 00:00:00") are exempt: without a time of day, identical purchases on one day are
                          ordinary (162 of the real sample's 167 repeated rows are such; the other 5 are same-second
                          double postings)
    duplicate_of_ingested_row  same values as a row already ingested from another file (ingest only)

`row_hash` hashes the parsed values (customer, day, hour, minute, raw second, mcc, tr_type, amount, term_id), so the
same transaction read from CSV ("-5087" or "-5087.0") or Parquet hashes alike; `duplicate_of_ingested_row` compares
it with the rows of the files already in the manifest (`mark_ingested_repeats`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline import raw_csv, schema
from pipeline.sources.mapping import (
    DAY_NUMBER,
    EPOCH,
    EPOCH_MS,
    EPOCH_S,
    FIELDS,
    SBERBANK,
    SBERBANK_DAY,
    TIME_KINDS,
    Source,
)
from pipeline.io import REPLACEMENT_CHAR, printable

REASONS: tuple[str, ...] = (
    raw_csv.WRONG_FIELD_COUNT,
    raw_csv.RECORD_TOO_LONG,
    "missing_value",
    "invalid_utf8",
    "not_an_integer",
    "ambiguous_id",
    "unparseable_datetime",
    "day_out_of_range",
    "unparseable_amount",
    "non_finite_amount",
    "amount_out_of_range",
    "duplicate_row",
    "duplicate_of_ingested_row",
)
DEDUP_BUCKET_ROWS = 8_000_000  # rows checked for repeats at a time (~0.3 GB)
INTEGER_COLUMNS = (schema.CUSTOMER_ID, schema.MCC_CODE, schema.TR_TYPE)
REQUIRED_COLUMNS = tuple(c for c in schema.RAW_COLUMNS if c not in schema.RAW_OPTIONAL_COLUMNS)
# ASCII digits only ("\d" would match "٥" or "５", which no cast reads).
_TIME = r"^[0-9]{1,2}:[0-9]{2}:[0-9]{2}$"  # after "<day> "; hour 0-23, minute 0-59, second 0-60 checked numerically
_INTEGER_DOT0 = r"^[0-9]+\.0*$"  # spreadsheets turn 5411 into "5411.0"; that is still the integer 5411
LEADING_ZERO = r"^0[0-9]"  # "0102": the id "0102", not the number 102
_EXPECTED = {schema.CUSTOMER_ID: "an integer id", schema.TR_DATETIME: 'text "<day> HH:MM:SS"',
             schema.MCC_CODE: "an integer code", schema.TR_TYPE: "an integer code", schema.AMOUNT: "a number",
             schema.TERM_ID: "text"}


class IngestError(Exception):
    """A file-level problem (unreadable, empty, wrong columns, truncated); the message names the file."""


@dataclass(frozen=True)
class IngestConfig:
    """The ingest rules; they travel with every registered model, so scoring validates exactly as ingest did."""

    source: Source = SBERBANK  # the export format (`pipeline.sources.mapping`)
    max_day: int | None = None  # largest accepted day number; None: the source's (3650 for day numbers)
    max_abs_amount: float = 1e12
    allow_extra_columns: bool = False  # drop unknown columns instead of refusing the file (built-in source)
    dedupe_date_only: bool = False  # also treat repeated date-only rows of one file as duplicates

    @property
    def day_limit(self) -> int | None:
        return self.max_day if self.max_day is not None else self.source.day_limit

    @property
    def events_schema(self) -> dict[str, pl.DataType]:
        return schema.events_schema(self.source.text_codes)

    def to_dict(self) -> dict:
        return {"source": self.source.to_dict(), "max_day": self.max_day, "max_abs_amount": self.max_abs_amount,
                "allow_extra_columns": self.allow_extra_columns, "dedupe_date_only": self.dedupe_date_only}

    @classmethod
    def from_dict(cls, d: dict) -> "IngestConfig":
        """The rules as stored in a manifest or with a model; before sources were recorded: the built-in one."""
        known = {"max_day", "max_abs_amount", "allow_extra_columns", "dedupe_date_only"}
        source = Source.from_dict(d["source"]) if d.get("source") else SBERBANK
        return cls(source=source, **{k: v for k, v in d.items() if k in known})


def check_columns(names: Sequence[str], source_file: str, allow_extra: bool = False,
                  dtypes: dict[str, pl.DataType] | None = None, source: Source = SBERBANK) -> None:
    """File-level column check: every required raw column present; no unknown column unless allowed; with the
    `dtypes` of a typed (Parquet) input, no raw column nested (a list or struct per row). A declared `source`
    checks its mapped export columns instead (the export's other columns are left out)."""
    if source.declared:
        return _check_declared(names, source_file, dtypes, source)
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    extra = [c for c in names if c not in schema.RAW_COLUMNS]
    found = printable(", ".join(names)) if names else "none"
    if missing:
        hint = " — is the delimiter ',' or ';'?" if len(names) == 1 else ""
        raise IngestError(f"{source_file}: missing column(s) {', '.join(missing)} (found: {found}){hint}")
    if extra and not allow_extra:
        raise IngestError(
            f"{source_file}: unknown column(s) {printable(', '.join(extra))} (expected {', '.join(schema.RAW_COLUMNS)}; "
            "allow_extra_columns / --allow-extra-columns drops them)"
        )
    for c in schema.RAW_COLUMNS:
        if dtypes and c in dtypes and dtypes[c].is_nested():
            raise IngestError(f"{source_file}: column {c} holds {dtypes[c]} values; expected one value per row "
                              f"({_EXPECTED[c]})")


def _check_declared(names: Sequence[str], source_file: str, dtypes: dict[str, pl.DataType] | None,
                    source: Source) -> None:
    found = printable(", ".join(names)) if names else "none"
    field = {raw: f for f, raw in FIELDS.items()}
    missing = [f"{export} ({field[raw]})" for raw, export in source.columns if export not in names]
    if missing:
        hint = " — is the delimiter right?" if len(names) == 1 else ""
        raise IngestError(f"{source_file}: missing column(s) {', '.join(missing)} of source {source.name!r} "
                          f"(found: {found}){hint}")
    for raw, export in source.columns:
        if dtypes and export in dtypes and dtypes[export].is_nested():
            raise IngestError(f"{source_file}: column {export} holds {dtypes[export]} values; expected one value per "
                              f"row ({_EXPECTED[raw]})")


def integer_columns(source: Source) -> tuple[str, ...]:
    """Raw columns read as integers: the customer id, and the codes unless the source's codes are text."""
    return (schema.CUSTOMER_ID,) if source.text_codes else INTEGER_COLUMNS


def _numeric_columns(dtypes: dict[str, pl.DataType], source: Source = SBERBANK) -> frozenset[str]:
    """Raw columns whose typed values are checked as numbers instead of as their text (typed Parquet).

    Integer ids (any signed/unsigned width) and a Float64 amount: for these the checks on the number give exactly
    the reason the text route gives (the text of an integer or a Float64 reads back to the same value). Other types
    (float ids such as 5411.0, a Float32 amount whose text is not its Float64 value, decimals, booleans) take the
    text route."""
    ints = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64)
    out = {c for c in integer_columns(source) if c in dtypes and dtypes[c] in ints}
    if dtypes.get(schema.AMOUNT) == pl.Float64:
        out.add(schema.AMOUNT)
    return frozenset(out)


def _raw_columns(lf: pl.LazyFrame, source_file: str, config: IngestConfig, text_only: bool = False,
                 numbered: bool = False) -> tuple[pl.LazyFrame, frozenset[str]]:
    """The raw columns (Strings, except the `_numeric_columns` kept typed), `term_id` added if absent, plus the
    1-based source row and `raw_csv.FLAG` (null unless the CSV pass flagged the record); and the names of the typed
    columns. `text_only` casts every column to String. A nested column (list, struct) is a file-level error.
    `numbered`: `lf` already carries its SOURCE_ROW column (an engine that reads a file in parallel numbers the rows
    itself)."""
    names = [n for n in lf.collect_schema().names() if not (numbered and n == schema.SOURCE_ROW)]
    renamed = {n: n.strip().lstrip("\ufeff") for n in names if n != n.strip().lstrip("\ufeff")}
    if renamed:
        lf = lf.rename(renamed)
        names = [renamed.get(n, n) for n in names]
    flagged = raw_csv.FLAG in names
    names = [n for n in names if n != raw_csv.FLAG]
    dtypes = dict(lf.collect_schema().items())
    source = config.source
    check_columns(names, source_file, config.allow_extra_columns, dtypes, source)
    if source.declared:  # the export's columns under their raw names; unmapped export columns left out
        export = source.export
        lf = lf.select(*([pl.col(schema.SOURCE_ROW)] if numbered else []),
                       *([pl.col(raw_csv.FLAG)] if flagged else []),
                       *[pl.col(export[c]).alias(c) for c in schema.RAW_COLUMNS if c in export])
        dtypes = {c: dtypes[export[c]] for c in schema.RAW_COLUMNS if c in export}
        names = list(dtypes)
    numeric = frozenset() if text_only else _numeric_columns(dtypes, source)
    flag = pl.col(raw_csv.FLAG) if flagged else pl.lit(None, pl.String).alias(raw_csv.FLAG)
    columns = [pl.col(c) if c in numeric else pl.col(c).cast(pl.String) if c in names else pl.lit(None, pl.String).alias(c)
               for c in schema.RAW_COLUMNS] + [flag]
    if numbered:
        return lf.select(pl.col(schema.SOURCE_ROW).cast(pl.Int64), *columns), numeric
    return lf.select(columns).with_row_index(schema.SOURCE_ROW, offset=1), numeric


def annotate(lf: pl.LazyFrame, source_file: str, config: IngestConfig, text_only: bool = False,
              numbered: bool = False) -> pl.LazyFrame:
    """Raw strings -> raw strings + parsed values + `reason`/`column` (null reason = valid row) + `row_hash`.

    Built in stages of `with_columns` so that every string operation runs once per row (each stage refers to the
    columns of the previous one, never re-derives them). Typed numeric columns (`_numeric_columns`) are checked
    as numbers, with the same outcome as the text route (`text_only=True` forces it; the tests compare both)."""
    raw, numeric = _raw_columns(lf, source_file, config, text_only, numbered)
    source = config.source
    ints = integer_columns(source)
    texts = [c for c in (schema.MCC_CODE, schema.TR_TYPE) if c not in ints]  # text codes: empty = missing code
    text_cols = [c for c in schema.RAW_COLUMNS if c not in numeric]
    st = {c: f"_{c}_text" for c in text_cols}  # stripped text
    stage1 = _parse_time(raw.with_columns(
        *[pl.col(c).str.strip_chars().alias(st[c]) for c in text_cols],
    ), st[schema.TR_DATETIME], source)
    stage2 = stage1.with_columns(
        # a typed integer above Int64's range (UInt64) becomes null: not_an_integer, as its text would be
        *[pl.col(c if c in numeric else st[c]).cast(pl.Int64, strict=False).alias(f"_{c}") for c in ints],
        *[pl.when(pl.col(st[c]) != "").then(pl.col(st[c])).alias(f"_{c}") for c in texts],
        pl.col(schema.AMOUNT if schema.AMOUNT in numeric else st[schema.AMOUNT]).cast(pl.Float64, strict=False).alias("_amount"),
        pl.when(pl.col(st[schema.TERM_ID]) != "").then(pl.col(st[schema.TERM_ID])).alias("_term"),
    )
    # Integers written as "5411.0" (spreadsheets) parse too. Polars evaluates every branch of a when/then, so the
    # regex runs on the text of the rows whose cast failed only (null elsewhere: skipped), not on every row.
    text_ints = [c for c in ints if c not in numeric]
    failed = {c: pl.when(pl.col(f"_{c}").is_null()).then(pl.col(st[c])) for c in text_ints}
    stage3 = stage2.with_columns(
        *[
            pl.when(failed[c].str.contains(_INTEGER_DOT0))
            .then(failed[c].str.replace(r"\.0*$", "").cast(pl.Int64, strict=False))
            .otherwise(pl.col(f"_{c}"))
            .alias(f"_{c}")
            for c in text_ints
        ]
    )
    int_max = {schema.CUSTOMER_ID: 2**63 - 1, schema.MCC_CODE: 2**31 - 1, schema.TR_TYPE: 2**31 - 1}
    checks: list[tuple[pl.Expr, str, str | None]] = []
    # The text of a number is never empty, never holds U+FFFD and starts with "-" only when the number is < 0.
    mapped = set(source.export)
    ints = [c for c in ints if c in mapped]  # a declared source's unmapped tr_type stays null, unchecked
    for c in (c for c in REQUIRED_COLUMNS if c in ints or c not in (schema.MCC_CODE, schema.TR_TYPE)):
        checks.append((pl.col(c).is_null() if c in numeric else pl.col(st[c]).fill_null("") == "", "missing_value", c))
    for c in text_cols:
        checks.append((pl.col(c).str.contains(REPLACEMENT_CHAR, literal=True).fill_null(False), "invalid_utf8", c))
    for c in ints:
        bad = pl.col(f"_{c}").is_null() | (pl.col(f"_{c}") < 0) | (pl.col(f"_{c}") > int_max[c])
        signed = pl.col(st[c]).str.starts_with("-") | pl.col(st[c]).str.starts_with("+") if c not in numeric else None
        checks.append((bad if c in numeric else bad | signed, "not_an_integer", c))
    if schema.CUSTOMER_ID not in numeric:
        checks.append((pl.col(st[schema.CUSTOMER_ID]).str.contains(LEADING_ZERO), "ambiguous_id", schema.CUSTOMER_ID))
    checks.append((pl.col("_time_bad"), "unparseable_datetime", schema.TR_DATETIME))
    day_bad = pl.col("_day").is_null() | (pl.col("_day") < 0)
    if config.day_limit is not None:
        day_bad = day_bad | (pl.col("_day") > config.day_limit)
    checks.append((day_bad, "day_out_of_range", schema.TR_DATETIME))
    amount = pl.col("_amount")
    checks.append((amount.is_null(), "unparseable_amount", schema.AMOUNT))
    # "nan", "inf", "infinity" are not finite; "1e400" overflows to inf but is a (too large) number.
    if schema.AMOUNT in numeric:  # a typed inf is written "inf": the word, not an overflowing number
        non_finite = amount.is_nan() | amount.is_infinite()
    else:
        word = pl.when(amount.is_infinite()).then(pl.col(st[schema.AMOUNT])).str.contains(r"(?i)nan|inf")  # inf rows only
        non_finite = amount.is_nan() | (amount.is_infinite() & word.fill_null(False))
    checks.append((non_finite, "non_finite_amount", schema.AMOUNT))
    checks.append((amount.abs() > config.max_abs_amount, "amount_out_of_range", schema.AMOUNT))

    # A record the CSV pass flagged (wrong field count, too long) is rejected for that, whole (no column).
    flag = pl.col(raw_csv.FLAG)
    reason: pl.Expr = pl.when(flag.is_not_null()).then(flag)
    column: pl.Expr = pl.when(flag.is_not_null()).then(pl.lit(None, pl.String))
    for cond, r, c in checks:  # the column as the export names it
        reason = reason.when(cond).then(pl.lit(r))
        column = column.when(cond).then(pl.lit(source.export_name(c)))
    stage4 = stage3.with_columns(
        reason.otherwise(pl.lit(None, pl.String)).alias(schema.REASON),
        column.otherwise(pl.lit(None, pl.String)).alias(schema.REJECT_COLUMN),
    )
    valid = pl.col(schema.REASON).is_null()
    row_hash = pl.struct(
        pl.col(f"_{schema.CUSTOMER_ID}"), pl.col("_day"), pl.col("_h"), pl.col("_m"), pl.col("_s"),
        pl.col(f"_{schema.MCC_CODE}"), pl.col(f"_{schema.TR_TYPE}"), pl.col("_amount"), pl.col("_term"),
    ).hash(seed=0)
    repeated = _repeated_rows(raw, config, numeric)
    return (
        stage4.with_columns(pl.when(valid).then(row_hash).alias(schema.ROW_HASH))
        .with_columns(
            pl.when(valid & pl.col(schema.SOURCE_ROW).is_in(repeated.implode()))
            .then(pl.lit("duplicate_row"))
            .otherwise(pl.col(schema.REASON))
            .alias(schema.REASON)
        )
        .with_columns(pl.lit(source_file, pl.String).alias(schema.SOURCE_FILE))
    )


def _parse_time(lf: pl.LazyFrame, text_column: str, source: Source) -> pl.LazyFrame:
    """Adds `_day` (days since the source's day 0), `_h`, `_m`, `_s` (second 60 kept: read as 59 later) and
    `_time_bad` (unparseable) from the stripped time text, in the source's `time_format`."""
    text, fmt = pl.col(text_column), source.time_format
    zero = pl.lit(0, pl.Int32)
    if fmt == SBERBANK_DAY:  # "<day> HH:MM:SS"
        time_text = pl.col("_time_text")
        return lf.with_columns(
            text.str.split_exact(" ", 1).alias("_dt_parts"),
        ).with_columns(
            pl.col("_dt_parts").struct.field("field_0").alias("_day_text"),
            pl.col("_dt_parts").struct.field("field_1").str.strip_chars_start().alias("_time_text"),
        ).with_columns(
            pl.col("_day_text").cast(pl.Int64, strict=False).alias("_day"),
            time_text.str.contains(_TIME).alias("_time_ok"),
            time_text.str.head(-6).cast(pl.Int32, strict=False).alias("_h"),
            time_text.str.slice(-5, 2).cast(pl.Int32, strict=False).alias("_m"),
            time_text.str.tail(2).cast(pl.Int32, strict=False).alias("_s"),
        ).with_columns((
            ~pl.col("_time_ok").fill_null(False) | ~pl.col("_day_text").str.contains(r"^-?[0-9]+$").fill_null(False)
            | (pl.col("_h") > 23) | (pl.col("_m") > 59) | (pl.col("_s") > 60)
        ).alias("_time_bad"))
    if fmt == DAY_NUMBER:
        day = text.cast(pl.Int64, strict=False)
        bad = ~text.str.contains(r"^-?[0-9]+$").fill_null(False) | day.is_null()
        return lf.with_columns(day.alias("_day"), zero.alias("_h"), zero.alias("_m"), zero.alias("_s"),
                               bad.alias("_time_bad"))
    if fmt in (EPOCH_S, EPOCH_MS):
        value = text.cast(pl.Float64, strict=False)
        seconds = (value / 1000.0 if fmt == EPOCH_MS else value).floor()
        ok = value.is_not_null() & value.is_finite() & (seconds.abs() < 1e15)
        origin_s = (source.origin_date - EPOCH).days * 86400
        since = pl.when(ok).then(seconds).cast(pl.Int64, strict=False) - origin_s
        return lf.with_columns(since.alias("_since")).with_columns(
            (pl.col("_since") // 86400).alias("_day"),
            ((pl.col("_since") % 86400) // 3600).cast(pl.Int32).alias("_h"),
            ((pl.col("_since") % 3600) // 60).cast(pl.Int32).alias("_m"),
            (pl.col("_since") % 60).cast(pl.Int32).alias("_s"),
            (~ok).alias("_time_bad"),
        )
    parsed = text.str.strptime(pl.Datetime("us"), fmt, strict=False)  # a strftime pattern
    origin = pl.lit(source.origin_date, pl.Date)
    return lf.with_columns(parsed.alias("_datetime")).with_columns(
        (pl.col("_datetime").dt.date() - origin).dt.total_days().cast(pl.Int64).alias("_day"),
        pl.col("_datetime").dt.hour().cast(pl.Int32).alias("_h"),
        pl.col("_datetime").dt.minute().cast(pl.Int32).alias("_m"),
        pl.col("_datetime").dt.second().cast(pl.Int32).alias("_s"),
        pl.col("_datetime").is_null().alias("_time_bad"),
    )


def _date_only(source: Source) -> pl.Expr:
    """Raw rows without a time of day (midnight or a date format): identical ones on one day are ordinary."""
    dt = pl.col(schema.TR_DATETIME).str.strip_chars()
    fmt = source.time_format
    if fmt == SBERBANK_DAY:
        return dt.str.ends_with(" 00:00:00") | dt.str.ends_with(" 0:00:00")
    if fmt == DAY_NUMBER or (fmt not in TIME_KINDS and not any(d in fmt for d in _TIME_DIRECTIVES)):
        return pl.lit(True)
    if fmt in (EPOCH_S, EPOCH_MS):
        return pl.lit(False)
    return dt.str.contains(r"(^|[^0-9])0?0[:.]00[:.]00$")


_TIME_DIRECTIVES = ("%H", "%I", "%k", "%l", "%M", "%S", "%T", "%R", "%X", "%c", "%s", "%+")


def _repeated_rows(raw: pl.LazyFrame, config: IngestConfig, numeric: frozenset[str] = frozenset()) -> pl.Series:
    """Source rows that repeat an earlier row of the same input exactly (raw values, byte for byte).

    A narrow first pass: (row number, 64-bit hash of the raw text) streams into a temporary uncompressed Arrow IPC
    file (12 bytes a row: the hashes do not compress, and IPC reads back without decoding), which is then checked in
    hash buckets of at most `DEDUP_BUCKET_ROWS` rows, so memory stays bounded for inputs of any length and the main
    validation pass has no whole-column operation. Date-only records
    ("<day> 00:00:00") and records flagged by the CSV pass are left out unless `config.dedupe_date_only`. Typed numeric columns are hashed as numbers;
    a Float64 amount's hash does not tell -0.0 from 0.0 (their texts differ), so its sign bit is hashed too."""
    fields = [pl.col(c) for c in schema.RAW_COLUMNS]
    if schema.AMOUNT in numeric:
        a = pl.col(schema.AMOUNT)
        fields.append(((a == 0) & (1.0 / a < 0)).alias("_negative_zero"))
    key = pl.struct(fields).hash(seed=0)
    if not config.dedupe_date_only:
        key = pl.when(~_date_only(config.source).fill_null(False)).then(key)
    key = pl.when(pl.col(raw_csv.FLAG).is_null()).then(key)  # a flagged record is no first occurrence
    keys = raw.select(pl.col(schema.SOURCE_ROW), key.alias("_key")).filter(pl.col("_key").is_not_null())
    repeated = lambda df: df.sort(schema.SOURCE_ROW).filter(~pl.col("_key").is_first_distinct())[schema.SOURCE_ROW]  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="txseq-dedup-") as tmp:
        flat = Path(tmp) / "keys.arrow"
        keys.sink_ipc(flat, compression=None)
        n = pl.scan_ipc(flat).select(pl.len()).collect().item()
        n_buckets = -(-n // DEDUP_BUCKET_ROWS)
        if n_buckets <= 1:
            return repeated(pl.read_ipc(flat))
        pl.scan_ipc(flat).with_columns((pl.col("_key") % n_buckets).alias("_bucket")).sink_parquet(
            pl.PartitionBy(Path(tmp) / "buckets", key="_bucket", include_key=False), mkdir=True
        )
        found = [repeated(pl.read_parquet(d)) for d in sorted((Path(tmp) / "buckets").iterdir())]
    return pl.concat(found).sort()


def _event_columns(config: IngestConfig = IngestConfig()) -> list[tuple[str, pl.DataType, pl.Expr]]:
    """(name, dtype, expression on the annotated frame) of each `config.events_schema` column, uncast."""
    second_of_day = pl.col("_h") * 3600 + pl.col("_m") * 60 + pl.min_horizontal(pl.col("_s"), pl.lit(59))
    cols = {
        schema.CUSTOMER_ID: pl.col(f"_{schema.CUSTOMER_ID}"),
        schema.TR_DATETIME: pl.col(f"_{schema.TR_DATETIME}_text"),
        schema.DAY: pl.col("_day"),
        schema.SECOND_OF_DAY: second_of_day,
        schema.EVENT_TIME: pl.col("_day") + second_of_day / 86400.0,
        schema.WEEKDAY: (pl.col("_day") + config.source.weekday_offset) % 7,
        schema.MCC_CODE: pl.col(f"_{schema.MCC_CODE}"),
        schema.TR_TYPE: pl.col(f"_{schema.TR_TYPE}"),
        schema.AMOUNT: pl.col("_amount"),
        schema.TERM_ID: pl.col("_term"),
        schema.SOURCE_FILE: pl.col(schema.SOURCE_FILE),
        schema.SOURCE_ROW: pl.col(schema.SOURCE_ROW),
        schema.ROW_HASH: pl.col(schema.ROW_HASH),
    }
    return [(c, t, cols[c].alias(c)) for c, t in config.events_schema.items()]


def events_of(annotated: pl.LazyFrame, config: IngestConfig = IngestConfig()) -> pl.LazyFrame:
    """The valid rows of an `annotate` frame, typed as `config.events_schema`."""
    return annotated.filter(pl.col(schema.REASON).is_null()).select([e.cast(t) for _, t, e in _event_columns(config)])


def rejects_of(annotated: pl.LazyFrame) -> pl.LazyFrame:
    """The rejected rows of an `annotate` frame (REJECTS_SCHEMA)."""
    return annotated.filter(pl.col(schema.REASON).is_not_null()).select(
        [pl.col(c).cast(t).alias(c) for c, t in schema.REJECTS_SCHEMA.items()]
    )


REJECT_TEXT_PREFIX = "_reject_text_"  # validate_combined: a rejected row's raw text, per raw column


def validate_combined(lf: pl.LazyFrame, source_file: str, config: IngestConfig = IngestConfig(), *,
                      numbered: bool = False, all_texts: bool = False) -> pl.LazyFrame:
    """`validate` as one frame, for callers that write both outputs in one pass (two sinks of the two lazy frames
    would run the validation twice): the EVENTS_SCHEMA columns (null on rejected rows, except source file and
    row), the raw text as `REJECT_TEXT_PREFIX + column` and `reason`/`reject_column` (null on accepted rows).
    `split_combined` turns it back into (events, rejects). `numbered`: `lf` carries its own SOURCE_ROW; `all_texts`:
    keep the raw text of accepted rows too (a later `mark_ingested_repeats` may still reject them)."""
    annotated = annotate(lf, source_file, config, numbered=numbered)
    valid = pl.col(schema.REASON).is_null()
    shared = (schema.SOURCE_FILE, schema.SOURCE_ROW)
    events = [e.cast(t) if c in shared else pl.when(valid).then(e).cast(t).alias(c)  # masked, then cast (strict)
              for c, t, e in _event_columns(config)]
    text = lambda c: pl.col(c).cast(pl.String) if all_texts else pl.when(~valid).then(pl.col(c).cast(pl.String))  # noqa: E731
    texts = [text(c).alias(REJECT_TEXT_PREFIX + c) for c in schema.RAW_COLUMNS]
    return annotated.select(*events, *texts, pl.col(schema.REJECT_COLUMN), pl.col(schema.REASON))


def split_combined(combined: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """A `validate_combined` frame (or its rows read back) -> (events with EVENTS_SCHEMA, rejects with REJECTS_SCHEMA)."""
    events = combined.filter(pl.col(schema.REASON).is_null()).select(list(schema.events_schema()))
    rejects = combined.filter(pl.col(schema.REASON).is_not_null()).select(
        [(pl.col(REJECT_TEXT_PREFIX + c) if c in schema.RAW_COLUMNS else pl.col(c)).cast(t).alias(c)
         for c, t in schema.REJECTS_SCHEMA.items()]
    )
    return events, rejects


def validate(lf: pl.LazyFrame, source_file: str, config: IngestConfig = IngestConfig(), *, text_only: bool = False
             ) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """Raw columns (strings, or Parquet types) -> (events with EVENTS_SCHEMA, rejects with REJECTS_SCHEMA).

    Raises IngestError for a missing or unknown column (file level); every other problem rejects the row. Reads
    the input once up front for the repeat check (narrow, in bounded buckets); the returned frames are lazy.
    `text_only` checks typed numeric columns through their text instead of as numbers (same result, slower)."""
    annotated = annotate(lf, source_file, config, text_only)
    return events_of(annotated, config), rejects_of(annotated)


def mark_ingested_repeats(annotated: pl.LazyFrame, seen_hashes: pl.Series) -> pl.LazyFrame:
    """Accepted rows whose `row_hash` is among `seen_hashes` (rows of files ingested before) become
    `duplicate_of_ingested_row`; works on `annotate` and `validate_combined` frames alike."""
    again = pl.col(schema.REASON).is_null() & pl.col(schema.ROW_HASH).is_in(seen_hashes.cast(pl.UInt64).implode())
    return annotated.with_columns(
        pl.when(again).then(pl.lit("duplicate_of_ingested_row")).otherwise(pl.col(schema.REASON)).alias(schema.REASON)
    )
