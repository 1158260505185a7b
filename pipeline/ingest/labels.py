"""The labels file: which customers are positive for the binary target the models learn (any column, any value).

    labels file ──read_labels(LabelSpec)──▶ customer_id (Int64), label (Int8: 1 = the positive value)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from pipeline import schema
from pipeline.ingest.rules import LEADING_ZERO, IngestError
from pipeline.io import TableError, first_line, printable, scan_table

REST = "rest"  # LabelSpec.negative: every value other than the positive one


@dataclass(frozen=True)
class LabelSpec:
    """Which column of the labels file is the binary target and which value is positive (recorded with every model).

    `negative`: the one other value allowed (anything else is a bad row), or None (`--negative rest`): every other
    value is negative (one value against the rest of a multi-class column). `id_column`: the customer id column
    (a declared source's export name; "customer_id" is accepted too)."""

    column: str = schema.GENDER
    positive: str = "1"
    negative: str | None = "0"
    id_column: str = schema.CUSTOMER_ID

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LabelSpec":
        return cls(**{k: d[k] for k in ("column", "positive", "negative", "id_column") if k in d})


def read_labels(path: str | Path, spec: LabelSpec = LabelSpec()) -> pl.DataFrame:
    """The labels file -> customer_id (Int64), label (Int8: the binary target, 1 = `spec.positive`), file order.

    Labels are few and every one matters, so there is no labels rejects file: any bad row (missing or non-integer
    id, a value that is neither positive nor negative, an id repeated with another label) or a missing column fails
    the whole file with an IngestError that lists the first offending rows (1-based data row numbers) and their
    reasons. Other columns are left out, and an id repeated with the same label counts once (a target column in a
    transactions export)."""
    path = Path(path)
    try:
        lf = scan_table(path)
    except TableError as e:
        raise IngestError(str(e)) from e
    names = [n.strip().lstrip("\ufeff") for n in lf.collect_schema().names()]
    id_column = next((c for c in (spec.id_column, schema.CUSTOMER_ID) if c in names), spec.id_column)
    if id_column not in names or spec.column not in names:
        raise IngestError(f"{path}: expected columns {id_column}, {spec.column}, found {printable(', '.join(names))}")
    try:
        raw = lf.rename(dict(zip(lf.collect_schema().names(), names))).select(id_column, spec.column).collect()
    except pl.exceptions.PolarsError as e:
        raise IngestError(f"{path}: cannot be read: {printable(first_line(e), 200)}") from e
    cid = pl.col(id_column).cast(pl.String).str.strip_chars()
    value = pl.col(spec.column).cast(pl.String).str.strip_chars()
    allowed = [spec.positive] if spec.negative is None else [spec.negative, spec.positive]
    target = (value == spec.positive).cast(pl.Int8)
    bad_value = value.is_null() | (value == "") if spec.negative is None else value.is_null() | ~value.is_in(allowed)
    checked = raw.with_row_index("row", offset=1).with_columns(
        cid.cast(pl.Int64, strict=False).alias("_id"), target.alias("_target"),
        pl.when(cid.is_null() | (cid == "")).then(pl.lit(f"missing {id_column}"))
        .when(~cid.str.contains(r"^[0-9]+$") | cid.cast(pl.Int64, strict=False).is_null()).then(pl.lit(f"{id_column} not an integer"))
        .when(cid.str.contains(LEADING_ZERO)).then(pl.lit(f"{id_column} with leading zeros (ambiguous id)"))
        .when(bad_value).then(pl.lit(f"{spec.column} not {'/'.join(allowed) if spec.negative is not None else 'set'}"))
        .alias("problem"),
    )
    conflict = pl.col("_target").n_unique().over("_id") > 1
    checked = checked.with_columns(
        pl.when(pl.col("problem").is_null() & conflict & ~pl.col("_id").is_first_distinct())
        .then(pl.lit(f"repeated {id_column} with another label")).otherwise(pl.col("problem")).alias("problem")
    )
    bad = checked.filter(pl.col("problem").is_not_null())
    if bad.height:
        shown = "; ".join(f"row {r}: {p}" for r, p in bad.select("row", "problem").head(5).iter_rows())
        raise IngestError(f"{path}: {bad.height} bad label row(s): {shown}")
    if checked.height == 0:
        raise IngestError(f"{path}: no label rows")
    if spec.negative is None and checked["_target"].sum() == 0:  # a mistyped positive value
        raise IngestError(f"{path}: no row has {spec.column} = {spec.positive!r} (the positive value)")
    return checked.unique("_id", keep="first", maintain_order=True).select(
        pl.col("_id").alias(schema.CUSTOMER_ID), pl.col("_target").alias(schema.LABEL))
