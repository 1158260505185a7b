"""Calibrated synthetic transactions in the raw Sberbank schema, with a planted gender signal of documented strength.

The full 6.85M-row transaction file is not available offline, so `generate` writes a stand-in that matches what we
know about it:
- marginals measured on the real 57,968-row sample (MCC and tr_type frequencies, MCC given tr_type, amount sign and
  log-normal magnitude per tr_type, hour of day, weekday, "00:00:00" date-only records, term_id format and empty
  share) — derived by `derive_calibration` and committed as `pipeline/resources/calibration.json`;
- the published statistics of the full file (SOURCE.md): per-customer counts (34% ≤214, 28% 215–428, 18% 429–642,
  9% 643–856, 5% 857–1071, 1% >1929, mean ≈457, max tens of thousands), days 0–456, ~81% negative amounts;
- the label balance of the real `gender_train.csv` (`REAL_LABELLED`); ids are synthetic 8-digit numbers.

Nothing is read from outside the package: the same config gives the same files on any machine (a digest is pinned
in tests/pipeline/sources/test_generate.py), whether or not `../shared` sits beside the project.

Planted signal (see `GeneratorConfig` and docs/readme/ingest-and-generator.md). Each customer has a latent
direction d = (+1 male / -1 female) · s, where s ~ N(1, heterogeneity) varies by customer (some customers even lean
the "wrong" way). d tilts, in log space: the purchase-MCC preferences (`MCC_EFFECTS`), the tr_type mix
(`TR_TYPE_EFFECTS`), the hour-of-day profile (men later in the evening) and purchase amount levels. Customer-level
noise (own MCC tastes, own hour profile, own amount level, own activity span) sits on top. `signal_strength` scales
all tilts; at 1.0 a gradient-boosting model on simple per-customer aggregates reaches ≈0.87 ROC AUC (the real
dataset's LightGBM reference is 0.877), checked by tests/pipeline/sources/test_generate.py.

Everything is vectorised numpy per chunk of customers (no per-event Python loops) and written chunk by chunk, so
`scale=10` (150,000 customers, ~68M rows) runs in bounded memory. Deterministic for a given config.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from pipeline import schema, settings
from pipeline.sources.dictionaries import MCC_FILE, TR_TYPES_FILE, read_mcc_codes, resource_path
from pipeline.io import atomic_path

CALIBRATION_FILE = "calibration.json"
N_DAYS = 457  # days 0..456
REAL_LABELLED = (4687, 3713)  # zeros, ones in the real gender_train.csv

# Published per-customer count buckets of the full file: (low, high, share); the 1072–1929 bucket is the remainder.
COUNT_BUCKETS: tuple[tuple[int, int, float], ...] = (
    (1, 214, 0.34),
    (215, 428, 0.28),
    (429, 642, 0.18),
    (643, 856, 0.09),
    (857, 1071, 0.05),
    (1072, 1929, 0.05),
)
TAIL_LOW, TAIL_SHARE = 1930, 0.01  # truncated Pareto above 1929, its exponent solved so that the mean is ≈457

# Log-odds tilt per unit of the customer's direction d (+ male, - female). Plausible, not measured (no labelled
# transactions are available offline): cars/fuel/hardware/bars/betting/electronics vs cosmetics/clothing/children/
# beauty/pharmacy/flowers.
MCC_EFFECTS: dict[int, float] = {
    5541: 0.8, 5542: 0.8, 5533: 1.0, 7538: 0.9, 5532: 0.9, 5251: 0.7, 5211: 0.6, 5200: 0.5, 5261: 0.3,
    5813: 0.7, 5921: 0.5, 5993: 0.6, 4121: 0.3, 7995: 1.0, 5732: 0.5, 5734: 0.5, 5045: 0.5, 5941: 0.4,
    5814: 0.2, 4814: 0.1, 6011: 0.15, 5172: 0.6,
    5977: -1.1, 5912: -0.4, 5651: -0.6, 5621: -1.0, 5631: -0.9, 5641: -0.9, 5661: -0.5, 7230: -1.0, 5945: -0.6,
    5992: -0.5, 5311: -0.4, 5691: -0.4, 5999: -0.3, 5331: -0.3, 5411: -0.15, 5499: -0.1, 5949: -0.8, 5714: -0.6,
    8099: -0.4, 8021: -0.3, 5122: -0.3, 7298: -0.9, 5944: -0.4, 5948: -0.5,
}
TR_TYPE_EFFECTS: dict[int, float] = {2010: 0.35, 7010: 0.2, 2370: 0.2, 1030: -0.25, 1110: -0.1}


@dataclass(frozen=True)
class GeneratorConfig:
    n_customers: int = 15_000
    n_labelled: int = 8_400
    seed: int = 0
    scale: float = 1.0  # multiplies n_customers and n_labelled
    format: str = "csv.gz"  # "csv" | "csv.gz" | "parquet"
    negative_share: float = 0.81  # published share of negative amounts (the real sample alone has ~91%)
    mean_count: float = 457.0  # mean transactions per customer
    max_count: int = 90_000  # cap of the per-customer count tail (real max 88,781)
    signal_strength: float = 1.0  # scales every planted gender tilt; 0 = no signal
    order_signal: float = 0.0  # strength of the order-only (recency) signal; 0 = off (see `_plant_order_signal`)
    heterogeneity: float = 1.1  # sd of the customer-level signal multiplier s ~ N(1, heterogeneity)
    mcc_taste_sd: float = 1.0  # customer-level noise on purchase-MCC log-weights
    chunk_customers: int = 2_000  # customers generated and written at a time (memory bound)
    gzip_level: int = 1

    @property
    def customers(self) -> int:
        return max(1, round(self.n_customers * self.scale))

    @property
    def labelled(self) -> int:
        return min(self.customers, round(self.n_labelled * self.scale))


@dataclass(frozen=True)
class GeneratedPaths:
    transactions: Path
    labels: Path
    mcc_codes: Path
    tr_types: Path
    n_rows: int
    n_customers: int


# --------------------------------------------------------------------------------------------------------------
# calibration (derived once from the real sample; committed as package data)
# --------------------------------------------------------------------------------------------------------------


def derive_calibration(sample_path: Path) -> dict:
    """Marginals of the real transactions sample, as plain JSON-able tables."""
    raw = pl.read_csv(sample_path, infer_schema=False)
    parts = raw[schema.TR_DATETIME].str.extract_groups(r"^(\d+) (\d\d):(\d\d):(\d\d)$").struct.unnest()
    df = raw.select(
        pl.col(schema.TR_TYPE).cast(pl.Int32),
        pl.col(schema.MCC_CODE).cast(pl.Int32),
        pl.col(schema.AMOUNT).cast(pl.Float64),
        pl.col(schema.TERM_ID),
        parts["1"].cast(pl.Int32).alias("day"),
        parts["2"].cast(pl.Int32).alias("hour"),
        (parts["2"] + parts["3"] + parts["4"] == "000000").alias("midnight"),
    )
    pooled_sd = float(df[schema.AMOUNT].abs().log().std())
    types = []
    for key, g in df.group_by(schema.TR_TYPE, maintain_order=True):
        logs = g[schema.AMOUNT].abs().log()
        mcc = g[schema.MCC_CODE].value_counts().sort("count", descending=True)
        types.append(
            {
                "tr_type": int(key[0]),
                "count": g.height,
                "negative_share": float((g[schema.AMOUNT] < 0).mean()),
                "log_mean": float(logs.mean()),
                "log_sd": float(logs.std()) if g.height >= 20 else pooled_sd,
                "midnight_share": float(g["midnight"].mean()),
                "term_empty_share": float(g[schema.TERM_ID].is_null().mean()),
                "mcc": {str(m): int(c) for m, c in mcc.iter_rows()},
            }
        )
    types.sort(key=lambda t: (-t["count"], t["tr_type"]))
    timed = df.filter(~pl.col("midnight"))
    lengths = df[schema.TERM_ID].drop_nulls().str.len_chars().value_counts().sort(schema.TERM_ID)
    return {
        "source": "transactions_sample_unlabelled.csv.gz (57,968 real rows, 121 customers); see SOURCE.md",
        "rows": raw.height,
        "tr_types": types,
        "hour_counts": np.bincount(timed["hour"].to_numpy(), minlength=24).tolist(),
        "weekday_counts": np.bincount(df["day"].to_numpy() % 7, minlength=7).tolist(),
        "term_id_length_counts": {str(k): int(v) for k, v in lengths.iter_rows()},
        "second_60_share": float(raw[schema.TR_DATETIME].str.ends_with(":60").mean()),
    }


def load_calibration() -> dict:
    return json.loads(resource_path(CALIBRATION_FILE).read_text())


# --------------------------------------------------------------------------------------------------------------
# customer-level draws
# --------------------------------------------------------------------------------------------------------------


def _tail_alpha(mean_count: float, cap: int) -> float:
    """Exponent of the Pareto tail (truncated to [TAIL_LOW, cap]) that makes the overall mean `mean_count`."""
    body = sum(share * (lo + hi) / 2 for lo, hi, share in COUNT_BUCKETS)
    target = (mean_count - body) / TAIL_SHARE
    lo_a, hi_a = 0.05, 20.0

    def tail_mean(a: float) -> float:
        r = TAIL_LOW / cap
        if abs(a - 1) < 1e-9:
            return TAIL_LOW * math.log(cap / TAIL_LOW) / (1 - r)
        return a / (a - 1) * TAIL_LOW * (1 - r ** (a - 1)) / (1 - r**a)

    for _ in range(100):  # tail_mean decreases in a
        mid = (lo_a + hi_a) / 2
        lo_a, hi_a = (mid, hi_a) if tail_mean(mid) > target else (lo_a, mid)
    return (lo_a + hi_a) / 2


def draw_counts(n: int, rng: np.random.Generator, mean_count: float = 457.0, max_count: int = 90_000) -> np.ndarray:
    """Per-customer transaction counts: stratified draws from the published bucket mixture (shares hold exactly)."""
    u = (rng.permutation(n) + rng.random(n)) / n
    shares = np.array([s for _, _, s in COUNT_BUCKETS] + [TAIL_SHARE])
    shares /= shares.sum()
    edges = np.concatenate([[0.0], np.cumsum(shares)])
    b = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, len(shares) - 1)
    v = np.clip((u - edges[b]) / shares[b], 0.0, 1.0 - 1e-12)
    lows = np.array([lo for lo, _, _ in COUNT_BUCKETS] + [TAIL_LOW])
    highs = np.array([hi for _, hi, _ in COUNT_BUCKETS] + [max_count])
    counts = lows[b] + np.floor(v * (highs[b] - lows[b] + 1)).astype(np.int64)
    tail = b == len(COUNT_BUCKETS)
    a = _tail_alpha(mean_count, max_count)
    r = (TAIL_LOW / max_count) ** a
    counts[tail] = np.floor(TAIL_LOW * (1 - v[tail] * (1 - r)) ** (-1 / a)).astype(np.int64)
    return np.clip(counts, 1, max_count)


def _customers(config: GeneratorConfig, rng: np.random.Generator) -> pl.DataFrame:
    """customer_id, gender (latent for unlabelled customers), labelled flag; rows in file order."""
    n, n_lab = config.customers, config.labelled
    p_one = REAL_LABELLED[1] / sum(REAL_LABELLED)
    ids = rng.choice(100_000_000, size=n, replace=False)  # 8-digit-range ids like the real ones
    genders = (rng.random(n) < p_one).astype(np.int8)
    labelled = np.arange(n) < n_lab
    order = rng.permutation(n)
    return pl.DataFrame(
        {schema.CUSTOMER_ID: ids[order], schema.GENDER: genders[order], "labelled": labelled[order]}
    )


# --------------------------------------------------------------------------------------------------------------
# event-level draws (vectorised)
# --------------------------------------------------------------------------------------------------------------


def _sample_rows(weights: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each event i, one category drawn from the distribution `weights[rows[i]]` (rows need not be normalised).

    Inverse-CDF over all rows at once: row r's CDF is shifted by r, so one `searchsorted` serves every event.
    """
    cdf = np.cumsum(weights, axis=1)
    cdf /= cdf[:, -1:]
    k = weights.shape[1]
    flat = (cdf + np.arange(weights.shape[0])[:, None]).ravel()
    idx = np.searchsorted(flat, rows + rng.random(len(rows)), side="right") - rows * k
    return np.clip(idx, 0, k - 1)


@dataclass(frozen=True)
class _Tables:
    tr_types: np.ndarray  # (T,)
    type_weight: np.ndarray  # (T,) base frequency, positive types re-weighted to `negative_share`
    negative_share: np.ndarray  # (T,)
    log_mean: np.ndarray
    log_sd: np.ndarray
    midnight: np.ndarray
    term_empty: np.ndarray
    purchase: np.ndarray  # (T,) bool: MCC follows the customer's tastes
    type_effect: np.ndarray  # (T,)
    mccs: np.ndarray  # (M,)
    mcc_given_type: np.ndarray  # (T, M)
    purchase_mcc: np.ndarray  # (M,) pooled over purchase types (+ pseudo-count for dictionary-only codes)
    mcc_effect: np.ndarray  # (M,)
    hour: np.ndarray  # (24,)
    hour_effect: np.ndarray  # (24,) later hours lean male
    day_cdf: np.ndarray  # (N_DAYS + 1,) cumulative weekday-modulated day weights
    term_lengths: np.ndarray
    term_length_p: np.ndarray


def _tables(cal: dict, config: GeneratorConfig) -> _Tables:
    types = cal["tr_types"]
    mccs = np.array(sorted(set(read_mcc_codes()[schema.MCC_CODE].to_list()) | {int(m) for t in types for m in t["mcc"]}))
    col = {m: j for j, m in enumerate(mccs)}
    counts = np.array([t["count"] for t in types], dtype=float)
    neg = np.array([t["negative_share"] for t in types])
    # Re-weight the (almost purely) positive tr_types so that the expected negative share is `negative_share`.
    neg_mass, pos_mass = (counts * neg).sum(), (counts * (1 - neg)).sum()
    want_ratio = (1 - config.negative_share) / config.negative_share
    f = want_ratio * neg_mass / pos_mass
    weight = counts * (neg + (1 - neg) * f)
    mgt = np.zeros((len(types), len(mccs)))
    for i, t in enumerate(types):
        for m, c in t["mcc"].items():
            mgt[i, col[int(m)]] = c
    purchase = np.array([len(t["mcc"]) >= 5 for t in types])
    pooled = mgt[purchase].sum(axis=0)
    pooled[pooled == 0] = 0.5  # MCC codes of the dictionary never seen in the sample: rare but present
    hours = np.arange(24)
    # Men: more late evening / night activity, less mid-day (a smooth tilt peaking at ~22h).
    hour_effect = 0.35 * np.cos((hours - 22) / 24 * 2 * np.pi)
    week = np.array(cal["weekday_counts"], dtype=float)
    day_w = week[np.arange(N_DAYS) % 7]
    lengths = cal["term_id_length_counts"]
    return _Tables(
        tr_types=np.array([t["tr_type"] for t in types], dtype=np.int32),
        type_weight=weight / weight.sum(),
        negative_share=neg,
        log_mean=np.array([t["log_mean"] for t in types]),
        log_sd=np.array([t["log_sd"] for t in types]),
        midnight=np.array([t["midnight_share"] for t in types]),
        term_empty=np.array([t["term_empty_share"] for t in types]),
        purchase=purchase,
        type_effect=np.array([TR_TYPE_EFFECTS.get(t["tr_type"], 0.0) for t in types]),
        mccs=mccs.astype(np.int32),
        mcc_given_type=mgt,
        purchase_mcc=pooled / pooled.sum(),
        mcc_effect=np.array([MCC_EFFECTS.get(int(m), 0.0) for m in mccs]),
        hour=np.array(cal["hour_counts"], dtype=float) / sum(cal["hour_counts"]),
        hour_effect=hour_effect,
        day_cdf=np.concatenate([[0.0], np.cumsum(day_w)]),
        term_lengths=np.array([int(k) for k in lengths], dtype=np.int64),
        term_length_p=np.array(list(lengths.values()), dtype=float) / sum(lengths.values()),
    )


def _splitmix(x: np.ndarray) -> np.ndarray:
    """A cheap, well-mixed 64-bit hash (for stable terminal ids)."""
    x = (x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _chunk(customers: pl.DataFrame, counts: np.ndarray, first_index: int, tab: _Tables, config: GeneratorConfig,
           rng: np.random.Generator) -> pl.DataFrame:
    """Events of one chunk of customers, in the raw schema (strings/numbers as they appear in the file)."""
    n_c = customers.height
    kappa = config.signal_strength
    male = customers[schema.GENDER].to_numpy().astype(float)
    s = rng.normal(1.0, config.heterogeneity, n_c)
    d = (2 * male - 1) * s  # (C,) customer's direction and strength

    # Customer-level tables (C × K): base log-weights + planted tilt + customer noise.
    type_logw = np.log(tab.type_weight)[None, :] + kappa * d[:, None] * tab.type_effect[None, :] + rng.normal(0, 0.5, (n_c, len(tab.tr_types)))
    mcc_logw = (
        np.log(tab.purchase_mcc)[None, :]
        + kappa * d[:, None] * tab.mcc_effect[None, :]
        + rng.normal(0, config.mcc_taste_sd, (n_c, len(tab.mccs)))
    )
    hour_logw = np.log(tab.hour)[None, :] + kappa * d[:, None] * tab.hour_effect[None, :] + rng.normal(0, 0.3, (n_c, 24))
    amount_level = rng.normal(0.0, 0.5, n_c) + kappa * 0.12 * d  # purchase amounts: men a little higher

    # Activity span: most histories cover the whole export (as in the real sample).
    start = np.where(rng.random(n_c) < 0.65, 0, np.minimum(rng.exponential(40, n_c).astype(np.int64), 420))
    end = np.where(rng.random(n_c) < 0.7, N_DAYS - 1, N_DAYS - 1 - rng.exponential(15, n_c).astype(np.int64))
    end = np.maximum(end, start)

    cust = np.repeat(np.arange(n_c), counts)  # (E,)
    n = len(cust)
    t_idx = _sample_rows(np.exp(type_logw), cust, rng)
    purchase = tab.purchase[t_idx]
    mcc_idx = _sample_rows(tab.mcc_given_type, t_idx, rng)  # non-purchase types: fixed table
    if purchase.any():
        mcc_idx[purchase] = _sample_rows(np.exp(mcc_logw), cust[purchase], rng)

    # Day: weekday-modulated, uniform over the customer's span.
    lo, hi = tab.day_cdf[start[cust]], tab.day_cdf[end[cust] + 1]
    day = np.searchsorted(tab.day_cdf, lo + rng.random(n) * (hi - lo), side="right") - 1
    day = np.clip(day, start[cust], end[cust])

    hour = _sample_rows(np.exp(hour_logw), cust, rng)
    minute = rng.integers(0, 60, n)
    second = rng.integers(0, 61, n)  # the real export has seconds 0..60 about uniformly
    midnight = rng.random(n) < tab.midnight[t_idx]
    hour, minute, second = (np.where(midnight, 0, x) for x in (hour, minute, second))

    negative = rng.random(n) < tab.negative_share[t_idx]
    sd_event = np.sqrt(np.maximum(tab.log_sd[t_idx] ** 2 - 0.25, 0.09))
    log_mag = tab.log_mean[t_idx] + amount_level[cust] * purchase + rng.normal(0, 1, n) * sd_event
    amount = np.round(np.exp(log_mag) * np.where(negative, -1.0, 1.0), 2)

    # term_id: empty with the tr_type's share; else a terminal of the customer's own (Zipf over a few) or, 30% of
    # the time, one of 300 widely shared terminals; digits-only strings of the real length mix (6 or 8 mostly).
    empty = rng.random(n) < tab.term_empty[t_idx]
    shared = rng.random(n) < 0.3
    own = np.minimum(rng.zipf(1.6, n), 50)
    key = np.where(shared, np.minimum(rng.zipf(1.3, n), 300), (first_index + cust + 1) * 1000 + own)
    h = _splitmix(key)
    length = tab.term_lengths[np.searchsorted(np.cumsum(tab.term_length_p), (h >> np.uint64(11)).astype(np.float64) / 2.0**53, side="right").clip(0, len(tab.term_lengths) - 1)]
    value = (h % np.uint64(10**8)).astype(np.int64) % (10**length)

    if config.order_signal > 0:  # its own random stream: the default output does not change
        content = _plant_order_signal((mcc_idx, t_idx, amount, value, length, empty), cust, day, hour, minute,
                                      second, 2 * male - 1, tab.mcc_effect[mcc_idx], config.order_signal,
                                      np.random.default_rng([config.seed, 2, first_index]))
        mcc_idx, t_idx, amount, value, length, empty = content

    order = np.lexsort((day, cust))  # customer by customer, days ascending, times unordered within a day
    frame = pl.DataFrame(
        {
            schema.CUSTOMER_ID: customers[schema.CUSTOMER_ID].to_numpy()[cust][order],
            "_day": day[order], "_h": hour[order], "_m": minute[order], "_s": second[order],
            schema.MCC_CODE: tab.mccs[mcc_idx][order],
            schema.TR_TYPE: tab.tr_types[t_idx][order],
            schema.AMOUNT: amount[order],
            "_tv": value[order], "_tl": length[order], "_te": empty[order],
        }
    )
    two = lambda c: pl.col(c).cast(pl.String).str.zfill(2)  # noqa: E731
    return frame.select(
        pl.col(schema.CUSTOMER_ID),
        pl.concat_str([pl.col("_day").cast(pl.String), pl.lit(" "), two("_h"), pl.lit(":"), two("_m"), pl.lit(":"), two("_s")]).alias(schema.TR_DATETIME),
        pl.col(schema.MCC_CODE),
        pl.col(schema.TR_TYPE),
        pl.col(schema.AMOUNT),
        pl.when(~pl.col("_te")).then(pl.col("_tv").cast(pl.String).str.zfill(pl.col("_tl"))).alias(schema.TERM_ID),
    )


def _plant_order_signal(content: tuple[np.ndarray, ...], cust: np.ndarray, day: np.ndarray, hour: np.ndarray,
                        minute: np.ndarray, second: np.ndarray, sign: np.ndarray, effect: np.ndarray, strength: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """A recency signal that no per-customer aggregate can see: each customer's events keep their contents (MCC,
    tr_type, amount, terminal) and their time slots, but the contents are re-dealt over the slots so that the MCCs
    leaning towards the customer's own gender come later in the history (key = strength · sign · effect + N(0, 1),
    sorted ascending and dealt in time order). Per-customer counts, amounts, MCC and tr_type mixes, hour and weekday
    profiles, and spans are exactly those of the unordered draw; only the order (which events are recent) depends
    on the gender. sign: (C,) +1 male / -1 female; effect: (E,) the MCC's gender tilt (MCC_EFFECTS)."""
    key = strength * sign[cust] * effect + rng.normal(0.0, 1.0, len(cust))
    slots = np.lexsort((second, minute, hour, day, cust))  # time order, customer by customer
    dealt = np.lexsort((key, cust))  # contents by key, customer by customer (same group sizes as `slots`)
    out = []
    for column in content:
        moved = np.empty_like(column)
        moved[slots] = column[dealt]
        out.append(moved)
    return tuple(out)


def iter_chunks(config: GeneratorConfig) -> Iterator[pl.DataFrame]:
    """The transactions, chunk by chunk of `config.chunk_customers` customers (raw schema)."""
    rng = np.random.default_rng([config.seed, 0])
    customers = _customers(config, rng)
    counts = draw_counts(customers.height, rng, config.mean_count, config.max_count)
    tab = _tables(load_calibration(), config)
    for k, start in enumerate(range(0, customers.height, config.chunk_customers)):
        stop = min(start + config.chunk_customers, customers.height)
        yield _chunk(customers[start:stop], counts[start:stop], start, tab, config, np.random.default_rng([config.seed, 1, k]))


def customers_and_labels(config: GeneratorConfig) -> pl.DataFrame:
    """customer_id, gender (latent for unlabelled customers), labelled — the draw `iter_chunks` starts from."""
    return _customers(config, np.random.default_rng([config.seed, 0]))


def _write_transactions(path: Path, config: GeneratorConfig) -> int:
    n_rows = 0
    if config.format == "parquet":
        writer = None
        try:
            for df in iter_chunks(config):
                table = df.to_arrow()
                writer = writer or pq.ParquetWriter(path, table.schema, compression="zstd")
                writer.write_table(table)
                n_rows += df.height
        finally:
            if writer is not None:
                writer.close()
        return n_rows
    with open(path, "wb") as raw, (
        # mtime=0 and no file name in the gzip header: the same config gives the same bytes (and sha256)
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=config.gzip_level, mtime=0)
        if config.format == "csv.gz" else contextlib.nullcontext(raw)
    ) as fh:
        for k, df in enumerate(iter_chunks(config)):
            df.write_csv(fh, include_header=k == 0)
            n_rows += df.height
    return n_rows


def generate(out_dir: Path, config: GeneratorConfig = GeneratorConfig()) -> GeneratedPaths:
    """Write transactions (csv / csv.gz / parquet), gender_train.csv and the two dictionaries into `out_dir`
    (each file written under a temporary name and renamed into place)."""
    if config.format not in ("csv", "csv.gz", "parquet"):
        raise ValueError(f"format must be csv, csv.gz or parquet, not {config.format!r}")
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in (f"transactions.{config.format}", "gender_train.csv", MCC_FILE, TR_TYPES_FILE)}
    tx_path, labels_path, mcc_path, types_path = paths.values()
    with atomic_path(tx_path) as tmp:
        n_rows = _write_transactions(tmp, config)
    customers = customers_and_labels(config)
    with atomic_path(labels_path) as tmp:
        customers.filter(pl.col("labelled")).select(schema.CUSTOMER_ID, schema.GENDER).write_csv(tmp)
    for path in (mcc_path, types_path):
        with atomic_path(path) as tmp:
            shutil.copyfile(resource_path(path.name), tmp)
    return GeneratedPaths(tx_path, labels_path, mcc_path, types_path, n_rows, customers.height)


def main() -> None:  # pragma: no cover - maintenance entry: python -m pipeline.sources.generate --calibrate
    import argparse

    p = argparse.ArgumentParser(description="Re-derive pipeline/resources/calibration.json from the real sample.")
    p.add_argument("--calibrate", action="store_true", required=True)
    p.parse_args()
    real = settings.shared_data_dir()
    if real is None:
        raise SystemExit("../shared/data/sberbank-gender/raw not found")
    cal = derive_calibration(real / "transactions_sample_unlabelled.csv.gz")
    resource_path(CALIBRATION_FILE).write_text(json.dumps(cal, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":  # pragma: no cover
    main()
