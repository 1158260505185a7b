"""Batch scoring with a plain-function scorer: chunking, rejects, atomic outputs, staging leftovers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline import schema
from pipeline.scoring.batch import ScoreConfig, score_file
from pipeline.ingest.rules import IngestConfig, validate
from pipeline.io import scan_table

from _scoring_data import MODEL, ROOT, count_scorer, raw_rows  # on sys.path: tests/pipeline/conftest.py

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
