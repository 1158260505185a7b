"""`ingest` flow: raw transaction files -> validated Parquet + rejects + manifest, with a reconciliation artifact.

The step is cached on the input files' sha256: re-running on already-ingested files skips it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from pydantic import Field

from flows.common import IO_RETRIES, EngineParams, cached_on, missing
from pipeline.engines import Engine, ingest_with
from pipeline.ingest.rules import IngestConfig
from pipeline.ingest.files import IngestResult
from pipeline.io import check_io_paths, join, location
from pipeline.settings import load_settings
from pipeline.steps import IngestOptions


_D = IngestOptions()


class IngestParams(EngineParams):
    inputs: list[str] = Field(default_factory=list, description="raw CSV/Parquet files or folders (default: <data root>/raw/transactions*)")
    out_dir: str | None = Field(None, description="validated events folder (default: <data root>/events)")
    atomic: bool = Field(False, description="commit all inputs or none (default: each input whole, in order)")
    source: str | None = Field(None, description="source mapping TOML of the export (default: the built-in Sberbank export)")
    max_day: int | None = Field(_D.max_day, ge=0, description="largest accepted day number (default: the source's)")
    max_abs_amount: float = Field(_D.max_abs_amount, gt=0, description="largest accepted |amount|")
    allow_extra_columns: bool = Field(_D.allow_extra_columns, description="drop unknown columns instead of refusing the file")
    dedupe_date_only: bool = Field(_D.dedupe_date_only, description="also reject repeated date-only rows of one file")

    def options(self) -> IngestOptions:
        return IngestOptions(Path(self.source) if self.source else None, self.max_day, self.max_abs_amount,
                             self.allow_extra_columns, self.dedupe_date_only)


@task(cache_policy=cached_on("inputs"), **IO_RETRIES)
def ingest_task(inputs: list[Path | str], out_dir: Path | str, config: IngestConfig, atomic: bool = False,
                engine: Engine = Engine()) -> IngestResult:
    return ingest_with(engine, inputs, out_dir, config, atomic=atomic)


@task
def publish_reconciliation(result: IngestResult) -> None:
    create_table_artifact(result.reconciliation(), key="ingest-reconciliation",
                          description=f"rows in = accepted + rejected (a column per reject reason). {result.summary()}")


@flow(name="ingest")
def ingest_flow(params: IngestParams = IngestParams()) -> IngestResult:
    s = load_settings()
    inputs = [location(p) for p in params.inputs] or sorted(s.raw_dir.glob("transactions*"))
    inputs, (out_dir,) = check_io_paths(inputs, [location(params.out_dir) if params.out_dir else s.events_dir])
    step = ingest_task.with_options(refresh_cache=missing([join(out_dir, "manifest.json")]))
    result = step(inputs, out_dir, params.options().config(), params.atomic, params.engine_choice())
    publish_reconciliation(result)
    return result
