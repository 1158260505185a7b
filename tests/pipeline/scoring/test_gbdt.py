"""The GBDT baseline: learns an easy signal from aggregates, reports the shared metric keys, round-trips via skops."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import polars as pl
import pytest
import skops.io as sio

from pipeline import schema as S
from pipeline.sequences.features import FeatureConfig
from pipeline.scoring.gbdt import (
    TRUSTED_TYPES,
    GBDTConfig,
    _classifier,
    _fit_in_stages,
    fit_gbdt,
    load_gbdt,
    save_gbdt,
    train_gbdt,
)


def _events(n_customers: int = 120, seed: int = 0) -> tuple[pl.LazyFrame, pl.DataFrame]:
    """Gender 1 customers shop MCC 5977 more often and spend at night: a signal aggregates can see."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {c: [] for c in (S.CUSTOMER_ID, S.DAY, S.SECOND_OF_DAY, S.MCC_CODE, S.TR_TYPE, S.AMOUNT)}
    genders = rng.integers(0, 2, n_customers)
    for cid, g in enumerate(genders):
        n = int(rng.integers(10, 30))
        rows[S.CUSTOMER_ID] += [cid] * n
        rows[S.DAY] += rng.integers(0, 60, n).tolist()
        rows[S.SECOND_OF_DAY] += (rng.integers(0, 12, n) * 3600 + g * 10 * 3600).tolist()
        rows[S.MCC_CODE] += np.where(rng.random(n) < 0.2 + 0.4 * g, 5977, 5411).tolist()
        rows[S.TR_TYPE] += rng.choice([1010, 1030], n).tolist()
        rows[S.AMOUNT] += (-rng.gamma(2.0, 100.0, n)).tolist()
    events = pl.LazyFrame(rows).with_columns(pl.col(S.DAY, S.SECOND_OF_DAY, S.MCC_CODE, S.TR_TYPE).cast(pl.Int32))
    labels = pl.DataFrame({S.CUSTOMER_ID: np.arange(n_customers), S.LABEL: genders})
    return events, labels


CONFIG = GBDTConfig(max_iter=30, learning_rate=0.2, min_samples_leaf=5, features=FeatureConfig(top_mcc=4, top_tr_type=2))


def test_train_gbdt_learns_and_reports_the_shared_metric_keys() -> None:
    events, labels = _events()
    ids = np.arange(120)
    run = train_gbdt(events, labels, (ids[:80], ids[80:100], ids[100:]), CONFIG)
    assert run.metrics["test/auroc"] > 0.8
    for key in ("val/auroc", "test/accuracy", "test/logloss", "time/train_s", "throughput/infer_customers_per_s",
                "params/n_parameters", "mem/rss_peak_gib"):
        assert key in run.metrics
    assert len(run.test_prob) == 20 and set(run.test_label) <= {0.0, 1.0}
    assert 1 <= run.model.n_iter_ <= CONFIG.max_iter
    # the kept round count is the best one on validation
    assert run.model.n_iter_ == int(np.nanargmax(run.val_auroc_per_round)) + 1


def test_refit_to_best_round_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + rng.normal(scale=2.0, size=200) > 0).astype(float)
    a, _ = fit_gbdt(x[:150], y[:150], x[150:], y[150:], CONFIG)
    b, _ = fit_gbdt(x[:150], y[:150], x[150:], y[150:], CONFIG)
    np.testing.assert_array_equal(a.predict_proba(x), b.predict_proba(x))


def test_staged_fit_logs_progress_and_grows_the_same_trees_as_one_fit(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 4))
    y = (x[:, 0] - x[:, 1] + rng.normal(scale=1.5, size=300) > 0).astype(float)
    config = dataclasses.replace(CONFIG, max_iter=25, log_every=10)
    with caplog.at_level(logging.INFO, logger="pipeline.scoring.gbdt"):
        _, val_auc = fit_gbdt(x[:200], y[:200], x[200:], y[200:], config)
    rounds = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gbdt: round")]
    assert [m.split()[2] for m in rounds] == ["10/25", "20/25", "25/25"] and all("val auroc" in m for m in rounds)
    assert len(val_auc) == 25
    staged = _fit_in_stages(_classifier(config, 25), x[:200], y[:200], x[200:], y[200:], every=7)
    one_fit = _classifier(config, 25).fit(x[:200], y[:200])
    assert staged.n_iter_ == 25 and not staged.warm_start
    np.testing.assert_array_equal(staged.predict_proba(x), one_fit.predict_proba(x))


def test_skops_round_trip_uses_only_the_trusted_types(tmp_path) -> None:
    rng = np.random.default_rng(2)
    x = np.where(rng.random((100, 4)) < 0.1, np.nan, rng.normal(size=(100, 4)))
    y = (rng.random(100) < 0.5).astype(float)
    model, _ = fit_gbdt(x[:80], y[:80], x[80:], y[80:], CONFIG)
    path = save_gbdt(model, tmp_path / "model.skops")
    assert sorted(sio.get_untrusted_types(file=path)) == sorted(TRUSTED_TYPES)
    np.testing.assert_array_equal(load_gbdt(path).predict_proba(x), model.predict_proba(x))


def test_load_refuses_untrusted_types(tmp_path) -> None:
    class Stranger:  # a type skops would have to import and construct
        pass

    path = tmp_path / "bad.skops"
    sio.dump({"x": Stranger()}, path)
    with pytest.raises(ValueError, match="trusted"):
        load_gbdt(path)
