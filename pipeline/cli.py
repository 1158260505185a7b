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
    from pathlib import Path

    from pipeline.sequences import SequenceConfig
    from pipeline.splits import SplitConfig

    seq_d, split_d = SequenceConfig(), SplitConfig()
    p = sub.add_parser(
        "sequences",
        help="validated events -> per-customer sequences Parquet + vocab + split",
        description="Split the labelled customers (seeded stratified test set + K folds), fit the mcc/tr_type "
        "vocabularies on the non-test customers, and write one row per customer with the latest --max-len events "
        "as list columns (sequences.parquet, vocab.json, split.json, manifest.json in --out).",
    )
    p.add_argument("--events", type=Path, default=None, help="ingest output folder (default: <data root>/events)")
    p.add_argument("--labels", type=Path, default=None, help="gender_train.csv (customer_id,gender); "
                   "default: none (all customers unlabelled, empty split)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <data root>/sequences)")
    p.add_argument("--max-len", type=int, default=seq_d.max_len, help="latest events kept per customer (%(default)s)")
    p.add_argument("--min-count", type=int, default=seq_d.min_count,
                   help="codes seen fewer times on training customers encode as unknown (%(default)s)")
    p.add_argument("--seed", type=int, default=split_d.seed, help="split seed (%(default)s)")
    p.add_argument("--folds", type=int, default=split_d.n_folds, help="stratified folds (%(default)s)")
    p.add_argument("--test-fraction", type=float, default=split_d.test_fraction,
                   help="labelled customers held out as the test set (%(default)s)")

    def handler(args: argparse.Namespace) -> int:
        from pipeline.sequences import run_sequences
        from pipeline.settings import load_settings

        settings = load_settings()
        result = run_sequences(
            events_dir=args.events or settings.events_dir,
            labels_path=args.labels,
            out_dir=args.out or settings.sequences_dir,
            config=SequenceConfig(max_len=args.max_len, min_count=args.min_count),
            split_config=SplitConfig(test_fraction=args.test_fraction, n_folds=args.folds, seed=args.seed),
        )
        print(result.summary())
        return 0

    p.set_defaults(handler=handler)


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
