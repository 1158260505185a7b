"""The model card of a registered version: what it was trained on, how well it did, on what, and why it is (or is
not) champion. Written as version tags (`card.*`, searchable) at registration and as the version's description
(Markdown) once the champion decision is made; the description is rebuilt from the tags, so both always agree.

    >>> card = ModelCard("gbdt", "tiny", "ab12", 0, "f00d", 1000, 50, 40, 28, 8, 4, {"test/auroc": 0.8}, 1.5, "x86_64")
    >>> ModelCard.from_tags(card.to_tags()) == card
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

PREFIX = "card."
CARD_METRICS = ("test/auroc", "test/accuracy", "test/logloss", "val/best_auroc", "val/auroc")


@dataclass(frozen=True)
class ModelCard:
    model: str
    preset: str
    split_id: str
    fold: int
    data_manifest_sha256: str | None  # sequences manifest (it names the events manifest and labels file digests)
    n_events: int  # event rows of the sequences table
    n_customers: int
    n_labelled: int
    n_train: int
    n_val: int
    n_test: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    train_s: float = math.nan
    hardware: str = ""

    def to_tags(self) -> dict[str, str]:
        d = asdict(self)
        d["metrics"] = json.dumps({k: round(float(v), 6) for k, v in self.metrics.items() if math.isfinite(float(v))},
                                  sort_keys=True)
        return {f"{PREFIX}{k}": str(v) for k, v in d.items()}

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> "ModelCard | None":
        d = {k.removeprefix(PREFIX): v for k, v in tags.items() if k.startswith(PREFIX)}
        try:
            return cls(
                model=d["model"], preset=d["preset"], split_id=d["split_id"], fold=int(d["fold"]),
                data_manifest_sha256=None if d["data_manifest_sha256"] == "None" else d["data_manifest_sha256"],
                n_events=int(d["n_events"]), n_customers=int(d["n_customers"]), n_labelled=int(d["n_labelled"]),
                n_train=int(d["n_train"]), n_val=int(d["n_val"]), n_test=int(d["n_test"]),
                metrics=json.loads(d["metrics"]), train_s=float(d["train_s"]), hardware=d["hardware"],
            )
        except (KeyError, ValueError):
            return None


def card_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in CARD_METRICS if k in metrics}


def describe(card: ModelCard | None, decision: str, promoted: bool) -> str:
    """The version description: the card as Markdown, ending with the champion decision."""
    verdict = f"**Champion decision**: {'promoted' if promoted else 'not promoted'}: {decision}"
    if card is None:
        return f"# Model card\n\n(no card recorded for this version)\n\n{verdict}\n"
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in card.metrics.items())
    return "\n".join([
        f"# Model card: {card.model}",
        "",
        f"- preset `{card.preset}`, split `{card.split_id}` fold {card.fold}",
        f"- data: sequences manifest sha256 `{card.data_manifest_sha256}`; {card.n_events:,} events of "
        f"{card.n_customers:,} customers ({card.n_labelled:,} labelled)",
        f"- customers: {card.n_train:,} train / {card.n_val:,} validation / {card.n_test:,} test",
        f"- metrics: {metrics}",
        f"- training time: {card.train_s:.1f} s on {card.hardware}",
        "",
        verdict,
        "",
    ])
