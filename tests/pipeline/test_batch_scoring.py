"""Batch scoring with a plain-function scorer: chunking, rejects, atomic outputs, the landing ledger and claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline import schema
from pipeline.batch_scoring import (
    LandingConfig,
    ModelRef,
    ScoreConfig,
    read_ledger,
    score_file,
    score_landing,
    try_claim,
)
from pipeline.ingest import IngestConfig, validate
from pipeline.io import scan_table

MODEL = ModelRef("toy", "3", "models:/toy/3")
ROOT = Path(__file__).resolve().parents[2]


def count_scorer(df: pd.DataFrame | pl.DataFrame) -> pd.DataFrame:
    """probability = n/(n+1) of the customer's events in the frame: a customer split across chunks would show it."""
    df = df.to_pandas() if isinstance(df, pl.DataFrame) else df
    n = df.groupby(schema.CUSTOMER_ID).size()
    return pd.DataFrame(
        {schema.CUSTOMER_ID: n.index, schema.PROBABILITY: n.values / (n.values + 1), schema.PREDICTION: n.values % 2}
    )


def raw_rows(n_customers: int, seed: int = 0, first_id: int = 0) -> pl.DataFrame:
    """Raw-schema rows (all strings, as the export): customer i has i % 7 + 1 events."""
    rows = []
    for c in range(first_id, first_id + n_customers):
        for k in range(c % 7 + 1):
            rows.append((str(c), f"{(c + k + seed) % 400} {k % 24:02d}:15:00", "5411", "1010", f"-{10 + k}.5", ""))
    return pl.DataFrame(rows, schema=list(schema.RAW_COLUMNS), orient="row")


BAD_ROWS = pl.DataFrame(
    [("x1", "3 10:00:00", "5411", "1010", "-1.0", ""), ("5", "not a date", "5411", "1010", "-1.0", "")],
    schema=list(schema.RAW_COLUMNS),
    orient="row",
)


@pytest.fixture()
def raw_file(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "tx.csv"
    path.parent.mkdir()
    pl.concat([raw_rows(60), BAD_ROWS]).write_csv(path)
    return path


def _scores(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path).drop(schema.SCORED_AT)


def test_chunked_scoring_equals_one_chunk_and_keeps_whole_histories(raw_file: Path, tmp_path: Path) -> None:
    one = score_file(raw_file, tmp_path / "one.parquet", count_scorer, MODEL, ScoreConfig(chunk_rows=10**9))
    many = score_file(raw_file, tmp_path / "many.parquet", count_scorer, MODEL, ScoreConfig(chunk_rows=20))
    assert one.chunks == 1 and many.chunks > 3
    assert many.phase_cpu_seconds.keys() == many.phase_seconds.keys() == {"stage", "load", "model", "write", "drift"}
    assert_frame_equal(_scores(one.output), _scores(many.output))
    scores = pl.read_parquet(many.output)
    assert scores[schema.CUSTOMER_ID].to_list() == list(range(60))  # one row per customer, sorted
    expected_n = [c % 7 + 1 for c in range(60)]
    assert scores[schema.PROBABILITY].to_list() == pytest.approx([n / (n + 1) for n in expected_n])
    assert set(scores[schema.MODEL_VERSION]) == {"3"} and set(scores[schema.MODEL_NAME]) == {"toy"}
    assert scores.schema[schema.SCORED_AT] == pl.Datetime("us", "UTC")


def test_rejects_are_the_rows_ingest_rejects(raw_file: Path, tmp_path: Path) -> None:
    result = score_file(raw_file, tmp_path / "s.parquet", count_scorer, MODEL)
    _, expected = validate(scan_table(raw_file), str(raw_file), IngestConfig())
    rejects = pl.read_parquet(result.rejects)
    assert result.rejected_rows == rejects.height == expected.collect().height >= 2
    assert set(rejects[schema.SOURCE_ROW]) == set(expected.collect()[schema.SOURCE_ROW])
    assert result.input_rows == raw_rows(60).height + BAD_ROWS.height
    assert result.customers == 60
    assert sum(b["customers"] for b in result.histogram) == 60


def test_folder_input_joins_a_customers_history_across_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    raw_rows(30).write_parquet(folder / "a.parquet")
    raw_rows(30, seed=5).write_parquet(folder / "b.parquet")  # same customers, other days: twice the events
    result = score_file(folder, tmp_path / "s.parquet", count_scorer, MODEL, ScoreConfig(chunk_rows=15))
    probs = pl.read_parquet(result.output)[schema.PROBABILITY].to_list()
    assert probs == pytest.approx([2 * (c % 7 + 1) / (2 * (c % 7 + 1) + 1) for c in range(30)])


@pytest.mark.parametrize("pandas_input", [False, True])
def test_the_scorer_gets_polars_or_pandas(raw_file: Path, tmp_path: Path, pandas_input: bool) -> None:
    seen = []

    def scorer(df: pl.DataFrame | pd.DataFrame) -> pl.DataFrame:
        seen.append(type(df))
        return pl.from_pandas(count_scorer(df))

    score_file(raw_file, tmp_path / "s.parquet", scorer, MODEL, ScoreConfig(pandas_input=pandas_input))
    assert seen == [pd.DataFrame if pandas_input else pl.DataFrame]


def test_a_scorer_with_score_events_gets_the_validated_rows(raw_file: Path, tmp_path: Path) -> None:
    class EventsScorer:
        seen: list[dict] = []

        def __call__(self, df):  # noqa: ANN001 - never called when score_events exists
            raise AssertionError("raw path used")

        def score_events(self, events: pl.LazyFrame) -> pd.DataFrame:
            self.seen.append(events.collect_schema())
            return count_scorer(events.select(schema.RAW_COLUMNS).collect())

    via_events = score_file(raw_file, tmp_path / "e.parquet", EventsScorer(), MODEL, ScoreConfig(chunk_rows=20))
    via_raw = score_file(raw_file, tmp_path / "r.parquet", count_scorer, MODEL, ScoreConfig(chunk_rows=20))
    assert all(dict(s) == schema.EVENTS_SCHEMA for s in EventsScorer.seen) and len(EventsScorer.seen) == via_events.chunks
    assert_frame_equal(_scores(via_events.output), _scores(via_raw.output))


def test_a_failed_scorer_leaves_no_output_and_no_temp_files(raw_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"

    def broken(df: pd.DataFrame) -> pd.DataFrame:
        raise RuntimeError("model exploded")

    with pytest.raises(RuntimeError, match="model exploded"):
        score_file(raw_file, out / "s.parquet", broken, MODEL, ScoreConfig(chunk_rows=20))
    assert not (out / "s.parquet").exists() and not (out / "s.rejects.parquet").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_scorer_that_drops_customers_is_an_error(raw_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one row each"):
        score_file(raw_file, tmp_path / "s.parquet", lambda df: count_scorer(df).head(3), MODEL)


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


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "f.claim"
    mine = try_claim(path)
    assert mine is not None
    assert try_claim(path) is None  # held by a live process (this one)
    mine.release()
    assert not path.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path.write_text(json.dumps({"token": "old", "pid": int(dead.stdout), "host": os.uname().nodename}))
    taken = try_claim(path)  # its holder is gone
    assert taken is not None and json.loads(path.read_text())["token"] == taken.token

    old = time.time() - 7200
    os.utime(path, (old, old))  # no heartbeat for two hours: stale whoever holds it
    assert try_claim(path, stale_after_s=3600) is not None


SCRIPT = textwrap.dedent(
    """
    import sys, time
    import pandas as pd
    from pipeline.batch_scoring import ModelRef, ScoreConfig, score_landing

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


def test_a_rerun_removes_the_staging_of_a_killed_run_but_not_of_a_live_one(raw_file: Path, tmp_path: Path) -> None:
    """Leftovers named by a process that is gone (here: a subprocess that ran and ended) are removed by the next
    run into the same folder; those of a live process (this one, standing for a concurrent run) stay."""
    from pipeline.io import temp_path

    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.run([sys.executable, "-c", "import sys; from pipeline.io import temp_path; "
                            "p = temp_path(sys.argv[1], '.staging'); p.mkdir(); (p / 'x.parquet').write_bytes(b'x'); "
                            "q = temp_path(sys.argv[2]); q.write_bytes(b'partial'); print(p.name, q.name)",
                            str(out / "scores.parquet"), str(out / "scores.rejects.parquet")],
                           capture_output=True, text=True, check=True, cwd=ROOT)
    dead = [out / name for name in child.stdout.split()]
    live = temp_path(out / "scores.parquet", ".staging")
    live.mkdir()
    assert all(p.exists() for p in dead)
    score_file(raw_file, out / "scores.parquet", count_scorer, MODEL)
    assert not any(p.exists() for p in dead) and live.is_dir()
    assert sorted(p.name for p in out.iterdir()) == sorted(["scores.parquet", "scores.rejects.parquet", live.name])
