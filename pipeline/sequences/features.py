"""Per-customer aggregate features for the gradient-boosting baseline, built with polars from validated events.

A `FeatureSpec` is fitted on the training customers only (which MCC codes and transaction types get their own
columns: the `top_*` most frequent; the rest are pooled into `other`), saved as JSON, and applied unchanged to
validation, test and scoring data, so the columns are the same everywhere.

Columns (one row per customer, sorted by customer_id):
  n_events; amount_{sum,mean,std,min,max,q05..q95}; share_negative;
  mcc_<code|other>_{count,share,amount_sum,amount_mean}; tr_type_<code|other>_{...same};
  hour_<0..23>_share; weekday_<0..6>_share (the events' weekday: calendar, or day % 7 without dates);
  first_day, last_day, span_days (= last - first + 1), active_days, events_per_day (n / span), events_per_active_day.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl

from pipeline import schema as S
from pipeline.sources.mapping import weekday_of


@dataclass(frozen=True)
class FeatureConfig:
    top_mcc: int = 40
    top_tr_type: int = 20
    quantiles: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class FeatureSpec:
    """The fitted choice of columns: applied unchanged to every customer set."""

    mcc_codes: tuple[int | str, ...]  # text for a declared source's categoricals
    tr_types: tuple[int | str, ...]
    quantiles: tuple[float, ...]

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> "FeatureSpec":
        d = json.loads(Path(path).read_text())
        return cls(tuple(d["mcc_codes"]), tuple(d["tr_types"]), tuple(d["quantiles"]))


def _top_codes(events: pl.LazyFrame, column: str, k: int) -> tuple[int | str, ...]:
    counts = (events.filter(pl.col(column).is_not_null()).group_by(column).agg(pl.len().alias("n"))
              .sort(["n", column], descending=[True, False]))
    return tuple(c if isinstance(c, str) else int(c) for c in counts.head(k).collect()[column].to_list())


def fit_feature_spec(events: pl.LazyFrame, customer_ids: Sequence[int] | None, config: FeatureConfig) -> FeatureSpec:
    """Choose the per-code columns from the events of `customer_ids` (the training customers; None = all)."""
    if customer_ids is not None:
        events = events.filter(pl.col(S.CUSTOMER_ID).is_in(pl.Series(list(customer_ids), dtype=pl.Int64)))
    return FeatureSpec(
        mcc_codes=_top_codes(events, S.MCC_CODE, config.top_mcc),
        tr_types=_top_codes(events, S.TR_TYPE, config.top_tr_type),
        quantiles=tuple(config.quantiles),
    )


def _per_code(column: str, prefix: str, codes: Sequence[int | str]) -> list[pl.Expr]:
    """count, share, amount sum and mean for each kept code and for the pooled rest (`<prefix>_other_*`).

    The mean is 0 when the customer has no such event (count 0 says so); an all-missing column would also trip
    scikit-learn's binning when a code never occurs in the training customers' data.
    """
    amount, n = pl.col(S.AMOUNT), pl.len()
    buckets = [(str(c), pl.col(column) == c) for c in codes]
    buckets.append(("other", ~pl.col(column).is_in(list(codes)).fill_null(False) if codes else pl.lit(True)))
    exprs: list[pl.Expr] = []
    for name, hit in buckets:
        count = hit.sum().cast(pl.Float64)
        exprs += [
            count.alias(f"{prefix}_{name}_count"),
            (count / n).alias(f"{prefix}_{name}_share"),
            amount.filter(hit).sum().alias(f"{prefix}_{name}_amount_sum"),
            amount.filter(hit).mean().fill_null(0.0).alias(f"{prefix}_{name}_amount_mean"),
        ]
    return exprs


def build_features(events: pl.LazyFrame, spec: FeatureSpec) -> pl.LazyFrame:
    """Validated events (`schema.EVENTS_SCHEMA`) -> one row of float features per customer, sorted by customer_id."""
    amount, day, n = pl.col(S.AMOUNT), pl.col(S.DAY), pl.len().cast(pl.Float64)
    hour = pl.col(S.SECOND_OF_DAY) // 3600
    weekday = weekday_of(events.collect_schema().names())
    span = (day.max() - day.min() + 1).cast(pl.Float64)
    aggs = [
        n.alias("n_events"),
        amount.sum().alias("amount_sum"),
        amount.mean().alias("amount_mean"),
        amount.std().alias("amount_std"),
        amount.min().alias("amount_min"),
        amount.max().alias("amount_max"),
        *[amount.quantile(q, interpolation="linear").alias(f"amount_q{round(q * 100):02d}") for q in spec.quantiles],
        (amount < 0).mean().alias("share_negative"),
        *_per_code(S.MCC_CODE, "mcc", spec.mcc_codes),
        *_per_code(S.TR_TYPE, "tr_type", spec.tr_types),
        *[((hour == h).sum() / n).alias(f"hour_{h}_share") for h in range(24)],
        *[((weekday == d).sum() / n).alias(f"weekday_{d}_share") for d in range(7)],
        day.min().cast(pl.Float64).alias("first_day"),
        day.max().cast(pl.Float64).alias("last_day"),
        span.alias("span_days"),
        day.n_unique().cast(pl.Float64).alias("active_days"),
        (n / span).alias("events_per_day"),
        (n / day.n_unique()).alias("events_per_active_day"),
    ]
    out = events.group_by(S.CUSTOMER_ID).agg(aggs).sort(S.CUSTOMER_ID)
    return out.with_columns(pl.all().exclude(S.CUSTOMER_ID).cast(pl.Float64))


def feature_names(spec: FeatureSpec) -> list[str]:
    """The feature columns `build_features` produces, in order (customer_id excluded)."""
    empty = pl.LazyFrame(schema=S.events_schema(text_codes=any(isinstance(c, str) for c in spec.mcc_codes + spec.tr_types)))
    return [c for c in build_features(empty, spec).collect_schema().names() if c != S.CUSTOMER_ID]
