"""`pipeline` flow: ingest → build_sequences → [CoLES pretrain] → train → report, each step its own subflow (and its
own artifacts). Pretraining runs only when `pretrain.encoders` names encoders; their registered URIs become the
training's `init_from`.

The nightly deployment runs this on the data root; unchanged raw files and an unchanged dataset skip ingest and
sequences through their caches, so a night without new data only retrains.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from flows.hooks import MLFLOW_HOOKS
from flows.ingest import IngestParams, ingest_flow
from flows.pretrain import PretrainParams, pretrain_flow
from flows.sequences import SequencesParams, sequences_flow
from flows.train import TrainParams, train_flow
from pipeline.training.run import ComparisonResult


class PipelineParams(BaseModel):
    ingest: IngestParams = Field(default_factory=IngestParams)
    sequences: SequencesParams = Field(default_factory=SequencesParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    train: TrainParams = Field(default_factory=TrainParams)


@flow(name="pipeline", **MLFLOW_HOOKS)
def pipeline(params: PipelineParams = PipelineParams()) -> ComparisonResult:
    """Cancelled or crashed (e.g. from the UI), the training's MLflow runs end KILLED or FAILED, never RUNNING."""
    events = ingest_flow(params.ingest)
    sequences = sequences_flow(params.sequences.model_copy(update={"events_dir": str(events.out_dir)}))
    paths = {"sequences_dir": str(sequences.out_dir), "events_dir": str(events.out_dir)}
    init_from = list(params.train.init_from)
    if params.pretrain.encoders:
        init_from += pretrain_flow(params.pretrain.model_copy(update=paths))
    return train_flow(params.train.model_copy(update={**paths, "init_from": init_from}))
