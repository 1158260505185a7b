"""pipeline.threads: the CPUs a process may use (affinity, cgroup v1/v2 quota), the override, and its application."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import load_settings
from pipeline.threads import cgroup_cpu_quota, choose_threads, loader_workers, usable_cpus

ROOT = Path(__file__).resolve().parents[2]


def _v2(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def _v1(tmp_path: Path, quota: int, period: int) -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(_v2(tmp_path, "150000 100000\n")) == 1.5
    assert cgroup_cpu_quota(_v2(tmp_path, "max 100000\n")) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(_v1(tmp_path, 200000, 100000)) == 2.0
    (tmp_path / "unlimited").mkdir()
    assert cgroup_cpu_quota(_v1(tmp_path / "unlimited", -1, 100000)) is None


def test_no_cgroup_files_means_no_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    assert usable_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_the_quota_caps_the_affinity_rounding_up(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus(_v2(tmp_path, "50000 100000")) == 1  # half a CPU still gets one thread
    assert usable_cpus(_v2(tmp_path, "1000000000 100000")) == affinity  # a quota above the mask changes nothing


def test_override_wins_and_must_be_positive(tmp_path: Path) -> None:
    assert choose_threads(3, _v2(tmp_path, "100000 100000")) == 3
    assert choose_threads(None, _v2(tmp_path, "100000 100000")) == 1
    with pytest.raises(ValueError, match=">= 1"):
        choose_threads(0)


def test_loader_workers_only_with_four_threads_or_more() -> None:
    assert [loader_workers(n) for n in (1, 2, 3, 4, 8, 16, 64)] == [0, 0, 0, 1, 2, 4, 4]


def test_txseq_threads_is_read_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXSEQ_THREADS", "3")
    assert load_settings().threads == 3
    monkeypatch.setenv("TXSEQ_THREADS", "")
    assert load_settings().threads is None
    monkeypatch.setenv("TXSEQ_THREADS", "two")
    with pytest.raises(ValueError, match="TXSEQ_THREADS"):
        load_settings()


def test_apply_threads_limits_torch_openmp_and_blas() -> None:
    """In a fresh process (the limits are process-wide): torch, and every OpenMP/BLAS pool threadpoolctl sees."""
    code = ("import json, sklearn.ensemble, torch; from threadpoolctl import threadpool_info; "
            "from pipeline.threads import apply_threads; s = apply_threads(1); "
            "print(json.dumps({'torch': torch.get_num_threads(), 'interop': torch.get_num_interop_threads(), "
            "'pools': [p['num_threads'] for p in threadpool_info()], 'workers': s.loader_workers}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["torch"] == 1 and got["interop"] == 1 and got["workers"] == 0
    assert got["pools"] and set(got["pools"]) == {1}
