"""The steps as both edges call them: `txseq` (pipeline/cli.py) and the Prefect flows (flows/) turn their arguments
into these option records, and the records into the library's typed configs, in one place — so a flow has every
knob the command line has, with the same defaults.

    IngestOptions    --source FILE.toml, --max-day, --max-abs-amount, --allow-extra-columns, --dedupe-date-only
    SequencesOptions --max-len, --min-count, --seed, --folds, --test-fraction, --label-column, --positive, --negative
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.ingest.labels import REST, LabelSpec
from pipeline.ingest.rules import IngestConfig
from pipeline.sequences.table import SequenceConfig
from pipeline.sources.mapping import SBERBANK, load_source
from pipeline.sequences.splits import SplitConfig

_INGEST, _SEQ, _SPLIT, _LABEL = IngestConfig(), SequenceConfig(), SplitConfig(), LabelSpec()


@dataclass(frozen=True)
class IngestOptions:
    """The ingest step's options as a user gives them (a path to the source mapping, not the parsed mapping)."""

    source: Path | None = None  # a source mapping TOML file; None: the built-in Sberbank export
    max_day: int | None = _INGEST.max_day  # None: the source's
    max_abs_amount: float = _INGEST.max_abs_amount
    allow_extra_columns: bool = _INGEST.allow_extra_columns
    dedupe_date_only: bool = _INGEST.dedupe_date_only

    def config(self) -> IngestConfig:
        """The ingest rules (reads and checks the source file: SourceError names the file and the key)."""
        source = load_source(self.source) if self.source is not None else SBERBANK
        return IngestConfig(source=source, max_day=self.max_day, max_abs_amount=self.max_abs_amount,
                            allow_extra_columns=self.allow_extra_columns, dedupe_date_only=self.dedupe_date_only)


@dataclass(frozen=True)
class SequencesOptions:
    """The sequences step's options: sequence building, the split and the label."""

    max_len: int = _SEQ.max_len
    min_count: int = _SEQ.min_count
    seed: int = _SPLIT.seed
    folds: int = _SPLIT.n_folds
    test_fraction: float = _SPLIT.test_fraction
    label_column: str = _LABEL.column
    positive: str = _LABEL.positive
    negative: str = _LABEL.negative or REST  # REST: every other value is negative

    def configs(self) -> tuple[SequenceConfig, SplitConfig, LabelSpec]:
        return (SequenceConfig(max_len=self.max_len, min_count=self.min_count),
                SplitConfig(test_fraction=self.test_fraction, n_folds=self.folds, seed=self.seed),
                LabelSpec(self.label_column, self.positive, None if self.negative == REST else self.negative))
