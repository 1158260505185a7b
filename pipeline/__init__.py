"""txseq library: raw card transactions -> validated Parquet -> event sequences -> trained, tracked models -> scores.

`pipeline/` never imports `flows/`; only `flows/` imports prefect; `pipeline.tracking` and `pipeline.scoring` are
the only MLflow importers.
"""
