"""Registration and the champion decision on a real MLflow store with real models (tiny data):
fair comparisons across splits, one version per trained model, resume only under the same fingerprint, and no
version left without a decision."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import pytest
from mlflow import MlflowClient

from pipeline import schema as S
from pipeline.registry.champion import ChampionRule, auroc
from pipeline.training.run import run_comparison, start_comparison
from pipeline.ingest.files import read_events
from pipeline.training.presets import get
from pipeline.registry.versions import TAG_CHALLENGED, TAG_FIT_IDS, ids_digest
from pipeline.scoring.pyfunc import score_with_model
from pipeline.sequences.table import MANIFEST_FILE, SEQUENCES_FILE, SPLIT_FILE, VOCAB_FILE
from pipeline.settings import Settings
from pipeline.sequences.splits import Split, SplitConfig, make_split
from pipeline.registry.tracking import CHAMPION, TAG_DECISION, TAG_PROMOTED

from _train_data import TinyData, tiny_dataset  # on sys.path: tests/pipeline/conftest.py

RULE = ChampionRule(min_customers=30, min_per_class=5)  # the tiny data has 168 labelled customers


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    return tiny_dataset(tmp_path_factory.mktemp("data"))


def _settings(root: Path, name: str) -> Settings:
    return Settings(root, f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", root / "mlflow" / "artifacts", name)


def _split_variant(src: Path, out: Path, seed: int, flip_training_labels: bool, test_fraction: float = 0.6) -> Path:
    """A copy of the sequences folder with another split; with `flip_training_labels` the train/validation
    customers' genders are inverted (a model trained on it ranks the true labels backwards) while the test
    customers keep their true labels."""
    out.mkdir(parents=True)
    for name in (VOCAB_FILE, MANIFEST_FILE):
        shutil.copy(src / name, out / name)
    seq = pl.read_parquet(src / SEQUENCES_FILE)
    split = make_split(seq.select(S.CUSTOMER_ID, S.LABEL).filter(pl.col(S.LABEL).is_not_null()),
                       SplitConfig(test_fraction=test_fraction, n_folds=3, seed=seed))
    split.save(out / SPLIT_FILE)
    if flip_training_labels:
        test = pl.Series(split.test_ids, dtype=pl.Int64)
        seq = seq.with_columns(pl.when(pl.col(S.CUSTOMER_ID).is_in(test)).then(pl.col(S.LABEL))
                               .otherwise(1 - pl.col(S.LABEL)).cast(seq.schema[S.LABEL]).alias(S.LABEL))
    seq.write_parquet(out / SEQUENCES_FILE)
    return out


def _fit_ids(seq: Path) -> set[int]:
    split = Split.load(seq / SPLIT_FILE)
    return set(split.train_ids(0)) | set(split.val_ids(0))


def test_the_champion_is_decided_on_customers_neither_model_has_seen(data: TinyData, tmp_path: Path) -> None:
    """A deliberately bad champion (trained on inverted labels) is displaced by a good newcomer trained on another
    split; a worse newcomer does not displace the good champion; both models are scored through their pyfuncs on
    exactly the customers neither trained or validated on; the decision is tagged on both versions."""
    settings = _settings(tmp_path / "root", "fair")
    preset = get("tiny", device="cpu")
    labels = dict(pl.read_parquet(data.sequences / SEQUENCES_FILE, columns=[S.CUSTOMER_ID, S.LABEL])
                  .drop_nulls().iter_rows())
    events = read_events(data.events)

    def compare(seq: Path):
        return run_comparison(seq, data.events, preset, ["gbdt"], settings=settings, rule=RULE).results[0]

    def pyfunc_auroc(version: str, ids: list[int]) -> float:
        scores = pl.from_pandas(score_with_model(f"models:/fair/{version}",
                                                 events.filter(pl.col(S.CUSTOMER_ID).is_in(ids))))
        prob = dict(zip(scores[S.CUSTOMER_ID].to_list(), scores[S.PROBABILITY].to_list()))
        return auroc(np.array([labels[i] for i in ids]), np.array([prob.get(i, 0.5) for i in ids]))

    s1 = _split_variant(data.sequences, tmp_path / "s1", 1, flip_training_labels=True)
    s2 = _split_variant(data.sequences, tmp_path / "s2", 2, flip_training_labels=False)
    s3 = _split_variant(data.sequences, tmp_path / "s3", 3, flip_training_labels=True)
    client = MlflowClient(settings.tracking_uri)

    bad = compare(s1)
    assert str(client.get_model_version_by_alias("fair", CHAMPION).version) == bad.version  # first champion
    tags = client.get_model_version("fair", bad.version).tags
    assert tags[TAG_FIT_IDS] == ids_digest(_fit_ids(s1))

    good = compare(s2)
    common = sorted(set(labels) - _fit_ids(s1) - _fit_ids(s2))
    assert len(common) >= RULE.min_customers
    good_auc, bad_auc = pyfunc_auroc(good.version, common), pyfunc_auroc(bad.version, common)
    assert good_auc > 0.6 > bad_auc, (good_auc, bad_auc)
    assert str(client.get_model_version_by_alias("fair", CHAMPION).version) == good.version  # displaced
    tags = client.get_model_version("fair", good.version).tags
    assert tags[TAG_PROMOTED] == "true" and tags["champion_common_customers"] == str(len(common))
    assert (f"v{good.version} {good_auc:.4f} beats champion v{bad.version} {bad_auc:.4f} on the {len(common)} "
            f"customers neither trained or validated on") in tags[TAG_DECISION]
    assert client.get_model_version("fair", bad.version).tags[TAG_CHALLENGED].startswith(f"v{good.version}: replaced")

    worse = compare(s3)
    common = sorted(set(labels) - _fit_ids(s2) - _fit_ids(s3))
    assert str(client.get_model_version_by_alias("fair", CHAMPION).version) == good.version  # kept
    tags = client.get_model_version("fair", worse.version).tags
    assert tags[TAG_PROMOTED] == "false"
    assert (f"v{worse.version} {pyfunc_auroc(worse.version, common):.4f} does not beat champion v{good.version} "
            f"{pyfunc_auroc(good.version, common):.4f} on the {len(common)} customers") in tags[TAG_DECISION]
    assert client.get_model_version("fair", good.version).tags[TAG_CHALLENGED].startswith(f"v{worse.version}: kept")
    description = client.get_model_version("fair", worse.version).description
    assert "# Model card: gbdt" in description and tags[TAG_DECISION] in description

    # a version left undecided (its run died between registering it and deciding) is decided by the next start
    client.delete_model_version_tag("fair", worse.version, TAG_DECISION)
    start_comparison(s2, data.events, preset, ["gbdt"], settings=settings, rule=RULE)
    assert TAG_DECISION in client.get_model_version("fair", worse.version).tags
    mlflow.set_tracking_uri(None)


def test_a_run_resumes_only_its_own_fingerprint_and_registers_each_model_once(
        data: TinyData, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The same --run name on a changed split starts fresh (a line says why) and registers a new version; running
    it again unchanged reuses that version instead of registering the same model twice."""
    settings = _settings(tmp_path / "root", "resume")
    preset = get("tiny", device="cpu", steps=5)
    client = MlflowClient(settings.tracking_uri)

    def compare(seq: Path):
        return run_comparison(seq, data.events, preset, ["transformer"], settings=settings, run_name="same",
                              rule=RULE).results[0]

    first = compare(data.sequences)
    ckpt = settings.runs_dir / "same" / "checkpoints" / "transformer"
    assert (ckpt / "last.pt").exists()

    other = _split_variant(data.sequences, tmp_path / "other", 7, flip_training_labels=False, test_fraction=0.2)
    with caplog.at_level(logging.INFO, logger="pipeline.training.train"):
        second = compare(other)
    fresh = [r.getMessage() for r in caplog.records if "not resuming" in r.getMessage()]
    assert len(fresh) == 1 and "split_id" in fresh[0] and "starting fresh" in fresh[0], fresh
    assert not any("resumed from" in r.getMessage() for r in caplog.records)
    assert (ckpt / "replaced-1" / "last.pt").exists()
    assert second.version != first.version
    assert second.steps == 5  # trained again, on the new split

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.training.run"):
        again = compare(other)
    assert again.version == second.version and any("already registered" in r.getMessage() for r in caplog.records)
    versions = client.search_model_versions("name='resume'")
    assert len(versions) == 2 and all(TAG_DECISION in v.tags for v in versions)
    fit = json.loads((settings.runs_dir / "same" / "models" / "transformer" / "fit_customers.json").read_text())
    assert set(fit["train"]) | set(fit["validation"]) == _fit_ids(other)
    mlflow.set_tracking_uri(None)


def test_a_split_over_labels_without_transactions_cannot_crash_the_gbdt(data: TinyData, tmp_path: Path) -> None:
    """The reported crash: a split drawn over a labels file with thousands of ids absent from the events (what
    `sequences` wrote before it left them out) made the GBDT fail with `KeyError`. Such a split's unknown ids are
    now dropped before training and every logged size counts only customers that exist; `train_gbdt` itself
    refuses unlabelled ids with a clear message."""
    from pipeline.scoring.gbdt import train_gbdt

    seq = pl.read_parquet(data.sequences / SEQUENCES_FILE, columns=[S.CUSTOMER_ID, S.LABEL]).drop_nulls()
    ghosts = pl.DataFrame({S.CUSTOMER_ID: range(10_000_000, 10_003_000), S.LABEL: [i % 2 for i in range(3000)]},
                          schema=seq.schema)
    stale = tmp_path / "stale"
    shutil.copytree(data.sequences, stale)
    split = make_split(pl.concat([seq, ghosts]), SplitConfig(seed=5))
    split.save(stale / SPLIT_FILE)
    assert len(split.test_ids) > 300  # mostly customers that do not exist

    with pytest.raises(ValueError, match=r"customers of the split have no label \(e\.g\. \[100000"):
        train_gbdt(read_events(data.events), seq, (split.train_ids(0), split.val_ids(0), split.test_ids),
                   get("tiny").gbdt)

    settings = _settings(tmp_path / "root", "ghosts")
    result = run_comparison(stale, data.events, get("tiny", device="cpu"), ["gbdt"], settings=settings,
                            register=False)
    existing = set(seq[S.CUSTOMER_ID].to_list())
    params = MlflowClient(settings.tracking_uri).get_run(result.results[0].run_id).data.params
    assert int(params["data.n_test"]) == len(set(split.test_ids) & existing)
    assert int(params["data.n_train"]) + int(params["data.n_val"]) + int(params["data.n_test"]) == len(existing)
    assert np.isfinite(result.results[0].metrics["test/auroc"])
    mlflow.set_tracking_uri(None)
