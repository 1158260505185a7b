"""Thin Prefect flows over `pipeline/`: ingest, build_sequences, train, score, score-landing, pipeline."""

from pipeline.settings import apply_library_defaults

apply_library_defaults()  # before prefect/mlflow are imported by any flow module
