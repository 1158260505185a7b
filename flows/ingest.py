"""`ingest` flow: raw transaction files -> validated Parquet + rejects + manifest, with a reconciliation artifact.

The step is cached on the input files' sha256: re-running on already-ingested files skips it.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, Field

from flows.common import IO_RETRIES, cached_on, missing
from pipeline.ingest import IngestConfig, IngestResult, ingest
from pipeline.io import check_io_paths
from pipeline.settings import load_settings


class IngestParams(BaseModel):
    inputs: list[str] = Field(default_factory=list, description="raw CSV/Parquet files or folders (default: <data root>/raw/transactions*)")
    out_dir: str | None = Field(None, description="validated events folder (default: <data root>/events)")
    atomic: bool = Field(False, description="commit all inputs or none (default: each input whole, in order)")


@task(cache_policy=cached_on("inputs"), **IO_RETRIES)
def ingest_task(inputs: list[Path], out_dir: Path, config: IngestConfig, atomic: bool = False) -> IngestResult:
    return ingest(inputs, out_dir, config, atomic=atomic)


@task
def publish_reconciliation(result: IngestResult) -> None:
    create_table_artifact(result.reconciliation(), key="ingest-reconciliation",
                          description=f"rows in = accepted + rejected (a column per reject reason). {result.summary()}")


@flow(name="ingest")
def ingest_flow(params: IngestParams = IngestParams()) -> IngestResult:
    s = load_settings()
    inputs = [Path(p) for p in params.inputs] or sorted(s.raw_dir.glob("transactions*"))
    inputs, (out_dir,) = check_io_paths(inputs, [Path(params.out_dir) if params.out_dir else s.events_dir])
    step = ingest_task.with_options(refresh_cache=missing([out_dir / "manifest.json"]))
    result = step(inputs, out_dir, IngestConfig(), params.atomic)
    publish_reconciliation(result)
    return result
