"""Input drift: reference statistics stored with a model at training time, compared with every scored batch.

    training customers' events + test scores ──`fit_reference`──▶ Reference (reference.json beside the weights)
    each scored chunk ──`DriftMonitor.observe`──▶ bin counts ──`report(scores)`──▶ DriftReport (PSI per feature)

Features, each a histogram with bins fixed on the reference:
- `mcc`, `tr_type`: share of events per code, the `top_k` most frequent reference codes + one "other" bin;
- `amount`: share of events per reference decile of the amount;
- `events_per_customer`, `active_days`: share of customers per reference decile (events, distinct days);
- `score`: share of customers per reference decile of the test probabilities (the model's own output).
Plus the share of events whose codes are unknown (seen fewer than `min_count` times on the reference customers).

Population stability index, PSI = Σ (batch − ref) · ln(batch / ref) over the bins (shares floored at 1e-4): below
0.1 stable, 0.1–0.2 a moderate shift, above 0.2 (the default `psi_threshold`) a shift worth a look. Only counts are
stored or reported: no customer rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline import schema as S

PSI_THRESHOLD = 0.2
_FLOOR = 1e-4
OTHER = "other"
CATEGORICAL = {"mcc": S.MCC_CODE, "tr_type": S.TR_TYPE}
EVENT_NUMERIC = {"amount": S.AMOUNT}
CUSTOMER_NUMERIC = ("events_per_customer", "active_days")
SCORE = "score"


@dataclass(frozen=True)
class Bins:
    """Fixed bins of one feature: categorical codes (plus an "other" bin) or numeric inner edges (len + 1 bins)."""

    codes: tuple[int | str, ...] = ()  # text for a declared source's categoricals
    edges: tuple[float, ...] = ()
    ref_shares: tuple[float, ...] = ()

    @property
    def labels(self) -> list[str]:
        if self.codes:
            return [str(c) for c in self.codes] + [OTHER]
        bounds = ["-inf", *(f"{e:.4g}" for e in self.edges), "inf"]
        return [f"[{lo}, {hi})" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def count(self, values: np.ndarray) -> np.ndarray:
        """Counts per bin of `values` (codes or numbers)."""
        if self.codes:
            lookup = {c: i for i, c in enumerate(self.codes)}
            uniq, n = np.unique(values, return_counts=True)
            out = np.zeros(len(self.codes) + 1, dtype=np.int64)
            for u, k in zip(uniq.tolist(), n.tolist(), strict=True):
                out[lookup.get(u, len(self.codes))] += k
            return out
        idx = np.searchsorted(np.asarray(self.edges), values, side="right")
        return np.bincount(idx, minlength=len(self.edges) + 1).astype(np.int64)


def _code(c: Any) -> int | str:
    return c if isinstance(c, str) else int(c)


def _codes(frame: pl.DataFrame, column: str) -> pl.Series:
    """A categorical column's codes; a declared source's missing text code counts as the code ""."""
    values = frame.get_column(column)
    return values.fill_null("") if values.dtype == pl.String else values


def psi(ref_shares: np.ndarray, batch_shares: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins (shares floored at 1e-4)."""
    r = np.maximum(np.asarray(ref_shares, dtype=np.float64), _FLOOR)
    b = np.maximum(np.asarray(batch_shares, dtype=np.float64), _FLOOR)
    return float(np.sum((b - r) * np.log(b / r)))


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros(len(counts))


def _quantile_bins(values: np.ndarray, n: int = 10) -> Bins:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n + 1)[1:-1])) if len(values) else np.empty(0)
    bins = Bins(edges=tuple(map(float, edges)))
    return Bins(edges=bins.edges, ref_shares=tuple(map(float, _shares(bins.count(values)))))


def _per_customer(events: pl.DataFrame) -> pl.DataFrame:
    return events.group_by(S.CUSTOMER_ID).agg(
        pl.len().alias("events_per_customer"), pl.col(S.DAY).n_unique().alias("active_days"))


@dataclass(frozen=True)
class Reference:
    """What the model was trained on, as bin definitions + reference shares (reference.json)."""

    features: dict[str, Bins]
    known_codes: dict[str, tuple[int | str, ...]]  # codes seen >= min_count times on the reference events
    unknown_share: dict[str, float]  # share of reference events with a code outside known_codes
    customers: int
    events: int
    min_count: int = 5
    score_mean: float = float("nan")  # mean (calibrated) test probability

    def to_dict(self) -> dict[str, Any]:
        return {"features": {k: asdict(v) for k, v in self.features.items()},
                "known_codes": {k: list(v) for k, v in self.known_codes.items()},
                "unknown_share": self.unknown_share, "customers": self.customers, "events": self.events,
                "min_count": self.min_count, "score_mean": self.score_mean}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        feats = {k: Bins(tuple(v["codes"]), tuple(v["edges"]), tuple(v["ref_shares"])) for k, v in d["features"].items()}
        return cls(feats, {k: tuple(v) for k, v in d["known_codes"].items()}, dict(d["unknown_share"]),
                   int(d["customers"]), int(d["events"]), int(d.get("min_count", 5)),
                   float(d.get("score_mean", "nan")))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_reference(events: pl.LazyFrame | pl.DataFrame, test_scores: np.ndarray, top_k: int = 20,
                  min_count: int = 5) -> Reference:
    """Reference statistics of `events` (validated events of the training customers) and of the model's
    (calibrated) test probabilities."""
    cols = [S.CUSTOMER_ID, S.DAY, S.MCC_CODE, S.TR_TYPE, S.AMOUNT]
    frame = (events.lazy() if isinstance(events, pl.DataFrame) else events).select(cols).collect()
    features: dict[str, Bins] = {}
    known: dict[str, tuple[int | str, ...]] = {}
    unknown: dict[str, float] = {}
    for name, col in CATEGORICAL.items():
        values = _codes(frame, col)
        counts = values.value_counts(sort=True)  # most frequent first
        codes, n = counts.get_column(col).to_numpy(), counts.get_column("count").to_numpy()
        k = top_k if name == "mcc" else max(top_k // 2, 1)
        bins = Bins(codes=tuple(_code(c) for c in codes[:k]))
        features[name] = Bins(bins.codes, (), tuple(map(float, _shares(bins.count(values.to_numpy())))))
        known[name] = tuple(sorted(_code(c) for c, m in zip(codes, n, strict=True) if m >= min_count))
        unknown[name] = float(n[n < min_count].sum() / max(len(frame), 1))
    features["amount"] = _quantile_bins(frame.get_column(S.AMOUNT).to_numpy())
    per_customer = _per_customer(frame)
    for name in CUSTOMER_NUMERIC:
        features[name] = _quantile_bins(per_customer.get_column(name).to_numpy().astype(np.float64))
    scores = np.asarray(test_scores, dtype=np.float64)
    features[SCORE] = _quantile_bins(scores)
    return Reference(features, known, unknown, per_customer.height, frame.height, min_count,
                     float(scores.mean()) if len(scores) else float("nan"))


@dataclass
class DriftReport:
    """PSI per feature, unknown-code shares and the score shift of one scored batch against the reference."""

    psi: dict[str, float]
    psi_threshold: float
    unknown_share: dict[str, dict[str, float]]  # feature -> {"reference": x, "batch": y}
    score_mean: dict[str, float]  # {"reference": x, "batch": y}
    customers: int
    events: int
    bins: dict[str, dict[str, list]] = field(default_factory=dict)  # feature -> labels, shares (reference, batch), counts

    @property
    def drifted(self) -> list[str]:
        """Features whose PSI exceeds the threshold, worst first."""
        return sorted((f for f, v in self.psi.items() if v > self.psi_threshold), key=lambda f: -self.psi[f])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftReport:
        return cls(**{k: v for k, v in d.items() if k != "drifted"})

    def write(self, stem: Path) -> tuple[Path, Path]:
        """`<stem>.drift.json` and `<stem>.drift.png`."""
        json_path, png_path = stem.with_name(stem.name + ".drift.json"), stem.with_name(stem.name + ".drift.png")
        json_path.write_text(json.dumps(self.to_dict(), indent=1))
        plot(self, png_path)
        return json_path, png_path


def markdown(report: dict[str, Any]) -> str:
    """From `DriftReport.to_dict()`: PSI per feature, unknown-code shares and the score shift as Markdown."""
    threshold = report["psi_threshold"]
    lines = ["| feature | PSI | status |", "|---|---:|---|"]
    for f, v in sorted(report["psi"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {f} | {v:.3f} | {'drift' if v > threshold else 'stable'} |")
    lines += ["", "| unknown codes | reference share | batch share |", "|---|---:|---:|"]
    for f, u in report["unknown_share"].items():
        lines.append(f"| {f} | {u['reference']:.4f} | {u['batch']:.4f} |")
    mean = report["score_mean"]
    lines += ["", f"Mean probability: reference (test) {mean['reference']:.4f}, batch {mean['batch']:.4f}; "
              f"{report['customers']:,} customers, {report['events']:,} events; PSI threshold {threshold:g}."]
    return "\n".join(lines)


def warning_line(report: dict[str, Any] | None) -> str | None:
    """From `DriftReport.to_dict()`: one line naming the drifted features (worst first), or None when no feature's
    PSI exceeds the threshold (or there is no report)."""
    if not report or not report["drifted"]:
        return None
    parts = ", ".join(f"{f} (PSI {report['psi'][f]:.2f})" for f in report["drifted"])
    return f"warning: input drift in {parts}: above PSI {report['psi_threshold']:g}"


class DriftMonitor:
    """Accumulates bin counts over the chunks of one scored batch (chunks hold whole customers)."""

    def __init__(self, reference: Reference, psi_threshold: float = PSI_THRESHOLD) -> None:
        self.reference, self.psi_threshold = reference, psi_threshold
        self.counts = {name: np.zeros(len(b.labels), dtype=np.int64) for name, b in reference.features.items()}
        self.unknown = dict.fromkeys(CATEGORICAL, 0)
        self.events = 0

    def observe(self, events: pl.DataFrame) -> None:
        """Add one chunk of validated events (EVENTS_SCHEMA columns)."""
        feats = self.reference.features
        for name, col in CATEGORICAL.items():
            values = _codes(events, col).to_numpy()
            self.counts[name] += feats[name].count(values)
            known = np.asarray(self.reference.known_codes[name], dtype=values.dtype)
            self.unknown[name] += int((~np.isin(values, known)).sum())
        self.counts["amount"] += feats["amount"].count(events.get_column(S.AMOUNT).to_numpy())
        per_customer = _per_customer(events.select(S.CUSTOMER_ID, S.DAY))
        for name in CUSTOMER_NUMERIC:
            self.counts[name] += feats[name].count(per_customer.get_column(name).to_numpy().astype(np.float64))
        self.events += events.height

    def report(self, probabilities: np.ndarray) -> DriftReport:
        """The report, given the batch's (calibrated) probabilities."""
        prob = np.asarray(probabilities, dtype=np.float64)
        self.counts[SCORE] = self.reference.features[SCORE].count(prob)
        psis, bins = {}, {}
        for name, b in self.reference.features.items():
            batch = _shares(self.counts[name])
            psis[name] = round(psi(np.asarray(b.ref_shares), batch), 6) if self.counts[name].sum() else float("nan")
            bins[name] = {"labels": b.labels, "reference": list(b.ref_shares), "batch": batch.round(6).tolist(),
                          "batch_count": self.counts[name].tolist()}
        unknown = {n: {"reference": self.reference.unknown_share[n],
                       "batch": self.unknown[n] / self.events if self.events else float("nan")} for n in CATEGORICAL}
        return DriftReport(psis, self.psi_threshold, unknown,
                           {"reference": self.reference.score_mean,
                            "batch": float(prob.mean()) if len(prob) else float("nan")},
                           len(prob), self.events, bins)


def plot(report: DriftReport, path: Path) -> Path:
    """PSI per feature (threshold line) and reference vs batch shares of the score bins."""
    from pipeline.metrics import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(report.psi)
    values = [0.0 if not math.isfinite(report.psi[n]) else report.psi[n] for n in names]
    colors = ["tab:red" if v > report.psi_threshold else "tab:blue" for v in values]
    axes[0].barh(names, values, color=colors)
    axes[0].axvline(report.psi_threshold, color="k", ls="--", lw=1, label=f"threshold {report.psi_threshold:g}")
    axes[0].set(xlabel="population stability index", title="input drift per feature")
    axes[0].legend(loc="lower right")
    score = report.bins[SCORE]
    x = np.arange(len(score["labels"]))
    axes[1].bar(x - 0.2, score["reference"], width=0.4, label="reference (test)")
    axes[1].bar(x + 0.2, score["batch"], width=0.4, label="this batch")
    axes[1].set_xticks(x, score["labels"], rotation=60, fontsize=7)
    axes[1].set(ylabel="share of customers", title="probability, by reference decile")
    axes[1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
