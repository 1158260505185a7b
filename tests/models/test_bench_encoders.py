"""The encoder benchmark's logic on CPU: one tiny case in-process, skip predictions, ratios and the report for both
devices (the CUDA rows are synthetic here: no GPU in CI)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from _bench import load_bench  # on sys.path: tests/conftest.py

from models import ENCODERS


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_encoders")


def _args(**kw) -> argparse.Namespace:
    base = dict(batch=1, heads=2, head_dim=4, layers=1, reps=1, warmup=1, threads=1,
                set=["performer.nb_features=8", "infinite_former.segment_len=8", "eam.window=4", "eam.stride=4"],
                mem_budget_gb=1.0, time_budget_s=10.0, device="cpu", length=16)
    base.update(kw)
    return argparse.Namespace(**base)


def test_the_bench_covers_every_registered_encoder(bench) -> None:
    assert bench.ENCODER_ORDER == list(ENCODERS) and set(bench.LABELS) == set(ENCODERS)


def test_set_overrides_only_the_named_encoder(bench) -> None:
    cfg = bench.encoder_config("eam", ["eam.window=4", "eam.pool_after=[0, 1]", "performer.nb_features=8"])
    assert cfg.window == 4 and cfg.pool_after == (0, 1) and cfg.stride == 64
    with pytest.raises(SystemExit, match="no config field"):
        bench.encoder_config("eam", ["eam.nope=1"])


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_one_case_runs_and_reports_time_and_memory(bench, encoder: str) -> None:
    r = bench.run_case(_args(encoder=encoder))
    assert r["time_s"] > 0 and r["rss_peak_mib"] >= 0 and r["n_parameters"] > 0
    assert "cuda_max_allocated_mib" not in r


def _ok(device, encoder, length, t, mem):
    key = "cuda_max_allocated_mib" if device == "cuda" else "rss_peak_mib"
    r = {"device": device, "encoder": encoder, "length": length, "status": "ok", "time_s": t, key: mem}
    if device == "cuda":
        r["cuda_max_reserved_mib"] = mem * 1.5
    return r


def test_quadratic_memory_is_extrapolated_and_skipped(bench) -> None:
    done = [_ok("cuda", "transformer_materialized", 256, 0.01, 100.0), _ok("cuda", "transformer_materialized", 1024, 0.05, 1600.0)]
    reason = bench.plan_skip(_args(mem_budget_gb=8.0), done, "transformer_materialized", "cuda", 4096)
    assert reason is not None and "predicted peak 25.0 GiB" in reason
    assert bench.plan_skip(_args(mem_budget_gb=64.0, time_budget_s=100.0), done, "transformer_materialized", "cuda", 4096) is None
    skipped = done + [{"device": "cuda", "encoder": "x", "length": 4096, "status": "skipped", "reason": "r"}]
    assert "shorter length" in bench.plan_skip(_args(), skipped, "transformer_materialized", "cuda", 16384)


def test_time_budget_skips(bench) -> None:
    done = [_ok("cpu", "performer", 256, 1.0, 1.0), _ok("cpu", "performer", 1024, 4.0, 4.0)]
    assert "predicted 16 s" in bench.plan_skip(_args(time_budget_s=20.0, reps=1, warmup=1), done, "performer", "cpu", 4096)


def test_ratios_and_report_cover_both_devices(bench, tmp_path: Path) -> None:
    results = []
    for device in ("cpu", "cuda"):
        results += [
            _ok(device, "transformer", 4096, 2.0, 100.0),
            _ok(device, "transformer_materialized", 4096, 8.0, 4000.0),
            _ok(device, "eam", 4096, 1.0, 50.0),
            {"device": device, "encoder": "transformer_materialized", "length": 16384, "status": "skipped",
             "reason": "predicted peak 64.0 GiB > budget 6 GiB"},
        ]
    bench.add_ratios(results)
    eam_cuda = next(r for r in results if r["device"] == "cuda" and r["encoder"] == "eam")
    assert eam_cuda["speedup_vs_sdpa"] == 2.0 and eam_cuda["speedup_vs_materialized"] == 8.0
    assert eam_cuda["mem_saving_vs_sdpa"] == 2.0 and eam_cuda["mem_saving_vs_materialized"] == 80.0
    table = bench.markdown_table(results)
    assert "**cuda**" in table and "CUDA max alloc MiB" in table and "(reserved 75)" in table
    assert "skipped: predicted peak 64.0 GiB" in table
    bench.plot(results, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
