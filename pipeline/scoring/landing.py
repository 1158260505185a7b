"""Landing-folder scoring: each new file of a folder scored once, by one run, with a ledger of what was scored.

A file is known by the sha256 of its content; `<out_dir>/_ledger/<sha16>.json` records that it was scored (by
which model version, into which outputs), and a claim `<out_dir>/_claims/<sha16>.claim` (`pipeline.scoring.file_claim`)
keeps two concurrent runs from scoring it twice. A file with a file-level problem is reported and tried again by the
next run; the others are still scored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.scoring.batch import ModelRef, Scorer, ScoreConfig, ScoreResult, is_data_file, score_file
from pipeline.scoring.file_claim import try_claim
from pipeline.ingest.rules import IngestError
from pipeline.io import base_name, sha256_file, write_text_atomic


@dataclass(frozen=True)
class LandingConfig:
    stale_after_s: float = 3600.0  # a claim with no heartbeat for this long is taken over
    min_age_s: float = 0.0  # files modified more recently than this are left for the next run (still being written)


@dataclass
class LandingResult:
    scored: list[ScoreResult]
    skipped: list[Path]  # already scored (ledger) or claimed by a concurrent run
    ledger: list[dict[str, Any]]  # the ledger records written by this run
    failed: list[tuple[Path, str]] = field(default_factory=list)  # unreadable files and why (tried again next run)

    def to_dict(self) -> dict[str, Any]:
        return {"scored": [r.to_dict() for r in self.scored], "skipped": [str(p) for p in self.skipped],
                "failed": [{"source": str(p), "error": e} for p, e in self.failed]}


def landing_files(landing_dir: Path, min_age_s: float = 0.0) -> list[Path]:
    """Data files directly in the landing folder, oldest first; hidden/temp files and fresh writes are left out."""
    now = time.time()
    files = [
        p
        for p in Path(landing_dir).iterdir()
        if p.is_file() and not p.name.startswith((".", "_")) and is_data_file(p) and now - p.stat().st_mtime >= min_age_s
    ]
    return sorted(files, key=lambda p: (p.stat().st_mtime, p.name))


def pending_files(landing_dir: Path, out_dir: Path, min_age_s: float = 0.0) -> list[Path]:
    """Landing files with no ledger record yet: callers skip loading a model when there are none."""
    done = {p.stem for p in ledger_dir(out_dir).glob("*.json")}
    return [f for f in landing_files(Path(landing_dir), min_age_s) if sha256_file(f)[:16] not in done]


def ledger_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "_ledger"


def read_ledger(out_dir: Path) -> list[dict[str, Any]]:
    """Every file scored into `out_dir` so far (one record each: source, sha256, output, model name/version)."""
    return [json.loads(p.read_text()) for p in sorted(ledger_dir(out_dir).glob("*.json"))]


def score_landing(
    landing_dir: Path,
    out_dir: Path,
    scorer: Scorer,
    model: ModelRef,
    config: ScoreConfig = ScoreConfig(),
    landing: LandingConfig = LandingConfig(),
) -> LandingResult:
    """Score each landing file not scored before into `<out_dir>/<stem>.<sha12>.<model>-v<version>.parquet`.

    A file with a file-level problem (IngestError: empty, wrong columns, truncated) is listed in `failed` and left
    unscored, and the other files are still scored: one bad export does not hold up the folder. It is tried again
    by the next run (a file still being copied in may be complete by then)."""
    out_dir = Path(out_dir)
    (out_dir / "_claims").mkdir(parents=True, exist_ok=True)
    ledger_dir(out_dir).mkdir(parents=True, exist_ok=True)
    result = LandingResult(scored=[], skipped=[], ledger=[])
    for f in landing_files(Path(landing_dir), landing.min_age_s):
        digest = sha256_file(f)
        record_path = ledger_dir(out_dir) / f"{digest[:16]}.json"
        if record_path.exists():
            result.skipped.append(f)
            continue
        claim = try_claim(out_dir / "_claims" / f"{digest[:16]}.claim", landing.stale_after_s)
        if claim is None:
            result.skipped.append(f)
            continue
        try:
            if record_path.exists():  # scored by another run between our check and our claim
                result.skipped.append(f)
                continue
            stem = f.name.removesuffix(".gz").removesuffix(".csv").removesuffix(".parquet")
            output = out_dir / f"{stem}.{digest[:12]}.{_safe(model.name)}-v{_safe(model.version)}.parquet"
            try:
                scored = score_file(
                    f, output, scorer, model, config, rejects=out_dir / f"{stem}.{digest[:12]}.rejects.parquet",
                    on_chunk=lambda *_: claim.heartbeat(),
                )
            except IngestError as e:
                result.failed.append((f, str(e)))
                continue
            record = {
                "source": str(f),
                "sha256": digest,
                "output": output.name,
                "rejects": base_name(scored.rejects),
                "drift": [Path(d).name for d in scored.drift_files],  # [] for a model stored without a reference
                "model_name": model.name,
                "model_version": str(model.version),
                "model_uri": model.uri,
                "input_rows": scored.input_rows,
                "rejected_rows": scored.rejected_rows,
                "customers": scored.customers,
                "scored_at": datetime.now(UTC).isoformat(),
            }
            write_text_atomic(json.dumps(record, indent=2), record_path)
            result.scored.append(scored)
            result.ledger.append(record)
        finally:
            claim.release()
    return result


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(s))


