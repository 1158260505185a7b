"""The pyfunc model: raw transactions in, one row per customer out; reloaded from the registry it scores exactly
like the in-memory model (sequence encoder and GBDT alike)."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest
import torch

from models import ModelConfig, build_model
from pipeline import schema as S
from pipeline.sequences.batches import make_loader, numeric_stats
from pipeline.scoring.calibration import Calibration, Decision
from pipeline.sequences.features import FeatureConfig
from pipeline.scoring.gbdt import GBDTConfig, train_gbdt
from pipeline.scoring.inference import InferenceConfig
from pipeline.ingest.rules import IngestConfig
from pipeline.ingest.files import read_events
from pipeline.training.presets import tiny
from pipeline.scoring.pyfunc import (
    EXAMPLE_CUSTOMERS,
    GBDTScorer,
    SequenceScorer,
    input_example,
    load_scorer,
    log_model,
    save_gbdt_artifacts,
    save_sequence_artifacts,
)
from pipeline.sequences.table import SequenceConfig, Vocab
from pipeline.settings import Settings
from pipeline.sequences.splits import Split
from pipeline.registry.tracking import CHAMPION, TAG_SPLIT_ID, TAG_TEST_AUROC, Tracker, setup
from pipeline.training.train import evaluate

from _train_data import TinyData, tiny_dataset  # on sys.path: tests/pipeline/conftest.py

NAME = "scoring-tests"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    return tiny_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    root = tmp_path_factory.mktemp("mlflow")
    return setup(Settings(root, f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", NAME), NAME)


@pytest.fixture(scope="module")
def raw(data: TinyData) -> pd.DataFrame:
    """Raw CSV rows (all strings) of the test customers, plus one unparseable row."""
    split = Split.load(data.sequences / "split.json")
    frame = pl.read_csv(data.raw / "transactions.csv.gz", infer_schema=False)
    frame = frame.filter(pl.col(S.CUSTOMER_ID).cast(pl.Int64).is_in(list(split.test_ids)))
    bad = frame.head(1).with_columns(pl.lit("999999999").alias(S.CUSTOMER_ID), pl.lit("not a date").alias(S.TR_DATETIME))
    return pl.concat([frame, bad]).to_pandas()


def _sequence_model(data: TinyData) -> tuple[torch.nn.Module, ModelConfig, Vocab]:
    vocab = Vocab.load(data.sequences / "vocab.json")
    cfg = ModelConfig(n_mcc=vocab.size_mcc, n_tr_type=vocab.size_tr_type, **tiny().model_kwargs("transformer"))
    torch.manual_seed(0)
    model = build_model(cfg)
    model.embedding.set_numeric_stats(*numeric_stats(data.sequences / "sequences.parquet"))
    return model.eval(), cfg, vocab


def _log(tracker: Tracker, tmp: Path, config: dict, files: dict, auroc: float) -> str:
    with tracker.run("model") as run_id:
        version = log_model(tracker, run_id, artifacts_dir=tmp, config=config, files=files,
                            registered_model=NAME, version_tags={TAG_SPLIT_ID: "s", TAG_TEST_AUROC: str(auroc)})
    if tracker.champion(NAME) is None:  # the first version is champion (the rule: registry/test_champion.py)
        tracker.set_champion(NAME, version.version)
    return version.version


def leaked_ids(model_dir: Path, ids: set[str]) -> dict[str, set[str]]:
    """file -> the given customer ids found in it as whole digit runs (inside zip members too: model.pt, skops)."""
    found: dict[str, set[str]] = {}
    for path in (p for p in model_dir.rglob("*") if p.is_file()):
        blobs = [path.read_bytes()]
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs += [z.read(n) for n in z.namelist()]
        runs = {m.decode() for b in blobs for m in re.findall(rb"\d+", b)}
        if hit := ids & runs:
            found[str(path.relative_to(model_dir))] = hit
    return found


def _check_registered_model_is_clean(data: TinyData, version: str) -> None:
    """The logged example is the synthetic one (it scores), and no customer id of the data is in any model file."""
    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    example = loaded.input_example
    pd.testing.assert_frame_equal(example.astype(str), input_example())
    assert loaded.predict(example)[S.CUSTOMER_ID].tolist() == list(EXAMPLE_CUSTOMERS)
    raw = pl.read_csv(data.raw / "transactions.csv.gz", columns=[S.CUSTOMER_ID], infer_schema=False)
    ids = {i for i in raw[S.CUSTOMER_ID].unique().to_list() if len(i) >= 6}  # shorter ones match code by chance
    assert len(ids) >= 0.95 * raw[S.CUSTOMER_ID].n_unique()
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{NAME}/{version}"))
    assert (model_dir / "MLmodel").exists() and (model_dir / "input_example.json").exists()
    assert leaked_ids(model_dir, ids) == {}


def test_sequence_pyfunc_from_the_registry_scores_like_the_in_memory_model(
    data: TinyData, tracker: Tracker, raw: pd.DataFrame, tmp_path: Path
) -> None:
    model, cfg, vocab = _sequence_model(data)
    seq_cfg = SequenceConfig(max_len=200, min_count=2)
    config, files = save_sequence_artifacts(tmp_path, model, cfg, vocab, seq_cfg, IngestConfig(), batch_size=32)
    version = _log(tracker, tmp_path, config, files, auroc=0.5)
    _check_registered_model_is_clean(data, version)

    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}")
    assert loaded.metadata.get_input_schema().input_names() == list(S.RAW_COLUMNS)
    got = loaded.predict(raw)
    assert list(got.columns) == [S.CUSTOMER_ID, S.PROBABILITY, S.PREDICTION]
    test_ids = sorted(Split.load(data.sequences / "split.json").test_ids)
    assert got[S.CUSTOMER_ID].tolist() == test_ids  # one row per customer, sorted; the bad row's customer is absent

    in_memory = SequenceScorer(model, vocab, seq_cfg, IngestConfig(),
                               inference=InferenceConfig(max_tokens=300))(raw)  # other batching
    pd.testing.assert_frame_equal(got, in_memory, check_exact=False, atol=1e-6)
    # and the same as the model on the prepared sequences table (the preprocessing travels with the model)
    direct = evaluate(model, make_loader(data.sequences / "sequences.parquet", test_ids, batch_size=64),
                      torch.device("cpu"))
    order = np.argsort(direct["customer_id"])
    np.testing.assert_allclose(got[S.PROBABILITY].to_numpy(), direct["prob"][order], atol=1e-6)
    assert set(got[S.PREDICTION]) <= {0, 1}
    assert tracker.client.get_model_version(NAME, version).tags[TAG_SPLIT_ID] == "s"


# What the code file of every model registered so far says (before pipeline/scoring/ was a package, the pyfunc
# module itself): `pipeline.scoring` must keep resolving it, whatever `pyfunc._MODEL_CODE` says for new models.
REGISTERED_CODE_FILE = ("from mlflow.models import set_model\n"
                        "from pipeline.scoring import TxSeqModel\n"
                        "set_model(TxSeqModel())\n")


def test_a_model_whose_code_file_imports_pipeline_scoring_still_loads(
    data: TinyData, tracker: Tracker, raw: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.scoring import pyfunc

    monkeypatch.setattr(pyfunc, "_MODEL_CODE", REGISTERED_CODE_FILE)
    model, cfg, vocab = _sequence_model(data)
    config, files = save_sequence_artifacts(tmp_path, model, cfg, vocab, SequenceConfig(max_len=200, min_count=2),
                                            IngestConfig())
    with tracker.run("registered-code-file") as run_id:
        version = log_model(tracker, run_id, artifacts_dir=tmp_path, config=config, files=files,
                            registered_model=f"{NAME}-code-file", version_tags={TAG_SPLIT_ID: "s"})
    uri = f"models:/{NAME}-code-file/{version.version}"
    model_dir = Path(mlflow.artifacts.download_artifacts(uri))
    assert [p.read_text() for p in model_dir.glob("*.py")] == [REGISTERED_CODE_FILE]
    assert {p.name for p in (model_dir / "code").iterdir()} >= {"pipeline", "models"}  # CODE_PATHS travel with it
    got = mlflow.pyfunc.load_model(uri).predict(raw)
    assert got[S.CUSTOMER_ID].tolist() == sorted(Split.load(data.sequences / "split.json").test_ids)


def test_gbdt_pyfunc_from_the_registry_scores_like_the_in_memory_model(
    data: TinyData, tracker: Tracker, raw: pd.DataFrame, tmp_path: Path
) -> None:
    split = Split.load(data.sequences / "split.json")
    labels = pl.read_parquet(data.sequences / "sequences.parquet", columns=[S.CUSTOMER_ID, S.LABEL]).drop_nulls()
    config = GBDTConfig(max_iter=10, features=FeatureConfig(top_mcc=8, top_tr_type=4))
    run = train_gbdt(read_events(data.events), labels, (split.train_ids(0), split.val_ids(0), split.test_ids), config)
    cfg, files = save_gbdt_artifacts(tmp_path, run.model, run.spec, IngestConfig())
    version = _log(tracker, tmp_path, cfg, files, auroc=run.metrics["test/auroc"])
    _check_registered_model_is_clean(data, version)

    loaded = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    got = loaded.predict(raw)
    in_memory = GBDTScorer(run.model, run.spec, IngestConfig())(raw)
    pd.testing.assert_frame_equal(got, in_memory)
    # the test customers' probabilities are the ones train_gbdt computed from the ingested events
    np.testing.assert_allclose(got[S.PROBABILITY].to_numpy(), run.test_prob[np.argsort(split.test_ids)], atol=1e-12)


def test_scorer_accepts_typed_polars_input_and_empty_input(data: TinyData, tmp_path: Path, raw: pd.DataFrame) -> None:
    model, cfg, vocab = _sequence_model(data)
    config, files = save_sequence_artifacts(tmp_path, model, cfg, vocab, SequenceConfig(max_len=200), IngestConfig())
    (tmp_path / "config.json").write_text(__import__("json").dumps(config))
    scorer = load_scorer({"config": str(tmp_path / "config.json"), **{k: str(v) for k, v in files.items()}})
    typed = read_events(data.events).select(S.RAW_COLUMNS).head(300).collect()  # Int64 ids, Float64 amounts
    out = scorer(typed)
    assert len(out) == typed[S.CUSTOMER_ID].n_unique()
    empty = scorer(raw.head(0))
    assert list(empty.columns) == [S.CUSTOMER_ID, S.PROBABILITY, S.PREDICTION] and len(empty) == 0


def test_scoring_applies_the_stored_calibration_and_threshold(data: TinyData, raw: pd.DataFrame, tmp_path: Path) -> None:
    split = Split.load(data.sequences / "split.json")
    labels = pl.read_parquet(data.sequences / "sequences.parquet", columns=[S.CUSTOMER_ID, S.LABEL]).drop_nulls()
    run = train_gbdt(read_events(data.events), labels, (split.train_ids(0), split.val_ids(0), split.test_ids),
                     GBDTConfig(max_iter=10, features=FeatureConfig(top_mcc=8, top_tr_type=4)))
    raw_scores = GBDTScorer(run.model, run.spec, IngestConfig())(raw)  # no decision: raw probability, 0.5
    assert (raw_scores[S.PREDICTION] == (raw_scores[S.PROBABILITY] >= 0.5)).all()

    decision = Decision(Calibration("platt", a=1.7, b=-0.2), threshold=0.42, rule="youden")
    config, files = save_gbdt_artifacts(tmp_path, run.model, run.spec, IngestConfig(), decision)
    (tmp_path / "config.json").write_text(json.dumps(config))
    artifacts = {"config": str(tmp_path / "config.json"), **{k: str(v) for k, v in files.items()}}
    got = load_scorer(artifacts)(raw)
    want = decision.calibration.apply(raw_scores[S.PROBABILITY].to_numpy())
    np.testing.assert_allclose(got[S.PROBABILITY].to_numpy(), want, atol=1e-12)
    assert (got[S.PREDICTION] == (want >= 0.42)).all()

    # a model registered before decisions were stored (config.json without one): threshold 0.5, no calibration
    legacy = {k: v for k, v in config.items() if k != "decision"} | {"threshold": 0.5}
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    scorer = load_scorer(artifacts)
    assert scorer.decision.threshold == 0.5 and scorer.decision.calibration.method == "none"
    pd.testing.assert_frame_equal(scorer(raw), raw_scores)
