"""The encoder contract, checked for every entry of ENCODERS (a new encoder is covered by adding it there)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import ENCODERS, EncoderOutput, build_encoder

from model_fixtures import ENCODER_NAMES, lengths_mask, tiny_encoder

D = 8


def _run(enc, x, valid) -> EncoderOutput:
    out = enc(x, valid)
    assert isinstance(out, EncoderOutput)
    return out


@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_output_shapes_and_types(encoder_name: str) -> None:
    enc = tiny_encoder(encoder_name).eval()
    valid = lengths_mask([13, 5, 1])
    out = _run(enc, torch.randn(3, 13, D), valid)
    b, t_out, d = out.hidden.shape
    assert (b, d) == (3, D) and out.valid.shape == (3, t_out) and out.valid.dtype == torch.bool
    assert t_out <= 13 and out.aux_loss.shape == ()
    assert torch.isfinite(out.hidden).all()
    assert (out.hidden[~out.valid] == 0).all(), "padded outputs come back as zeros"
    assert out.valid[:, 0].all(), "every customer with an event keeps a valid output"


@pytest.mark.parametrize("extra", [1, 7])
@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_appending_padding_changes_no_output(encoder_name: str, extra: int) -> None:
    torch.manual_seed(0)
    enc = tiny_encoder(encoder_name).eval()
    valid = lengths_mask([13, 5, 9])
    x = torch.randn(3, 13, D)
    x = x.masked_fill(~valid.unsqueeze(-1), 0.0)
    ref = _run(enc, x, valid)
    # longer batch, and garbage (not zeros) at every padded position
    x_long = torch.cat([x, torch.randn(3, extra, D) * 10], dim=1)
    valid_long = torch.cat([valid, torch.zeros(3, extra, dtype=torch.bool)], dim=1)
    x_long = torch.where(valid_long.unsqueeze(-1), x_long, torch.randn_like(x_long) * 10)
    out = _run(enc, x_long, valid_long)
    t_ref = ref.hidden.shape[1]
    assert torch.equal(out.valid[:, :t_ref], ref.valid) and not out.valid[:, t_ref:].any()
    torch.testing.assert_close(out.hidden[:, :t_ref], ref.hidden, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out.aux_loss, ref.aux_loss, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_every_parameter_gets_a_finite_gradient(encoder_name: str) -> None:
    torch.manual_seed(0)
    enc = tiny_encoder(encoder_name).train()
    valid = lengths_mask([20, 11, 16])
    out = _run(enc, torch.randn(3, 20, D), valid)
    (out.hidden.pow(2).sum() + out.aux_loss).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_deterministic_under_a_seed(encoder_name: str) -> None:
    def run() -> torch.Tensor:
        torch.manual_seed(3)
        enc = tiny_encoder(encoder_name).train()  # dropout, feature redraws and sticky sampling all seeded
        x = torch.randn(2, 12, D)
        outs = [enc(x, lengths_mask([12, 7])).hidden for _ in range(4)]
        return torch.stack(outs)

    assert torch.equal(run(), run())


@pytest.mark.parametrize("t", [1, 9])
@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_batch_of_one(encoder_name: str, t: int) -> None:
    enc = tiny_encoder(encoder_name).train()
    out = _run(enc, torch.randn(1, t, D, requires_grad=True), torch.ones(1, t, dtype=torch.bool))
    assert out.hidden.shape[0] == 1 and torch.isfinite(out.hidden).all()
    (out.hidden.sum() + out.aux_loss).backward()


@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_single_event_among_padding(encoder_name: str) -> None:
    enc = tiny_encoder(encoder_name).eval()
    valid = lengths_mask([1, 6])
    out = _run(enc, torch.randn(2, 6, D), valid)
    assert out.valid[0].sum() == 1 and torch.isfinite(out.hidden).all()
    single = _run(enc, torch.randn(1, 1, D), torch.ones(1, 1, dtype=torch.bool))
    assert single.hidden.shape == (1, 1, D)


@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_a_customer_without_events_stays_finite(encoder_name: str) -> None:
    enc = tiny_encoder(encoder_name).train()
    x = torch.randn(2, 6, D, requires_grad=True)
    out = _run(enc, x, lengths_mask([0, 6]))
    (out.hidden.sum() + out.aux_loss).backward()
    assert torch.isfinite(out.hidden).all() and torch.isfinite(x.grad).all()
    assert (out.hidden[0] == 0).all()


@pytest.mark.parametrize("d_model,n_heads", [(9, 3), (7, 1)])
@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_odd_model_sizes(encoder_name: str, d_model: int, n_heads: int) -> None:
    enc = tiny_encoder(encoder_name, d_model=d_model, n_heads=n_heads).eval()
    out = _run(enc, torch.randn(2, 10, d_model), lengths_mask([10, 3]))
    assert out.hidden.shape[-1] == d_model and torch.isfinite(out.hidden).all()


def test_every_encoder_is_documented() -> None:
    """docs/readme/models.md lists every registered encoder in its table (one row per name, as `name`)."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "readme" / "models.md").read_text(encoding="utf-8")
    table = [line for line in text.splitlines() if line.startswith("| `")]
    documented = {line.split("`")[1] for line in table}
    assert documented >= set(ENCODERS), f"not in the encoder table of models.md: {sorted(set(ENCODERS) - documented)}"


@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_the_config_class_defaults_build_the_encoder(encoder_name: str) -> None:
    enc = build_encoder(encoder_name, d_model=8, n_layers=1, n_heads=2).eval()
    out = _run(enc, torch.randn(2, 5, D), lengths_mask([5, 2]))
    assert out.hidden.shape[0] == 2 and torch.isfinite(out.hidden).all()
    with pytest.raises(TypeError, match="takes a"):
        build_encoder(encoder_name, d_model=8, n_layers=1, n_heads=2, config=object())


@pytest.mark.parametrize("encoder_name", ENCODER_NAMES)
def test_runs_under_bf16_autocast(encoder_name: str) -> None:
    enc = tiny_encoder(encoder_name).train()
    x = torch.randn(2, 13, D, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(enc, x, lengths_mask([13, 6]))
    (out.hidden.float().sum() + out.aux_loss).backward()
    assert torch.isfinite(out.hidden).all() and torch.isfinite(x.grad).all()
