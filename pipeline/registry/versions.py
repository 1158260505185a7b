"""Register a trained model and decide the champion at once, by the rule of `pipeline.registry.champion`.

    register(...)        one trained model -> one version (a resumed run finds its version by fingerprint instead)
    decide_pending(...)  every version without a decision, oldest first: the champion rule, then tags on both
                         versions, the alias, and the model card as the version's description

Both run under the registry lock, so versions trained in parallel are decided one at a time, and a version left
undecided by a run that died right after registering it is decided by the next registration (or comparison start).

Every version records its fit customers (training + validation ids): the id list as a run artifact
`customers/fit_customers.json` and its digest as the version tag `txseq.fit_customers_sha256`. A comparison scores
both models through their pyfuncs (the analysts' route) on the labelled customers of the current data that neither
has seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.registry import champion
from pipeline import schema as S
from pipeline.io import first_line
from pipeline.registry.champion import ChampionRule, Comparison, Contender, Decision
from pipeline.registry.model_card import ModelCard, describe
from pipeline.registry.tracking import TAG_DECISION, TAG_PROMOTED, Tracker, VersionInfo

log = logging.getLogger(__name__)

FIT_IDS_ARTIFACT_DIR = "customers"
FIT_IDS_FILE = "fit_customers.json"
TAG_FIT_IDS = "txseq.fit_customers_sha256"
TAG_FINGERPRINT = "txseq.fingerprint"  # what was trained: data, split, fold, model and preset (see compare)
TAG_CHALLENGED = "champion_challenged_by"  # on an incumbent: the last newcomer compared with it, and the outcome
TAG_AGAINST = "champion_compared_with"  # on a newcomer: the incumbent it was compared with
TAG_COMMON = "champion_common_customers"


def ids_digest(ids: Iterable[int]) -> str:
    """sha256 of the sorted, distinct ids as compact JSON."""
    return hashlib.sha256(json.dumps(sorted({int(i) for i in ids}), separators=(",", ":")).encode()).hexdigest()


def write_fit_ids(train_ids: Sequence[int], val_ids: Sequence[int], path: Path) -> tuple[Path, str]:
    """The fit-customers file (train and validation ids) and the digest of their union."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"train": sorted(map(int, train_ids)), "validation": sorted(map(int, val_ids))}))
    return path, ids_digest([*train_ids, *val_ids])


def read_fit_ids(tracker: Tracker, version: VersionInfo) -> frozenset[int] | None:
    """The version's recorded fit customers, or None when not recorded or not matching the digest tag."""
    digest = version.tags.get(TAG_FIT_IDS)
    if not digest or not version.run_id:
        return None
    try:
        with tempfile.TemporaryDirectory(prefix="txseq-fit-ids-") as tmp:
            path = tracker.download_artifact(version.run_id, f"{FIT_IDS_ARTIFACT_DIR}/{FIT_IDS_FILE}", Path(tmp))
            d = json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001 - an unreadable record counts as no record; the decision says so
        log.warning("v%s: fit customers unreadable (%s)", version.version, e)
        return None
    ids = frozenset(int(i) for key in ("train", "validation") for i in d.get(key, []))
    return ids if ids_digest(ids) == digest else None


@dataclass
class PyfuncScorer:
    """Scores registered versions through their pyfuncs on validated events; cached per (version, customers).
    A customer a model returns no score for (its stored validation rejected all of its rows) gets 0.5."""

    events: pl.LazyFrame
    score: Callable[[str, pl.LazyFrame], object]  # (model URI, events) -> frame with customer_id, probability
    _cache: dict = field(default_factory=dict)

    def __call__(self, uri: str, ids: tuple[int, ...]) -> tuple[np.ndarray, int]:
        key = (uri, ids)
        if key not in self._cache:
            wanted = pl.Series(ids, dtype=pl.Int64)
            scores = pl.from_pandas(self.score(uri, self.events.filter(pl.col(S.CUSTOMER_ID).is_in(wanted)))).select(
                pl.col(S.CUSTOMER_ID).cast(pl.Int64), pl.col(S.PROBABILITY).cast(pl.Float64))
            joined = pl.DataFrame({S.CUSTOMER_ID: wanted}).join(scores, on=S.CUSTOMER_ID, how="left",
                                                                maintain_order="left")
            missing = joined[S.PROBABILITY].null_count()
            self._cache[key] = (joined[S.PROBABILITY].fill_null(0.5).to_numpy(), missing)
        return self._cache[key]


@dataclass(frozen=True)
class DecisionData:
    """What the rule needs from the caller's data: labelled customers (id -> label) and a scorer over them."""

    labels: Mapping[int, int]
    scorer: Callable[[str, tuple[int, ...]], tuple[np.ndarray, int]]
    rule: ChampionRule = ChampionRule()


def _first_line(e: BaseException) -> str:
    """The error's type and the first line of its message (`io.first_line`), for a decision tag."""
    return f"{type(e).__name__}: {first_line(e)[:200]}"


def _score_both(comparison: Comparison, new: VersionInfo, old: VersionInfo, data: DecisionData) -> Decision:
    try:
        new_prob, new_missing = data.scorer(new.uri, comparison.customer_ids)
    except Exception as e:  # noqa: BLE001 - any failure to score the newcomer keeps the champion; the tag says why
        return champion.newcomer_unscorable(comparison, _first_line(e))
    try:
        old_prob, old_missing = data.scorer(old.uri, comparison.customer_ids)
    except Exception as e:  # noqa: BLE001 - a champion that cannot be scored any more cannot stay champion
        return champion.incumbent_unscorable(comparison, _first_line(e))
    route = "both scored through their pyfuncs"
    if new_missing or old_missing:
        route += f"; unscored customers counted as 0.5: {new_missing} for v{new.version}, {old_missing} for v{old.version}"
    return champion.judge(comparison, new_prob, old_prob, route)


def decide(tracker: Tracker, name: str, version: str, data: DecisionData) -> Decision:
    """Apply the champion rule to `version` against the current champion and record it: the alias, tags on both
    versions, and the model card (with the decision) as the version's description."""
    new = tracker.version(name, version)
    old = tracker.champion(name)
    newcomer = Contender(new.version, read_fit_ids(tracker, new))
    incumbent = None if old is None else Contender(old.version, read_fit_ids(tracker, old))
    try:
        step = champion.plan(newcomer, incumbent, data.labels, data.rule)
        decision = step if isinstance(step, Decision) else _score_both(step, new, old, data)
    except Exception as e:  # noqa: BLE001 - never leave a version undecided: record why, keep the champion
        decision = Decision(incumbent is None, f"decision failed ({_first_line(e)}); "
                                               + ("first champion" if incumbent is None else "champion kept"))
    if decision.promoted:
        tracker.set_champion(name, new.version)
    tags = {TAG_DECISION: decision.reason, TAG_PROMOTED: str(decision.promoted).lower(),
            TAG_COMMON: decision.n_common}
    if old is not None and old.version != new.version:
        tags[TAG_AGAINST] = old.version
        outcome = "replaced" if decision.promoted else "kept"
        tracker.set_version_tags(name, old.version, {TAG_CHALLENGED: f"v{new.version}: {outcome}: {decision.reason}"})
    tracker.set_version_tags(name, new.version, tags)
    tracker.set_description(name, new.version, describe(ModelCard.from_tags(new.tags), decision.reason,
                                                        decision.promoted))
    log.info("champion decision for %s v%s: %s", name, new.version, decision.reason)
    return decision


def decide_pending(tracker: Tracker, name: str, data: DecisionData) -> dict[str, Decision]:
    """Decide every version of `name` that has no decision yet, oldest first (call under the registry lock)."""
    return {v.version: decide(tracker, name, v.version, data)
            for v in tracker.versions(name) if TAG_DECISION not in v.tags}
