"""txseq library, one sub-package per floor, in the order data flows through them:

    sources/    export formats (the built-in Sberbank one, declared TOML mappings), code dictionaries, the generator
    ingest/     raw files -> validated events Parquet + rejects + manifest (rules · files · labels)
    sequences/  events -> per-customer sequences table, vocabularies, the split, batches, GBDT aggregates
    training/   one Trainer interface for every model kind, the comparison run, pretraining, presets, the report
    registry/   MLflow behind a small interface, registration, the champion rule (a pure function), model cards
    scoring/    the pyfunc model, batch and landing-folder scoring, decision, drift, inference

Beside them: `schema` (every table's columns), `io`, `raw_csv`, `metrics`, `threads`, `engines/` (polars or Spark),
`steps` (what the CLI and the flows both call), `cli` and `settings` (the one reader of the environment).
`pipeline/` never imports `flows/`; only `flows/` imports prefect; `pipeline.registry.tracking` and
`pipeline.scoring.pyfunc` are the only MLflow importers; nothing under `scoring/` imports `training/`.
Sub-package `__init__` files import nothing, so importing one module never loads torch or MLflow for another.
"""
