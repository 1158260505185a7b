"""SequenceClassifier and build_model: the one builder, typed configs, pooling, padding invariance end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from models import ALIASES, ENCODERS, ClassifierOutput, ModelConfig, build_model

from model_fixtures import ENCODER_NAMES, random_batch, tiny_config


def _pad(batch, extra: int):
    def cat(x, fill):
        pad = torch.full((x.shape[0], extra, *x.shape[2:]), fill, dtype=x.dtype)
        return torch.cat([x, pad], dim=1)

    return replace(
        batch, mcc=cat(batch.mcc, 0), tr_type=cat(batch.tr_type, 0), numeric=cat(batch.numeric, 0.0),
        event_time=cat(batch.event_time, 0.0), valid=cat(batch.valid, False),
    )


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("encoder", ENCODER_NAMES)
def test_logits_ignore_appended_padding(encoder: str, pooling: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(encoder, pooling=pooling)).eval()
    batch = random_batch([13, 4, 9])
    out = model(batch)
    assert isinstance(out, ClassifierOutput) and out.logit.shape == (3,) and out.aux_loss.shape == ()
    padded = model(_pad(batch, 5))
    torch.testing.assert_close(padded.logit, out.logit, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
def test_training_step_gives_finite_gradients(encoder: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(encoder, pooling="cls")).train()
    batch = random_batch([12, 1, 7])
    out = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label) + out.aux_loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.cls_token.grad is not None and model.cls_token.grad.abs().sum() > 0


def test_cls_token_sits_right_after_the_last_event() -> None:
    model = build_model(tiny_config("transformer", pooling="cls"))
    x = torch.zeros(2, 3, 8)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    x2, valid2 = model._append_cls(x, valid)
    assert valid2.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert torch.equal(x2[0, 2], model.cls_token.detach()) and torch.equal(x2[1, 3], model.cls_token.detach())


def test_alias_and_unknown_names() -> None:
    assert ALIASES == {"informer": "infinite_former"}
    assert ModelConfig(n_mcc=5, n_tr_type=5, encoder="informer").encoder == "infinite_former"
    with pytest.raises(ValueError, match="unknown encoder"):
        ModelConfig(n_mcc=5, n_tr_type=5, encoder="lstm")
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(n_mcc=5, n_tr_type=5, pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_mcc=5, n_tr_type=5, d_model=10, n_heads=4)


def test_config_round_trips_through_json() -> None:
    cfg = tiny_config("eam")
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.eam.pool_after, tuple)


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_builder_uses_the_typed_subconfig(encoder: str) -> None:
    cfg = tiny_config(encoder)
    model = build_model(cfg)
    assert isinstance(model.encoder, ENCODERS[encoder])
    assert model.n_parameters() == sum(p.numel() for p in model.parameters()) > 0


def test_odd_sizes_end_to_end() -> None:
    cfg = tiny_config("transformer", d_model=73, n_heads=1, mcc_dim=7, tr_type_dim=3, numeric_dim=5, time_dim=9)
    out = build_model(cfg)(random_batch([6, 2]))
    assert out.logit.shape == (2,) and torch.isfinite(out.logit).all()


def test_same_seed_same_model() -> None:
    def make():
        torch.manual_seed(7)
        return build_model(tiny_config("performer"))

    a, b = make(), make()
    for (name, t_a), t_b in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(t_a, t_b), name
