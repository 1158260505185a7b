"""The hybrid model (GBDT on aggregates blended with a linear probe of frozen encoder embeddings) stores its
validation decision (calibration + threshold) and drift reference with its artifacts, and scores through them like
the GBDT and the encoders; a hybrid from before the blend (GBDT on [aggregates | embedding]) still loads and scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from models import ModelConfig, build_model
from pipeline import schema as S
from pipeline.sequences.batches import SequenceDataset
from pipeline.scoring.calibration import Calibration, Decision, ThresholdRule
from pipeline.scoring.embeddings import (EmbeddingScorer, HybridScorer, embed, embedding_frame, hybrid_matrix,
                                 load_embedding_kind, save_hybrid_artifacts)
from pipeline.sequences.features import build_features
from pipeline.scoring.gbdt import feature_matrix, train_gbdt
from pipeline.scoring.hybrid import fit_hybrid
from pipeline.ingest.rules import IngestConfig
from pipeline.ingest.files import read_events
from pipeline.training.presets import tiny
from pipeline.scoring.probe import BLEND_GRID, sigmoid
from pipeline.training.scoring_card import fit_scoring_card
from pipeline.sequences.table import SEQUENCES_FILE, SPLIT_FILE, VOCAB_FILE, SequenceConfig, Vocab
from pipeline.sequences.splits import Split

from _train_data import tiny_dataset  # on sys.path: tests/pipeline/conftest.py


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory):
    """(events, labels, (train, val, test) ids, embedder, embeddings of the split's customers)."""
    data = tiny_dataset(tmp_path_factory.mktemp("hybrid") / "data", max_len=64)
    vocab = Vocab.load(data.sequences / VOCAB_FILE)
    split = Split.load(data.sequences / SPLIT_FILE)
    seq = data.sequences / SEQUENCES_FILE
    labels = pl.read_parquet(seq, columns=[S.CUSTOMER_ID, S.LABEL]).filter(pl.col(S.LABEL).is_not_null())
    labelled = set(labels[S.CUSTOMER_ID].to_list())
    ids = tuple(np.array([i for i in part if i in labelled]) for part in
                (split.train_ids(0), split.val_ids(0), split.test_ids))
    torch.manual_seed(0)
    cfg = ModelConfig(n_mcc=vocab.size_mcc, n_tr_type=vocab.size_tr_type, **tiny().model_kwargs("transformer"))
    embedder = EmbeddingScorer(build_model(cfg).eval(), cfg, vocab, SequenceConfig(max_len=64, min_count=2),
                               IngestConfig())
    events = read_events(data.events)
    emb = embedding_frame(*embed(embedder.model, SequenceDataset(seq, np.concatenate(ids).tolist())))
    return events, labels, ids, embedder, emb


@pytest.fixture(scope="module")
def hybrid(parts):
    """(events, ids, embedder, GBDT run on [aggregates | embeddings] (a hybrid from before the blend), its card)."""
    events, labels, ids, embedder, emb = parts
    run = train_gbdt(events, labels, ids, tiny().gbdt, extra_features=emb)
    card = fit_scoring_card(events, ids[0], run.val_label, run.val_prob, run.test_prob, ThresholdRule("recall", 0.9))
    return events, ids, embedder, run, card


def test_the_blended_hybrid_scores_raw_events_as_it_was_fitted(tmp_path: Path, parts) -> None:
    events, labels, ids, embedder, emb = parts
    run = fit_hybrid(events, labels, ids, tiny().gbdt, emb)
    assert run.weight in BLEND_GRID and set(run.cv_auroc) == set(BLEND_GRID)
    assert run.metrics["hybrid/cv_auroc_blend"] == pytest.approx(max(run.cv_auroc.values()), abs=1e-9)
    card = fit_scoring_card(events, ids[0], run.val_label, run.val_prob, run.test_prob, ThresholdRule("youden"))
    config, files = save_hybrid_artifacts(tmp_path / "pyfunc", run.gbdt.model, run.gbdt.spec, embedder,
                                          card.decision, card.reference, run.probe, run.weight)
    loaded = load_embedding_kind(json.loads(json.dumps(config)), {k: str(v) for k, v in files.items()})
    assert isinstance(loaded, HybridScorer) and loaded.blend_weight == run.weight
    assert loaded.probe.to_dict() == run.probe.to_dict()

    test = events.filter(pl.col(S.CUSTOMER_ID).is_in(pl.Series(ids[2], dtype=pl.Int64)))
    scores = loaded.score_events(test)
    assert scores[S.CUSTOMER_ID].tolist() == sorted(ids[2].tolist())
    order = np.argsort(ids[2])  # the fitted test probabilities, in the scorer's (customer id) order
    prob, pred = card.decision.apply(run.test_prob[order])
    np.testing.assert_allclose(scores[S.PROBABILITY].to_numpy(), prob, rtol=1e-5, atol=1e-7)
    assert scores[S.PREDICTION].tolist() == pred.tolist()


def test_the_blend_weight_runs_from_the_gbdt_alone_to_the_probe_alone(parts) -> None:
    events, labels, ids, embedder, emb = parts
    gbdt = train_gbdt(events, labels, ids, tiny().gbdt)
    run = fit_hybrid(events, labels, ids, tiny().gbdt, emb)
    test = events.filter(pl.col(S.CUSTOMER_ID).is_in(pl.Series(ids[2], dtype=pl.Int64)))
    cid = np.sort(ids[2])
    order = np.argsort(ids[2])

    def scored(weight: float) -> np.ndarray:
        scorer = HybridScorer(run.gbdt.model, run.gbdt.spec, embedder, IngestConfig(), probe=run.probe,
                              blend_weight=weight)
        out = scorer.score_events(test)
        assert out[S.CUSTOMER_ID].tolist() == cid.tolist()
        return out[S.PROBABILITY].to_numpy()

    np.testing.assert_allclose(scored(1.0), gbdt.test_prob[order], rtol=1e-6)  # the plain GBDT on aggregates
    probe_only = sigmoid(run.probe.logit(feature_matrix(emb, cid)))
    np.testing.assert_allclose(scored(0.0), probe_only, rtol=1e-5, atol=1e-7)


def test_the_hybrid_stores_its_decision_and_scores_through_it(tmp_path: Path, hybrid) -> None:
    events, ids, embedder, run, card = hybrid
    assert card.decision.calibration.method in ("platt", "isotonic") and card.decision.rule == "recall>=0.9"
    config, files = save_hybrid_artifacts(tmp_path / "pyfunc", run.model, run.spec, embedder, card.decision,
                                          card.reference)
    (tmp_path / "pyfunc" / "config.json").write_text(json.dumps(config))
    assert config["decision"] == card.decision.to_dict() and config["threshold"] == card.decision.threshold
    loaded = load_embedding_kind(json.loads((tmp_path / "pyfunc" / "config.json").read_text()),
                                 {k: str(v) for k, v in files.items()})
    assert isinstance(loaded, HybridScorer)
    assert loaded.decision == card.decision and loaded.reference == card.reference

    test = events.filter(pl.col(S.CUSTOMER_ID).is_in(pl.Series(ids[2], dtype=pl.Int64)))
    scores = loaded.score_events(test)
    features = build_features(test, run.spec).collect()
    cid = np.sort(features[S.CUSTOMER_ID].to_numpy())
    raw = run.model.predict_proba(hybrid_matrix(features, loaded.embedder.embed_events(test), cid))[:, 1]
    prob, pred = card.decision.apply(raw)
    assert scores[S.CUSTOMER_ID].tolist() == cid.tolist()
    np.testing.assert_allclose(scores[S.PROBABILITY].to_numpy(), prob, rtol=1e-6, atol=1e-9)
    assert scores[S.PREDICTION].tolist() == pred.tolist()
    assert not np.allclose(prob, raw)  # calibrated, not the GBDT's raw output


def test_a_hybrid_saved_without_a_decision_keeps_its_threshold_uncalibrated(tmp_path: Path, hybrid) -> None:
    _, _, embedder, run, _ = hybrid
    config, files = save_hybrid_artifacts(tmp_path / "pyfunc", run.model, run.spec, embedder,
                                          Decision(Calibration("platt", a=3.0, b=1.0), threshold=0.3))
    del config["decision"]  # as registered before hybrids stored one
    loaded = load_embedding_kind(config, {k: str(v) for k, v in files.items()})
    assert loaded.decision.calibration.method == "none" and loaded.decision.threshold == 0.3
    assert loaded.reference is None
