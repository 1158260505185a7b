"""Shared by the batch-scoring and landing tests: a plain-function scorer and raw rows in the export's schema."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import polars as pl

from pipeline import schema
from pipeline.scoring.batch import ModelRef

MODEL = ModelRef("toy", "3", "models:/toy/3")
ROOT = Path(__file__).resolve().parents[2]


def count_scorer(df: pd.DataFrame | pl.DataFrame) -> pd.DataFrame:
    """probability = n/(n+1) of the customer's events in the frame: a customer split across chunks would show it."""
    df = df.to_pandas() if isinstance(df, pl.DataFrame) else df
    n = df.groupby(schema.CUSTOMER_ID).size()
    return pd.DataFrame(
        {schema.CUSTOMER_ID: n.index, schema.PROBABILITY: n.values / (n.values + 1), schema.PREDICTION: n.values % 2}
    )


def raw_rows(n_customers: int, seed: int = 0, first_id: int = 0) -> pl.DataFrame:
    """Raw-schema rows (all strings, as the export): customer i has i % 7 + 1 events."""
    rows = []
    for c in range(first_id, first_id + n_customers):
        for k in range(c % 7 + 1):
            rows.append((str(c), f"{(c + k + seed) % 400} {k % 24:02d}:15:00", "5411", "1010", f"-{10 + k}.5", ""))
    return pl.DataFrame(rows, schema=list(schema.RAW_COLUMNS), orient="row")


