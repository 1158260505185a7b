"""Bad input through `ingest` and `score`: every case is a real file written here, and ends either in a clear
file-level error (exit code 2, the message names the file and the problem, no traceback, nothing left behind) or in
rows in the rejects output with a reason, with the reconciliation holding:

- ingest: rows in = accepted + rejected (manifest), and the events and rejects parts hold every source row once;
- score: input rows = rows in the rejects + rows of scored customers, and exactly the customers with at least one
  valid row are scored (one row each).

Every case goes through `txseq ingest` as a subprocess. Through scoring, file-level cases run `txseq score` as a
subprocess and row-level cases call `pipeline.scoring.batch.score_file` with the session's registered model (the
same function the CLI calls after loading the model). The CASES table is the list the README counts.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import re
import subprocess
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schema as S
from pipeline.scoring.batch import score_file
from pipeline.ingest.rules import IngestError, validate
from pipeline.ingest.labels import read_labels
from pipeline.io import open_table

from conftest import TXSEQ, Session, files_under, no_traceback

HEADER = ",".join(S.RAW_COLUMNS)


def line(cid: object = 1001, dt: str = "5 10:00:01", mcc: object = 5411, tr: object = 1010, amount: object = "-120.5",
         term: object = "") -> str:
    return f"{cid},{dt},{mcc},{tr},{amount},{term}"


def good_lines(n: int = 6, cid: int = 1001, first_day: int = 0) -> list[str]:
    """Valid rows of one customer, codes seen in training, distinct times."""
    codes = [(5411, 1010), (6011, 2010), (4814, 1030), (5499, 1110)]
    return [line(cid, f"{first_day + i // 3} {8 + i % 12:02d}:{(7 * i) % 60:02d}:{(13 * i) % 60:02d}",
                 *codes[i % len(codes)], f"-{100 + 17 * i}.25") for i in range(n)]


def csv_text(*rows: str, header: str = HEADER, sep: str = ",", newline: str = "\n") -> bytes:
    text = newline.join([header, *rows]) + newline
    return (text.replace(",", sep) if sep != "," else text).encode()


def write_bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return write


def write_parquet(name: str, table: pa.Table, cut: float | None = None) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        path = folder / name
        pq.write_table(table, path)
        if cut is not None:
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * cut)])
        return path

    return write


def truncated_gzip(name: str) -> Callable[[Path], Path]:
    rows = [r for c in range(1001, 1201) for r in good_lines(20, c)]

    def write(folder: Path) -> Path:
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            gz.write(csv_text(*rows))
        data = buf.getvalue()
        path = folder / name
        path.write_bytes(data[: int(len(data) * 0.6)])  # ends early: no trailer, last block cut
        return path

    return write


@dataclass(frozen=True)
class Case:
    """One bad input. `error`: substrings of the file-level error; else `rejected`: reason -> rows rejected."""

    id: str
    what: str  # the README's wording
    write: Callable[[Path], Path]
    error: tuple[str, ...] = ()
    rejected: dict[str, int] = field(default_factory=dict)
    rows: int = 0  # data rows written (row-level cases)

    @property
    def file_level(self) -> bool:
        return bool(self.error)


def rows_case(id: str, what: str, rows: list[str], rejected: dict[str, int], raw: bytes | None = None,
              name: str = "input.csv") -> Case:
    return Case(id, what, write_bytes(name, raw if raw is not None else csv_text(*rows)), rejected=rejected,
                rows=len(rows))


_typed = pa.table({
    S.CUSTOMER_ID: pa.array([1001.0, 1001.0, 1002.5, 1003.0], pa.float64()),  # a float id column: 1002.5 is no id
    S.TR_DATETIME: pa.array(["1 10:00:00", "1 11:00:00", "2 10:00:00", "3 10:00:00"]),
    S.MCC_CODE: pa.array([5411, 6011, 5411, 5411], pa.int64()),
    S.TR_TYPE: pa.array([1010, 1010, 1010, 1010], pa.int32()),
    S.AMOUNT: pa.array(["-12.5", "abc", "-3", "7"]),  # amounts stored as text
})
_good_parquet = pa.table({c: pa.array([r.split(",")[i] for r in good_lines(400)]) for i, c in enumerate(S.RAW_COLUMNS)})
_utf8_rows = [*good_lines(4), line(1002, term="caf\udce9"), line(1003, mcc="54\udcff1")]
_cap_rows = good_lines(600, cid=1005)  # the model's sequences keep the latest 200 events

CASES: list[Case] = [
    Case("empty_file", "empty file (0 bytes)", write_bytes("input.csv", b""), error=("file is empty",)),
    Case("header_only", "header only", write_bytes("input.csv", csv_text()), error=("no data rows",)),
    Case("wrong_delimiter", "wrong delimiter (tab)", write_bytes("input.csv", csv_text(*good_lines(), sep="\t")),
         error=("missing column", "delimiter")),
    Case("missing_column", "missing column (amount)",
         write_bytes("input.csv", csv_text(*[r.rsplit(",", 2)[0] + "," for r in good_lines()],
                                           header="customer_id,tr_datetime,mcc_code,tr_type,term_id")),
         error=("missing column(s) amount",)),
    Case("extra_column", "extra column", write_bytes("input.csv", csv_text(*[r + ",x" for r in good_lines()],
                                                                           header=HEADER + ",comment")),
         error=("unknown column(s) comment",)),
    Case("not_a_table", "random bytes named .csv", write_bytes("input.csv", random.Random(0).randbytes(4000)),
         error=("missing column",)),
    rows_case("wrong_type_text", "columns of the wrong type (text in integer columns)",
              [*good_lines(3), line(mcc="54x1"), line(cid="-5"), line(tr="1.5"), line(cid="12ab")],
              {"not_an_integer": 4}),
    Case("wrong_type_parquet", "Parquet columns of the wrong type (float ids, text amounts)",
         write_parquet("input.parquet", _typed), rejected={"not_an_integer": 1, "unparseable_amount": 1}, rows=4),
    rows_case("datetime_malformed", "tr_datetime malformed",
              [*good_lines(3), line(dt="2020-01-01 10:00:00"), line(dt="12 25:00:00"), line(dt="12 10:61:00"),
               line(dt="abc"), line(dt="12"), line(dt="12 10:00:61")],
              {"unparseable_datetime": 6}),
    rows_case("datetime_second_60", "tr_datetime with :60 seconds (read as :59)",
              [*good_lines(3), line(1002, dt="12 10:00:60"), line(1002, dt="12 23:59:60")], {}),
    rows_case("negative_day", "tr_datetime with a negative day (and one past max_day)",
              [*good_lines(3), line(dt="-3 10:00:00"), line(1002, dt="-1 00:00:00"), line(dt="99999 10:00:00")],
              {"day_out_of_range": 3}),
    rows_case("amount_nan_inf_huge", "NaN / inf / huge / unparseable / empty amounts",
              [*good_lines(3), line(amount="nan"), line(amount="inf"), line(amount="-Infinity"),
               line(amount="1e400"), line(amount="2e13"), line(amount='"1,5"'), line(amount="")],
              {"non_finite_amount": 3, "amount_out_of_range": 2, "unparseable_amount": 1, "missing_value": 1}),
    rows_case("duplicate_rows", "duplicate rows (date-only repeats are kept)",
              [*good_lines(3), line(dt="7 10:00:01"), line(dt="7 10:00:01"), line(dt="7 10:00:01"),
               line(1002, dt="8 00:00:00"), line(1002, dt="8 00:00:00")],
              {"duplicate_row": 2}),
    rows_case("single_transaction", "customer with a single transaction", [*good_lines(5), line(1009)], {}),
    rows_case("over_cap", "customer with 3x the truncation cap of events", _cap_rows, {}),
    rows_case("unseen_codes", "MCC codes and tr_types never seen in training",
              [*good_lines(3), line(1002, mcc=1, tr=1), line(1002, dt="6 11:00:00", mcc=9998, tr=9997)], {}),
    rows_case("non_utf8", "non-UTF-8 bytes", _utf8_rows, {"invalid_utf8": 2},
              raw="\n".join([HEADER, *_utf8_rows, ""]).encode("utf-8", "surrogateescape")),  # lone 0xE9, 0xFF
    rows_case("missing_values", "empty required fields", [*good_lines(3), line(cid=""), line(mcc=""), line(dt="")],
              {"missing_value": 3}),
    rows_case("semicolon_bom_crlf", "';' delimiter, UTF-8 BOM, CRLF line ends (accepted)", good_lines(5), {},
              raw=b"\xef\xbb\xbf" + csv_text(*good_lines(5), sep=";", newline="\r\n")),
    Case("truncated_parquet", "truncated Parquet file", write_parquet("input.parquet", _good_parquet, cut=0.6),
         error=("not a readable Parquet",)),
    Case("not_parquet", "random bytes named .parquet",
         write_bytes("input.parquet", random.Random(1).randbytes(3000)), error=("not a readable Parquet",)),
    Case("truncated_gzip", "gzip that ends early", truncated_gzip("input.csv.gz"), error=("cannot be read to the end",)),
]

def fifo(name: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        os.mkfifo(folder / name)
        return folder / name

    return write


def symlink_to_dev_zero(name: str) -> Callable[[Path], Path]:
    def write(folder: Path) -> Path:
        (folder / name).symlink_to("/dev/zero")
        return folder / name

    return write


def zip_named_gz(name: str) -> Callable[[Path], Path]:
    """A ZIP archive whose member holds NUL, CR and an ESC colour sequence (none of it may reach the terminal)."""
    def write(folder: Path) -> Path:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("transactions.csv", csv_text(*good_lines()) + b"\x00\r\x1b[31mred\x1b[0m\n" * 40)
        (folder / name).write_bytes(buf.getvalue())
        return folder / name

    return write


_nested = pa.table({
    S.CUSTOMER_ID: pa.array([1001, 1002], pa.int64()), S.TR_DATETIME: pa.array(["1 10:00:00", "2 10:00:00"]),
    S.MCC_CODE: pa.array([5411, 5411], pa.int64()), S.TR_TYPE: pa.array([1010, 1010], pa.int64()),
    S.AMOUNT: pa.array([["-1.5"], ["2"]], pa.list_(pa.string())),  # a list per row
})
_ragged = [*good_lines(4), line(1002)[: -len(",")], line(1003) + ",x,y", line(1004, amount='"1,5"')]
_blank_rows = [*good_lines(3), line(1002), line(1003)]
_number_rows = [*good_lines(3), line(cid="+101"), line(cid="0102"), line(1004, dt="٥ 10:00:01"),
                line(1005, mcc="+5411"), line(1006, mcc="0742"), line(1007, tr="１０１０"), line(1008, amount="-١٢")]

CASES += [
    Case("fifo", "a named pipe (FIFO) as the input", fifo("input.csv"), error=("named pipe (FIFO)", "not a regular file")),
    Case("dev_zero", "a symlink to /dev/zero as the input", symlink_to_dev_zero("input.csv"),
         error=("symlink to /dev/zero", "character device")),
    Case("zip_named_gz", "a ZIP archive named .gz (binary content)", zip_named_gz("input.csv.gz"),
         error=("a ZIP archive, not gzip",)),
    Case("duplicate_columns", "a column name twice (two amount columns)",
         write_bytes("input.csv", csv_text(*[r.replace(",-", ",-1,-", 1) for r in good_lines()],
                                           header="customer_id,tr_datetime,mcc_code,tr_type,amount,amount,term_id")),
         error=("column(s) amount appear more than once",)),
    Case("nested_parquet", "a Parquet list column (amount as list<string>)", write_parquet("input.parquet", _nested),
         error=("column amount holds List(String) values", "expected one value per row")),
    rows_case("wrong_field_count", "rows with too few and too many fields",
              _ragged, {"wrong_field_count": 2, "unparseable_amount": 1}),
    rows_case("blank_lines", "blank and whitespace-only lines (not records, counted)", _blank_rows, {},
              raw=(HEADER + "\n\n" + "\n".join(_blank_rows[:3]) + "\n \n\t\r\n\n" + "\n".join(_blank_rows[3:]) + "\n\n").encode()),
    rows_case("number_forms", "ids with '+' or leading zeros, non-ASCII digits (mcc '0742' accepted)", _number_rows,
              {"not_an_integer": 3, "ambiguous_id": 1, "unparseable_datetime": 1, "unparseable_amount": 1}),
]
BLANK_LINES = {"blank_lines": 5}  # case id -> blank lines the manifest must count
IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS)


def _assert_file_error(proc, path: Path, case: Case) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    no_traceback(proc)
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", proc.stderr), f"raw bytes in the message: {proc.stderr!r}"
    assert len(proc.stderr) < 1000, proc.stderr  # what is echoed from the file is cut
    err = proc.stderr.strip().splitlines()[-1]
    assert str(path) in err, err
    for part in case.error:
        assert part in err, err


# --- ingest -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ingest(case: Case, session: Session, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    path = case.write(tmp_path / "in")
    out = tmp_path / "events"
    proc = session.txseq("ingest", path, "--out", out)
    if case.file_level:
        _assert_file_error(proc, path, case)
        assert not [p for p in out.rglob("*") if p.is_file()], f"left behind: {files_under(out)}"
        return
    assert proc.returncode == 0, proc.stderr[-3000:]
    no_traceback(proc)
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    (entry,) = manifest["files"]
    rejected = sum(case.rejected.values())
    assert (entry["rows_in"], entry["accepted"], entry["rejected"]) == (case.rows, case.rows - rejected, rejected)
    assert entry["rejected_by_reason"] == case.rejected
    assert entry["blank_lines"] == BLANK_LINES.get(case.id, 0)
    for reason, n in case.rejected.items():  # the summary line says what was set aside, by reason
        assert f"{n:,} {reason}" in proc.stdout, proc.stdout
    events = pl.read_parquet(out / "events" / entry["part"])
    rejects = pl.read_parquet(out / "rejects" / entry["part"])
    assert sorted([*events[S.SOURCE_ROW], *rejects[S.SOURCE_ROW]]) == list(range(1, case.rows + 1))
    assert rejects[S.REASON].null_count() == 0
    # a duplicate or a record of the wrong shape is the whole row, not one column
    whole_row = pl.col(S.REASON).str.starts_with("duplicate_") | pl.col(S.REASON).is_in(["wrong_field_count", "record_too_long"])
    assert rejects.filter(~whole_row)[S.REJECT_COLUMN].null_count() == 0
    assert dict(Counter(rejects[S.REASON].to_list())) == case.rejected
    if case.id == "datetime_second_60":
        seconds = events.filter(pl.col(S.CUSTOMER_ID) == 1002).sort(S.SOURCE_ROW)[S.SECOND_OF_DAY].to_list()
        assert seconds == [10 * 3600 + 59, 23 * 3600 + 59 * 60 + 59]
    if case.id == "non_utf8":
        assert set(rejects[S.REJECT_COLUMN]) == {S.TERM_ID, S.MCC_CODE}


# --- score ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_score(case: Case, session: Session, scorer, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    path = case.write(tmp_path / "in")
    out_dir = tmp_path / "scores"
    output = out_dir / "scores.parquet"
    if case.file_level:
        proc = session.txseq("score", "--model", session.model_uri, "--input", path, "--output", output)
        _assert_file_error(proc, path, case)
        assert not [p for p in out_dir.rglob("*") if p.is_file()] if out_dir.exists() else True, files_under(out_dir)
        assert not any(p.name.endswith(".staging") for p in out_dir.glob(".*")) if out_dir.exists() else True
        return
    model, ref = scorer
    result = score_file(path, output, model, ref)
    scores, rejects = pl.read_parquet(result.output), pl.read_parquet(result.rejects)
    rejected = sum(case.rejected.values())
    assert (result.input_rows, result.rejected_rows) == (case.rows, rejected)
    assert dict(Counter(rejects[S.REASON].to_list())) == case.rejected
    with open_table(path) as table:  # what ingest accepts, scored customer by customer
        valid = validate(table.lf, str(path), model.ingest)[0].collect()
    assert valid.height + rejects.height == case.rows
    assert sorted(scores[S.CUSTOMER_ID]) == sorted(valid[S.CUSTOMER_ID].unique())
    assert result.customers == scores.height == scores[S.CUSTOMER_ID].n_unique()
    assert scores[S.PROBABILITY].is_between(0, 1).all() and scores[S.PROBABILITY].is_finite().all()
    assert set(scores[S.MODEL_VERSION]) == {ref.version}
    if case.id == "over_cap":
        from pipeline.sequences.table import build_sequences

        seq = build_sequences(valid.lazy(), model.vocab, model.sequence, labels=None)
        assert (seq[S.SEQ_LENGTH].to_list(), seq[S.SEQ_TOTAL].to_list()) == ([model.sequence.max_len], [600])
    if case.id == "unseen_codes":
        assert not {1, 9998} & set(model.vocab.mcc) and 1002 in scores[S.CUSTOMER_ID].to_list()
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")], "temp files left behind"


# --- labels (they enter through `txseq sequences --labels`) -----------------------------------------------------------

LABEL_CASES = {
    "gender_not_0_1": ("customer_id,gender\n1001,1\n1002,2\n1003,M\n", "gender not 0/1"),
    "duplicated_customer": ("customer_id,gender\n1001,1\n1002,0\n1001,0\n", "repeated customer_id"),
    "wrong_header": ("client,sex\n1001,1\n", "expected columns customer_id, gender"),
    "non_integer_id": ("customer_id,gender\nabc,1\n", "customer_id not an integer"),
}


@pytest.mark.parametrize("case", list(LABEL_CASES), ids=list(LABEL_CASES))
def test_labels(case: str, session: Session, tmp_path: Path) -> None:
    text, problem = LABEL_CASES[case]
    path = tmp_path / "gender_train.csv"
    path.write_text(text)
    with pytest.raises(IngestError, match=problem):
        read_labels(path)
    out = tmp_path / "sequences"
    proc = session.txseq("sequences", "--events", session.data.events, "--labels", path, "--out", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    no_traceback(proc)
    assert str(path) in proc.stderr and problem in proc.stderr
    assert not [p for p in out.rglob("*") if p.is_file()] if out.exists() else True


# --- a bad file in a landing folder ------------------------------------------------------------------------------------


def test_a_bad_file_in_the_landing_folder_does_not_stop_the_others(session: Session, tmp_path: Path) -> None:
    """The bad files are reported (exit status 2, each named) and left unscored; the good one is scored."""
    from pipeline.scoring.landing import read_ledger

    landing, out = tmp_path / "landing", tmp_path / "scores"
    landing.mkdir()
    bad = [case.write(tmp_path) for case in CASES if case.id in ("empty_file", "truncated_gzip")]
    for i, path in enumerate(bad):
        path.rename(landing / f"bad{i}{''.join(path.suffixes)}")
    (landing / "good.csv").write_bytes(csv_text(*good_lines(5), *good_lines(4, cid=1002)))
    proc = session.txseq("score", "--model", session.model_uri, "--landing", landing, "--out-dir", out)
    assert proc.returncode == 2, proc.stderr[-2000:]
    no_traceback(proc)
    assert "1 new file(s) scored" in proc.stdout and "2 failed" in proc.stdout
    assert str(landing / "bad0.csv") in proc.stderr and "file is empty" in proc.stderr
    assert str(landing / "bad1.csv.gz") in proc.stderr and "cannot be read to the end" in proc.stderr
    (record,) = read_ledger(out)
    assert Path(record["source"]).name == "good.csv" and record["customers"] == 2
    stem = Path(record["output"]).stem
    assert record["drift"] == [f"{stem}.drift.json", f"{stem}.drift.png"]  # the model stores a drift reference
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("_")) == sorted(
        [record["output"], record["rejects"], *record["drift"]])


# --- a model that cannot be loaded (`txseq score --model ...`) -----------------------------------------------------------

# case -> (model URI, extra environment, expected problem). "{root}" is the session's data root, "{tmp}" the test's
# temporary folder; "gone" is a version registered here whose artifacts are then deleted.
MODEL_CASES = {
    "unknown_model_name": ("models:/no-such-model@champion", {}, "name=no-such-model not found"),
    "alias_not_set": ("models:/reliability-model@nightly", {}, "alias nightly not found"),
    "version_not_registered": ("models:/reliability-model/999", {}, "version=999) not found"),
    "unknown_run": ("runs:/0123456789abcdef0123456789abcdef/model", {}, "Run with id"),
    "artifacts_deleted": ("models:/reliability-gone/1", {}, "cannot load model"),
    "tracking_server_unreachable": ("models:/reliability-model@champion",
                                    {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}, "is unreachable"),
    "tracking_database_missing": ("models:/reliability-model@champion",
                                  {"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/no-store/mlflow.db"}, "does not exist"),
}


def _register_without_artifacts(session: Session, tmp_path: Path) -> None:
    """`reliability-gone` version 1: a copy of the champion's files, registered, then deleted."""
    import shutil

    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(session.tracking_uri)
    if client.search_registered_models("name = 'reliability-gone'"):
        return
    local = Path(mlflow.artifacts.download_artifacts(session.model_uri, dst_path=str(tmp_path / "gone"),
                                                     tracking_uri=session.tracking_uri))
    client.create_registered_model("reliability-gone")
    client.create_model_version("reliability-gone", source=local.resolve().as_uri())
    shutil.rmtree(local)


@pytest.mark.parametrize("case", list(MODEL_CASES), ids=list(MODEL_CASES))
def test_model(case: str, session: Session, tmp_path: Path) -> None:
    """One line on stderr names the model URI and the problem; exit status 2, no traceback, no output, and a
    missing store is not created. (The score flow's failure message: tests/flows/test_flows.py.)"""
    uri, env, problem = MODEL_CASES[case]
    env = {k: v.format(root=session.root, tmp=tmp_path) for k, v in env.items()}
    if case == "artifacts_deleted":
        _register_without_artifacts(session, tmp_path)
    source = tmp_path / "in.csv"
    source.write_bytes(csv_text(*good_lines(5)))
    output = tmp_path / "scores" / "scores.parquet"
    t0 = time.monotonic()
    proc = session.txseq("score", "--model", uri, "--input", source, "--output", output, env=env)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    no_traceback(proc)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("txseq score: error:")]
    assert len(errors) == 1 and uri in errors[0] and problem in errors[0], proc.stderr[-2000:]
    assert errors[0].startswith(f"txseq score: error: cannot load model {uri}")
    assert not output.parent.exists() or not any(output.parent.iterdir()), files_under(output.parent)
    assert not (tmp_path / "no-store").exists()
    assert time.monotonic() - t0 < 60


# --- inputs that used to blow up memory (peak RSS of the `txseq ingest` child, measured after it exits) ---------------

PEAK_RSS_LIMIT = 1.5 * 2**30  # generous: the figures in docs/readme/reliability.md are ~0.15 GiB; 10.8 GiB before


def _ingest_peak_rss(session: Session, path: Path, out: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run `txseq ingest` and return (finished process, its peak RSS in bytes) from the child's own rusage."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:  # files: wait4 reaps the child
        proc = subprocess.Popen([str(TXSEQ), "ingest", str(path), "--out", str(out)], stdout=out_f, stderr=err_f,
                                env=session.env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0), err_f.seek(0)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out_f.read(), err_f.read())
    return done, usage.ru_maxrss * 1024  # Linux: KiB


def _gzip_stream(path: Path, parts) -> Path:
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as fh:
        for p in parts:
            fh.write(c.compress(p))
        fh.write(c.flush())
    return path


def test_a_65_kb_gzip_of_64_mib_of_blank_lines_is_counted_not_rejected(session: Session, tmp_path: Path) -> None:
    rows = good_lines(4)
    head, tail = ("\n".join([HEADER, *rows[:2]]) + "\n").encode(), ("\n".join(rows[2:]) + "\n").encode()
    path = _gzip_stream(tmp_path / "blank.csv.gz", [head, *([b"\n" * 2**20] * 64), tail])
    assert path.stat().st_size < 100_000
    proc, peak = _ingest_peak_rss(session, path, tmp_path / "events")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    (entry,) = json.loads((tmp_path / "events" / "manifest.json").read_text())["files"]
    assert (entry["rows_in"], entry["accepted"], entry["blank_lines"]) == (4, 4, 64 * 2**20)
    assert "67,108,864 blank line(s) skipped" in proc.stdout
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**30:.2f} GiB"


def test_a_300_mib_field_is_rejected_without_holding_it(session: Session, tmp_path: Path) -> None:
    from pipeline.raw_csv import MAX_RECORD_BYTES

    rows = good_lines(4)
    head = ("\n".join([HEADER, *rows[:2]]) + "\n").encode()
    path = _gzip_stream(tmp_path / "long.csv.gz", [head, b"1003,5 10:00:01,5411,1010,-1", *([b"7" * 2**20] * 300),
                                                   (",\n" + "\n".join(rows[2:]) + "\n").encode()])
    assert path.stat().st_size < 1_000_000 and 300 * 2**20 > MAX_RECORD_BYTES
    proc, peak = _ingest_peak_rss(session, path, tmp_path / "events")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    (entry,) = json.loads((tmp_path / "events" / "manifest.json").read_text())["files"]
    assert (entry["rows_in"], entry["accepted"], entry["rejected_by_reason"]) == (5, 4, {"record_too_long": 1})
    rejects = pl.read_parquet(tmp_path / "events" / "rejects" / entry["part"])
    assert rejects[S.SOURCE_ROW].to_list() == [3] and (rejects[S.AMOUNT].str.len_bytes().fill_null(0) < 100).all()
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 2**30:.2f} GiB"


# --- folders and several inputs: all or none ----------------------------------------------------------------------------


def _manifest_files(out: Path) -> list[str]:
    import json

    return [Path(f["path"]).name for f in json.loads((out / "manifest.json").read_text())["files"]] \
        if (out / "manifest.json").exists() else []


def test_a_folder_of_csv_and_csv_gz_exports_is_ingested_file_by_file(session: Session, tmp_path: Path) -> None:
    daily = tmp_path / "daily"
    daily.mkdir()
    (daily / "2024-01-02.csv").write_bytes(csv_text(*good_lines(3, cid=1002)))
    (daily / "2024-01-01.csv.gz").write_bytes(gzip.compress(csv_text(*good_lines(4, cid=1001))))
    proc = session.txseq("ingest", daily, "--out", tmp_path / "events")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _manifest_files(tmp_path / "events") == ["2024-01-01.csv.gz", "2024-01-02.csv"]  # sorted
    assert "7 rows in: 7 accepted, 0 rejected" in proc.stdout


def test_a_folder_with_a_broken_part_leaves_nothing_behind(session: Session, tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "a.csv").write_bytes(csv_text(*good_lines(3, cid=1001)))
    truncated_gzip("b.csv.gz")(parts)
    (parts / "c.csv").write_bytes(csv_text(*good_lines(3, cid=1003)))
    out = tmp_path / "events"
    proc = session.txseq("ingest", parts, "--out", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert str(parts / "b.csv.gz") in err and "cannot be read to the end" in err and f"not ingested: {parts}" in err
    assert not [p for p in out.rglob("*") if p.is_file()], files_under(out)


def test_a_list_of_files_says_what_was_committed_and_atomic_commits_none(session: Session, tmp_path: Path) -> None:
    a, c = tmp_path / "a.csv", tmp_path / "c.csv"
    a.write_bytes(csv_text(*good_lines(3, cid=1001)))
    c.write_bytes(csv_text(*good_lines(3, cid=1003)))
    b = truncated_gzip("b.csv.gz")(tmp_path)
    proc = session.txseq("ingest", a, b, c, "--out", tmp_path / "events")
    assert proc.returncode == 2
    assert f"committed: {a}; not ingested: {b}, {c}" in proc.stderr, proc.stderr
    assert _manifest_files(tmp_path / "events") == ["a.csv"]
    proc = session.txseq("ingest", a, b, c, "--out", tmp_path / "atomic", "--atomic")
    assert proc.returncode == 2 and "nothing ingested (--atomic)" in proc.stderr, proc.stderr
    assert not [p for p in (tmp_path / "atomic").rglob("*") if p.is_file()]


# --- scoring checks its inputs before it loads a model ---------------------------------------------------------------


def test_score_checks_a_truncated_gzip_before_the_model(session: Session, tmp_path: Path) -> None:
    """With a model that does not exist, the error is still the input's: the input was checked first."""
    path = truncated_gzip("input.csv.gz")(tmp_path)
    proc = session.txseq("score", "--model", "models:/no-such-model@champion", "--input", path,
                         "--output", tmp_path / "scores.parquet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "cannot be read to the end" in proc.stderr and "no-such-model" not in proc.stderr


def test_score_help_names_the_real_rejects_path(session: Session, tmp_path: Path) -> None:
    from pipeline.scoring.batch import default_rejects_path

    proc = session.txseq("score", "--help", env={"COLUMNS": "200"})
    assert proc.returncode == 0 and "<stem>.rejects.parquet" in proc.stdout, proc.stdout
    assert default_rejects_path(Path("out/scores.parquet")) == Path("out/scores.rejects.parquet")
