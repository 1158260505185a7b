"""Declared source mappings (`pipeline.sources.mapping`): the TOML file checked key by key, and three public export
layouts besides Sberbank — the Czech PKDD'99 `trans.asc`, the ptls age-group layout and a Rosbank-style export — each a
small file written here, each through ingest → sequences → train (tiny preset) → score with the registered model, which
carries the source mapping and the ingest rules."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest

from pipeline import schema as S
from pipeline.ingest.rules import IngestConfig
from pipeline.ingest.labels import LabelSpec
from pipeline.ingest.files import ingest, read_events, read_rejects
from pipeline.sequences.table import SequenceConfig, TableRules, run_sequences
from pipeline.settings import Settings
from pipeline.sources.mapping import SBERBANK, SourceError, load_source

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(1800)

CZECH_TOML = """
[source]
name = "czech-pkdd99"
delimiter = ";"
[columns]
customer_id = "account_id"
event_time = "date"
amount = "amount"
mcc_code = "k_symbol"
tr_type = "type"
[time]
format = "%y%m%d"
"""
PTLS_TOML = """
[source]
name = "ptls-age"
[columns]
customer_id = "client_id"
event_time = "trans_date"
amount = "amount_rur"
mcc_code = "small_group"
[time]
format = "day_number"
"""
ROSBANK_TOML = """
[source]
name = "rosbank"
[columns]
customer_id = "cl_id"
event_time = "TRDATETIME"
amount = "amount"
mcc_code = "MCC"
tr_type = "trx_category"
[time]
format = "%d%b%y:%H:%M:%S"
"""


# ---- the TOML file ---------------------------------------------------------------------------------------------


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "source.toml"
    path.write_text(text)
    return path


def test_a_declared_source_reads_back_typed(tmp_path: Path) -> None:
    source = load_source(_toml(tmp_path, CZECH_TOML))
    assert source.name == "czech-pkdd99" and source.delimiter == ";" and source.text_codes and source.declared
    assert source.export == {S.CUSTOMER_ID: "account_id", S.TR_DATETIME: "date", S.AMOUNT: "amount",
                             S.MCC_CODE: "k_symbol", S.TR_TYPE: "type"}
    assert source.calendar and source.day_limit is None  # dates: no day-number bound
    assert not SBERBANK.declared and SBERBANK.day_limit == 3650 and not SBERBANK.calendar
    config = IngestConfig(source=source, max_day=9000)
    assert IngestConfig.from_dict(config.to_dict()) == config
    assert IngestConfig.from_dict({"max_day": 5000}) == IngestConfig(max_day=5000)  # rules stored before sources


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('tr_type = "type"', 'tr_type = "type"\nbalance = "balance"'), "unknown key.*columns.balance"),
        (lambda t: t + "\n[extra]\n", "unknown table.*extra"),
        (lambda t: t.replace('customer_id = "account_id"\n', ""), "missing key.*columns.customer_id"),
        (lambda t: t.replace('format = "%y%m%d"', 'format = "yymmdd"'), "time.format 'yymmdd'"),
        (lambda t: t.replace('format = "%y%m%d"', 'format = "day_number"\norigin = "1993-13-01"'), "time.origin"),
        (lambda t: t.replace('delimiter = ";"', 'delimiter = ";;"'), "source.delimiter"),
        (lambda t: t.replace('tr_type = "type"', 'tr_type = "amount"'), "mapped to more than one field"),
        (lambda t: t.replace('name = "czech-pkdd99"', "name = 3"), "source.name"),
        (lambda t: t.replace("[time]", "[time\n"), "not valid TOML"),
    ],
)
def test_a_bad_source_file_is_an_error_naming_the_file_and_the_key(tmp_path: Path, edit, message: str) -> None:
    path = _toml(tmp_path, edit(CZECH_TOML))
    with pytest.raises(SourceError, match=message) as e:
        load_source(path)
    assert str(path) in str(e.value)


def test_the_cli_reports_a_bad_source_file_in_one_line(tmp_path: Path) -> None:
    bad = _toml(tmp_path, CZECH_TOML.replace('amount = "amount"', 'amount = "amount"\nfoo = "x"'))
    (tmp_path / "t.csv").write_text("a\n1\n")
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", str(tmp_path / "t.csv"), "--source", str(bad),
                           "--out", str(tmp_path / "ev")], capture_output=True, text=True, env=_env(tmp_path))
    assert proc.returncode == 2 and "columns.foo" in proc.stderr and str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- the three layouts, written here ----------------------------------------------------------------------------


def _customers(n: int, seed: int) -> tuple[np.random.Generator, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng, rng.integers(0, 2, n)


def write_czech(folder: Path, n: int = 60, seed: int = 0) -> tuple[Path, Path]:
    """trans.asc (";"-separated, quoted, YYMMDD dates, text categoricals, empty k_symbol) and a loan-status file."""
    rng, label = _customers(n, seed)
    lines = ['"trans_id";"account_id";"date";"type";"operation";"amount";"balance";"k_symbol";"bank";"account"']
    tid = 1
    for i, y in enumerate(label):
        account = 100 + i
        for _ in range(int(rng.integers(12, 30))):
            day = date(1993, 1, 1) + timedelta(days=int(rng.integers(0, 700)))
            kind = "VYDAJ" if rng.random() < 0.6 else "PRIJEM"
            k = rng.choice(["SIPO", "UROK", "POJISTNE", "SLUZBY"] if y else ["", "", "UVER", "SIPO"])
            amount = round(float(rng.gamma(2.0, 900.0 if y else 300.0)), 1)
            lines.append(f'{tid};{account};{day:%y%m%d};"{kind}";"VYBER";{amount};{amount * 3:.1f};"{k}";"";')
            tid += 1
    lines.append(f'{tid};101;931340;"VYDAJ";"VYBER";100.0;100.0;"SIPO";"";')  # 40th of the 13th month
    lines.append(f'{tid + 1};102;930105;"VYDAJ";"VYBER";12,5;100.0;"SIPO";"";')  # decimal comma
    trans = folder / "trans.asc"
    trans.write_text("\n".join(lines) + "\n")
    loans = folder / "loan.asc"
    loans.write_text('"account_id";"status"\n' + "".join(f'{100 + i};"{"B" if y else "A"}"\n' for i, y in enumerate(label)))
    return trans, loans


def write_ptls(folder: Path, n: int = 60, seed: int = 1) -> tuple[Path, Path]:
    """transactions_train.csv (client_id, trans_date as an integer day, small_group, amount_rur) and train_target.csv
    (client_id, bins: four age groups; the target is one group against the rest)."""
    rng, label = _customers(n, seed)
    rows = ["client_id,trans_date,small_group,amount_rur"]
    bins = []
    for i, y in enumerate(label):
        for _ in range(int(rng.integers(12, 30))):
            group = int(rng.integers(1, 5) if y else rng.integers(5, 9))
            rows.append(f"{i},{int(rng.integers(0, 730))},{group},{rng.gamma(2.0, 20.0):.3f}")
        bins.append(3 if y else int(rng.integers(0, 3)))
    rows.append("0,-4,1,10.0")  # before day 0
    trans = folder / "transactions_train.csv"
    trans.write_text("\n".join(rows) + "\n")
    target = folder / "train_target.csv"
    target.write_text("client_id,bins\n" + "".join(f"{i},{b}\n" for i, b in enumerate(bins)))
    return trans, target


def write_rosbank(folder: Path, n: int = 60, seed: int = 2) -> Path:
    """train.csv: cl_id, TRDATETIME like 21OCT17:00:00:00, MCC, trx_category, amount, target_flag (the label in the
    transactions export itself)."""
    rng, label = _customers(n, seed)
    rows = ["cl_id,TRDATETIME,MCC,trx_category,amount,target_flag"]
    for i, y in enumerate(label):
        for _ in range(int(rng.integers(12, 30))):
            moment = pd.Timestamp("2017-01-01") + pd.Timedelta(days=int(rng.integers(0, 300)),
                                                               seconds=int(rng.integers(0, 86400)))
            mcc = int(rng.choice([5411, 5812, 5977]) if y else rng.choice([5411, 6011, 4814]))
            category = rng.choice(["POS", "C2C_OUT"] if y else ["POS", "WD_ATM_ROS", "DEPOSIT"])
            rows.append(f"{i},{moment.strftime('%d%b%y:%H:%M:%S').upper()},{mcc},{category},{rng.gamma(2.0, 500.0):.2f},{y}")
    rows.append("1,32OCT17:00:00:00,5411,POS,10.00,0")
    path = folder / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TXSEQ_"))}
    env.update(PYTHONPATH=str(ROOT), TXSEQ_DATA_ROOT=str(root), TXSEQ_REGISTERED_MODEL="sources-tests",
               MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK="true")
    return env


def _train(root: Path, events: Path, sequences: Path, models: list[str]) -> str:
    """Train with the tiny preset and register; the URI of the last model registered."""
    from pipeline.training.run import run_comparison
    from pipeline.training.presets import get

    settings = Settings(root, f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", root / "mlflow" / "artifacts",
                        "sources-tests")
    result = run_comparison(sequences, events, get("tiny"), models, settings=settings, run_name="sources")
    assert all(r.metrics.get("test/auroc") is not None for r in result.results)
    mlflow.set_tracking_uri(settings.tracking_uri)
    return f"models:/sources-tests/{len(models)}"


def _check_reconciled(result, events: Path) -> None:
    assert result.rows_in == result.accepted + result.rejected
    assert read_events(events).select(pl.len()).collect().item() == result.accepted
    assert read_rejects(events).select(pl.len()).collect().item() == result.rejected


def test_czech_pkdd99_trans_asc(tmp_path: Path) -> None:
    trans, loans = write_czech(tmp_path)
    source = load_source(_toml(tmp_path, CZECH_TOML))
    result = ingest([trans], tmp_path / "events", IngestConfig(source=source))
    _check_reconciled(result, tmp_path / "events")
    rejects = read_rejects(tmp_path / "events").sort(S.SOURCE_ROW).collect()
    # the export's own column names, and the row
    assert rejects.select(S.REJECT_COLUMN, S.REASON).rows() == [("date", "unparseable_datetime"),
                                                                 ("amount", "unparseable_amount")]
    assert rejects[S.SOURCE_ROW].to_list() == [result.rows_in - 1, result.rows_in]
    events = read_events(tmp_path / "events").collect()
    assert events.schema[S.MCC_CODE] == pl.String and events[S.MCC_CODE].null_count() > 0  # empty k_symbol: missing
    # real weekdays: 1993-01-01 was a Friday (Monday = 0)
    first = events.filter(pl.col(S.TR_DATETIME) == "930101")
    if first.height:
        assert set(first[S.WEEKDAY].to_list()) == {4}
    assert (events[S.WEEKDAY].cast(pl.Int32) == ((events[S.DAY] + date(1970, 1, 1).weekday()) % 7)).all()

    seq = run_sequences(tmp_path / "events", loans, tmp_path / "sequences", SequenceConfig(max_len=64, min_count=1),
                        label=LabelSpec(column="status", positive="B", negative="A"))
    assert seq.n_labelled == 60
    rules = TableRules.load(tmp_path / "sequences")
    assert rules.ingest.source == source and rules.label.positive == "B"

    uri = _train(tmp_path / "root", tmp_path / "events", tmp_path / "sequences", ["gbdt", "transformer"])
    model = mlflow.pyfunc.load_model(uri)  # the transformer: text codes through the vocabulary
    export = pd.read_csv(trans, sep=";", dtype=str, keep_default_na=False)
    scores = model.predict(export.head(200))
    assert scores[S.CUSTOMER_ID].nunique() == len(scores) and scores[S.PROBABILITY].between(0, 1).all()
    assert set(scores[S.CUSTOMER_ID]) == set(export.head(200)["account_id"].astype(int))


def test_ptls_age_group_layout(tmp_path: Path) -> None:
    trans, target = write_ptls(tmp_path)
    source = load_source(_toml(tmp_path, PTLS_TOML))
    result = ingest([trans], tmp_path / "events", IngestConfig(source=source))
    _check_reconciled(result, tmp_path / "events")
    assert result.files[0].rejected_by_reason == {"day_out_of_range": 1}
    events = read_events(tmp_path / "events").collect()
    assert events.schema[S.MCC_CODE] == pl.String and events[S.TR_TYPE].null_count() == events.height  # unmapped
    # no calendar: the weekday is day % 7
    assert (events[S.WEEKDAY].cast(pl.Int32) == events[S.DAY] % 7).all()

    run_sequences(tmp_path / "events", target, tmp_path / "sequences", SequenceConfig(max_len=64, min_count=1),
                  label=LabelSpec(column="bins", positive="3", negative=None))  # one age group against the rest
    labelled = pl.read_parquet(tmp_path / "sequences" / "sequences.parquet").drop_nulls(S.LABEL)
    bins = pl.read_csv(target).join(labelled, left_on="client_id", right_on=S.CUSTOMER_ID)
    assert (bins[S.LABEL] == (bins["bins"] == 3).cast(pl.Int8)).all()

    uri = _train(tmp_path / "root", tmp_path / "events", tmp_path / "sequences", ["gbdt"])
    scores = mlflow.pyfunc.load_model(uri).predict(pd.read_csv(trans, dtype=str).head(100))
    assert len(scores) > 0 and scores[S.PREDICTION].isin([0, 1]).all()


def test_rosbank_layout_through_the_cli(tmp_path: Path) -> None:
    """Rosbank-style: the label is a column of the transactions export (repeated per row, the same each time);
    ingest, sequences and score through the real command line."""
    path = write_rosbank(tmp_path)
    toml = _toml(tmp_path, ROSBANK_TOML)
    root = tmp_path / "root"

    def txseq(*args: str | Path) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True,
                              text=True, env=_env(root), timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    txseq("ingest", path, "--source", toml, "--out", tmp_path / "events")
    events = read_events(tmp_path / "events").collect()
    assert events.schema[S.TR_TYPE] == pl.String and events[S.SECOND_OF_DAY].max() > 0  # the time of day is read
    assert read_rejects(tmp_path / "events").collect()[S.REJECT_COLUMN].to_list() == ["TRDATETIME"]
    txseq("sequences", "--events", tmp_path / "events", "--labels", path, "--label-column", "target_flag",
          "--out", tmp_path / "sequences", "--min-count", "1")
    _train(root, tmp_path / "events", tmp_path / "sequences", ["gbdt"])

    new = tmp_path / "new.csv"
    new.write_text(path.read_text())
    txseq("score", "--input", new, "--output", tmp_path / "scores.parquet", "--model", "models:/sources-tests/1")
    scores = pl.read_parquet(tmp_path / "scores.parquet")
    assert scores.height == 60
    assert pl.read_parquet(tmp_path / "scores.rejects.parquet")[S.REASON].to_list() == ["unparseable_datetime"]


def test_the_ingest_rules_travel_with_the_model(tmp_path: Path) -> None:
    """After `ingest --max-day 5000`, the registered model validates its input with 5000, not the default 3650."""
    from pipeline.sources.generate import GeneratorConfig, generate

    raw = generate(tmp_path / "raw", GeneratorConfig(scale=0.01, seed=3))
    late = pl.read_csv(raw.transactions, infer_schema=False).with_columns(
        pl.concat_str(
            (pl.col(S.TR_DATETIME).str.split(" ").list.first().cast(pl.Int64) + 4000).cast(pl.String),
            pl.lit(" "), pl.col(S.TR_DATETIME).str.split(" ").list.last()).alias(S.TR_DATETIME))
    late.write_csv(tmp_path / "late.csv")
    ingest([tmp_path / "late.csv"], tmp_path / "events", IngestConfig(max_day=5000))
    run_sequences(tmp_path / "events", raw.labels, tmp_path / "sequences", SequenceConfig(max_len=64, min_count=1))
    uri = _train(tmp_path / "root", tmp_path / "events", tmp_path / "sequences", ["gbdt"])
    model = mlflow.pyfunc.load_model(uri)
    batch = late.head(300).to_pandas()
    scores = model.predict(batch)
    assert set(scores[S.CUSTOMER_ID]) == set(batch[S.CUSTOMER_ID].astype(int))  # day > 3650 not rejected
    rules = model.unwrap_python_model().scorer.ingest
    assert rules.max_day == 5000 and rules.source == SBERBANK


def test_labels_one_value_against_the_rest_and_a_repeated_target_column(tmp_path: Path) -> None:
    from pipeline.ingest.rules import IngestError
    from pipeline.ingest.labels import read_labels

    path = tmp_path / "t.csv"
    path.write_text("client_id,bins,other\n1,3,x\n2,0,y\n3,2,z\n")
    labels = read_labels(path, LabelSpec("bins", "3", None, "client_id"))
    assert labels.rows() == [(1, 1), (2, 0), (3, 0)]
    with pytest.raises(IngestError, match="no row has bins = '9'"):
        read_labels(path, LabelSpec("bins", "9", None, "client_id"))
    path.write_text("cl_id,target_flag\n1,1\n1,1\n2,0\n2,1\n")
    with pytest.raises(IngestError, match="row 4: repeated cl_id with another label"):
        read_labels(path, LabelSpec("target_flag", id_column="cl_id"))
