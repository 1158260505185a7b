"""GBDT aggregate features against a hand-computed example."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline import schema as S
from pipeline.sequences.features import FeatureConfig, FeatureSpec, build_features, feature_names, fit_feature_spec


@pytest.fixture
def events() -> pl.LazyFrame:
    # customer 1: three events on days 0, 0, 9; customer 2: one event on day 3; customer 3 is not a training customer
    return pl.LazyFrame(
        {
            S.CUSTOMER_ID: [1, 1, 1, 2, 3, 3, 3],
            S.DAY: [0, 0, 9, 3, 1, 1, 1],
            S.SECOND_OF_DAY: [0, 13 * 3600 + 5, 23 * 3600, 60, 0, 0, 0],
            S.MCC_CODE: [5411, 5411, 6011, 6011, 4829, 4829, 4829],
            S.TR_TYPE: [1010, 1010, 2010, 7070, 1010, 1010, 1010],
            S.AMOUNT: [-10.0, -20.0, 100.0, 5.0, 1.0, 1.0, 1.0],
        },
        schema_overrides={S.DAY: pl.Int32, S.SECOND_OF_DAY: pl.Int32, S.MCC_CODE: pl.Int32, S.TR_TYPE: pl.Int32},
    )


def test_spec_is_fitted_on_training_customers_only(events: pl.LazyFrame) -> None:
    spec = fit_feature_spec(events, [1, 2], FeatureConfig(top_mcc=1, top_tr_type=2))
    # 4829 is the most frequent code overall but belongs to customer 3 only; 5411 and 6011 tie at 2: smaller first
    assert spec.mcc_codes == (5411,)
    assert spec.tr_types == (1010, 2010)


def test_features_match_hand_computed_example(events: pl.LazyFrame) -> None:
    spec = FeatureSpec(mcc_codes=(5411,), tr_types=(1010,), quantiles=(0.5,))
    rows = {r[S.CUSTOMER_ID]: r for r in build_features(events, spec).collect().to_dicts()}
    c1 = rows[1]
    expected = {
        "n_events": 3.0,
        "amount_sum": 70.0,
        "amount_mean": 70.0 / 3,
        "amount_min": -20.0,
        "amount_max": 100.0,
        "amount_q50": -10.0,
        "share_negative": 2 / 3,
        "mcc_5411_count": 2.0,
        "mcc_5411_share": 2 / 3,
        "mcc_5411_amount_sum": -30.0,
        "mcc_5411_amount_mean": -15.0,
        "mcc_other_count": 1.0,
        "mcc_other_amount_sum": 100.0,
        "tr_type_other_amount_mean": 100.0,
        "hour_0_share": 1 / 3,
        "hour_13_share": 1 / 3,
        "hour_23_share": 1 / 3,
        "hour_12_share": 0.0,
        "weekday_0_share": 2 / 3,  # days 0, 0 -> weekday 0; day 9 -> weekday 2
        "weekday_2_share": 1 / 3,
        "first_day": 0.0,
        "last_day": 9.0,
        "span_days": 10.0,
        "active_days": 2.0,
        "events_per_day": 0.3,
        "events_per_active_day": 1.5,
    }
    for key, value in expected.items():
        assert c1[key] == pytest.approx(value), key
    assert c1["amount_std"] == pytest.approx(66.583281, rel=1e-6)  # sample std of (-10, -20, 100)
    c2 = rows[2]
    assert c2["mcc_5411_count"] == 0.0 and c2["mcc_5411_amount_sum"] == 0.0
    assert c2["mcc_5411_amount_mean"] == 0.0  # no such events: 0, and the count says so
    assert c2["span_days"] == 1.0 and c2["events_per_day"] == 1.0


def test_columns_are_stable_and_sorted_by_customer(events: pl.LazyFrame) -> None:
    spec = FeatureSpec(mcc_codes=(5411, 6011), tr_types=(1010,), quantiles=(0.25, 0.75))
    df = build_features(events, spec).collect()
    assert df[S.CUSTOMER_ID].to_list() == [1, 2, 3]
    assert df.columns[1:] == feature_names(spec)
    assert all(dt == pl.Float64 for dt in df.drop(S.CUSTOMER_ID).dtypes)


def test_spec_round_trips_through_json(tmp_path, events: pl.LazyFrame) -> None:
    spec = fit_feature_spec(events, None, FeatureConfig(top_mcc=2, top_tr_type=1))
    assert FeatureSpec.load(spec.save(tmp_path / "spec.json")) == spec
