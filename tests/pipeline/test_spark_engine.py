"""Spark engine (local[2]): the same events, rejects, manifest counts, sequences and scores as the polars engine.

A missing pyspark or Java is a skip on a developer machine and a failure in CI (`CI` set): the project's own
setup installs both (`make setup`: the `spark` extra; Java 17 from the system).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from pipeline import schema
from pipeline.scoring.batch import ModelRef, ScoreConfig, score_file
from pipeline.scoring.drift import Reference, fit_reference
from pipeline.engines.spark import (
    SparkConfig,
    SparkEngine,
    SparkError,
    failure,
    local_memory_defaults,
    parse_conf,
)
from pipeline.ingest.rules import IngestConfig, IngestError
from pipeline.ingest.files import ingest, read_events, read_rejects
from pipeline.io import TableError, sha256_file
from pipeline.sequences.table import SequenceConfig, run_sequences
from pipeline.sequences.splits import Split, SplitConfig

ROOT = Path(__file__).resolve().parents[2]
HEADER = "customer_id,tr_datetime,mcc_code,tr_type,amount,term_id"
TRICKY = [  # rows whose reading and checks differ most easily between two CSV readers
    "101,0 10:48:07,5912,1010,-12570.39,",
    "101,5 16:50:60,6010,7070,134754.95,888990",
    "102,456 00:00:00,5411,1110,-5087,00192060",
    "102,456 00:00:00,5411,1110,-5087,00192060",  # repeated date-only record: kept
    "103,12 7:05:00,4814,1030,-1572.14, 302534 ",
    "5411.0,3 23:59:59,5411.0,1010,1e3,x",
    ",0 10:00:00,5411,1010,-1.0,",
    "104,0 10:00:00,5411,1010,,",
    "abc,0 10:00:00,5411,1010,-1.0,",
    "-104,0 10:00:00,5411,1010,-1.0,",
    "99999999999999999999,0 10:00:00,5411,1010,-1.0,",
    "104,0 24:00:00,5411,1010,-1.0,",
    "104,2020-01-01 10:00:00,5411,1010,-1.0,",
    "104,3651 10:00:00,5411,1010,-1.0,",
    '104,0 10:00:00,5411,1010,"1,5",',
    "104,0 10:00:00,5411,1010,nan,",
    "104,0 10:00:00,5411,1010,1e400,",
    "101,0 10:48:07,5912,1010,-12570.39,",  # duplicate_row of the first row
    "0101,0 10:48:07,5912,1010,-12570.39,",  # not the same text: accepted in this file
]


def _rows(n_customers: int, first: int = 1000, seed: int = 0) -> list[str]:
    out = []
    for c in range(first, first + n_customers):
        for k in range(c % 9 + 1):
            out.append(f"{c},{(c * 7 + k * 13 + seed) % 300} {(k * 5) % 24}:{(c + k) % 60:02d}:{k % 61:02d},"
                       f"{5411 + (c + k) % 6},{1010 + (k % 3) * 20},{-(c % 97) - k * 1.25},{'' if k % 2 else c}")
    return out


@pytest.fixture(scope="session")
def engine(spark_ok: None) -> SparkEngine:
    """One local[2] session for the module; small partitions so that every step runs on several of them."""
    return SparkEngine.start(SparkConfig(master="local[2]", partition_rows=150,
                                         conf=(("spark.sql.shuffle.partitions", "4"),)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A CSV with tricky and bad rows, a second CSV repeating some of its rows, and a typed Parquet folder."""
    d = tmp_path_factory.mktemp("raw")
    first = _rows(60)
    (d / "a.csv").write_text("\n".join([HEADER, *first[:120], *TRICKY, *first[120:]]) + "\n")
    (d / "b.csv").write_text("\n".join([HEADER, *first[50:90], *_rows(30, first=2000)]) + "\n")
    typed = pl.read_csv(d / "b.csv", infer_schema=False).with_columns(
        pl.col(schema.CUSTOMER_ID).cast(pl.Int64) + 5000, pl.col(schema.MCC_CODE).cast(pl.Int32),
        pl.col(schema.TR_TYPE).cast(pl.Int64), pl.col(schema.AMOUNT).cast(pl.Float64))
    (d / "c").mkdir()
    typed.head(100).write_parquet(d / "c" / "part-0.parquet")
    typed.tail(typed.height - 100).write_parquet(d / "c" / "part-1.parquet")
    return [d / "a.csv", d / "b.csv", d / "c"]


@pytest.fixture(scope="module")
def both_ingested(engine: SparkEngine, inputs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("ingest")
    ingest(inputs, out / "polars")
    engine.ingest(inputs, out / "spark")
    return out / "polars", out / "spark"


def _sorted(lf: pl.LazyFrame) -> pl.DataFrame:
    return lf.collect().sort(schema.SOURCE_FILE, schema.SOURCE_ROW)


def test_ingest_gives_the_same_events_rejects_and_manifest(both_ingested: tuple[Path, Path]) -> None:
    pol, spk = both_ingested
    assert_frame_equal(_sorted(read_events(spk)), _sorted(read_events(pol)))
    rejects = _sorted(read_rejects(spk))
    assert_frame_equal(rejects, _sorted(read_rejects(pol)))
    reasons = set(rejects[schema.REASON])
    assert {"duplicate_row", "duplicate_of_ingested_row", "not_an_integer", "missing_value"} <= reasons
    m_pol, m_spk = (json.loads((d / "manifest.json").read_text()) for d in (pol, spk))
    assert m_spk["totals"] == m_pol["totals"]
    keep = ("path", "sha256", "rows_in", "accepted", "rejected", "rejected_by_reason", "part")
    assert [{k: f[k] for k in keep} for f in m_spk["files"]] == [{k: f[k] for k in keep} for f in m_pol["files"]]
    assert (spk / "events" / m_spk["files"][0]["part"]).is_dir()  # a folder of per-partition parts


def test_reingest_with_spark_is_a_recorded_no_op(engine: SparkEngine, inputs: list[Path],
                                                 both_ingested: tuple[Path, Path]) -> None:
    _, spk = both_ingested
    before = (spk / "manifest.json").read_text()
    result = engine.ingest(inputs[:1], spk)
    assert result.files[0].status.startswith("already ingested")
    assert (spk / "manifest.json").read_text() == before


def test_sequences_are_the_same_table_vocab_and_counts(engine: SparkEngine, both_ingested: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    pol, spk = both_ingested
    ids = read_events(pol).select(schema.CUSTOMER_ID).unique().collect()[schema.CUSTOMER_ID].sort()
    labels = tmp_path / "labels.csv"
    ghosts = [int(ids.max()) + 1 + i for i in range(3)]  # labels of customers without transactions: left out alike
    labelled = [*ids[::2].to_list(), *ghosts]
    pl.DataFrame({schema.CUSTOMER_ID: labelled, schema.GENDER: [i % 2 for i in range(len(labelled))]}).write_csv(labels)
    config, split = SequenceConfig(max_len=6, min_count=2), SplitConfig(test_fraction=0.2, n_folds=3, seed=1)
    a = run_sequences(pol, labels, tmp_path / "polars", config, split)
    b = engine.run_sequences(spk, labels, tmp_path / "spark", config, split)
    table_a = pl.read_parquet(a.sequences_path)
    table_b = pl.read_parquet(b.sequences_path)  # a folder of parts, read in customer order
    assert table_b[schema.CUSTOMER_ID].is_sorted()
    assert_frame_equal(table_b, table_a)
    assert (tmp_path / "spark" / "vocab.json").read_text() == (tmp_path / "polars" / "vocab.json").read_text()
    assert (b.manifest["counts"], b.manifest["vocab"], b.split_id) == (a.manifest["counts"], a.manifest["vocab"], a.split_id)
    assert b.n_truncated > 0
    assert b.manifest["labels"] == a.manifest["labels"] and b.coverage == a.coverage
    assert a.coverage.labels_without_events == 3 and not set(ghosts) & set(Split.load(b.split_path).labelled_ids)


class EventCountScorer:
    """Picklable stand-in model: probability = n/(n+1) of a customer's events (a customer split across partitions
    would show it), prediction = n % 2."""

    def __call__(self) -> "EventCountScorer":
        return self

    def score_events(self, events: pl.LazyFrame) -> pd.DataFrame:
        n = events.group_by(schema.CUSTOMER_ID).agg(pl.len().alias("n")).collect()
        return n.select(schema.CUSTOMER_ID, (pl.col("n") / (pl.col("n") + 1)).alias(schema.PROBABILITY),
                        (pl.col("n") % 2).alias(schema.PREDICTION)).to_pandas()

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EventCountScorer)


def test_scoring_gives_the_same_scores_and_rejects(engine: SparkEngine, inputs: list[Path], tmp_path: Path) -> None:
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import a test module
    model = ModelRef("toy", "1", "models:/toy/1")
    for source in (inputs[0], inputs[2]):  # a CSV, and a Parquet folder (rows numbered per file)
        a = score_file(source, tmp_path / f"{source.name}-polars.parquet", EventCountScorer(), model,
                       ScoreConfig(chunk_rows=200))
        b = engine.score_file(source.as_uri(), tmp_path / f"{source.name}-spark.parquet", EventCountScorer(), model,
                              ingest_config=IngestConfig())  # a file:// URI, as Hadoop paths are written
        drop = [schema.SCORED_AT]
        assert_frame_equal(pl.read_parquet(b.output).drop(drop), pl.read_parquet(a.output).drop(drop), abs_tol=1e-6)
        key = [schema.SOURCE_FILE, schema.SOURCE_ROW]
        assert_frame_equal(pl.read_parquet(b.rejects).sort(key), pl.read_parquet(a.rejects).sort(key))
        assert (b.input_rows, b.rejected_rows, b.customers) == (a.input_rows, a.rejected_rows, a.customers)


class EventCountScorerWithReference(EventCountScorer):
    """The stand-in model with training-time drift statistics, as a registered model stores them."""

    def __init__(self, reference: Reference) -> None:
        self.reference = reference


def test_scoring_writes_the_same_drift_report(engine: SparkEngine, inputs: list[Path],
                                              both_ingested: tuple[Path, Path], tmp_path: Path) -> None:
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    # reference: the first file's customers; the Parquet folder (other customers, other days) is the scored batch
    pol, _ = both_ingested
    train = read_events(pol).filter(pl.col(schema.SOURCE_FILE).str.ends_with("a.csv")).collect()
    reference = fit_reference(train, np.linspace(0.05, 0.95, 40), top_k=4, min_count=2)
    model = ModelRef("toy", "1", "models:/toy/1")
    config = ScoreConfig(chunk_rows=200, drift_psi_threshold=0.15)
    a = score_file(inputs[2], tmp_path / "polars.parquet", EventCountScorerWithReference(reference), model, config)
    b = engine.score_file(inputs[2], tmp_path / "spark.parquet", EventCountScorer(), model, config,
                          ingest_config=IngestConfig(), reference=reference)
    assert a.drift is not None and a.drift["events"] > 0 and a.drift["drifted"]  # a report with something in it
    assert [Path(f).name for f in b.drift_files] == ["spark.drift.json", "spark.drift.png"]
    assert Path(b.drift_files[0]).read_text() == Path(a.drift_files[0]).read_text()
    assert json.dumps(b.drift) == json.dumps(a.drift)  # NaN-safe: the same PSI, bins, counts, shares and means
    assert Path(b.drift_files[1]).stat().st_size > 0
    plain = engine.score_file(inputs[2], tmp_path / "plain.parquet", EventCountScorer(), model, config,
                              ingest_config=IngestConfig())
    assert plain.drift is None and plain.drift_files == [] and not (tmp_path / "plain.drift.json").exists()


def test_cli_ingest_with_spark_engine(engine: SparkEngine, inputs: list[Path], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TXSEQ_DATA_ROOT": str(tmp_path)}
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", str(inputs[0]), "--out", str(tmp_path / "ev"),
           "--engine", "spark", "--spark-master", "local[2]", "--spark-conf", "spark.sql.shuffle.partitions=3"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TOTAL" in done.stdout
    expected = ingest(inputs[:1], tmp_path / "ev-polars")
    manifest = json.loads((tmp_path / "ev" / "manifest.json").read_text())
    assert manifest["totals"] == expected.manifest["totals"]
    bad = subprocess.run([*cmd[:-2], "--spark-conf", "no-equals-sign"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr


def test_spark_submit_runs_the_cli_with_its_master_and_file_uris(spark_ok: None, inputs: list[Path],
                                                                 tmp_path: Path) -> None:
    """`spark-submit --master local[2] pipeline/cli.py ingest file:///... --engine spark`, as on a cluster: the
    master and settings come from spark-submit (read back from Spark's event log), inputs as file:// URIs."""
    import pyspark

    home = Path(pyspark.__file__).parent
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TXSEQ_DATA_ROOT": str(tmp_path), "SPARK_HOME": str(home),
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    events_log = tmp_path / "spark-events"
    events_log.mkdir()
    cmd = [str(home / "bin" / "spark-submit"), "--master", "local[2]", "--conf", "spark.sql.shuffle.partitions=3",
           "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events_log.as_uri()}",
           "--conf", "spark.eventLog.rolling.enabled=false", "--conf", "spark.eventLog.compress=false",  # one JSON file
           str(ROOT / "pipeline" / "cli.py"), "ingest", inputs[0].as_uri(), inputs[2].as_uri(),
           "--out", str(tmp_path / "ev"), "--engine", "spark"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = ingest([inputs[0], inputs[2]], tmp_path / "ev-polars")
    manifest = json.loads((tmp_path / "ev" / "manifest.json").read_text())
    assert manifest["totals"] == expected.manifest["totals"]
    assert [f["path"] for f in manifest["files"]] == [f["path"] for f in expected.manifest["files"]]
    (log,) = events_log.iterdir()
    environment = next(json.loads(line) for line in log.read_text().splitlines()
                       if '"SparkListenerEnvironmentUpdate"' in line)
    properties = dict(environment["Spark Properties"])
    assert properties["spark.master"] == "local[2]" and properties["spark.sql.shuffle.partitions"] == "3"


MOUNT = "viewfs://txseq"  # a Hadoop mount table (viewfs) over local folders: a URI only Spark's Hadoop client opens


def _mount_conf(folder: Path) -> tuple[str, str]:
    return "spark.hadoop.fs.viewfs.mounttable.txseq.link./exports", folder.as_uri()


@pytest.fixture(scope="module")
def mounted(engine: SparkEngine, inputs: list[Path]) -> str:
    """The raw inputs' folder at viewfs://txseq/exports, as an hdfs:// or s3a:// export would be: the driver and the
    workers reach it only through Hadoop's FileSystem (Python cannot open it)."""
    key, target = _mount_conf(inputs[0].parent)
    engine.spark._jsc.hadoopConfiguration().set(key.removeprefix("spark.hadoop."), target)
    return f"{MOUNT}/exports"


def _as_paths(df: pl.DataFrame, uri: str, folder: Path) -> pl.DataFrame:
    """source_file of rows read at `uri` named as the local path they mount."""
    return df.with_columns(pl.col(schema.SOURCE_FILE).str.replace(uri, str(folder), literal=True))


def test_inputs_at_a_uri_ingest_as_their_files_do(engine: SparkEngine, inputs: list[Path], mounted: str,
                                                  both_ingested: tuple[Path, Path], tmp_path: Path) -> None:
    """A CSV, a second CSV and a Parquet folder at a URI: the same events, rejects and manifest counts as the polars
    engine on the files themselves, the same sha256 (re-ingesting the local files is a no-op), names are the URIs."""
    pol, _ = both_ingested
    uris = [f"{mounted}/{p.name}" for p in inputs]
    result = engine.ingest(uris, tmp_path / "ev")
    folder = inputs[0].parent
    assert_frame_equal(_as_paths(_sorted(read_events(tmp_path / "ev")), mounted, folder), _sorted(read_events(pol)))
    assert_frame_equal(_as_paths(_sorted(read_rejects(tmp_path / "ev")), mounted, folder), _sorted(read_rejects(pol)))
    m_pol = json.loads((pol / "manifest.json").read_text())
    keep = ("sha256", "rows_in", "accepted", "rejected", "rejected_by_reason", "part")
    assert [{k: f[k] for k in keep} for f in result.manifest["files"]] == \
        [{k: f[k] for k in keep} for f in m_pol["files"]]
    assert [f["path"] for f in result.manifest["files"]] == uris
    again = engine.ingest(inputs, tmp_path / "ev")
    assert [f.status for f in again.files] == [f"already ingested (as {u})" for u in uris]


def test_a_folder_of_csv_files_at_a_uri_is_one_unit_of_its_files(engine: SparkEngine, inputs: list[Path],
                                                                  tmp_path: Path) -> None:
    from pipeline.engines.hadoop import HadoopFiles

    (tmp_path / "csvs" / "2026").mkdir(parents=True)
    for name in ("b.csv", "a.csv"):
        (tmp_path / "csvs" / "2026" / name).write_text((inputs[0].parent / name).read_text())
    (tmp_path / "csvs" / "_SUCCESS").write_text("")  # hidden from readers, as Spark and polars skip it
    # its own mount table: Hadoop caches a file system per scheme and authority with the settings it first saw
    engine.spark._jsc.hadoopConfiguration().set("fs.viewfs.mounttable.csvtest.link./csvs", (tmp_path / "csvs").as_uri())
    files, folder = HadoopFiles(engine.spark), "viewfs://csvtest/csvs"
    assert files.units([folder], atomic=False) == [[f"{folder}/2026/a.csv", f"{folder}/2026/b.csv"]]
    assert files.units([folder, inputs[2]], atomic=True) == [[f"{folder}/2026/a.csv", f"{folder}/2026/b.csv",
                                                              inputs[2]]]
    assert files.sha256(f"{folder}/2026/a.csv") == sha256_file(inputs[0])
    (tmp_path / "csvs" / "notes.txt").write_text("x")
    with pytest.raises(TableError, match=r"csvs: holds 1 file\(s\) that are neither CSV .* notes.txt"):
        files.units([folder], atomic=False)


def test_scoring_an_input_at_a_uri_gives_the_scores_of_its_file(engine: SparkEngine, inputs: list[Path], mounted: str,
                                                               tmp_path: Path) -> None:
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    model = ModelRef("toy", "1", "models:/toy/1")
    for source in (inputs[0], inputs[2]):  # a CSV (copied to the driver and cleaned) and a Parquet folder
        a = score_file(source, tmp_path / f"{source.name}-polars.parquet", EventCountScorer(), model,
                       ScoreConfig(chunk_rows=200))
        b = engine.score_file(f"{mounted}/{source.name}", tmp_path / f"{source.name}-spark.parquet",
                              EventCountScorer(), model, ingest_config=IngestConfig())
        drop = [schema.SCORED_AT]
        assert_frame_equal(pl.read_parquet(b.output).drop(drop), pl.read_parquet(a.output).drop(drop), abs_tol=1e-6)
        key = [schema.SOURCE_FILE, schema.SOURCE_ROW]
        rejects = _as_paths(pl.read_parquet(b.rejects), mounted, inputs[0].parent).sort(key)
        assert_frame_equal(rejects, pl.read_parquet(a.rejects).sort(key))
        assert (b.input_rows, b.rejected_rows, b.customers) == (a.input_rows, a.rejected_rows, a.customers)


def test_labels_at_a_uri_give_the_same_split_and_record_their_uri(engine: SparkEngine, mounted: str,
                                                                  both_ingested: tuple[Path, Path],
                                                                  inputs: list[Path], tmp_path: Path) -> None:
    pol, spk = both_ingested
    labels = inputs[0].parent / "labels.csv"
    customers = read_events(pol).select(schema.CUSTOMER_ID).unique().collect().sort(schema.CUSTOMER_ID)
    customers.with_columns((pl.col(schema.CUSTOMER_ID) % 2).alias("gender")).write_csv(labels)
    split = SplitConfig(test_fraction=0.25, n_folds=2)
    a = run_sequences(spk, labels, tmp_path / "local", SequenceConfig(min_count=1), split)
    b = engine.run_sequences(spk, f"{mounted}/labels.csv", tmp_path / "uri", SequenceConfig(min_count=1), split)
    assert b.split_id == a.split_id and b.coverage == a.coverage
    assert_frame_equal(pl.read_parquet(b.sequences_path), pl.read_parquet(a.sequences_path))
    recorded = json.loads((tmp_path / "uri" / "manifest.json").read_text())["input"]
    assert recorded["labels_path"] == f"{mounted}/labels.csv" and recorded["labels_sha256"] == sha256_file(labels)


def _left_behind(folder: Path) -> list[str]:
    """Hidden files and folders under `folder` (staging, temp files, Hadoop's .crc checksums)."""
    return [str(p.relative_to(folder)) for p in folder.rglob(".*")]


def test_outputs_at_a_uri_are_the_outputs_at_a_path(engine: SparkEngine, inputs: list[Path], mounted: str,
                                                    both_ingested: tuple[Path, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest, sequences and scoring all writing to a URI only Hadoop opens (inputs at a URI too, as on a cluster
    with no folder shared by the driver and the workers): the events, rejects, manifest, sequences table, vocab,
    scores, rejects and drift report the polars engine writes to paths; nothing hidden left behind. The driver
    fetches the parts a few bytes at a time here (every partition its own chunk), as it would a large output."""
    from pyspark import cloudpickle

    from pipeline.engines import spark

    monkeypatch.setattr(spark, "GATHER_BYTES", 1)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    pol, _ = both_ingested
    engine.spark._jsc.hadoopConfiguration().set("fs.viewfs.mounttable.outputs.link./lake", (tmp_path / "lake").as_uri())
    lake, local, folder = "viewfs://outputs/lake", tmp_path / "lake", inputs[0].parent
    uris = [f"{mounted}/{p.name}" for p in inputs]

    result = engine.ingest(uris, f"{lake}/events")
    assert result.out_dir == f"{lake}/events" and result.summary().endswith(f"rows in {lake}/events/rejects)")
    assert_frame_equal(_as_paths(_sorted(read_events(local / "events")), mounted, folder), _sorted(read_events(pol)))
    assert_frame_equal(_as_paths(_sorted(read_rejects(local / "events")), mounted, folder), _sorted(read_rejects(pol)))
    manifest = json.loads((local / "events" / "manifest.json").read_text())
    assert manifest["totals"] == json.loads((pol / "manifest.json").read_text())["totals"]
    again = engine.ingest(uris[:1], f"{lake}/events")  # read back from the URI: a recorded no-op
    assert [f.status for f in again.files] == [f"already ingested (as {uris[0]})"]

    ids = read_events(pol).select(schema.CUSTOMER_ID).unique().collect()[schema.CUSTOMER_ID].sort()
    labels = tmp_path / "labels.csv"
    pl.DataFrame({schema.CUSTOMER_ID: ids, schema.GENDER: [i % 2 for i in range(len(ids))]}).write_csv(labels)
    config, split = SequenceConfig(max_len=6, min_count=2), SplitConfig(test_fraction=0.2, n_folds=3, seed=1)
    a = run_sequences(pol, labels, tmp_path / "seq-polars", config, split)
    b = engine.run_sequences(f"{lake}/events", labels, f"{lake}/seq", config, split)
    assert b.sequences_path == f"{lake}/seq/sequences.parquet" and b.manifest["counts"] == a.manifest["counts"]
    assert_frame_equal(pl.read_parquet(local / "seq" / "sequences.parquet"), pl.read_parquet(a.sequences_path))
    assert (local / "seq" / "vocab.json").read_text() == Path(a.vocab_path).read_text()
    assert json.loads((local / "seq" / "manifest.json").read_text())["input"]["events_dir"] == f"{lake}/events"

    model = ModelRef("toy", "1", "models:/toy/1")
    train = read_events(pol).filter(pl.col(schema.SOURCE_FILE).str.ends_with("b.csv")).collect()
    reference = fit_reference(train, np.linspace(0.05, 0.95, 40), top_k=4, min_count=2)
    score_config = ScoreConfig(chunk_rows=200, drift_psi_threshold=0.15)
    for source in (inputs[0], inputs[2]):  # a CSV (its clean copy staged at the URI) and a Parquet folder
        p = score_file(source, tmp_path / f"{source.name}.parquet", EventCountScorerWithReference(reference), model,
                       score_config)
        q = engine.score_file(f"{mounted}/{source.name}", f"{lake}/scores/{source.name}.parquet", EventCountScorer(),
                              model, score_config, ingest_config=IngestConfig(), reference=reference)
        assert q.output == f"{lake}/scores/{source.name}.parquet"
        assert q.drift_files == [f"{lake}/scores/{source.name}.drift.json", f"{lake}/scores/{source.name}.drift.png"]
        drop = [schema.SCORED_AT]
        assert_frame_equal(pl.read_parquet(local / "scores" / f"{source.name}.parquet").drop(drop),
                           pl.read_parquet(p.output).drop(drop), abs_tol=1e-6)
        key = [schema.SOURCE_FILE, schema.SOURCE_ROW]
        rejects = _as_paths(pl.read_parquet(local / "scores" / f"{source.name}.rejects.parquet"), mounted, folder)
        assert_frame_equal(rejects.sort(key), pl.read_parquet(p.rejects).sort(key))
        assert (local / "scores" / f"{source.name}.drift.json").read_text() == Path(p.drift_files[0]).read_text()
        assert (q.input_rows, q.rejected_rows, q.customers) == (p.input_rows, p.rejected_rows, p.customers)
    assert sorted(f.name for f in (local / "scores").iterdir() if not f.name.startswith(".")) == sorted(
        f"{n}.{kind}" for n in ("a.csv", "c") for kind in ("parquet", "rejects.parquet", "drift.json", "drift.png"))
    assert _left_behind(local) == []


def test_outputs_at_a_uri_that_cannot_be_written_are_errors_naming_it(engine: SparkEngine, inputs: list[Path],
                                                                     tmp_path: Path) -> None:
    """A file system without a connector, and a folder the process may not write: the error names the URI."""
    with pytest.raises(IngestError, match=r"s3a://bucket/events: this Spark has no Hadoop client for s3a://"):
        engine.ingest(inputs[:1], "s3a://bucket/events")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "events").write_text("a file where the output folder would be")
    engine.spark._jsc.hadoopConfiguration().set("fs.viewfs.mounttable.readonly.link./ro", (tmp_path / "ro").as_uri())
    with pytest.raises(IngestError, match=r"viewfs://readonly/ro/events: cannot be written"):
        engine.ingest(inputs[:1], "viewfs://readonly/ro/events")


def test_missing_inputs_and_unknown_file_systems_are_errors_naming_the_uri(engine: SparkEngine, mounted: str,
                                                                          inputs: list[Path], tmp_path: Path) -> None:
    """Every file-level problem of an input at a URI names the URI (not the driver's copy of it)."""
    import zipfile

    folder = inputs[0].parent
    with zipfile.ZipFile(folder / "zipped.csv", "w") as z:
        z.writestr("t.csv", HEADER + "\n")
    (folder / "header-only.csv").write_text(HEADER + "\n")
    (folder / "short.csv").write_text("customer_id,tr_datetime,mcc_code\n1,0 10:00:00,5411\n")
    cases = {f"{mounted}/nope.csv": "no such file or folder",
             f"{mounted}/zipped.csv": "it is a ZIP archive, not a CSV",
             f"{mounted}/header-only.csv": r"no data rows \(header only\)",
             f"{mounted}/short.csv": "missing column",
             "nosuch://bucket/a.csv": r"this Spark has no Hadoop client for nosuch:// \(add its connector",
             "s3a://bucket/a.csv": r"this Spark has no Hadoop client for s3a:// \(add its connector, e\.g\. hadoop-aws"}
    for uri, message in cases.items():
        with pytest.raises(IngestError, match=re.escape(uri) + ": " + message):
            engine.ingest([uri], tmp_path / "ev")
        with pytest.raises(IngestError, match=re.escape(uri) + ": " + message):
            engine.score_file(uri, tmp_path / "s.parquet", EventCountScorer(), ModelRef("toy", "1", "m"),
                              ingest_config=IngestConfig())
    assert not (tmp_path / "ev" / "manifest.json").exists() and not (tmp_path / "s.parquet").exists()


def test_hadoop_settings_reach_a_session_that_was_already_running(engine: SparkEngine, tmp_path: Path) -> None:
    """A second start in the same process (a Prefect worker running another flow) gets the running session; its
    spark.hadoop.* settings (here a mount table) must still apply, or inputs at its URIs cannot be found."""
    (tmp_path / "t.csv").write_text("\n".join([HEADER, *_rows(3)]) + "\n")
    again = SparkEngine.start(SparkConfig(master="local[2]", conf=(
        ("spark.hadoop.fs.viewfs.mounttable.again.link./raw", tmp_path.as_uri()),)))
    assert again.spark is engine.spark
    result = again.ingest(["viewfs://again/raw/t.csv"], tmp_path / "ev")
    assert result.manifest["totals"] == ingest([tmp_path / "t.csv"], tmp_path / "ev-polars").manifest["totals"]


def test_cli_reads_uris_with_the_spark_engine_and_refuses_them_without(inputs: list[Path], tmp_path: Path) -> None:
    """`txseq ingest viewfs://… --engine spark --spark-conf <mount table>` in a subprocess gives the polars engine's
    counts on the files; the polars engine refuses a URI, input or output, by name."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TXSEQ_DATA_ROOT": str(tmp_path)}
    key, target = _mount_conf(inputs[0].parent)
    uri = f"{MOUNT}/exports/a.csv"
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", uri, "--out", str(tmp_path / "ev"), "--engine", "spark",
           "--spark-master", "local[2]", "--spark-conf", f"{key}={target}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = ingest(inputs[:1], tmp_path / "ev-polars")
    manifest = json.loads((tmp_path / "ev" / "manifest.json").read_text())
    assert manifest["totals"] == expected.manifest["totals"] and manifest["files"][0]["path"] == uri
    polars = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", "hdfs://nn:8020/exports/a.parquet",
                             "--out", str(tmp_path / "ev2")], capture_output=True, text=True, env=env, timeout=300)
    assert polars.returncode == 2 and "hdfs://nn:8020/exports/a.parquet: the polars engine reads paths" in polars.stderr
    assert "--engine spark" in polars.stderr and not (tmp_path / "ev2").exists()
    score = subprocess.run([sys.executable, "-m", "pipeline.cli", "score", "--input", "s3a://bucket/new.parquet",
                            "--output", str(tmp_path / "s.parquet")], capture_output=True, text=True, env=env,
                           timeout=300)  # refused before any model is looked up
    assert score.returncode == 2 and "s3a://bucket/new.parquet: the polars engine reads paths" in score.stderr
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", str(inputs[0]), "--out",
                          "hdfs://nn:8020/events"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and "hdfs://nn:8020/events: the polars engine writes paths" in out.stderr


def test_missing_java_is_an_error_naming_what_to_install(inputs: list[Path], tmp_path: Path) -> None:
    """`txseq ingest --engine spark` with JAVA_HOME pointing nowhere, then with no java on PATH: exit 2 and a line
    saying what to install, before any Spark starts (no skip: this needs pyspark, which the project installs)."""
    if not os.environ.get("CI"):
        pytest.importorskip("pyspark")  # without it the error names pyspark first (CI installs it)
    no_java = tmp_path / "bin"
    no_java.mkdir()
    base = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "PATH")}
    base |= {"PYTHONPATH": str(ROOT), "TXSEQ_DATA_ROOT": str(tmp_path), "PATH": str(no_java)}
    cmd = [sys.executable, "-m", "pipeline.cli", "ingest", str(inputs[0]), "--out", str(tmp_path / "ev"),
           "--engine", "spark"]
    for env, message in (({**base, "JAVA_HOME": str(tmp_path / "no-jdk")}, r"no-jdk/bin/java is not runnable"),
                         (base, r"no Java runtime found \(no `java` on PATH, JAVA_HOME unset\)")):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        assert re.search(message + r".*JDK 17\+.*apt-get install openjdk-17-jre-headless", done.stderr), done.stderr
        assert not (tmp_path / "ev" / "manifest.json").exists()


def test_spark_conf_items_parse_or_fail_with_the_item() -> None:
    assert parse_conf(["spark.executor.memory=8g", "spark.x=a=b"]) == (("spark.executor.memory", "8g"), ("spark.x", "a=b"))
    with pytest.raises(SparkError, match="'spark.executor.memory'"):
        parse_conf(["spark.executor.memory"])


def test_local_mode_gets_a_quarter_of_the_memory_and_a_cluster_keeps_its_own() -> None:
    gib = 2**30
    assert local_memory_defaults("local[2]", 24 * gib) == {"spark.driver.memory": "6g"}
    assert local_memory_defaults("local[*]", 2 * gib) == {"spark.driver.memory": "1g"}  # never below Spark's own
    assert local_memory_defaults("local", 1024 * gib) == {"spark.driver.memory": "32g"}
    assert local_memory_defaults("spark://head:7077", 24 * gib) == {}
    assert local_memory_defaults(None, 24 * gib) == {}  # spark-submit decides
    assert local_memory_defaults("local[2]", None) == {}


def test_out_of_memory_names_the_setting_and_other_failures_blame_the_input() -> None:
    oom = failure("big.csv", RuntimeError("An error occurred while calling o556.collectToPython.\n: org.apache.spark.SparkException: "
                  "Job aborted ... java.lang.OutOfMemoryError: Java heap space"))
    assert isinstance(oom, SparkError)
    assert "big.csv" in str(oom) and "spark.driver.memory" in str(oom) and "cannot be read" not in str(oom)
    bad = failure("bad.csv.gz", RuntimeError("An error occurred\nEOFError: Compressed file ended before the end-of-stream marker"))
    assert isinstance(bad, IngestError) and "cannot be read to the end: EOFError" in str(bad)
