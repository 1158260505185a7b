"""Training on several processes or machines: the pieces `pipeline.training.train.fit` needs for
DistributedDataParallel.

    txseq train --nproc N [--nnodes M --node-rank R --master-addr HOST] ...
      └─ launch(): python -m torch.distributed.run ... -m pipeline.training.distributed '["train", ...]' (one run name)
           rank 0:   run_comparison (MLflow, registry, reports, checkpoints) with fit() under DDP
           rank > 0: follow_comparison: the same fit() calls, nothing written

Every rank builds the same global batch (same loader seed, same crops) and trains on its slice of it (`shard`):
the loss of each slice is weighted by its share of the global batch, so DDP's gradient mean equals the gradient
of the global batch's mean loss and N processes follow the 1-process run (up to float summation order; dropout
masks differ per process). Metrics are summed over ranks (`all_reduce_sum`) and each rank's own ones gathered
for rank 0 to log (`gather`). Backend: gloo on CPU, NCCL on CUDA (one GPU per local rank).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import timedelta

import torch
import torch.distributed as dist

from models.batch import Batch

TIMEOUT = timedelta(hours=2)  # rank 0 tests, logs and registers a model while the others wait for the next one


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Dist:
    """The job this process belongs to: an initialised process group, else a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    from pipeline.settings import torchrun_env

    env = torchrun_env() or {}
    return Dist(dist.get_rank(), dist.get_world_size(), env.get("local_rank", 0))


def init_from_env(device_type: str) -> Dist:
    """Join the torchrun job this process was started in (no-op outside torchrun or with one process)."""
    from pipeline.settings import torchrun_env

    env = torchrun_env()
    if env is None or env["world_size"] <= 1:
        return Dist()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(env["local_rank"])
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Dist(env["rank"], env["world_size"], env["local_rank"])


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    """Wait for every rank of the job (no-op when not distributed)."""
    if d.enabled:
        dist.barrier()


def from_main(value: object, d: Dist) -> object:
    """Rank 0's `value` on every rank (`value` itself when not distributed): a decision only rank 0 can make."""
    if not d.enabled:
        return value
    box = [value if d.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def device_for(device: torch.device, d: Dist) -> torch.device:
    """One GPU per local rank; CPU stays CPU."""
    return torch.device("cuda", d.local_rank) if d.enabled and device.type == "cuda" else device


def wrap(model: torch.nn.Module, device: torch.device, d: Dist) -> torch.nn.Module:
    """The module that trains: DDP around `model` in a job, `model` itself otherwise (state dicts stay `model`'s)."""
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: a mixture-of-experts step may leave an expert without gradient
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def shard(batch: Batch, d: Dist) -> tuple[Batch, float]:
    """(this rank's customers of the global `batch` (every world_size-th), loss weight = its share × world_size).

    A rank left without a customer (a last batch smaller than the world) trains on the first one with weight 0,
    so that every rank still runs the backward pass DDP waits for."""
    if not d.enabled:
        return batch, 1.0
    size = batch.size
    index = torch.arange(size)[d.rank::d.world_size]
    weight = len(index) * d.world_size / size
    if len(index) == 0:
        index, weight = torch.arange(0, 1), 0.0
    return Batch(**{f.name: getattr(batch, f.name)[index] for f in fields(batch)}), weight


def all_reduce_sum(values: Sequence[float | torch.Tensor], d: Dist) -> list[float]:
    """Each value summed over the ranks (the values themselves when not distributed)."""
    flat = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if d.enabled:
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return flat.tolist()


def gather(metrics: Mapping[str, float], d: Dist) -> dict[str, float]:
    """Every rank's `metrics` as {"rank<r>/<key>": value} (on every rank; {} when not distributed)."""
    if not d.enabled:
        return {}
    everyone: list[dict[str, float] | None] = [None] * d.world_size
    dist.all_gather_object(everyone, dict(metrics))
    return {f"rank{r}/{k}": v for r, m in enumerate(everyone) for k, v in (m or {}).items()}


LAUNCHER_OPTIONS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--run")


def worker_argv(argv: Sequence[str]) -> list[str]:
    """The launcher's arguments less its own options (`--nproc 2`, `--master-addr=h`, ...): the workers learn their
    place from torchrun, and torchrun's parser would take `--nproc` for its `--nproc-per-node`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in LAUNCHER_OPTIONS:
            skip = True
        elif not a.startswith(tuple(f"{o}=" for o in LAUNCHER_OPTIONS)):
            out.append(a)
    return out


def launch(argv: Sequence[str], nproc: int, nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None,
           master_port: int = 29500) -> int:
    """Run `txseq <argv>` (`python -m pipeline.training.distributed '<argv as JSON>'`) as a torchrun job; returns its exit status. One node: a standalone
    rendezvous on a free port; several: `master_addr:master_port` (run the same command on every node with its
    `node_rank`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--nnodes={nnodes}"]
    if nnodes == 1 and master_addr is None:
        cmd.append("--standalone")
    else:
        cmd += [f"--node-rank={node_rank}", f"--master-addr={master_addr or '127.0.0.1'}", f"--master-port={master_port}"]
    # argv travels as one JSON argument: torchrun's parser would take "--run" for its "--run-path"
    return subprocess.call([*cmd, "-m", "pipeline.training.distributed", json.dumps(list(argv))])


if __name__ == "__main__":  # a torchrun worker: the CLI with the launcher's arguments
    from pipeline.cli import main

    sys.exit(main(json.loads(sys.argv[1])))
