"""Export formats: which column of a bank's export is which product field, and how its time is written.

The built-in source is the Sberbank gender-task export (`SBERBANK`: the raw schema of `pipeline.schema`, integer
codes, time as "<day> HH:MM:SS"). Any other export is declared in a TOML file and read with `load_source`:

    [source]
    name = "czech-pkdd99"
    delimiter = ";"            # optional; sniffed from the header otherwise
    codes = "text"             # optional: "text" (default for declared sources) or "integer"
    [columns]                  # product field = export column; tr_type and term_id optional
    customer_id = "account_id"
    event_time = "date"
    amount = "amount"
    mcc_code = "k_symbol"      # any categorical column
    tr_type = "type"
    [time]
    format = "%y%m%d"          # a strftime pattern, or "sberbank_day", "day_number", "epoch_s", "epoch_ms"
    origin = "1993-01-01"      # optional: the date of day 0 (makes dates and weekdays of day numbers real)
    max_day = 20000            # optional: largest accepted day number (default: 3650 for day numbers, none else)

Day numbers are days since `origin` (1970-01-01 for dates and epochs when not given). Weekdays are real when the
source has a calendar (a date format, an epoch, or day numbers with an origin) and `day % 7` only when it does not.
A declared source reads only its mapped columns (the other columns of the export are left out); its categorical
values are text (an empty one is a missing code, encoded as unknown) unless `codes = "integer"`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl

from pipeline import schema

SBERBANK_DAY = "sberbank_day"
DAY_NUMBER = "day_number"
EPOCH_S = "epoch_s"
EPOCH_MS = "epoch_ms"
TIME_KINDS: tuple[str, ...] = (SBERBANK_DAY, DAY_NUMBER, EPOCH_S, EPOCH_MS)
DEFAULT_MAX_DAY = 3650  # day-number sources: ten years
EPOCH = date(1970, 1, 1)

# product field (the TOML key) -> raw column name used inside the pipeline
FIELDS: dict[str, str] = {
    "customer_id": schema.CUSTOMER_ID, "event_time": schema.TR_DATETIME, "amount": schema.AMOUNT,
    "mcc_code": schema.MCC_CODE, "tr_type": schema.TR_TYPE, "term_id": schema.TERM_ID,
}
REQUIRED_FIELDS: tuple[str, ...] = ("customer_id", "event_time", "amount", "mcc_code")
_KEYS = {"source": {"name", "delimiter", "codes"}, "columns": set(FIELDS), "time": {"format", "origin", "max_day"}}


class SourceError(ValueError):
    """A source mapping that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Source:
    """One export format. `columns`: (raw column, export column) pairs, in `schema.RAW_COLUMNS` order."""

    name: str
    columns: tuple[tuple[str, str], ...]
    time_format: str = SBERBANK_DAY
    origin: str | None = None  # ISO date of day 0
    delimiter: str | None = None
    text_codes: bool = True
    max_day: int | None = None

    @property
    def export(self) -> dict[str, str]:
        """raw column -> export column."""
        return dict(self.columns)

    def export_name(self, raw_column: str | None) -> str | None:
        return self.export.get(raw_column, raw_column) if raw_column is not None else None

    @property
    def declared(self) -> bool:
        """True for a source read from a TOML file (it selects and renames columns); False for `SBERBANK`."""
        return self != SBERBANK

    @property
    def calendar(self) -> bool:
        """Whether day numbers are real dates (weekdays from the calendar, not day % 7)."""
        return self.time_format not in (SBERBANK_DAY, DAY_NUMBER) or self.origin is not None

    @property
    def origin_date(self) -> date:
        return date.fromisoformat(self.origin) if self.origin else EPOCH

    @property
    def weekday_offset(self) -> int:
        """Added to the day number before `% 7`: the weekday (Monday = 0) of day 0, 0 without a calendar."""
        return self.origin_date.weekday() if self.calendar else 0

    @property
    def day_limit(self) -> int | None:
        """Largest accepted day number unless the ingest rules say otherwise."""
        if self.max_day is not None:
            return self.max_day
        return DEFAULT_MAX_DAY if self.time_format in (SBERBANK_DAY, DAY_NUMBER) else None

    def to_dict(self) -> dict:
        return {"name": self.name, "columns": {raw: export for raw, export in self.columns},
                "time_format": self.time_format, "origin": self.origin, "delimiter": self.delimiter,
                "text_codes": self.text_codes, "max_day": self.max_day}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Source":
        return cls(name=d["name"], columns=tuple((str(k), str(v)) for k, v in d["columns"].items()),
                   time_format=d.get("time_format", SBERBANK_DAY), origin=d.get("origin"),
                   delimiter=d.get("delimiter"), text_codes=bool(d.get("text_codes", True)), max_day=d.get("max_day"))


SBERBANK = Source(name="sberbank", columns=tuple((c, c) for c in schema.RAW_COLUMNS), time_format=SBERBANK_DAY,
                  text_codes=False, max_day=DEFAULT_MAX_DAY)


def _check_keys(path: Path, table: str, found: Mapping) -> None:
    unknown = sorted(set(found) - _KEYS[table])
    if unknown:
        raise SourceError(f"{path}: unknown key(s) {', '.join(f'{table}.{k}' for k in unknown)} "
                          f"(allowed: {', '.join(sorted(_KEYS[table]))})")


def _text(path: Path, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SourceError(f"{path}: {key} must be a non-empty string, got {value!r}")
    return value


def parse_source(data: Mapping, path: Path) -> Source:
    """A parsed TOML document -> Source, every key checked (SourceError names `path` and the key)."""
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise SourceError(f"{path}: unknown table(s) {', '.join(unknown)} (allowed: source, columns, time)")
    for table in _KEYS:
        if table not in data or not isinstance(data[table], Mapping):
            raise SourceError(f"{path}: missing table [{table}]")
        _check_keys(path, table, data[table])
    src, cols, tm = data["source"], data["columns"], data["time"]
    if "name" not in src:
        raise SourceError(f"{path}: missing key source.name")
    name = _text(path, "source.name", src["name"])
    delimiter = src.get("delimiter")
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1):
        raise SourceError(f"{path}: source.delimiter must be one character, got {delimiter!r}")
    codes = src.get("codes", "text")
    if codes not in ("text", "integer"):
        raise SourceError(f"{path}: source.codes must be \"text\" or \"integer\", got {codes!r}")
    missing = [f for f in REQUIRED_FIELDS if f not in cols]
    if missing:
        raise SourceError(f"{path}: missing key(s) {', '.join(f'columns.{f}' for f in missing)}")
    mapping = {f: _text(path, f"columns.{f}", cols[f]) for f in FIELDS if f in cols}
    repeated = sorted({c for c in mapping.values() if list(mapping.values()).count(c) > 1})
    if repeated:
        raise SourceError(f"{path}: export column(s) {', '.join(repeated)} mapped to more than one field")
    if "format" not in tm:
        raise SourceError(f"{path}: missing key time.format")
    fmt = _text(path, "time.format", tm["format"])
    if fmt not in TIME_KINDS and "%" not in fmt:
        raise SourceError(f"{path}: time.format {fmt!r} is neither a strftime pattern nor one of "
                          f"{', '.join(TIME_KINDS)}")
    if fmt == SBERBANK_DAY and "origin" in tm:
        raise SourceError(f"{path}: time.origin does not apply to format \"sberbank_day\"")
    origin = tm.get("origin")
    if origin is not None:
        if isinstance(origin, date):  # TOML's own date literal
            origin = origin.isoformat()
        try:
            date.fromisoformat(_text(path, "time.origin", origin))
        except ValueError:
            raise SourceError(f"{path}: time.origin must be a date YYYY-MM-DD, got {origin!r}") from None
    max_day = tm.get("max_day")
    if max_day is not None and (not isinstance(max_day, int) or isinstance(max_day, bool) or max_day < 0):
        raise SourceError(f"{path}: time.max_day must be a non-negative integer, got {max_day!r}")
    columns = tuple((FIELDS[f], mapping[f]) for f in FIELDS if f in mapping)
    return Source(name=name, columns=columns, time_format=fmt, origin=origin, delimiter=delimiter,
                  text_codes=codes == "text", max_day=max_day)


def load_source(path: str | Path) -> Source:
    """Read and check a source mapping TOML file (SourceError for an unreadable file or a bad key)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SourceError(f"{path}: cannot be read: {e.strerror or e}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{path}: not valid TOML: {e}") from e
    return parse_source(data, path)


def weekday_of(event_columns: list[str]) -> pl.Expr:
    """The weekday (0-6) of validated events: their `weekday` column (real weekdays when the source has dates);
    day % 7 for frames without it (events of a source without a calendar, built before the column existed)."""
    if schema.WEEKDAY in event_columns:
        return pl.col(schema.WEEKDAY).cast(pl.Int32)
    return (pl.col(schema.DAY).cast(pl.Int64) % 7).cast(pl.Int32)
