"""`txseq` command line: one subcommand per pipeline step, each a thin wrapper over a library function.

Each subcommand is registered by a small `_add_<name>(subparsers)` function below; the handler parses typed
arguments into the step's config dataclass and calls the library.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.engines import add_engine_arguments, engine_from_args, location
from pipeline.settings import DEFAULT_REGISTERED_MODEL, apply_library_defaults


def _add_generate(sub: argparse._SubParsersAction) -> None:
    """`txseq generate`: calibrated synthetic dataset in the raw schema (owner: pipeline.sources.generate)."""
    from pathlib import Path

    from pipeline.sources.generate import GeneratorConfig

    d = GeneratorConfig()
    p = sub.add_parser(
        "generate",
        help="write a calibrated synthetic dataset in the raw Sberbank schema",
        description="Write transactions.<format>, gender_train.csv, tr_mcc_codes.csv and tr_types.csv into --out: "
        "deterministic by --seed, calibrated on the real sample and the published statistics, with a planted "
        "gender signal (aggregate-feature GBDT ≈0.87 ROC AUC). Real customer ids and labels are used when "
        "../shared is present.",
    )
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <data root>/raw)")
    p.add_argument("--customers", type=int, default=d.n_customers, help="customers (%(default)s)")
    p.add_argument("--labelled", type=int, default=d.n_labelled, help="customers written to gender_train.csv (%(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (%(default)s)")
    p.add_argument("--scale", type=float, default=d.scale, help="multiplies --customers and --labelled (%(default)s)")
    p.add_argument("--format", choices=("csv", "csv.gz", "parquet"), default=d.format, help="transactions file format (%(default)s)")
    p.add_argument("--signal-strength", type=float, default=d.signal_strength,
                   help="scales the planted gender signal; 0 = none (%(default)s)")
    p.add_argument("--order-signal", type=float, default=d.order_signal,
                   help="plants a gender signal only the order of events carries (own-gender MCCs come later; "
                   "every per-customer aggregate unchanged); 0 = off (%(default)s)")

    def handler(args: argparse.Namespace) -> int:
        import time

        from pipeline.sources.generate import generate
        from pipeline.settings import load_settings

        config = GeneratorConfig(n_customers=args.customers, n_labelled=args.labelled, seed=args.seed, scale=args.scale,
                                 format=args.format, signal_strength=args.signal_strength,
                                 order_signal=args.order_signal)
        t0 = time.perf_counter()
        out = generate(args.out or load_settings().raw_dir, config)
        print(f"{out.n_rows:,} transactions of {out.n_customers:,} customers -> {out.transactions} "
              f"({time.perf_counter() - t0:.1f} s); labels -> {out.labels}")
        return 0

    p.set_defaults(handler=handler)


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    """`txseq ingest`: raw CSV/Parquet -> validated Parquet + rejects + manifest (owner: pipeline.ingest)."""
    from pathlib import Path

    from pipeline.steps import IngestOptions

    d = IngestOptions()
    p = sub.add_parser(
        "ingest",
        help="raw CSV/Parquet transactions -> validated events Parquet + rejects + manifest",
        description="Validate raw transaction files (CSV plain or .gz with ',' or ';', Parquet file or folder, or a "
        "folder of CSV/CSV.gz files) into <out>/events/ and <out>/rejects/ (one part per input file, named by its "
        "sha256) and record rows in = accepted + rejected (by reason) and blank lines per file in "
        "<out>/manifest.json. A folder is committed whole (all of its files or none); --atomic does the same for "
        "all inputs. Re-ingesting a file is a no-op; rows already ingested from another file are rejected as "
        "duplicate_of_ingested_row. File-level problems exit with status 2 and say which inputs were committed.",
    )
    p.add_argument("inputs", nargs="+", type=location, metavar="INPUT",
                   help="raw transactions file(s), Parquet folder(s) or folder(s) of CSV files (paths or file:// URIs; "
                   "with --engine spark any URI Spark reads: hdfs://, s3a://, ...)")
    p.add_argument("--out", type=location, default=None, help="output folder (default: <data root>/events; with "
                   "--engine spark also any URI Spark writes)")
    p.add_argument("--source", type=Path, default=None, metavar="FILE.toml",
                   help="the export's source mapping (columns, time format; README 'Other exports'); default: the "
                   "built-in Sberbank export")
    p.add_argument("--max-day", type=int, default=None,
                   help="largest accepted day number (default: the source's; 3650 for day numbers)")
    p.add_argument("--max-abs-amount", type=float, default=d.max_abs_amount, help="largest accepted |amount| (%(default)g)")
    p.add_argument("--allow-extra-columns", action="store_true", help="drop unknown columns instead of refusing the file")
    p.add_argument("--dedupe-date-only", action="store_true",
                   help='also reject repeated date-only ("<day> 00:00:00") rows of one file as duplicate_row')
    p.add_argument("--atomic", action="store_true",
                   help="commit all inputs or none (default: each input whole, in order, up to a failing one)")
    add_engine_arguments(p)

    def handler(args: argparse.Namespace) -> int:
        from pipeline.engines import ingest_with
        from pipeline.engines.spark import SparkError
        from pipeline.ingest.rules import IngestError
        from pipeline.settings import load_settings

        from pipeline.io import PathError, check_io_paths, join

        from pipeline.sources.mapping import SourceError

        try:
            config = IngestOptions(args.source, args.max_day, args.max_abs_amount, args.allow_extra_columns,
                                   args.dedupe_date_only).config()
            inputs, (out,) = check_io_paths(args.inputs, [args.out or load_settings().events_dir])
            result = ingest_with(engine_from_args(args), inputs, out, config, atomic=args.atomic)
        except (IngestError, PathError, SparkError, SourceError) as e:
            print(f"txseq ingest: error: {e}", file=sys.stderr)
            return 2
        print(result.format_table())
        print(result.summary())
        print(f"manifest: {join(out, 'manifest.json')}")
        return 0

    p.set_defaults(handler=handler)


def _add_sequences(sub: argparse._SubParsersAction) -> None:
    """`txseq sequences`: events -> per-customer sequences + vocab + split (owner: pipeline.sequences.table)."""
    from pathlib import Path

    from pipeline.steps import SequencesOptions

    d = SequencesOptions()
    p = sub.add_parser(
        "sequences",
        help="validated events -> per-customer sequences Parquet + vocab + split",
        description="Split the labelled customers (seeded stratified test set + K folds), fit the mcc/tr_type "
        "vocabularies on the non-test customers, and write one row per customer with the latest --max-len events "
        "as list columns (sequences.parquet, vocab.json, split.json, manifest.json in --out).",
    )
    p.add_argument("--events", type=location, default=None, help="ingest output folder (default: <data root>/events; "
                   "with --engine spark also a URI)")
    p.add_argument("--labels", type=location, default=None, help="gender_train.csv (customer_id,gender); with "
                   "--engine spark also any URI Spark reads; default: none (all customers unlabelled, empty split)")
    p.add_argument("--label-column", default=d.label_column, help="the binary target's column in --labels (%(default)s)")
    p.add_argument("--positive", default=d.positive, help="the target value that is positive (%(default)s)")
    p.add_argument("--negative", default=d.negative,
                   help="the one other value allowed (%(default)s), or 'rest': every other value is negative")
    p.add_argument("--out", type=location, default=None, help="output folder (default: <data root>/sequences; with "
                   "--engine spark also any URI Spark writes)")
    p.add_argument("--max-len", type=int, default=d.max_len, help="latest events kept per customer (%(default)s)")
    p.add_argument("--min-count", type=int, default=d.min_count,
                   help="codes seen fewer times on training customers encode as unknown (%(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="split seed (%(default)s)")
    p.add_argument("--folds", type=int, default=d.folds, help="stratified folds (%(default)s)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="labelled customers held out as the test set (%(default)s)")
    add_engine_arguments(p)

    def handler(args: argparse.Namespace) -> int:
        from pipeline.engines import sequences_with
        from pipeline.engines.spark import SparkError
        from pipeline.ingest.rules import IngestError
        from pipeline.io import PathError, check_io_paths
        from pipeline.settings import load_settings

        settings = load_settings()
        try:
            labels = [args.labels] if args.labels else []
            inputs, (out,) = check_io_paths([args.events or settings.events_dir, *labels],
                                            [args.out or settings.sequences_dir])
            config, split_config, label = SequencesOptions(
                args.max_len, args.min_count, args.seed, args.folds, args.test_fraction, args.label_column,
                args.positive, args.negative).configs()
            result = sequences_with(engine_from_args(args), events_dir=inputs[0],
                                    labels=inputs[1] if args.labels else None, out_dir=out, config=config,
                                    split_config=split_config, label=label)
        except (IngestError, PathError, SparkError) as e:
            print(f"txseq sequences: error: {e}", file=sys.stderr)
            return 2
        print(result.summary())
        return 0

    p.set_defaults(handler=handler)


class _EncoderListHelp(argparse.HelpFormatter):
    """Writes the registry's encoder names into help texts holding ``{encoders}``, only when help is printed
    (importing `models` loads torch, seconds that every other `txseq` call should not pay)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = super()._get_help_string(action)
        if text and "{encoders}" in text:
            from models import comparison_encoders

            text = text.replace("{encoders}", ",".join(comparison_encoders()))
        if text and "{presets}" in text:
            from pipeline.training.presets import PRESET_NAMES

            text = text.replace("{presets}", ", ".join(PRESET_NAMES))
        if text and "{all_encoders}" in text:
            from models import ENCODERS

            text = text.replace("{all_encoders}", ", ".join(sorted(ENCODERS)))
        if text and "{pretrain." in text:
            from dataclasses import asdict

            from pipeline.training.pretrain import PretrainConfig

            for key, value in asdict(PretrainConfig()).items():
                text = text.replace(f"{{pretrain.{key}}}", str(value))
        return text


def _add_train(sub: argparse._SubParsersAction) -> None:
    """`txseq train`: train/compare models, track in MLflow, register (owner: pipeline.training.run)."""
    from pathlib import Path

    p = sub.add_parser(
        "train",
        help="train and compare models (encoders + GBDT), track them in MLflow, register, write the report",
        description="Train the chosen models on one split under one parent MLflow run (a nested run per model), "
        "register each as a pyfunc model and decide at once whether it becomes `champion` (both models re-scored on "
        "customers neither trained or validated on; see docs/readme/training.md), and write report.md + report.png "
        "under <data root>/runs/<run>/. Re-running with the same --run resumes from the last epoch checkpoints when "
        "data, split, model and preset are unchanged, and does not register an already registered model again.",
        formatter_class=_EncoderListHelp,
    )
    p.add_argument("--sequences", type=Path, help="sequences folder (default: <data root>/sequences)")
    p.add_argument("--events", type=Path, help="validated events folder (default: <data root>/events)")
    p.add_argument("--models", default=None,
                   help="comma-separated: {encoders},gbdt (default: all of them)")
    p.add_argument("--preset", default="auto",
                   help="run configuration, one of {presets}; auto sizes the model and the step budget from the "
                   "labelled customers and their events (%(default)s)")
    p.add_argument("--steps", type=int, help="override the preset's optimiser-step budget")
    p.add_argument("--fold", type=int, default=0, help="validation fold of the split (%(default)s)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="default: the preset's (auto)")
    p.add_argument("--run", default=None, help="run name (default: <timestamp>-<preset>-<4 hex>); an existing one resumes")
    p.add_argument("--no-register", action="store_true", help="log the models but do not register them")
    p.add_argument("--nproc", type=int, default=1,
                   help="training processes per machine (DistributedDataParallel via torchrun; gloo on CPU, NCCL on "
                   "GPU: one GPU each) (%(default)s)")
    p.add_argument("--nnodes", type=int, default=1, help="machines; run the same command on each (%(default)s)")
    p.add_argument("--node-rank", type=int, default=0, help="with --nnodes > 1: this machine's rank (%(default)s)")
    p.add_argument("--master-addr", default=None, help="with --nnodes > 1: host of the node-rank 0 machine")
    p.add_argument("--master-port", type=int, default=29500, help="with --nnodes > 1: its port (%(default)s)")
    p.add_argument("--init-from", action="append", default=[], metavar="MODEL_URI",
                   help="a CoLES-pretrained encoder (txseq pretrain), e.g. models:/txseq-gender-coles-transformer/1; "
                   "adds <encoder>_coles (fine-tuned from it) and hybrid_<encoder> (GBDT on aggregates + its "
                   "embeddings) to the models; repeatable")
    p.add_argument("--threshold-rule", default="youden",
                   help="decision threshold chosen on validation: youden, precision>=X or recall>=X (%(default)s)")
    p.add_argument("--threads", type=int, default=None,
                   help="compute threads for torch, OpenMP and BLAS (default: TXSEQ_THREADS, else the CPUs this "
                        "process may use: affinity and cgroup quota)")

    def handler(args: argparse.Namespace) -> int:
        import logging

        from pipeline.training import distributed
        from pipeline.training.run import default_run_name, follow_comparison, resolve_preset, run_comparison
        from pipeline.settings import load_settings, torchrun_env
        from pipeline.registry.tracking import TrackingError
        from pipeline.training.train import resolve_device

        from pipeline.training.presets import PRESET_NAMES

        if args.preset not in PRESET_NAMES:
            p.error(f"--preset: unknown {args.preset!r}; choose one of {', '.join(PRESET_NAMES)}")
        if args.threads is not None and args.threads < 1:
            p.error(f"--threads must be >= 1, got {args.threads}")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        settings = load_settings()
        from dataclasses import replace

        from pipeline.scoring.calibration import ThresholdRule

        try:
            rule = str(ThresholdRule.parse(args.threshold_rule))
        except ValueError as e:
            p.error(str(e))
        try:  # the auto preset reads the sequences table: a wrong or outdated one fails here, before any training
            preset = replace(resolve_preset(args.preset, args.sequences or settings.sequences_dir, args.fold,
                                            steps=args.steps, device=args.device), threshold_rule=rule)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        if (args.nproc > 1 or args.nnodes > 1) and torchrun_env() is None:  # the launcher: one run name for all
            if args.nnodes > 1 and not args.master_addr:
                p.error("--nnodes > 1 needs --master-addr (the node-rank 0 machine)")
            run = args.run or default_run_name(preset.name)
            return distributed.launch([*distributed.worker_argv(args.argv), "--run", run], args.nproc, args.nnodes,
                                      args.node_rank, args.master_addr, args.master_port)
        ddp = distributed.init_from_env(resolve_device(preset.train.device).type)
        if not ddp.is_main:  # the same fit() calls as rank 0, nothing written
            try:
                follow_comparison(args.sequences or settings.sequences_dir, args.events or settings.events_dir,
                                  preset, models, args.fold, settings.runs_dir / args.run, args.threads,
                                  settings=settings, init_from=args.init_from)
            finally:
                distributed.shutdown()
            return 0
        try:
            result = run_comparison(
                args.sequences or settings.sequences_dir, args.events or settings.events_dir, preset, models,
                fold=args.fold, settings=settings, run_name=args.run, register=not args.no_register,
                init_from=args.init_from,
                threads=args.threads,
            )
        except (TrackingError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        finally:
            distributed.shutdown()
        print(result.table)
        print(f"\nreport: {result.report_md} and {result.report_png} (MLflow parent run {result.parent_run_id})")
        for r in result.results:
            if r.version:
                print(f"  {r.model}: {settings.registered_model} v{r.version} — {r.champion}")
        return 0

    p.set_defaults(handler=handler)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    """`txseq pretrain`: CoLES self-supervised pretraining of one encoder (owner: pipeline.training.pretrain)."""
    from pathlib import Path

    # no import of `models` or `pipeline.training.pretrain` here: they load torch, which every other `txseq` call would pay
    p = sub.add_parser(
        "pretrain",
        formatter_class=_EncoderListHelp,
        help="CoLES self-supervised pretraining of an encoder on every non-test customer, registered in MLflow",
        description="Contrastive pretraining (CoLES: random contiguous slices of one customer embed close, other "
        "customers' far) of the chosen encoder on every customer of the sequences folder with transactions, "
        "labelled or not, except the split's test customers. Logs loss and held-out recall@k per epoch and "
        "registers the encoder as <registered model>-coles-<encoder> (a pyfunc: raw transactions -> embeddings). "
        "Use it with `txseq train --init-from <printed URI>`.",
    )
    p.add_argument("--encoder", required=True, help="encoder to pretrain: one of {all_encoders}")
    p.add_argument("--sequences", type=Path, help="sequences folder (default: <data root>/sequences)")
    p.add_argument("--events", type=Path, help="validated events folder (default: <data root>/events)")
    p.add_argument("--preset", default="auto",
                   help="where the encoder's architecture comes from, one of {presets} (%(default)s); fine-tuning "
                   "keeps it")
    p.add_argument("--fold", type=int, default=0, help="fold the auto preset is sized from (%(default)s)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimiser steps (default: {pretrain.passes} passes over the customers, at least "
                   "{pretrain.min_steps}, at most {pretrain.max_steps})")
    p.add_argument("--epochs", type=int, default=None,
                   help="rounds the steps are split into: held-out recall logged, best kept "
                   "(default: {pretrain.epochs})")
    p.add_argument("--batch-size", type=int, default=None,
                   help="customers per batch (default: {pretrain.batch_size})")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: {pretrain.lr})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(%(default)s)")
    p.add_argument("--no-register", action="store_true", help="log the run but do not register the encoder")

    def handler(args: argparse.Namespace) -> int:
        import logging

        from models import ENCODERS
        from pipeline.training.run import resolve_preset
        from pipeline.training.pretrain import PretrainConfig, run_pretraining
        from pipeline.settings import load_settings
        from pipeline.registry.tracking import TrackingError

        from pipeline.training.presets import PRESET_NAMES

        if args.encoder not in ENCODERS:
            print(f"txseq pretrain: error: unknown encoder {args.encoder!r}; choose one of {', '.join(sorted(ENCODERS))}",
                  file=sys.stderr)
            return 2
        if args.preset not in PRESET_NAMES:
            print(f"txseq pretrain: error: unknown preset {args.preset!r}; choose one of {', '.join(PRESET_NAMES)}",
                  file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        settings = load_settings()
        sequences = args.sequences or settings.sequences_dir
        given = {"epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr}
        config = PretrainConfig(device=args.device, **{k: v for k, v in given.items() if v is not None})
        try:
            run = run_pretraining(sequences, args.events or settings.events_dir, args.encoder,
                                  resolve_preset(args.preset, sequences, args.fold), config, settings=settings,
                                  register=not args.no_register)
        except (TrackingError, ValueError) as e:
            print(f"txseq pretrain: error: {e}", file=sys.stderr)
            return 2
        r = run.result
        print(f"{args.encoder}: CoLES on {run.n_customers:,} customers ({r.n_heldout:,} held out for recall), "
              f"{len(r.history)} epochs, best held-out recall@{config.n_slices - 1} {r.best_recall:.4f} "
              f"(epoch {r.best_epoch}), {r.train_s:.1f} s; MLflow run {run.run_id}")
        if run.model_uri:
            print(f"registered: {run.model_uri}  (txseq train --init-from {run.model_uri})")
        return 0

    p.set_defaults(handler=handler)


def _add_score(sub: argparse._SubParsersAction) -> None:
    """`txseq score`: batch-score raw transactions with a registered model (owner: pipeline.scoring.batch)."""
    from pathlib import Path

    p = sub.add_parser(
        "score",
        help="batch-score raw transactions with a registered model -> one row per customer",
        description="Score raw transactions (Parquet/CSV file or folder) with an MLflow model: one row per customer "
        "(customer_id, probability, prediction, model_name, model_version, scored_at). Rows that ingest would "
        "reject go to a rejects Parquet beside the output. Inputs larger than memory are scored in "
        "customer-partitioned chunks. With --landing, every file of the folder not scored before is scored into "
        "--out-dir, once, even with several runs at the same time.",
    )
    p.add_argument("--model", default=None, help="models:/<name>@champion, models:/<name>/<version> or runs:/<id>/… "
                   "(default: the registered champion, models:/<registered model>@champion)")
    p.add_argument("--input", type=location, help="raw transactions: Parquet/CSV file or folder (or a file:// URI; "
                   "with --engine spark any URI Spark reads: hdfs://, s3a://, ...)")
    p.add_argument("--output", type=location, help="scores Parquet <stem>.parquet (rejects go to <stem>.rejects.parquet "
                   "beside it; with --engine spark it may be any URI Spark writes: hdfs://, s3a://, ...)")
    p.add_argument("--landing", type=Path, help="landing folder: score each new file once (instead of --input)")
    p.add_argument("--out-dir", type=Path, help="with --landing: scores, rejects and the ledger of scored files")
    p.add_argument("--chunk-rows", type=int, default=2_000_000, help="validated rows scored at once (%(default)s)")
    p.add_argument("--min-age-s", type=float, default=0.0, help="with --landing: skip files modified this recently")
    add_engine_arguments(p)
    p.add_argument("--drift-threshold", type=float, default=0.2,
                   help="warn when a feature's population stability index exceeds this (%(default)s)")

    def handler(args: argparse.Namespace) -> int:
        from pipeline.engines import check_engine_reads, check_engine_writes, score_file_with
        from pipeline.engines.spark import SparkError
        from pipeline.settings import load_settings
        from pipeline.ingest.rules import IngestConfig, IngestError
        from pipeline.io import PathError, check_io_paths, is_uri
        from pipeline.scoring.batch import (
            ScoreConfig,
            check_input_columns,
            check_inputs,
            default_rejects_path,
            summary_markdown,
        )
        from pipeline.scoring.landing import LandingConfig, landing_files, pending_files, score_landing

        if (args.input is None) == (args.landing is None):
            p.error("give either --input with --output, or --landing with --out-dir")
        if (args.input and not args.output) or (args.landing and not args.out_dir):
            p.error("--input needs --output; --landing needs --out-dir")
        if args.landing and args.engine != "polars":
            p.error("--landing scores with --engine polars only (each landing file is small); use --input for Spark")
        model_uri = args.model or f"models:/{load_settings().registered_model}@champion"
        try:
            # Paths, the input's header/footer and its columns are checked before the (slow) model load.
            if args.input:
                (source,), (output, _) = check_io_paths([args.input], [args.output, default_rejects_path(args.output)])
                if isinstance(output, Path) and output.is_dir():
                    raise PathError(f"{output}: is a folder; --output names the scores Parquet file")
                check_engine_reads(engine_from_args(args), source)
                check_engine_writes(engine_from_args(args), output)
                files = None if is_uri(source) else check_inputs(source)  # a URI: the Spark engine checks it
                from pipeline.registry.tracking import stored_model_config

                stored = stored_model_config(model_uri, load_settings().tracking_uri)  # config.json alone: no torch
                if stored is not None and files is not None:  # the model's export format; None: the load says
                    check_input_columns(files, IngestConfig.from_dict(stored.get("ingest", {})))
            else:
                (landing_dir,), (out_dir,) = check_io_paths([args.landing], [args.out_dir])
                if not pending_files(landing_dir, out_dir, args.min_age_s):  # nothing new: no model to load
                    n = len(landing_files(landing_dir, args.min_age_s))
                    print(f"0 new file(s) scored, {n} skipped (scored before or claimed), 0 failed")
                    return 0
            from pipeline.scoring.pyfunc import ModelLoadError, load_batch_scorer

            try:
                scorer, model = load_batch_scorer(model_uri, load_settings().tracking_uri)
            except ModelLoadError as e:  # a missing model/alias/version or an unreachable store: one line, exit 2
                print(f"txseq score: error: {e}", file=sys.stderr)
                return 2
            config = ScoreConfig(chunk_rows=args.chunk_rows, drift_psi_threshold=args.drift_threshold)
            if args.input:
                results = [score_file_with(engine_from_args(args), source, output, scorer, model, config,
                                           load_settings().tracking_uri)]
            else:
                landing = score_landing(landing_dir, out_dir, scorer, model, config,
                                        LandingConfig(min_age_s=args.min_age_s))
                results = landing.scored
                print(f"{len(landing.scored)} new file(s) scored, {len(landing.skipped)} skipped (scored before or "
                      f"claimed), {len(landing.failed)} failed")
        except (IngestError, PathError, SparkError) as e:
            print(f"txseq score: error: {e}", file=sys.stderr)
            return 2
        print(summary_markdown(results))
        for r in results:
            _report_drift(r, model)
        if args.landing and landing.failed:
            for _, error in landing.failed:
                print(f"txseq score: error: {error}", file=sys.stderr)
            return 2
        return 0

    p.set_defaults(handler=handler)


def _report_drift(result, model) -> None:  # noqa: ANN001 - batch.ScoreResult, ModelRef
    """The drift warning line (stderr) or a stability line, and the scoring run in MLflow."""
    from pipeline.scoring.pyfunc import log_scoring_run
    from pipeline.settings import load_settings

    if result.drift is None:
        print(f"{result.output_name}: no reference statistics stored with {model.name} v{model.version}: "
              "input stability not checked")
    elif result.drift_warning:
        print(f"txseq score: {result.drift_warning} ({result.drift_files[0]})", file=sys.stderr)
    else:
        worst = max(result.drift["psi"], key=lambda f: result.drift["psi"][f])
        print(f"{result.output_name}: input stable, largest PSI {result.drift['psi'][worst]:.3f} ({worst}) <= "
              f"{result.drift['psi_threshold']:g}")
    try:
        log_scoring_run(result, model, load_settings().tracking_uri)
    except Exception as e:  # noqa: BLE001 - the scores are written; a tracking hiccup must not fail the run
        print(f"txseq score: note: scoring run not logged to MLflow: {str(e).splitlines()[0][:300]}", file=sys.stderr)


def _add_models(sub: argparse._SubParsersAction) -> None:
    """`txseq models`: registered versions with metrics, aliases and champion decisions (owner:
    pipeline.registry.tracking)."""
    p = sub.add_parser(
        "models",
        help="list the registered model versions: metrics, aliases, champion decisions",
        description="One row per registered version, newest first: the model kind, its aliases (champion), test "
        "ROC AUC and log-loss, the decision threshold and calibration stored with it, and the champion decision "
        "recorded when it was registered.",
    )
    p.add_argument("--name", default=None,
                   help=f"registered model (default: TXSEQ_REGISTERED_MODEL or {DEFAULT_REGISTERED_MODEL})")

    def handler(args: argparse.Namespace) -> int:
        from pipeline.settings import load_settings
        from pipeline.registry.tracking import TrackingError, registered_versions

        settings = load_settings()
        name = args.name or settings.registered_model
        try:
            versions = registered_versions(settings.tracking_uri, name)
        except TrackingError as e:
            print(f"txseq models: error: {e}", file=sys.stderr)
            return 2
        print(f"registered model {name}: {len(versions)} version(s)\n")
        print("| version | model | aliases | test ROC AUC | test log-loss | threshold | calibration | registered (UTC) "
              "| champion decision |")
        print("|---:|---|---|---:|---:|---:|---|---|---|")
        for v in versions:
            auc, loss = v.metrics.get("test/auroc"), v.metrics.get("test/logloss_calibrated", v.metrics.get("test/logloss"))
            fmt = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
            threshold = v.tags.get("decision.threshold")
            print(f"| {v.version} | {v.model} | {', '.join(v.aliases) or '—'} | {fmt(auc)} | {fmt(loss)} | "
                  f"{f'{float(threshold):.4f}' if threshold else '0.5 (none stored)'} | "
                  f"{v.tags.get('decision.calibration', 'none')} | {v.created} | {v.tags.get('champion_decision', '—')} |")
        return 0

    p.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txseq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_generate, _add_ingest, _add_sequences, _add_pretrain, _add_train, _add_score, _add_models):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    apply_library_defaults()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a launcher (train --nproc) passes on
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.error(f"subcommand {args.command!r} is not implemented yet")
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
