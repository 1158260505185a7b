"""Customer embeddings from a (CoLES-pretrained) encoder, and the two scorers built on them.

    events ──build_sequences(stored vocab)──▶ batches ──model.embed──▶ (customer_id, emb_0 … emb_{D-1}) ──▶ probe ┐
           └──────────build_features(stored spec)──────────────────────────────────────────────▶ GBDT ──────────┴▶ blend

`EmbeddingScorer` is what a registered pretrained encoder's pyfunc returns (one row of embedding columns per
customer); `HybridScorer` scores like every other model (customer_id, probability, prediction) from the GBDT's
aggregate features blended with a linear probe of the frozen embeddings (`pipeline.scoring.hybrid`). Neither imports
MLflow: `pipeline.scoring.pyfunc` builds them from artifacts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import torch

from models import ModelConfig, build_model
from pipeline import schema as S
from pipeline.sequences.batches import SequenceDataset, make_loader
from pipeline.scoring.calibration import NO_DECISION, Decision
from pipeline.scoring.drift import Reference
from pipeline.sequences.features import FeatureSpec, build_features
from pipeline.scoring.gbdt import feature_matrix
from pipeline.scoring.hybrid import embedding_rows
from pipeline.scoring.inference import InferenceConfig, embed_customers
from pipeline.ingest.rules import IngestConfig
from pipeline.scoring.probe import LinearProbe, blend_logit, fit_probe, sigmoid
from pipeline.sequences.table import SequenceConfig, Vocab, build_sequences

EMBEDDING_PREFIX = "emb_"


@torch.no_grad()
def embed(model: torch.nn.Module, source: Any, batch_size: int = 128, device: str | torch.device = "cpu"
          ) -> tuple[np.ndarray, np.ndarray]:
    """(customer_id (N,), embedding (N, D)) of every customer of `source` (a sequences table or SequenceDataset),
    full length, sorted by customer_id."""
    model.eval()
    model.to(device)
    ids, out = [], []
    for batch in make_loader(source, batch_size=batch_size):
        ids.append(batch.customer_id)
        out.append(model.embed(batch.to(device))[0].float().cpu())
    if not ids:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    cid, emb = torch.cat(ids).numpy(), torch.cat(out).numpy()
    order = np.argsort(cid, kind="stable")
    return cid[order], emb[order]


@torch.no_grad()
def probe_head(model: torch.nn.Module, dataset: SequenceDataset, batch_size: int = 128, seed: int = 0,
               device: str | torch.device = "cpu") -> LinearProbe:
    """Set the classifier head of `model` (LayerNorm -> dropout -> linear) to the linear probe (`fit_probe`) of its
    frozen embedding of `dataset`'s labelled customers, and return the probe. The LayerNorm is reset to identity
    and the probe's standardisation folded into the linear layer, so `model(batch).logit` is the probe's logit."""
    cid, emb = embed(model, dataset, batch_size, device)
    label = dict(zip(dataset.customer_id.tolist(), dataset.label.tolist(), strict=True))
    y = np.array([label[int(i)] for i in cid], dtype=np.float64)
    keep = ~np.isnan(y)
    norm, linear = model.head[0], model.head[-1]
    norm.reset_parameters()
    x = norm(torch.from_numpy(emb).to(norm.weight.device, norm.weight.dtype)).double().cpu().numpy()
    probe = fit_probe(x[keep], y[keep], seed=seed)
    weight = probe.coef / probe.scale
    linear.weight.copy_(torch.from_numpy(weight).to(linear.weight)[None, :])
    linear.bias.fill_(float(probe.intercept - weight @ probe.mean))
    return probe


def embedding_frame(customer_id: np.ndarray, emb: np.ndarray) -> pl.DataFrame:
    """customer_id + emb_0 … emb_{D-1} (Float64), one row per customer."""
    cols = {f"{EMBEDDING_PREFIX}{j}": emb[:, j].astype(np.float64) for j in range(emb.shape[1])}
    return pl.DataFrame({S.CUSTOMER_ID: customer_id.astype(np.int64), **cols})


def hybrid_matrix(features: pl.DataFrame, embeddings: pl.DataFrame, customer_ids: np.ndarray) -> np.ndarray:
    """[aggregate features | embedding] rows for `customer_ids`, in that order (NaN where a part is missing)."""
    joined = features.join(embeddings, on=S.CUSTOMER_ID, how="full", coalesce=True)
    return feature_matrix(joined, customer_ids)


@dataclass
class EmbeddingScorer:
    """Raw or validated events -> one row per customer: customer_id, emb_0 … emb_{D-1}."""

    model: torch.nn.Module
    model_config: ModelConfig
    vocab: Vocab
    sequence: SequenceConfig
    ingest: IngestConfig
    batch_size: int = 128  # as stored in config.json (training-time batches); scoring batches by `inference`
    inference: InferenceConfig = InferenceConfig()

    def __call__(self, raw: pd.DataFrame | pl.DataFrame) -> pd.DataFrame:
        from pipeline.scoring.pyfunc import raw_events  # scoring imports this module: import at call time

        return self.score_events(raw_events(raw, self.ingest))

    def embed_events(self, events: pl.LazyFrame) -> pl.DataFrame:
        seq = build_sequences(events, self.vocab, self.sequence, labels=None)
        if seq.height == 0:
            return embedding_frame(np.empty(0, np.int64), np.empty((0, 0), np.float32))
        return embedding_frame(*embed_customers(self.model, SequenceDataset(seq), self.inference))

    def score_events(self, events: pl.LazyFrame) -> pd.DataFrame:
        return self.embed_events(events).to_pandas()


@dataclass
class HybridScorer:
    """Raw or validated events -> scores from the GBDT on the aggregate features blended with the linear probe of the
    frozen encoder embedding (`pipeline.scoring.hybrid`), calibrated and thresholded by the decision fitted on validation
    (as every other model's, `pipeline.scoring.calibration`). `probe` None: a hybrid registered before the blend, whose GBDT
    reads [aggregates | embedding]."""

    model: Any  # HistGradientBoostingClassifier
    spec: FeatureSpec
    embedder: EmbeddingScorer
    ingest: IngestConfig
    decision: Decision = NO_DECISION
    reference: Reference | None = None  # training-time statistics for the drift report
    probe: LinearProbe | None = None
    blend_weight: float = 1.0  # the GBDT's share of the logit

    def __call__(self, raw: pd.DataFrame | pl.DataFrame) -> pd.DataFrame:
        from pipeline.scoring.pyfunc import raw_events

        return self.score_events(raw_events(raw, self.ingest))

    def score_events(self, events: pl.LazyFrame) -> pd.DataFrame:
        from pipeline.scoring.pyfunc import _scores

        features = build_features(events, self.spec).collect()
        ids = features[S.CUSTOMER_ID].to_numpy()
        if len(ids) == 0:
            return _scores(np.empty(0, np.int64), np.empty(0), self.decision)
        embeddings = self.embedder.embed_events(events)
        if self.probe is None:
            return _scores(ids, self.model.predict_proba(hybrid_matrix(features, embeddings, ids))[:, 1],
                           self.decision)
        logit = blend_logit(self.model.decision_function(feature_matrix(features, ids)),
                            self.probe.logit(embedding_rows(embeddings, ids, len(self.probe.coef))), self.blend_weight)
        return _scores(ids, sigmoid(logit), self.decision)


def save_embedding_artifacts(out_dir: Path, model: torch.nn.Module, model_config: ModelConfig, vocab: Vocab,
                             sequence: SequenceConfig, ingest: IngestConfig, batch_size: int = 128,
                             **extra: Any) -> tuple[dict, dict[str, Path]]:
    """(config.json content, artifact files) of a pretrained encoder: weights, model config, vocabulary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "model.pt"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
    config = {"kind": "embedding", "schema_version": S.SCHEMA_VERSION, "ingest": ingest.to_dict(),
              "model": model_config.to_dict(), "sequence": asdict(sequence), "batch_size": batch_size, **extra}
    return config, {"model": weights, "vocab": vocab.save(out_dir / "vocab.json")}


def save_hybrid_artifacts(out_dir: Path, gbdt: Any, spec: FeatureSpec, embedder: EmbeddingScorer,
                          decision: Decision = NO_DECISION, reference: Reference | None = None,
                          probe: LinearProbe | None = None, blend_weight: float = 1.0,
                          **extra: Any) -> tuple[dict, dict[str, Path]]:
    """(config.json content, artifact files) of a hybrid model: the GBDT, its feature spec, the frozen encoder, the
    probe and blend weight (numbers in config.json), the decision (threshold + calibration) and the drift
    reference."""
    from pipeline.scoring.gbdt import save_gbdt

    emb_config, emb_files = save_embedding_artifacts(out_dir, embedder.model, embedder.model_config, embedder.vocab,
                                                     embedder.sequence, embedder.ingest, embedder.batch_size)
    files = {"gbdt": save_gbdt(gbdt, out_dir / "gbdt.skops"), "feature_spec": spec.save(out_dir / "feature_spec.json"),
             "encoder": emb_files["model"], "vocab": emb_files["vocab"]}
    if reference is not None:
        files["reference"] = reference.save(out_dir / "reference.json")
    config = {**emb_config, "kind": "hybrid", "threshold": decision.threshold, "decision": decision.to_dict(), **extra}
    if probe is not None:
        config["blend"] = {"weight": float(blend_weight), "probe": probe.to_dict()}
    return config, files


def load_embedding_kind(cfg: dict, artifacts: dict[str, str]) -> EmbeddingScorer | HybridScorer:
    """The live scorer of an `embedding` (pretrained encoder) or `hybrid` config.json with its artifact files."""
    from pipeline.scoring.gbdt import load_gbdt

    model_config = ModelConfig.from_dict(cfg["model"])
    model = build_model(model_config)
    weights = artifacts["encoder"] if cfg["kind"] == "hybrid" else artifacts["model"]
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    ingest = IngestConfig.from_dict(cfg["ingest"])
    embedder = EmbeddingScorer(model, model_config, Vocab.load(Path(artifacts["vocab"])), SequenceConfig(**cfg["sequence"]), ingest,
                               cfg["batch_size"])
    if cfg["kind"] == "embedding":
        return embedder
    spec = FeatureSpec.load(Path(artifacts["feature_spec"]))
    # hybrids registered before their decision was stored: their threshold, no calibration
    decision = Decision.from_dict(cfg["decision"]) if "decision" in cfg else Decision(
        threshold=float(cfg.get("threshold", 0.5)), rule=NO_DECISION.rule)
    reference = Reference.load(Path(artifacts["reference"])) if "reference" in artifacts else None
    blend = cfg.get("blend")  # absent: a hybrid from before the blend (its GBDT reads the embedding too)
    probe = LinearProbe.from_dict(blend["probe"]) if blend else None
    return HybridScorer(load_gbdt(Path(artifacts["gbdt"])), spec, embedder, ingest, decision, reference, probe,
                        float(blend["weight"]) if blend else 1.0)
