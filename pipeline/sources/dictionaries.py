"""The task's two code dictionaries (`tr_mcc_codes.csv`, `tr_types.csv`), read from a given path or the packaged copy.

The packaged copies under `pipeline/resources/` are byte-identical to the real files in
`../shared/data/sberbank-gender/raw/` (sha256 in that folder's SOURCE.md), so everything works without `../shared`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import polars as pl

from pipeline import schema

MCC_FILE = "tr_mcc_codes.csv"
TR_TYPES_FILE = "tr_types.csv"


def resource_path(name: str) -> Path:
    """Path of a file packaged under `pipeline/resources/`."""
    return Path(str(resources.files("pipeline") / "resources" / name))


def _read_dictionary(path: Path, code: str, description: str) -> pl.DataFrame:
    # `;`-separated, UTF-8, CRLF in the MCC file; descriptions contain commas but no `;`.
    df = pl.read_csv(path, separator=";", infer_schema=False)
    df = df.rename({c: c.strip().lstrip("\ufeff") for c in df.columns})
    if set(df.columns) != {code, description}:
        raise ValueError(f"{path}: expected columns {code};{description}, found {';'.join(df.columns)}")
    return df.select(
        pl.col(code).str.strip_chars().cast(pl.Int32, strict=True),
        pl.col(description).str.strip_chars(),
    )


def read_mcc_codes(path: Path | None = None) -> pl.DataFrame:
    """`mcc_code` (Int32), `mcc_description` (String)."""
    return _read_dictionary(path or resource_path(MCC_FILE), schema.MCC_CODE, schema.MCC_DESCRIPTION)


def read_tr_types(path: Path | None = None) -> pl.DataFrame:
    """`tr_type` (Int32), `tr_description` (String)."""
    return _read_dictionary(path or resource_path(TR_TYPES_FILE), schema.TR_TYPE, schema.TR_DESCRIPTION)
