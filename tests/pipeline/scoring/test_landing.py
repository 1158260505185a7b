"""Landing-folder scoring: each file scored once (by content), by one of several concurrent runs, with a ledger."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from pipeline.scoring.batch import ModelRef
from pipeline.scoring.landing import LandingConfig, read_ledger, score_landing

from _scoring_data import MODEL, ROOT, count_scorer, raw_rows  # on sys.path: tests/pipeline/conftest.py


def test_landing_scores_each_file_once_and_names_the_model_version(tmp_path: Path) -> None:
    landing, out = tmp_path / "landing", tmp_path / "scores"
    landing.mkdir()
    raw_rows(10).write_parquet(landing / "day1.parquet")
    raw_rows(10, first_id=100).write_csv(landing / "day2.csv")
    (landing / ".day3.parquet.part").write_text("being written")

    first = score_landing(landing, out, count_scorer, MODEL)
    assert sorted(Path(r.output).name.split(".")[0] for r in first.scored) == ["day1", "day2"]
    assert all(r.output.name.endswith(".toy-v3.parquet") for r in first.scored)
    assert {rec["model_version"] for rec in read_ledger(out)} == {"3"}

    second = score_landing(landing, out, count_scorer, ModelRef("toy", "4"))
    assert second.scored == [] and len(second.skipped) == 2

    raw_rows(5, first_id=200).write_parquet(landing / "day3.parquet")
    third = score_landing(landing, out, count_scorer, ModelRef("toy", "4"))
    assert [r.output.name for r in third.scored] == [f"day3.{third.ledger[0]['sha256'][:12]}.toy-v4.parquet"]
    assert len(read_ledger(out)) == 3


def test_landing_skips_files_still_being_written(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    raw_rows(5).write_parquet(landing / "fresh.parquet")
    result = score_landing(landing, tmp_path / "out", count_scorer, MODEL, landing=LandingConfig(min_age_s=3600))
    assert result.scored == []


SCRIPT = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from pipeline.scoring.batch import ModelRef, ScoreConfig
    from pipeline.scoring.landing import score_landing

    def scorer(df):
        time.sleep(0.2)
        df = df.to_pandas()
        with open(sys.argv[3], "a") as log:
            log.write("".join(f"{c}\\n" for c in sorted(set(df["customer_id"]))))
        n = df.groupby("customer_id").size()
        return pd.DataFrame({"customer_id": n.index, "probability": 0.5, "prediction": 1})

    score_landing(sys.argv[1], sys.argv[2], scorer, ModelRef("toy", "1"), ScoreConfig(chunk_rows=10))
    """
)


def test_two_concurrent_runs_never_score_a_file_twice(tmp_path: Path) -> None:
    landing, out, log = tmp_path / "landing", tmp_path / "scores", tmp_path / "scored.log"
    landing.mkdir()
    for i in range(6):
        raw_rows(8, first_id=100 * i).write_parquet(landing / f"f{i}.parquet")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(landing), str(out), str(log)], env=env) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    scored = log.read_text().split()
    assert len(scored) == len(set(scored)) == 6 * 8  # every customer scored exactly once across both runs
    assert len(read_ledger(out)) == 6
    assert len(list(out.glob("*.toy-v1.parquet"))) == 6
    assert list((out / "_claims").iterdir()) == []
