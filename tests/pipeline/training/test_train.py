"""The trainer: every encoder learns and logs to MLflow; a resumed run ends exactly like an uninterrupted one."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models import ModelConfig, build_model
from pipeline.sequences.batches import SequenceDataset, make_loader, numeric_stats
from pipeline.training.presets import ENCODER_MODELS, tiny
from pipeline.settings import Settings
from pipeline.registry.tracking import Tracker, setup
from pipeline.training.train import (
    TrainConfig,
    backbone_schedule,
    evaluate,
    fit,
    load_checkpoint,
    param_groups,
    warmup_cosine,
)

from _train_data import synthetic_sequences  # on sys.path: tests/pipeline/conftest.py

TABLE = synthetic_sequences(n=112, max_len=32)
CONFIG = replace(tiny().train, steps=15, eval_every=5, lr=5e-3, device="cpu")  # 5 batches a pass: 3 passes


@pytest.fixture(scope="module")
def data() -> dict:
    train = SequenceDataset(TABLE, list(range(80)))
    return {"train": train, "val": SequenceDataset(TABLE, list(range(80, 112))), "stats": numeric_stats(train)}


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Tracker:
    root = tmp_path_factory.mktemp("mlflow")
    return setup(Settings(root, f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", "train-tests"), "train-tests")


def _model(encoder: str, data: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_mcc=24, n_tr_type=8, **tiny().model_kwargs(encoder)))
    model.embedding.set_numeric_stats(*data["stats"])
    return model


def _fit(model, data, config: TrainConfig = CONFIG, logger=None, checkpoint_dir: Path | None = None):
    return fit(
        model,
        lambda epoch: make_loader(data["train"], batch_size=16, shuffle=True, crop_len=16, seed=100 + epoch),
        lambda: make_loader(data["val"], batch_size=64),
        config, logger, checkpoint_dir,
    )


@pytest.mark.parametrize("encoder", ENCODER_MODELS)
def test_each_encoder_learns_and_logs_metrics_per_evaluation(encoder: str, data: dict, tracker: Tracker) -> None:
    with tracker.run(encoder) as run_id:
        result = _fit(_model(encoder, data), data, logger=tracker.logger(run_id))
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    assert result.best_val_auroc > 0.6
    for key in ("train/loss", "train/epoch", "val/auroc", "val/accuracy", "val/logloss", "time/round_s",
                "throughput/train_events_per_s", "throughput/train_customers_per_s", "mem/rss_peak_gib"):
        steps = sorted(m.step for m in tracker.client.get_metric_history(run_id, key))
        assert steps == [5, 10, 15], key
    assert [h["epoch"] for h in result.history] == [1.0, 2.0, 3.0]  # 80 customers, batch 16: 5 steps a pass


@pytest.mark.parametrize("encoder,key", [("eam", "encoder.blocks.0.ff/expert_share_"),
                                         ("switchhead", "encoder.blocks.0.attn/v_expert_share_")])
def test_statistics_reported_by_the_model_are_logged_per_evaluation(encoder: str, key: str, data: dict,
                                                               tracker: Tracker) -> None:
    """MoE layers report expert shares through the generic ``pop_stats`` protocol; fit logs them per evaluation."""
    with tracker.run(f"{encoder}-stats") as run_id:
        result = _fit(_model(encoder, data), data, logger=tracker.logger(run_id))
    keys = [k for k in result.history[0] if k.startswith(key)]
    assert keys and keys[0] == key + "0"
    for row in result.history:
        shares = [row[k] for k in keys]
        assert math.isclose(sum(shares), 1.0, rel_tol=1e-6) and min(shares) >= 0
    steps = sorted(m.step for m in tracker.client.get_metric_history(run_id, keys[-1]))
    assert steps == [5, 10, 15]


class _Killed(Exception):
    pass


class _KillAfter:
    """A logger that 'kills' the run when step `step` reports (before that evaluation's checkpoint is written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def log(self, metrics, step: int) -> None:
        if step == self.step:
            raise _Killed


@pytest.mark.parametrize("encoder", ["performer", "eam"])  # random-feature redraws; dropout + MoE aux loss
def test_resumed_run_ends_with_the_same_metrics(encoder: str, data: dict, tmp_path: Path) -> None:
    config = replace(CONFIG, steps=14, eval_every=4, patience=10)  # evaluations fall mid-pass (5 batches a pass)
    whole = _fit(_model(encoder, data), data, config, checkpoint_dir=tmp_path / "whole")
    with pytest.raises(_Killed):
        _fit(_model(encoder, data), data, config, _KillAfter(12), tmp_path / "killed")
    state = load_checkpoint(tmp_path / "killed" / "last.pt")["state"]
    assert (state["step"], state["epoch"], state["in_epoch"]) == (8, 1, 3)
    resumed_model = _model(encoder, data)
    resumed = _fit(resumed_model, data, config, checkpoint_dir=tmp_path / "killed")
    assert [h["step"] for h in resumed.history] == [4, 8, 12, 14] and resumed.resumed_from_step == 8
    for a, b in zip(whole.history, resumed.history, strict=True):
        for key in ("train/loss", "val/auroc", "val/logloss", "val/accuracy"):
            assert a[key] == b[key], (a["step"], key)
    assert (whole.best_step, whole.best_val_auroc) == (resumed.best_step, resumed.best_val_auroc)


def test_early_stopping_keeps_the_best_weights(data: dict, tmp_path: Path) -> None:
    config = replace(CONFIG, steps=30, lr=0.0, patience=1, warmup_frac=0.0)  # lr 0: nothing ever improves
    model = _model("transformer", data)
    result = _fit(model, data, config, checkpoint_dir=tmp_path)
    assert result.stopped_early and result.steps_run == 10 and result.best_step == 5
    best = load_checkpoint(tmp_path / "best.pt")
    assert all(torch.equal(v, best["model"][k]) for k, v in model.state_dict().items())
    again = _fit(_model("transformer", data), data, config, checkpoint_dir=tmp_path)  # finished: resumes to the end
    assert again.steps_run == 10 and again.history == result.history
    out = evaluate(model, make_loader(data["val"], batch_size=64), torch.device("cpu"))
    assert sorted(out["customer_id"].tolist()) == list(range(80, 112)) and out["prob"].min() >= 0


def test_warmup_then_cosine() -> None:
    f = warmup_cosine(100, warmup_frac=0.1, min_lr_frac=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) < f(10) and f(100) == pytest.approx(0.1)
    assert all(0 < f(s) <= 1 for s in range(101)) and math.isclose(f(10), 1.0)


def test_resume_refuses_a_checkpoint_written_with_other_settings(data: dict, tmp_path: Path) -> None:
    _fit(_model("transformer", data), data, replace(CONFIG, steps=5), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="steps"):
        _fit(_model("transformer", data), data, replace(CONFIG, steps=10), checkpoint_dir=tmp_path)


def test_the_class_weight_reaches_the_loss(data: dict) -> None:
    a = _fit(_model("transformer", data), data, replace(CONFIG, steps=5))
    b = _fit(_model("transformer", data), data, replace(CONFIG, steps=5, pos_weight=3.0))
    assert a.history[0]["train/loss"] != b.history[0]["train/loss"]


def test_budget_in_steps_runs_several_passes_and_validates_every_eval_every(data: dict) -> None:
    result = _fit(_model("transformer", data), data, replace(CONFIG, steps=23, eval_every=10, patience=10))
    assert [h["step"] for h in result.history] == [10, 20, 23]
    assert result.steps_run == 23 and result.history[-1]["epoch"] == pytest.approx(23 / 5)


def test_train_config_rejects_an_empty_budget() -> None:
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


def test_head_only_steps_leave_the_backbone_untouched_then_release_it_at_a_lower_lr(data: dict) -> None:
    model = _model("transformer", data)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _fit(model, data, replace(CONFIG, steps=5, eval_every=5, head_only_steps=5, backbone_lr_scale=0.5))
    after = model.state_dict()
    head = [k for k, _ in model.named_parameters() if k.startswith("head.")]
    backbone = [k for k, _ in model.named_parameters() if not k.startswith("head.")]
    assert head and backbone
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # frozen: no step, no weight decay
    assert any(not torch.equal(before[k], after[k]) for k in head)

    model = _model("transformer", data)  # released after 2 steps: the backbone moves
    _fit(model, data, replace(CONFIG, steps=5, eval_every=5, head_only_steps=2, backbone_lr_scale=0.5))
    assert any(not torch.equal(before[k], model.state_dict()[k]) for k in backbone)


def test_the_backbone_schedule_waits_then_ramps_to_its_share_of_the_lr() -> None:
    base = warmup_cosine(100, 0.1, 0.05)
    f = backbone_schedule(base, head_only_steps=20, warmup_steps=10, scale=0.3)
    assert [f(s) for s in (0, 19)] == [0.0, 0.0]
    assert f(20) == pytest.approx(0.3 * 0.1 * base(20)) and f(29) == pytest.approx(0.3 * base(29))
    assert f(60) == pytest.approx(0.3 * base(60))
    assert backbone_schedule(base, 0, 10, 1.0)(3) == base(3)  # the default: the same schedule as the head
    head, backbone = param_groups(build_model(ModelConfig(n_mcc=24, n_tr_type=8, **tiny().model_kwargs("eam"))))
    assert len(head) == 4 and len(backbone) > 4  # LayerNorm (2) + Linear (2) make the head
