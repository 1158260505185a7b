"""`txseq` command line: one subcommand per pipeline step, each a thin wrapper over a library function.

Each subcommand is registered by a small `_add_<name>(subparsers)` function below; the handler parses typed
arguments into the step's config dataclass and calls the library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_generate(sub: argparse._SubParsersAction) -> None:
    """`txseq generate`: calibrated synthetic dataset in the raw schema (owner: pipeline.generate)."""


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    """`txseq ingest`: raw CSV/Parquet -> validated Parquet + rejects + manifest (owner: pipeline.ingest)."""


def _add_sequences(sub: argparse._SubParsersAction) -> None:
    """`txseq sequences`: events -> per-customer sequences + vocab + split (owner: pipeline.sequences)."""


def _add_train(sub: argparse._SubParsersAction) -> None:
    """`txseq train`: train/compare models, track in MLflow, register (owner: pipeline.train / compare)."""


def _add_score(sub: argparse._SubParsersAction) -> None:
    """`txseq score`: batch-score raw transactions with a registered model (owner: pipeline.scoring)."""


def _add_demo(sub: argparse._SubParsersAction) -> None:
    """`txseq demo`: the README's main job end to end on the bundled/generated data."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txseq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_generate, _add_ingest, _add_sequences, _add_train, _add_score, _add_demo):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"subcommand {args.command!r} is not implemented yet")
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
