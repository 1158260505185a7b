"""`txseq train` end to end on tiny data: every model trained under one parent run, registered, reported."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.cli import main
from pipeline.compare import ModelResult, markdown_table
from pipeline.presets import DEFAULT_MODELS
from pipeline.tracking import CHAMPION, TAG_DECISION

from _train_data import tiny_dataset  # tests/pipeline is on sys.path (pytest rootdir insertion)


def test_txseq_train_runs_the_comparison(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    data = tiny_dataset(tmp_path / "data")
    monkeypatch.setenv("TXSEQ_DATA_ROOT", str(tmp_path / "root"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TXSEQ_REGISTERED_MODEL", "compare-tests")
    rc = main(["train", "--sequences", str(data.sequences), "--events", str(data.events), "--preset", "tiny",
               "--steps", "20", "--device", "cpu", "--run", "t1"])
    assert rc == 0
    out = capsys.readouterr().out
    for name in DEFAULT_MODELS:
        assert f"| {name} |" in out

    run_dir = tmp_path / "root" / "runs" / "t1"
    assert (run_dir / "report.md").read_text().count("\n| ") == 1 + len(DEFAULT_MODELS)  # header + one row each
    assert (run_dir / "report.png").read_bytes()[:4] == b"\x89PNG"

    client = MlflowClient(f"sqlite:///{tmp_path / 'root' / 'mlflow' / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("txseq").experiment_id],
                                "tags.`txseq.kind` = 'comparison'")[0]
    assert {"report.md", "report.png", "roc_test.png"} <= {f.path for f in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["txseq.model"] for r in children) == sorted(DEFAULT_MODELS)
    for child in children:
        assert "test/auroc" in child.data.metrics and child.data.params["split_id"]
        if child.data.tags["txseq.model"] != "gbdt":
            losses = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "train/loss"),
                                              key=lambda m: m.step)]
            assert len(losses) == 4 and losses[-1] < losses[0], (child.data.tags["txseq.model"], losses)  # every 5
    versions = client.search_model_versions("name='compare-tests'")
    assert len(versions) == len(DEFAULT_MODELS) and all(TAG_DECISION in v.tags for v in versions)
    # registered in order on one split: the champion is the first version with the best test ROC AUC
    by_version = sorted(versions, key=lambda v: int(v.version))
    best = max(float(v.tags["test_auroc"]) for v in by_version)
    first_best = next(v for v in by_version if float(v.tags["test_auroc"]) == best)
    assert client.get_model_version_by_alias("compare-tests", CHAMPION).version == first_best.version
    mlflow.set_tracking_uri(None)


def test_unusable_store_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker / 'mlflow.db'}")
    monkeypatch.setenv("TXSEQ_DATA_ROOT", str(tmp_path / "root"))
    assert main(["train", "--sequences", str(tmp_path / "nowhere"), "--preset", "tiny"]) == 2
    assert "not writable" in capsys.readouterr().err
    assert not (tmp_path / "root" / "runs").exists()


def test_markdown_table_shows_missing_values_as_dashes() -> None:
    metrics = {"test/auroc": 0.8, "test/accuracy": 0.7, "test/logloss": 0.5, "time/train_s": 12.0,
               "train/best_step": 200.0, "params/n_parameters": 1234.0, "mem/rss_peak_gib": 1.5,
               "mem/cuda_peak_gib": float("nan")}
    table = markdown_table([ModelResult("eam", metrics, 300, "r"), ModelResult("gbdt", {**metrics,
                                                                                       "train/best_step": None}, None, "g")])
    assert table.splitlines()[-2] == "| eam | 0.8000 | 0.7000 | 0.5000 | 12.0 | 300 | 200 | — | 1.50 | 1,234 |"
    assert table.splitlines()[-1] == "| gbdt | 0.8000 | 0.7000 | 0.5000 | 12.0 | — | — | — | 1.50 | 1,234 |"


def _split_variant(src: Path, out: Path, seed: int, flip_training_labels: bool) -> Path:
    """A copy of the sequences folder with another split (40 % test, so the tiny test set holds ~70 customers);
    with `flip_training_labels` the train/validation customers' genders are inverted (a model trained on it ranks
    the real test labels backwards) while the test customers keep their true labels."""
    import shutil

    import polars as pl

    from pipeline import schema as S
    from pipeline.sequences import MANIFEST_FILE, SEQUENCES_FILE, SPLIT_FILE, VOCAB_FILE
    from pipeline.splits import SplitConfig, make_split

    out.mkdir(parents=True)
    for name in (VOCAB_FILE, MANIFEST_FILE):
        shutil.copy(src / name, out / name)
    seq = pl.read_parquet(src / SEQUENCES_FILE)
    split = make_split(seq.select(S.CUSTOMER_ID, S.GENDER).filter(pl.col(S.GENDER).is_not_null()),
                       SplitConfig(test_fraction=0.4, n_folds=3, seed=seed))
    split.save(out / SPLIT_FILE)
    if flip_training_labels:
        test = pl.Series(split.test_ids, dtype=pl.Int64)
        seq = seq.with_columns(pl.when(pl.col(S.CUSTOMER_ID).is_in(test)).then(pl.col(S.GENDER))
                               .otherwise(1 - pl.col(S.GENDER)).cast(seq.schema[S.GENDER]).alias(S.GENDER))
    seq.write_parquet(out / SEQUENCES_FILE)
    return out


def test_a_champion_from_another_split_is_rescored_on_the_new_test_customers(tmp_path: Path) -> None:
    """Three comparisons, each on a new split: the champion is re-scored through its pyfunc on the new test
    customers, replaced when the new model beats that score and kept when it does not."""
    import polars as pl

    from pipeline import schema as S
    from pipeline.compare import run_comparison
    from pipeline.ingest import read_events
    from pipeline.metrics import classification_metrics
    from pipeline.presets import get
    from pipeline.scoring import score_with_model
    from pipeline.settings import Settings
    from pipeline.splits import Split
    from pipeline.tracking import TAG_PROMOTED

    data = tiny_dataset(tmp_path / "data")
    root = tmp_path / "root"
    settings = Settings(root, f"sqlite:///{root / 'mlflow' / 'mlflow.db'}", root / "mlflow" / "artifacts", "resplit")
    preset = get("tiny", device="cpu")

    def compare(seq: Path):
        return run_comparison(seq, data.events, preset, ["gbdt"], settings=settings).results[0]

    backwards = compare(_split_variant(data.sequences, tmp_path / "s1", 1, flip_training_labels=True))
    good_seq = _split_variant(data.sequences, tmp_path / "s2", 2, flip_training_labels=False)
    # the backwards champion, scored independently through the registry on the new split's test customers
    split2 = Split.load(good_seq / "split.json")
    labels = (pl.read_parquet(good_seq / "sequences.parquet", columns=[S.CUSTOMER_ID, S.GENDER])
              .filter(pl.col(S.CUSTOMER_ID).is_in(pl.Series(split2.test_ids, dtype=pl.Int64))).sort(S.CUSTOMER_ID))
    test_events = read_events(data.events).filter(pl.col(S.CUSTOMER_ID).is_in(labels[S.CUSTOMER_ID]))
    old = pl.from_pandas(score_with_model(f"models:/resplit/{backwards.version}", test_events))
    joined = labels.join(old, on=S.CUSTOMER_ID, how="left")
    assert joined[S.PROBABILITY].null_count() == 0
    old_auroc = classification_metrics(joined[S.GENDER].to_numpy(), joined[S.PROBABILITY].to_numpy())["auroc"]

    good = compare(good_seq)
    client = MlflowClient(settings.tracking_uri)
    assert good.metrics["test/auroc"] > 0.6 > old_auroc, (good.metrics["test/auroc"], old_auroc)
    assert str(client.get_model_version_by_alias("resplit", CHAMPION).version) == good.version  # replaced
    tags = client.get_model_version("resplit", good.version).tags
    assert tags[TAG_PROMOTED] == "true"
    assert f"re-scored on split {split2.split_id}: {old_auroc:.4f}" in tags[TAG_DECISION]
    assert f"{good.metrics['test/auroc']:.4f} beats champion v{backwards.version}" in tags[TAG_DECISION]
    assert f"{labels.height} test customers" in tags[TAG_DECISION]

    worse = compare(_split_variant(data.sequences, tmp_path / "s3", 3, flip_training_labels=True))
    assert str(client.get_model_version_by_alias("resplit", CHAMPION).version) == good.version  # kept
    tags = client.get_model_version("resplit", worse.version).tags
    assert tags[TAG_PROMOTED] == "false"
    assert f"{worse.metrics['test/auroc']:.4f} does not beat champion v{good.version} re-scored" in tags[TAG_DECISION]
    mlflow.set_tracking_uri(None)
