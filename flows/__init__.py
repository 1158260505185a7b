"""Thin Prefect flows over `pipeline/`: ingest, build_sequences, train, score, score-landing, pipeline (end_to_end).

Importing the package sets the library defaults (before prefect/mlflow load) and forwards the `pipeline` loggers
(per-epoch lines, GBDT progress) to Prefect's run logs and the console.
"""

from pipeline.settings import apply_library_defaults

apply_library_defaults()  # before prefect/mlflow are imported by any flow module

from flows.logs import forward_pipeline_logs  # noqa: E402 - imports prefect, after the defaults above

forward_pipeline_logs()
