from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monai_breastlt.data import long_tail_subsample, prepare_split, stratified_group_split


def _items(labels, per_group=1):
    return [{"image": f"{k}.png", "label": lab, "group": f"p{k // per_group}"} for k, lab in enumerate(labels)]


def test_split_is_stratified_and_deterministic():
    items = _items([0] * 60 + [1] * 30 + [2] * 10)
    a = stratified_group_split(items, (0.6, 0.2, 0.2), seed=1)
    b = stratified_group_split(items, (0.6, 0.2, 0.2), seed=1)
    c = stratified_group_split(items, (0.6, 0.2, 0.2), seed=2)
    assert a == b and a != c
    for name, frac in zip(("training", "validation", "test"), (0.6, 0.2, 0.2)):
        counts = Counter(i["label"] for i in a[name])
        assert counts == {0: 60 * frac, 1: 30 * frac, 2: 10 * frac}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=3, max_size=80), st.integers(1, 3), st.integers(0, 10))
def test_groups_never_span_splits(labels, per_group, seed):
    items = _items(labels, per_group)
    out = stratified_group_split(items, seed=seed)
    assert sum(len(v) for v in out.values()) == len(items)
    groups = {k: {i["group"] for i in v} for k, v in out.items()}
    assert not groups["training"] & groups["validation"]
    assert not groups["training"] & groups["test"]
    assert not groups["validation"] & groups["test"]


def test_bad_fractions():
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_group_split(_items([0, 1]), (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="empty dataset"):
        stratified_group_split([])


def test_long_tail_subsample():
    items = _items([0] * 100 + [1] * 100 + [2] * 100)
    out = long_tail_subsample(items, imbalance_ratio=10, seed=0)
    assert sorted(Counter(i["label"] for i in out).values()) == [10, 32, 100]


def test_prepare_split_written_once(tmp_path):
    items = _items([0] * 20 + [1] * 10)
    path = tmp_path / "split.json"
    first = prepare_split(items, ["a", "b"], path, seed=3, check_files=False)  # the files are not under test here
    mtime = path.stat().st_mtime_ns
    again = prepare_split(items, ["a", "b"], path, seed=3)
    assert again == first and path.stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="existing split was made with"):
        prepare_split(items, ["a", "b"], path, seed=4)
