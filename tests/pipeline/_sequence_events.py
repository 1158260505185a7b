"""Tiny inline event frames in `schema.EVENTS_SCHEMA` for the sequence tests."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from pipeline import schema


def events_frame(rows: Sequence[tuple], source_file: str = "t.csv") -> pl.LazyFrame:
    """rows: (customer_id, day, second_of_day, mcc_code, tr_type, amount[, source_row]); source_row defaults to
    the row's position (1-based)."""
    cols: dict[str, list] = {c: [] for c in schema.EVENTS_SCHEMA}
    for i, r in enumerate(rows):
        cid, day, sec, mcc, tr, amount = r[:6]
        cols[schema.CUSTOMER_ID].append(cid)
        cols[schema.TR_DATETIME].append(f"{day} {sec // 3600:02d}:{sec % 3600 // 60:02d}:{sec % 60:02d}")
        cols[schema.DAY].append(day)
        cols[schema.SECOND_OF_DAY].append(sec)
        cols[schema.EVENT_TIME].append(day + sec / 86400)
        cols[schema.WEEKDAY].append(day % 7)
        cols[schema.MCC_CODE].append(mcc)
        cols[schema.TR_TYPE].append(tr)
        cols[schema.AMOUNT].append(amount)
        cols[schema.TERM_ID].append(None)
        cols[schema.SOURCE_FILE].append(source_file)
        cols[schema.SOURCE_ROW].append(r[6] if len(r) > 6 else i + 1)
        cols[schema.ROW_HASH].append(i)
    return pl.LazyFrame(cols, schema=schema.EVENTS_SCHEMA)
