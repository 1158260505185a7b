"""Drift: reference statistics at training, PSI per feature on a scored batch (no rows stored, counts add up)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from pipeline import schema as S
from pipeline.scoring.drift import Bins, DriftMonitor, Reference, fit_reference, markdown, psi, warning_line


def _events(n_customers: int, seed: int, amount_scale: float = 1.0, mcc_offset: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    per = rng.integers(5, 60, n_customers)
    cid = np.repeat(np.arange(n_customers, dtype=np.int64) + seed * 1_000_000, per)
    n = len(cid)
    return pl.DataFrame({
        S.CUSTOMER_ID: cid,
        S.DAY: rng.integers(0, 400, n).astype(np.int32),
        S.MCC_CODE: (rng.zipf(1.6, n) % 60 + 5000 + mcc_offset).astype(np.int32),
        S.TR_TYPE: (rng.zipf(2.0, n) % 20 + 1000).astype(np.int32),
        S.AMOUNT: -np.exp(rng.normal(7, 1.5, n)) * amount_scale,
    })


@pytest.fixture(scope="module")
def reference() -> Reference:
    return fit_reference(_events(3000, 0), np.random.default_rng(0).beta(2, 3, 500))


def _report(reference: Reference, events: pl.DataFrame, scores: np.ndarray, chunks: int = 3):
    monitor = DriftMonitor(reference)
    ids = events[S.CUSTOMER_ID].unique().sort()
    for part in np.array_split(ids.to_numpy(), chunks):  # whole customers per chunk, as batch scoring does
        monitor.observe(events.filter(pl.col(S.CUSTOMER_ID).is_in(part)))
    return monitor.report(scores)


def test_psi_matches_the_formula_and_is_zero_for_equal_shares() -> None:
    r, b = np.array([0.5, 0.3, 0.2]), np.array([0.4, 0.4, 0.2])
    assert psi(r, r) == 0.0
    assert psi(r, b) == pytest.approx((0.4 - 0.5) * np.log(0.4 / 0.5) + (0.4 - 0.3) * np.log(0.4 / 0.3))


def test_a_batch_from_the_training_distribution_shows_no_drift(reference: Reference) -> None:
    report = _report(reference, _events(2000, 7), np.random.default_rng(1).beta(2, 3, 2000))
    assert set(report.psi) == {"mcc", "tr_type", "amount", "events_per_customer", "active_days", "score"}
    assert max(report.psi.values()) < 0.05
    assert report.drifted == [] and warning_line(report.to_dict()) is None
    assert report.customers == 2000


def test_a_shifted_batch_names_the_shifted_features(reference: Reference) -> None:
    shifted = _events(2000, 8, amount_scale=8.0, mcc_offset=100)  # bigger amounts, codes never seen
    report = _report(reference, shifted, np.random.default_rng(2).beta(2, 3, 2000))
    assert set(report.drifted) == {"mcc", "amount"}
    assert report.unknown_share["mcc"]["batch"] > 0.2 > report.unknown_share["mcc"]["reference"]
    line = warning_line(report.to_dict())
    assert "drift" in line and "mcc" in line and "amount" in line and "tr_type" not in line
    assert "| amount |" in markdown(report.to_dict())


def test_a_score_shift_is_reported(reference: Reference) -> None:
    report = _report(reference, _events(1000, 9), np.random.default_rng(3).beta(5, 1, 1000))
    assert report.drifted == ["score"]
    assert report.score_mean["batch"] > report.score_mean["reference"] + 0.2


def test_counts_do_not_depend_on_chunking_and_add_up(reference: Reference) -> None:
    events = _events(500, 11)
    scores = np.random.default_rng(4).random(500)
    one, many = _report(reference, events, scores, 1), _report(reference, events, scores, 7)
    assert one.to_dict() == many.to_dict()
    assert one.events == events.height
    for name in ("mcc", "tr_type", "amount"):
        assert sum(one.bins[name]["batch_count"]) == events.height
    for name in ("events_per_customer", "active_days", "score"):
        assert sum(one.bins[name]["batch_count"]) == 500


def test_the_reference_round_trips_and_holds_no_rows(reference: Reference, tmp_path) -> None:
    path = reference.save(tmp_path / "reference.json")
    assert Reference.load(path) == reference
    text = path.read_text()
    assert len(text) < 20_000  # bins and shares only
    assert set(json.loads(text)) == {"features", "known_codes", "unknown_share", "customers", "events", "min_count",
                                     "score_mean"}


def test_bins_count_categorical_and_numeric_values() -> None:
    cat = Bins(codes=(7, 3))
    assert cat.count(np.array([3, 3, 7, 9, 10])).tolist() == [1, 2, 2]
    num = Bins(edges=(0.0, 10.0))
    assert num.count(np.array([-1.0, 0.0, 5.0, 10.0, 99.0])).tolist() == [1, 2, 2]
    assert num.labels == ["[-inf, 0)", "[0, 10)", "[10, inf)"]


def test_the_report_files_sit_beside_the_scores(reference: Reference, tmp_path) -> None:
    report = _report(reference, _events(300, 12), np.random.default_rng(5).random(300))
    json_path, png_path = report.write(tmp_path / "scores-2026-11")
    assert json_path.name == "scores-2026-11.drift.json" and png_path.name == "scores-2026-11.drift.png"
    assert json.loads(json_path.read_text())["psi"] == report.psi
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
