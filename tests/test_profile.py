from __future__ import annotations

import pytest

from monai_breastlt.data import long_tail_groups, long_tail_profile, tempered_class_weights


def test_groups_and_ratio():
    prof = long_tail_profile([0] * 100 + [1] * 40 + [2] * 5, ["a", "b", "c"])
    assert prof.counts == [100, 40, 5]
    assert prof.groups == ["head", "medium", "tail"]
    assert prof.imbalance_ratio == 20
    table = prof.format_table()
    assert "imbalance ratio 20.0" in table and table.index("\na ") < table.index("\nc ")


def test_thresholds_are_checked():
    assert long_tail_groups([10, 9, 1], head_ratio=0.8, tail_ratio=0.2) == ["head", "head", "tail"]
    with pytest.raises(ValueError, match="tail_ratio < head_ratio"):
        long_tail_groups([1], head_ratio=0.1, tail_ratio=0.5)


def test_tempered_class_weights_span_natural_to_balanced():
    counts = [100, 25, 4, 0]
    assert tempered_class_weights(counts, 0.0) == pytest.approx([100 / 129, 25 / 129, 4 / 129, 0])
    assert tempered_class_weights(counts, 1.0) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])
    assert tempered_class_weights(counts, 0.5) == pytest.approx([10 / 17, 5 / 17, 2 / 17, 0])  # square-root sampling
    with pytest.raises(ValueError, match="power must be in"):
        tempered_class_weights(counts, 1.5)
    with pytest.raises(ValueError, match="not all zero"):
        tempered_class_weights([0, 0], 0.5)
