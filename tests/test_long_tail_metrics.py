from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import balanced_accuracy_score, f1_score

from monai_breastlt.metrics import LongTailMetric, long_tail_report


def test_report_against_hand_and_sklearn():
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    p = [0, 0, 0, 1, 1, 0, 2, 0]
    r = long_tail_report(y, p, 3, ["head", "medium", "tail"])
    assert r["recall"] == [0.75, 0.5, 0.5]
    assert r["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert r["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert r["g_mean"] == pytest.approx((0.75 * 0.5 * 0.5) ** (1 / 3))
    assert (r["head_recall"], r["medium_recall"], r["tail_recall"]) == (0.75, 0.5, 0.5)
    assert r["confusion_matrix"] == [[3, 1, 0], [1, 1, 0], [1, 0, 1]]


def test_absent_class_left_out_and_zero_recall_gmean():
    r = long_tail_report([0, 0, 1], [0, 0, 0], 3)
    assert r["balanced_accuracy"] == 0.5 and r["g_mean"] == 0.0 and r["support"] == [2, 1, 0]
    assert math.isnan(long_tail_report([0], [0], 2, ["head", "tail"])["tail_recall"])


def test_ignite_metric_accumulates_and_exposes_details():
    metric = LongTailMetric(3, groups=["head", "medium", "tail"], key="balanced_accuracy")
    batches = [(torch.eye(3)[[0, 1]], torch.tensor([0, 1])), ([torch.tensor([0.1, 0.2, 0.9])], [torch.tensor(0)])]
    engine = Engine(lambda e, b: b)
    metric.attach(engine, "lt")
    engine.run(batches, max_epochs=1)
    assert engine.state.metrics["lt"] == pytest.approx((0.5 + 1 + 0) / 2)  # class 2 absent from labels
    assert engine.state.metric_details["lt"]["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="key must be one of"):
        LongTailMetric(3, key="auc")
