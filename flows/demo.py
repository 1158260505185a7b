"""The README's main job, end to end with embedded defaults: generate the calibrated dataset into the data root
(once), then run the `pipeline` flow (ingest → build_sequences → train → report) in Prefect's ephemeral mode, with
MLflow tracking to the local SQLite store, and print where everything landed.

    txseq-demo [--customers 15000] [--preset demo] [--models transformer,performer,infinite_former,eam,gbdt]

With no `PREFECT_API_URL` no server is needed; with one set, the run shows up in that server's UI.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from flows.pipeline import PipelineParams, pipeline
from flows.train import TrainParams
from pipeline.generate import GeneratorConfig, generate
from pipeline.settings import load_settings

STAMP = ".generated.json"  # the generator config that produced <data root>/raw


def ensure_raw_data(raw_dir: Path, config: GeneratorConfig) -> None:
    """Generate the dataset unless `raw_dir` already holds one made with the same config (or files of the user's)."""
    stamp = raw_dir / STAMP
    wanted = json.dumps(config.__dict__, sort_keys=True, default=str)
    has_user_data = any(raw_dir.glob("transactions*")) and not stamp.exists()
    if has_user_data:
        print(f"using the transactions already in {raw_dir}")
        return
    if stamp.exists() and stamp.read_text() == wanted:
        print(f"using the dataset generated earlier in {raw_dir}")
        return
    for old in raw_dir.glob("transactions*"):
        old.unlink()
    t0 = time.perf_counter()
    paths = generate(raw_dir, config)
    stamp.write_text(wanted)
    print(f"generated {paths.n_rows:,} transactions of {paths.n_customers:,} customers in {time.perf_counter() - t0:.1f} s -> {raw_dir}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="txseq-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=GeneratorConfig().n_customers, help="customers to generate (15,000 = full size)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--preset", choices=("auto", "tiny", "demo", "full"), default="demo", help="named run configuration")
    parser.add_argument("--models", default="", help="comma-separated models (default: the preset's: 4 encoders + gbdt)")
    args = parser.parse_args(argv)

    settings = load_settings()
    labelled = round(args.customers * GeneratorConfig().n_labelled / GeneratorConfig().n_customers)
    ensure_raw_data(settings.raw_dir, GeneratorConfig(n_customers=args.customers, n_labelled=labelled, seed=args.seed))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    t0 = time.perf_counter()
    result = pipeline(PipelineParams(train=TrainParams(preset=args.preset, models=models)))
    print(f"\n{result.table}\n")
    print(f"pipeline finished in {time.perf_counter() - t0:.0f} s")
    print(f"report:     {result.report_md}  (+ {result.report_png.name})")
    print(f"events:     {settings.events_dir}  (rejects/ and manifest.json beside them)")
    print(f"sequences:  {settings.sequences_dir}")
    print(f"MLflow:     {settings.tracking_uri}   (mlflow ui --backend-store-uri {settings.tracking_uri})")
    print(f"registered: models:/{settings.registered_model}@champion")
    return 0


if __name__ == "__main__":
    sys.exit(main())
