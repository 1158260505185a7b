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
from pipeline.io import check_io_paths
from pipeline.sequences import SequenceConfig, SequencesResult
from pipeline.settings import load_settings
from pipeline.splits import SplitConfig


class SequencesParams(EngineParams):
    events_dir: str | None = Field(None, description="validated events (default: <data root>/events)")
    labels: str | None = Field(None, description="gender_train.csv (default: <data root>/raw/gender_train.csv)")
    out_dir: str | None = Field(None, description="default: <data root>/sequences")
    max_len: int = Field(SequenceConfig().max_len, gt=0, description="latest events kept per customer")
    min_count: int = Field(SequenceConfig().min_count, gt=0, description="rarer codes map to 'unknown'")


@task(cache_policy=cached_on("events_dir", "labels"), **IO_RETRIES)
def sequences_task(events_dir: Path, labels: Path, out_dir: Path, config: SequenceConfig, engine: Engine = Engine()
                   ) -> SequencesResult:
    return sequences_with(engine, events_dir, labels, out_dir, config, SplitConfig())


@flow(name="build_sequences")
def sequences_flow(params: SequencesParams = SequencesParams()) -> SequencesResult:
    s = load_settings()
    (events_dir, labels), (out_dir,) = check_io_paths(
        [Path(params.events_dir) if params.events_dir else s.events_dir,
         Path(params.labels) if params.labels else s.raw_dir / "gender_train.csv"],
        [Path(params.out_dir) if params.out_dir else s.sequences_dir],
    )
    step = sequences_task.with_options(refresh_cache=missing([out_dir / "manifest.json"]))
    result = step(events_dir, labels, out_dir, SequenceConfig(params.max_len, params.min_count), params.engine_choice())
    create_markdown_artifact(f"```\n{result.summary()}\n```", key="sequences-summary")
    return result
