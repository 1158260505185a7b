"""The auto preset sizes the recipe from the data: enough optimiser steps for a few hundred labels, bigger models
and batches for many, class weights from the label balance."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.training.presets import DataProfile, fine_tune, get


@given(n=st.integers(1, 2_000_000), mean_len=st.integers(1, 3000), pos_share=st.floats(0.05, 0.95))
def test_auto_always_trains_at_least_the_minimum_budget(n: int, mean_len: int, pos_share: float) -> None:
    p = get("auto", DataProfile(n, n * mean_len, int(n * pos_share)))
    assert 600 <= p.train.steps <= 30_000 and p.train.eval_every <= p.train.steps // 20 + 20
    assert 32 <= p.crop_len <= 512 and p.train.pos_weight > 0


def test_auto_scales_with_the_labelled_customers() -> None:
    small = get("auto", DataProfile(400, 400 * 450, 180))
    large = get("auto", DataProfile(400_000, 400_000 * 450, 200_000))
    assert small.train.steps == 600  # 13 batches a pass: the minimum budget, ~46 passes
    assert large.train.steps == 30_000 and large.train.eval_every == 1500
    assert small.model["d_model"] < large.model["d_model"] and small.batch_size < large.batch_size
    assert small.train.pos_weight == pytest.approx(220 / 180) and large.train.pos_weight == 1.0


def test_auto_needs_the_data_and_overrides_apply() -> None:
    with pytest.raises(ValueError, match="profile"):
        get("auto")
    assert get("auto", DataProfile(400, 1000, 200), steps=50, device="cpu").train.steps == 50


def test_the_profile_of_a_sequences_folder_counts_the_folds_labelled_training_customers(tmp_path) -> None:
    import polars as pl

    from pipeline import schema as S
    from pipeline.training.run import data_profile, resolve_preset
    from pipeline.sequences.splits import Split

    from _train_data import tiny_dataset  # on sys.path: tests/pipeline/conftest.py

    data = tiny_dataset(tmp_path / "data")
    seq = pl.read_parquet(data.sequences / "sequences.parquet")
    train = seq.filter(pl.col(S.CUSTOMER_ID).is_in(Split.load(data.sequences / "split.json").train_ids(1)))
    profile = data_profile(data.sequences, fold=1)
    assert profile == DataProfile(train.height, int(train[S.SEQ_LENGTH].sum()), int(train[S.LABEL].sum()))
    assert resolve_preset("auto", data.sequences, 1).train == get("auto", profile).train


def test_fine_tuning_trains_the_head_alone_through_the_warm_up_then_the_backbone_slower() -> None:
    train = get("auto", DataProfile(300, 300 * 400, 150)).train
    ft = fine_tune(train)
    assert ft.head_only_steps == round(train.warmup_frac * train.steps) > 0 and 0 < ft.backbone_lr_scale < 1
    assert (ft.steps, ft.lr, ft.eval_every, ft.patience) == (train.steps, train.lr, train.eval_every, train.patience)
    assert (train.head_only_steps, train.backbone_lr_scale) == (0, 1.0)  # training from scratch: one LR for all
