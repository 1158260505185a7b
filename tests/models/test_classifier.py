"""SequenceClassifier and build_model: the one builder, typed configs, pooling, padding invariance end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from models import ENCODERS, ClassifierOutput, EAMConfig, ModelConfig, PerformerConfig, build_model

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


def test_unknown_names_and_mismatched_configs_fail() -> None:
    with pytest.raises(ValueError, match="unknown encoder"):
        ModelConfig(n_mcc=5, n_tr_type=5, encoder="lstm")
    with pytest.raises(ValueError, match="pooling"):
        ModelConfig(n_mcc=5, n_tr_type=5, pooling="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(n_mcc=5, n_tr_type=5, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="takes a PerformerConfig"):
        ModelConfig(n_mcc=5, n_tr_type=5, encoder="performer", encoder_config=EAMConfig())


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
def test_config_round_trips_through_json(encoder: str) -> None:
    cfg = tiny_config(encoder)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and type(again.encoder_config) is ENCODERS[encoder].config_cls


def test_tuples_survive_the_json_round_trip() -> None:
    again = ModelConfig.from_dict(json.loads(json.dumps(tiny_config("eam").to_dict())))
    assert isinstance(again.encoder_config.pool_after, tuple)


def test_default_encoder_config_is_the_config_class_defaults() -> None:
    for name, entry in ENCODERS.items():
        assert ModelConfig(n_mcc=5, n_tr_type=5, encoder=name).encoder_config == entry.config_cls()


def _legacy_dict(encoder: str) -> dict:
    """A ModelConfig as saved before encoder_config existed: one sub-config key per encoder of that time."""
    cfg = tiny_config("transformer").to_dict()
    del cfg["encoder_config"]
    return {**cfg, "encoder": encoder, "performer": {"nb_features": 16, "redraw_interval": 3, "kernel_eps": 1e-6},
            "infinite_former": {"segment_len": 4, "n_basis": 8, "rbf_widths": [0.02, 0.05], "n_samples": 6,
                                "ridge_lambda": 0.5, "tau": 0.5, "sticky": True, "histogram_bins": 8},
            "eam": {"window": 3, "stride": 4, "pool_size": 2, "pool_after": [0], "n_experts": 3, "top_k": 2,
                    "expert_ff_mult": 2, "balance_loss_weight": 0.01}}


@pytest.mark.parametrize("encoder", ["transformer", "performer", "infinite_former", "eam"])
def test_configs_saved_before_encoder_config_still_load(encoder: str) -> None:
    cfg = ModelConfig.from_dict(json.loads(json.dumps(_legacy_dict(encoder))))
    assert cfg.encoder == encoder and type(cfg.encoder_config) is ENCODERS[encoder].config_cls
    if encoder == "performer":
        assert cfg.encoder_config == PerformerConfig(nb_features=16, redraw_interval=3)
    build_model(cfg)


def test_an_old_config_naming_the_informer_alias_is_refused() -> None:
    with pytest.raises(ValueError, match="alias of 'infinite_former'"):
        ModelConfig.from_dict(_legacy_dict("informer"))


@pytest.mark.parametrize("encoder", ENCODER_NAMES)
def test_builder_uses_the_typed_subconfig(encoder: str) -> None:
    cfg = tiny_config(encoder)
    model = build_model(cfg)
    assert isinstance(model.encoder, ENCODERS[encoder].encoder_cls)
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
