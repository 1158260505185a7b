"""Which engine runs ingest, sequences and scoring: polars in this process (the library itself) or Spark.

The polars engine is `pipeline.ingest`, `pipeline.sequences.table` and `pipeline.scoring.batch`;
`pipeline.engines.spark` only moves Arrow batches to where those same functions run and gathers what they write. The CLI
(`--engine`, `--spark-master`, `--spark-conf`) and the flows (`engine`, `spark_master`, `spark_conf`) both call the
`*_with(engine, ...)` functions below, so neither knows how an engine is started.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.scoring.batch import ModelRef, ScoreConfig, ScoreResult
    from pipeline.engines.spark import SparkEngine
    from pipeline.ingest.rules import IngestConfig
    from pipeline.ingest.files import IngestResult
    from pipeline.ingest.labels import LabelSpec
    from pipeline.sequences.table import SequenceConfig, SequencesResult
    from pipeline.sequences.splits import SplitConfig

ENGINES: tuple[str, ...] = ("polars", "spark")


@dataclass(frozen=True)
class Engine:
    """`name` polars or spark; for spark, the master (None: local[*], or the one spark-submit gave) and
    spark.* settings as KEY=VALUE strings."""

    name: str = "polars"
    spark_master: str | None = None
    spark_conf: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.name!r}")

    def spark(self) -> SparkEngine:
        from pipeline.engines.spark import SparkConfig, SparkEngine, parse_conf
        from pipeline.settings import spark_submitted

        master = self.spark_master or (None if spark_submitted() else "local[*]")
        return SparkEngine.start(SparkConfig(master=master, conf=parse_conf(self.spark_conf)))


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """--engine, --spark-master, --spark-conf on a subcommand."""
    p.add_argument("--engine", choices=ENGINES, default="polars",
                   help="polars: this process; spark: Spark (needs pyspark and Java 17+) (%(default)s)")
    p.add_argument("--spark-master", default=None,
                   help="with --engine spark: master URL (default local[*], or spark-submit's --master)")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="with --engine spark: any spark.* setting, repeatable (e.g. spark.executor.memory=8g)")


def location(text: str) -> Path | str:
    """An input argument (see `pipeline.io.location`): a path, a `file://` URI as its path, another URI (hdfs://,
    s3a://, any scheme Spark's Hadoop client reads) kept as text for `--engine spark`."""
    from pipeline.io import PathError
    from pipeline.io import location as parse

    try:
        return parse(text)
    except PathError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_engine_reads(engine: Engine, *inputs: Path | str | None) -> None:
    """Only the Spark engine reads URIs (through Spark's Hadoop client); the polars engine refuses them by name."""
    from pipeline.ingest.rules import IngestError
    from pipeline.io import is_uri

    remote = [str(i) for i in inputs if i is not None and is_uri(i)]
    if remote and engine.name != "spark":
        raise IngestError(f"{remote[0]}: the polars engine reads paths this machine can open; read hdfs://, "
                          "s3a://, ... with --engine spark, or mount the storage and give its path")


def check_engine_writes(engine: Engine, *outputs: Path | str | None) -> None:
    """Only the Spark engine writes to URIs (through Spark's Hadoop client); the polars engine refuses them by name."""
    from pipeline.ingest.rules import IngestError
    from pipeline.io import is_uri

    remote = [str(o) for o in outputs if o is not None and is_uri(o)]
    if remote and engine.name != "spark":
        raise IngestError(f"{remote[0]}: the polars engine writes paths this machine can open; write to hdfs://, "
                          "s3a://, ... with --engine spark, or mount the storage and give its path")


def engine_from_args(args: argparse.Namespace) -> Engine:
    return Engine(args.engine, args.spark_master, tuple(args.spark_conf))


def ingest_with(engine: Engine, inputs: list[Path | str], out_dir: Path | str, config: IngestConfig, atomic: bool = False
                ) -> IngestResult:
    from pipeline.ingest.rules import IngestError
    from pipeline.ingest.files import ingest

    check_engine_reads(engine, *inputs)
    check_engine_writes(engine, out_dir)
    if engine.name == "spark":
        if config.source.declared:
            raise IngestError(f"source {config.source.name!r}: the Spark engine reads the built-in (Sberbank) export "
                              "only; ingest a declared source with --engine polars")
        return engine.spark().ingest(inputs, out_dir, config, atomic=atomic)
    return ingest(inputs, out_dir, config, atomic=atomic)


def sequences_with(engine: Engine, events_dir: Path | str, labels: Path | str | None, out_dir: Path | str,
                   config: SequenceConfig, split_config: SplitConfig, label: LabelSpec | None = None
                   ) -> SequencesResult:
    from pipeline.ingest.rules import IngestError
    from pipeline.ingest.labels import LabelSpec
    from pipeline.sequences.table import run_sequences

    check_engine_reads(engine, events_dir, labels)
    check_engine_writes(engine, out_dir)
    label = label or LabelSpec()
    if engine.name == "spark":
        if label != LabelSpec():
            raise IngestError("the Spark engine reads the default labels (customer_id, gender 0/1) only; build "
                              "sequences with other labels with --engine polars")
        return engine.spark().run_sequences(events_dir, labels, out_dir, config, split_config)
    return run_sequences(events_dir, labels, out_dir, config, split_config, label)


def score_file_with(engine: Engine, source: Path | str, output: Path | str, scorer: Any, model: ModelRef, config: ScoreConfig,
                    tracking_uri: str) -> ScoreResult:
    """Score one input. On Spark the driver ships the artifacts of the version `model` names to the executors,
    where each worker loads them (`SparkEngine.shipped_model`); `scorer` (loaded here) gives the ingest settings and
    the drift reference stored with the model."""
    from pipeline.scoring.batch import score_file, scorer_reference, scorer_rules

    check_engine_reads(engine, source)
    check_engine_writes(engine, output)
    if engine.name == "spark":
        spark = engine.spark()
        with spark.shipped_model(model, tracking_uri) as shipped:
            return spark.score_file(source, output, shipped, model, config,
                                    ingest_config=config.ingest or scorer_rules(scorer),
                                    reference=scorer_reference(scorer))
    return score_file(source, output, scorer, model, config)
