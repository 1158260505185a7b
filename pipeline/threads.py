"""How many threads to compute with: the CPUs this process may really use, not every logical core of the host.

torch, OpenMP (scikit-learn's HistGradientBoosting) and BLAS each start one thread per logical core by default; in a
container limited by a CPU quota, or on a machine pinned to a few cores, that oversubscribes the CPUs and wastes
most of the CPU time on spinning threads.

    usable = min(len(os.sched_getaffinity(0)), ceil(cgroup CPU quota))     (cgroup v2 cpu.max, v1 cfs quota/period)
    threads = --threads / TXSEQ_THREADS when given, else usable

`apply_threads(n)` sets torch's intra-op and inter-op pools and, through threadpoolctl, every OpenMP/BLAS pool of the
process (scikit-learn, numpy). `loader_workers(n)` is the DataLoader worker count for that budget. Waiting OpenMP
threads sleep instead of spinning (`OMP_WAIT_POLICY=PASSIVE`, set with the other library defaults by
`pipeline.settings.apply_library_defaults` before torch or scikit-learn load): on a loaded machine the spinning,
not the thread count, cost most of the CPU time.
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup CPU quota (e.g. 1.5), or None when unlimited or unknown."""
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        for folder in (root / "cpu", root / "cpu,cpuacct"):
            q, p = folder / "cpu.cfs_quota_us", folder / "cpu.cfs_period_us"
            if q.is_file() and p.is_file():
                quota, period = int(q.read_text()), int(p.read_text())
                return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (rounded up, at least 1)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def choose_threads(override: int | None = None, root: Path = CGROUP_ROOT) -> int:
    """`override` (from --threads or TXSEQ_THREADS) when given, else `usable_cpus()`."""
    if override is not None:
        if override < 1:
            raise ValueError(f"threads must be >= 1, got {override}")
        return override
    return usable_cpus(root)


def loader_workers(threads: int) -> int:
    """DataLoader worker processes for a thread budget: none below 4 threads (collating in the main process is cheaper
    than feeding worker processes on 1-3 cores), then a quarter of the budget, at most 4."""
    return 0 if threads < 4 else min(4, threads // 4)


@dataclass(frozen=True)
class ThreadSettings:
    threads: int
    interop: int
    loader_workers: int
    usable_cpus: int


_threadpool_limiter = None  # kept alive: threadpoolctl's limits last as long as the limiter object


def apply_threads(threads: int) -> ThreadSettings:
    """Limit torch, OpenMP and BLAS to `threads` for the rest of the process."""
    global _threadpool_limiter
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    interop = max(1, min(threads, 2))
    try:
        torch.set_num_interop_threads(interop)
    except RuntimeError:  # only settable before the first inter-op parallel work of the process
        interop = torch.get_num_interop_threads()
    _threadpool_limiter = threadpool_limits(limits=threads)
    return ThreadSettings(threads, interop, loader_workers(threads), usable_cpus())


def hardware(device: str, threads: int | None = None) -> str:
    """One line for a model card: machine, usable CPUs, threads and the accelerator."""
    import torch

    accel = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else "no GPU"
    used = f", {threads} threads" if threads else ""
    return f"{platform.machine()} {platform.processor() or platform.system()}, {usable_cpus()} usable CPUs{used}; " \
           f"device {device} ({accel})"
