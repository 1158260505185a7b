"""The quality benchmark's bookkeeping, without training: model names parsed into (encoder, kind), mean ± sd per
(signal, model, budget), the issue's targets read off the summary, and parallel parts merged into one table and plot
(a model two parts both ran counted once, cached pretraining rows never)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _bench import load_bench  # on sys.path: tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_quality")


def _row(model: str, budget: int | None, seed: int | None, auroc: float | None, sig: float = 0.0, **kw) -> dict:
    return {"order_signal": sig, "model": model, "budget": budget, "seed": seed, "auroc": auroc, "cpu_s": 1.0, **kw}


RUNS = [
    _row("pretrain_transformer", None, None, None, recall=0.6),
    *[_row("gbdt", 300, s, 0.70 + 0.01 * s) for s in range(3)],
    *[_row("transformer", 300, s, 0.68 + 0.01 * s) for s in range(3)],
    *[_row("transformer_coles", 300, s, 0.74 + 0.01 * s) for s in range(3)],
    *[_row("hybrid_transformer", 300, s, 0.72 + 0.01 * s) for s in range(3)],
    *[_row("eam", 300, s, 0.70) for s in range(3)],
    *[_row("eam_coles", 300, s, 0.71) for s in range(3)],
    _row("gbdt", 1000, 0, 0.80), _row("transformer", 1000, 0, 0.79),
]


def test_model_names_parse_into_encoder_and_kind(bench) -> None:
    assert bench.model_kind("gbdt") == ("gbdt", "gbdt")
    assert bench.model_kind("infinite_former") == ("infinite_former", "supervised")
    assert bench.model_kind("infinite_former_coles") == ("infinite_former", "coles")
    assert bench.model_kind("hybrid_infinite_former") == ("infinite_former", "hybrid")


def test_summary_is_mean_and_sample_sd_over_seeds(bench) -> None:
    summary = {(s["model"], s["budget"]): s for s in bench.summarise(RUNS)}
    assert ("pretrain_transformer", None) not in summary  # pretraining rows carry no AUC
    s = summary[("transformer_coles", 300)]
    assert s["n_seeds"] == 3 and s["auroc_mean"] == pytest.approx(0.75) and s["auroc_sd"] == pytest.approx(0.01)
    assert summary[("gbdt", 1000)]["auroc_sd"] == 0.0  # one seed: no spread, not NaN


def test_targets_flag_each_encoder_and_each_budget(bench) -> None:
    checked = bench.targets(bench.summarise(RUNS))
    tg = checked["0"]
    assert tg["budget"] == 300
    assert tg["coles_gain"]["transformer"]["gain"] == pytest.approx(0.06) and tg["coles_gain"]["transformer"]["met"]
    assert tg["coles_gain"]["eam"]["gain"] == pytest.approx(0.01) and not tg["coles_gain"]["eam"]["met"]
    assert tg["best_vs_gbdt"][300]["best"] == "transformer_coles" and tg["best_vs_gbdt"][300]["met"]
    assert tg["best_vs_gbdt"][1000]["best"] == "transformer" and not tg["best_vs_gbdt"][1000]["met"]
    table = bench.targets_table(checked)
    assert "| eam | +0.0100 | no |" in table and "transformer @ 1000 | -0.0100 | no |" in table


def test_merge_counts_each_model_once_and_plots(tmp_path: Path) -> None:
    part = {"args": {}, "complete": True, "wall_s": 1.0, "cpu_s": 1.0, "machine": {}}
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({**part, "runs": RUNS}))
    b.write_text(json.dumps({**part, "runs": [_row("transformer", 300, 0, 0.68),  # same model, split: counted once
                                               {**RUNS[0], "cached": True},  # reused pretraining: not counted again
                                               _row("switchhead", 300, 0, 0.9, sig=2.0),
                                               _row("gbdt", 300, 0, 0.7, sig=2.0)]}))
    out, png = tmp_path / "q.json", tmp_path / "q.png"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_quality.py"), "--merge", f"{a},{b}",
                           "--out", str(out), "--plot", str(png)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert len(result["runs"]) == len(RUNS) + 2 and result["complete"]
    assert result["targets"]["2"]["best_vs_gbdt"]["300"]["best"] == "switchhead"
    assert "best neural/hybrid − GBDT" in proc.stdout
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
