"""The model registry: MLflow behind a small interface (`tracking`, with the pyfunc the only MLflow importers),
registration and champion decisions (`versions`), the champion rule as a pure function (`champion`), model cards."""
