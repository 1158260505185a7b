"""Small data for the training, scoring and comparison tests (helper module, not a test)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline import schema as S
from pipeline.schema import SEQUENCES_SCHEMA


def synthetic_sequences(n: int = 160, seed: int = 0, max_len: int = 48) -> pl.DataFrame:
    """A sequences table (schema of `pipeline.sequences.table`) with an easy signal: gender 1 shops codes 10..19
    more."""
    rng = np.random.default_rng(seed)
    rows = []
    for cid in range(n):
        g = int(rng.integers(0, 2))
        length = int(rng.integers(4, max_len))
        mcc = np.where(rng.random(length) < 0.5 * g, rng.integers(10, 20, length), rng.integers(2, 10, length))
        t = np.sort(rng.random(length) * 90.0)
        rows.append({
            S.CUSTOMER_ID: cid, S.LABEL: g, S.SEQ_LENGTH: length, S.SEQ_TOTAL: length, S.SEQ_EVENT_TIME: t.tolist(),
            S.SEQ_MCC: mcc.tolist(), S.SEQ_TR_TYPE: rng.integers(2, 6, length).tolist(),
            S.SEQ_AMOUNT: (rng.normal(size=length) - g).tolist(), S.SEQ_HOUR: (rng.random(length) * 24).tolist(),
            S.SEQ_WEEKDAY: (np.floor(t) % 7).tolist(), S.SEQ_LOG_DT: np.log1p(np.diff(t, prepend=t[0]) * 24).tolist(),
        })
    return pl.DataFrame(rows, schema=SEQUENCES_SCHEMA)


@dataclass(frozen=True)
class TinyData:
    raw: Path  # transactions.csv.gz, gender_train.csv
    events: Path
    sequences: Path


def tiny_dataset(root: Path, scale: float = 0.02, max_len: int = 200) -> TinyData:
    """generate -> ingest -> sequences at a tiny scale (~300 customers), sequences capped at `max_len` events."""
    from pipeline.sources.generate import GeneratorConfig, generate
    from pipeline.ingest.files import ingest
    from pipeline.sequences.table import SequenceConfig, run_sequences

    paths = generate(root / "raw", GeneratorConfig(scale=scale, seed=1))
    ingest([paths.transactions], root / "events")
    run_sequences(root / "events", paths.labels, root / "sequences", SequenceConfig(max_len=max_len, min_count=2))
    return TinyData(root / "raw", root / "events", root / "sequences")
