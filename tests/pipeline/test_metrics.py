"""Quality metrics against hand-computed values; memory and timing probes return sane numbers."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.metrics import MemoryMonitor, Stopwatch, classification_metrics, peak_rss_gib, plot_roc, roc_points


def test_metrics_match_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8])
    m = classification_metrics(y, p)
    # pairs (pos, neg): (0.4,0.1) ok, (0.4,0.6) wrong, (0.8,0.1) ok, (0.8,0.6) ok -> 3/4
    assert m["auroc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)  # 0.1->0 ok, 0.6->1 wrong, 0.4->0 wrong, 0.8->1 ok
    expected = -(math.log(0.9) + math.log(0.4) + math.log(0.4) + math.log(0.8)) / 4
    assert m["logloss"] == pytest.approx(expected)


def test_single_class_auroc_is_nan_and_extreme_probabilities_stay_finite() -> None:
    m = classification_metrics(np.array([1, 1]), np.array([1.0, 0.0]))
    assert math.isnan(m["auroc"])
    assert math.isfinite(m["logloss"])


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 1]), np.array([0.5]))


def test_roc_points_and_plot(tmp_path) -> None:
    fpr, tpr = roc_points(np.array([0, 1, 0, 1]), np.array([0.2, 0.7, 0.4, 0.9]))
    assert fpr[0] == 0 and tpr[-1] == 1
    path = plot_roc({"m": (fpr, tpr, 1.0)}, tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_roc_plot_without_curves_is_an_empty_plot_without_a_warning(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about a legend with nothing in it
        path = plot_roc({}, tmp_path / "empty.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _current_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 2**30
    raise AssertionError("no VmRSS line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS (Linux)")
def test_memory_monitor_reports_a_peak_that_bounds_the_resident_set() -> None:
    """Invariants that hold under any memory pressure (the kernel may swap pages out as soon as they are touched, so
    no test can expect a given allocation to show up in RSS): the peak is positive, not below the current RSS,
    and does not decrease within a window (up to the kernel's RSS counter lag)."""
    mon = MemoryMonitor()
    mon.reset()
    first = mon.read()["mem/rss_peak_gib"]
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    rss_with_block = _current_rss_gib()
    second = mon.read()["mem/rss_peak_gib"]
    del block
    slack = 16 / 1024  # the kernel batches RSS counters per thread (64 pages each): its figures lag by up to ~MiBs
    assert 0 < first <= second + slack
    assert second >= rss_with_block - slack
    assert peak_rss_gib() >= second - slack


def test_stopwatch_measures_time() -> None:
    with Stopwatch() as sw:
        sum(range(10000))
    assert sw.seconds > 0
