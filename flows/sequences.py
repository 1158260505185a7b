"""`build_sequences` flow: validated events + labels -> sequences.parquet, vocab.json, split.json, manifest.json.

Cached on the contents of the events folder and the labels file: an unchanged dataset skips the step.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows.common import IO_RETRIES, EngineParams, cached_on, missing
from pipeline.engines import Engine, sequences_with
from pipeline.io import check_io_paths, join, location
from pipeline.sequences.table import SequenceConfig, SequencesResult
from pipeline.ingest.labels import LabelSpec
from pipeline.settings import load_settings
from pipeline.steps import SequencesOptions
from pipeline.sequences.splits import SplitConfig


_D = SequencesOptions()


class SequencesParams(EngineParams):
    events_dir: str | None = Field(None, description="validated events (default: <data root>/events)")
    labels: str | None = Field(None, description="gender_train.csv (default: <data root>/raw/gender_train.csv)")
    out_dir: str | None = Field(None, description="default: <data root>/sequences")
    max_len: int = Field(_D.max_len, gt=0, description="latest events kept per customer")
    min_count: int = Field(_D.min_count, gt=0, description="rarer codes map to 'unknown'")
    seed: int = Field(_D.seed, description="split seed")
    folds: int = Field(_D.folds, gt=1, description="stratified folds")
    test_fraction: float = Field(_D.test_fraction, gt=0, lt=1, description="labelled customers held out as the test set")
    label_column: str = Field(_D.label_column, description="the binary target's column in the labels file")
    positive: str = Field(_D.positive, description="the target value that is positive")
    negative: str = Field(_D.negative, description="the one other value allowed, or 'rest' (every other value)")

    def options(self) -> SequencesOptions:
        return SequencesOptions(self.max_len, self.min_count, self.seed, self.folds, self.test_fraction,
                                self.label_column, self.positive, self.negative)


@task(cache_policy=cached_on("events_dir", "labels"), **IO_RETRIES)
def sequences_task(events_dir: Path | str, labels: Path | str, out_dir: Path | str, config: SequenceConfig, engine: Engine = Engine(),
                   split_config: SplitConfig = SplitConfig(), label: LabelSpec = LabelSpec()) -> SequencesResult:
    return sequences_with(engine, events_dir, labels, out_dir, config, split_config, label)


@flow(name="build_sequences")
def sequences_flow(params: SequencesParams = SequencesParams()) -> SequencesResult:
    s = load_settings()
    (events_dir, labels), (out_dir,) = check_io_paths(
        [location(params.events_dir) if params.events_dir else s.events_dir,
         location(params.labels) if params.labels else s.raw_dir / "gender_train.csv"],
        [location(params.out_dir) if params.out_dir else s.sequences_dir],
    )
    step = sequences_task.with_options(refresh_cache=missing([join(out_dir, "manifest.json")]))
    config, split_config, label = params.options().configs()
    result = step(events_dir, labels, out_dir, config, params.engine_choice(), split_config, label)
    create_markdown_artifact(f"```\n{result.summary()}\n```", key="sequences-summary")
    return result
