"""pipeline.sequences.splits: the ptls gender protocol split (seeded stratified test set + K stratified folds)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from pipeline.sequences.splits import Split, SplitConfig, make_split


def _labels(n: int = 1000, p_one: float = 0.44, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ids = rng.choice(10**8, size=n, replace=False)
    return pl.DataFrame({"customer_id": ids, "label": (rng.random(n) < p_one).astype(np.int8)})


def test_deterministic_and_independent_of_row_order() -> None:
    labels = _labels()
    a = make_split(labels, SplitConfig(seed=3))
    b = make_split(labels.sample(fraction=1.0, shuffle=True, seed=9), SplitConfig(seed=3))
    assert a == b and a.split_id == b.split_id
    c = make_split(labels, SplitConfig(seed=4))
    assert c.test_ids != a.test_ids and c.split_id != a.split_id


def test_disjoint_and_covers_every_labelled_customer() -> None:
    labels = _labels()
    s = make_split(labels, SplitConfig(n_folds=5))
    parts = [set(s.test_ids), *[set(f) for f in s.folds]]
    assert sum(len(p) for p in parts) == labels.height
    assert set().union(*parts) == set(labels["customer_id"].to_list())
    for fold in range(5):
        train, val = set(s.train_ids(fold)), set(s.val_ids(fold))
        assert not train & val and not (train | val) & set(s.test_ids)
        assert train | val == set(s.trainval_ids)
    assert len(s.test_ids) == pytest.approx(0.1 * labels.height, abs=2)


def test_stratified() -> None:
    labels = _labels(n=2003, p_one=0.3)
    s = make_split(labels, SplitConfig(n_folds=5))
    g = dict(zip(labels["customer_id"].to_list(), labels["label"].to_list()))
    overall = labels["label"].mean()
    for ids in (s.test_ids, *s.folds):
        assert abs(np.mean([g[i] for i in ids]) - overall) < 0.01
    sizes = [len(f) for f in s.folds]
    assert max(sizes) - min(sizes) <= 1


def test_save_load_roundtrip_and_tamper_check(tmp_path) -> None:
    s = make_split(_labels(200), SplitConfig(n_folds=3, seed=7))
    path = s.save(tmp_path / "split.json")
    assert Split.load(path) == s
    path.write_text(path.read_text().replace(str(s.test_ids[0]), "1", 1))
    with pytest.raises(ValueError, match="split_id"):
        Split.load(path)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        make_split(pl.DataFrame({"customer_id": [1, 1], "label": [0, 1]}))
    with pytest.raises(ValueError):
        SplitConfig(n_folds=1)
    with pytest.raises(IndexError):
        make_split(_labels(50)).val_ids(5)
