"""Scoring: the MLflow pyfunc (`pyfunc`), batch scoring (`batch`), landing folders (`landing`) and their file claims
(`file_claim`), fast inference, the decision (`calibration`), drift, and the GBDT and embedding model kinds (their
artifacts and scorers: scoring loads them, so they live here; never imports `pipeline.training`).

`pipeline.scoring.TxSeqModel` is the name every registered model's code file imports
(`from pipeline.scoring import TxSeqModel`); it stays here, resolved on first use, so that models registered before
this package existed keep loading and importing `pipeline.scoring.batch` does not load MLflow or torch.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "TxSeqModel":
        from pipeline.scoring.pyfunc import TxSeqModel

        return TxSeqModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
