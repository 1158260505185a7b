"""Column names and dtypes of every table the pipeline reads or writes: the one place they are spelled.

Tables, in the order data flows through them:
raw transactions (the Sberbank gender-task export) -> validated events (+ rejects) -> sequences (one row per
customer, list columns) -> scores.
"""

from __future__ import annotations

import polars as pl

SCHEMA_VERSION = "2"  # 2: events carry `weekday`; categorical codes may be text (declared sources)

# --- raw transactions, as distributed -------------------------------------------------------------------------
CUSTOMER_ID = "customer_id"
TR_DATETIME = "tr_datetime"  # "<day> HH:MM:SS"; seconds may read 60 (read as 59)
MCC_CODE = "mcc_code"
TR_TYPE = "tr_type"
AMOUNT = "amount"
TERM_ID = "term_id"  # string, may be empty
RAW_COLUMNS: tuple[str, ...] = (CUSTOMER_ID, TR_DATETIME, MCC_CODE, TR_TYPE, AMOUNT, TERM_ID)
RAW_OPTIONAL_COLUMNS: frozenset[str] = frozenset({TERM_ID})

# --- labels and dictionaries ------------------------------------------------------------------------------------
GENDER = "gender"  # the Sberbank labels file's target column: `LabelSpec`'s default, what the generator writes
LABEL = "label"  # the binary target in the tables the pipeline writes (1 = the label spec's positive value)
MCC_DESCRIPTION = "mcc_description"
TR_DESCRIPTION = "tr_description"

# --- validated events (ingest output) ---------------------------------------------------------------------------
DAY = "day"
SECOND_OF_DAY = "second_of_day"
EVENT_TIME = "event_time"  # float days: day + second_of_day / 86400
WEEKDAY = "weekday"  # 0-6: the calendar weekday (Monday = 0) when the source has dates, else day % 7
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"  # 1-based data row number in the source file (header excluded)
ROW_HASH = "row_hash"  # hash of the raw values: de-duplication key, makes ingest idempotent



def events_schema(text_codes: bool = False) -> dict[str, pl.DataType]:
    """Validated events; `text_codes`: mcc_code and tr_type as text (a declared source's categoricals)."""
    code = pl.String() if text_codes else pl.Int32()
    return {
        CUSTOMER_ID: pl.Int64(),
        TR_DATETIME: pl.String(),
        DAY: pl.Int32(),
        SECOND_OF_DAY: pl.Int32(),
        EVENT_TIME: pl.Float64(),
        WEEKDAY: pl.Int8(),
        MCC_CODE: code,
        TR_TYPE: code,
        AMOUNT: pl.Float64(),
        TERM_ID: pl.String(),
        SOURCE_FILE: pl.String(),
        SOURCE_ROW: pl.Int64(),
        ROW_HASH: pl.UInt64(),
    }


EVENTS_SCHEMA: dict[str, pl.DataType] = events_schema()  # the built-in (Sberbank) source: integer codes

# --- rejects ----------------------------------------------------------------------------------------------------
REASON = "reason"  # machine-readable code, e.g. "unparseable_datetime"
REJECT_COLUMN = "column"  # the offending column
REJECTS_SCHEMA: dict[str, pl.DataType] = {
    **{c: pl.String() for c in RAW_COLUMNS},
    SOURCE_FILE: pl.String(),
    SOURCE_ROW: pl.Int64(),
    REJECT_COLUMN: pl.String(),
    REASON: pl.String(),
}

# --- sequences (one row per customer) ---------------------------------------------------------------------------
SEQ_LENGTH = "length"  # number of events kept (after truncation)
SEQ_TOTAL = "n_events_total"  # number of events before truncation
SEQ_MCC = "mcc"  # list[int32]: frequency-rank code, 0 = padding, 1 = unknown/rare
SEQ_TR_TYPE = "tr_type_code"  # list[int32]: same encoding
SEQ_AMOUNT = "amount_log"  # list[float32]: sign(x) * log1p(|x|)
SEQ_HOUR = "hour"  # list[float32]: hour of day, fractional, [0, 24)
SEQ_WEEKDAY = "weekday"  # list[float32]: the events' weekday (calendar, or day % 7 without dates)
SEQ_LOG_DT = "log_dt"  # list[float32]: log1p(hours since previous event), 0 for the first
SEQ_EVENT_TIME = "event_time"  # list[float64]
SEQ_CATEGORICAL: tuple[str, ...] = (SEQ_MCC, SEQ_TR_TYPE)
SEQ_NUMERIC: tuple[str, ...] = (SEQ_AMOUNT, SEQ_HOUR, SEQ_WEEKDAY, SEQ_LOG_DT)

SEQUENCES_SCHEMA: dict[str, pl.DataType] = {
    CUSTOMER_ID: pl.Int64(),
    LABEL: pl.Int8(),  # null: an unlabelled customer
    SEQ_LENGTH: pl.Int32(),
    SEQ_TOTAL: pl.Int32(),
    SEQ_EVENT_TIME: pl.List(pl.Float64()),
    SEQ_MCC: pl.List(pl.Int32()),
    SEQ_TR_TYPE: pl.List(pl.Int32()),
    SEQ_AMOUNT: pl.List(pl.Float32()),
    SEQ_HOUR: pl.List(pl.Float32()),
    SEQ_WEEKDAY: pl.List(pl.Float32()),
    SEQ_LOG_DT: pl.List(pl.Float32()),
}

PAD_CODE = 0
UNKNOWN_CODE = 1

# --- scores -----------------------------------------------------------------------------------------------------
PROBABILITY = "probability"
PREDICTION = "prediction"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
SCORED_AT = "scored_at"
SCORES_SCHEMA: dict[str, pl.DataType] = {
    CUSTOMER_ID: pl.Int64(),
    PROBABILITY: pl.Float64(),
    PREDICTION: pl.Int32(),
    MODEL_NAME: pl.String(),
    MODEL_VERSION: pl.String(),
    SCORED_AT: pl.Datetime("us", "UTC"),
}
