"""The README's main job, end to end with embedded defaults: generate the calibrated dataset into the data root
(once), then run the `pipeline` flow (ingest → build_sequences → train → report) in Prefect's ephemeral mode, with
MLflow tracking to the local SQLite store, and print where everything landed.

    txseq-demo [--customers 15000] [--preset demo] [--models transformer,performer,gbdt]   (default: the preset's)

With no `PREFECT_API_URL` no server is needed (the temporary one gets up to
PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, 300 s by default, to start on a busy machine); with one set, the run
shows up in that server's UI. At the end it prints the time of each step and the champion (model, version, test AUC).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

import mlflow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.sorting import FlowRunSort

from flows.end_to_end import PipelineParams, pipeline
from flows.train import TrainParams
from pipeline.sources.generate import GeneratorConfig, generate
from pipeline.settings import Settings, load_settings
from pipeline.registry.tracking import CHAMPION, TAG_TEST_AUROC

STAMP = ".generated.json"  # the generator config that produced <data root>/raw


async def step_times(flow_run_id: UUID) -> list[tuple[str, float]]:
    """(flow name, seconds) of each subflow of a flow run, in start order, as the Prefect server recorded them."""
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])),
            sort=FlowRunSort.START_TIME_ASC,
        )
        return [((await client.read_flow(r.flow_id)).name, r.total_run_time.total_seconds()) for r in runs]


def champion_line(settings: Settings) -> str:
    """`<name> v<version> = <model>, test ROC AUC <auc>` of the registered champion, or why there is none."""
    client = mlflow.MlflowClient(settings.tracking_uri)
    try:
        v = client.get_model_version_by_alias(settings.registered_model, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return f"no @{CHAMPION} version of {settings.registered_model} yet"
    auc = v.tags.get(TAG_TEST_AUROC)
    auc_text = f"{float(auc):.4f}" if auc else "?"
    return f"{settings.registered_model} v{v.version} = {v.tags.get('model', '?')}, test ROC AUC {auc_text}"


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
    # the registry's list; loads torch, which the pipeline needs anyway
    from pipeline.training.presets import ENCODER_MODELS, PRESET_NAMES

    parser = argparse.ArgumentParser(prog="txseq-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=GeneratorConfig().n_customers, help="customers to generate (15,000 = full size)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="demo", help="named run configuration")
    parser.add_argument("--models", default="", help=f"comma-separated models: {','.join(ENCODER_MODELS)},gbdt (default: the preset's)")
    args = parser.parse_args(argv)

    settings = load_settings()
    labelled = round(args.customers * GeneratorConfig().n_labelled / GeneratorConfig().n_customers)
    ensure_raw_data(settings.raw_dir, GeneratorConfig(n_customers=args.customers, n_labelled=labelled, seed=args.seed))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    t0 = time.perf_counter()
    state = pipeline(PipelineParams(train=TrainParams(preset=args.preset, models=models)), return_state=True)
    result = state.result()  # raises if the run failed
    print(f"\n{result.table}\n")
    for name, seconds in asyncio.run(step_times(state.state_details.flow_run_id)):
        print(f"step {name:<16} {seconds:7.1f} s")
    print(f"pipeline finished in {time.perf_counter() - t0:.0f} s")
    print(f"champion:   {champion_line(settings)}")
    print(f"report:     {result.report_md}  (+ {result.report_png.name})")
    print(f"events:     {settings.events_dir}  (rejects/ and manifest.json beside them)")
    print(f"sequences:  {settings.sequences_dir}")
    print(f"MLflow:     {settings.tracking_uri}   (mlflow ui --backend-store-uri {settings.tracking_uri})")
    print(f"registered: models:/{settings.registered_model}@champion")
    return 0


if __name__ == "__main__":
    sys.exit(main())
