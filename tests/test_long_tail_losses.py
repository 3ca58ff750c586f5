from __future__ import annotations

import math

import pytest
import torch

from monai_breastlt.losses import BalancedSoftmaxLoss, LDAMLoss, LogitAdjustedLoss, effective_number_weights


def test_effective_number_weights_by_hand():
    w = effective_number_weights([100, 10], beta=0.9)
    raw = [(1 - 0.9) / (1 - 0.9**100), (1 - 0.9) / (1 - 0.9**10)]
    assert torch.allclose(w, torch.tensor([2 * r / sum(raw) for r in raw]))
    with pytest.raises(ValueError, match="beta must be in"):
        effective_number_weights([1], beta=1.0)


def test_balanced_softmax_by_hand():
    logits, target = torch.tensor([[0.0, 0.0]]), torch.tensor([1])
    # prior (0.8, 0.2): softmax of log-prior-adjusted zero logits is the prior itself, so the loss is -log(0.2)
    assert BalancedSoftmaxLoss([80, 20])(logits, target).item() == pytest.approx(-math.log(0.2), rel=1e-5)
    assert LogitAdjustedLoss([80, 20], tau=1.0)(logits, target).item() == pytest.approx(-math.log(0.2), rel=1e-5)
    assert LogitAdjustedLoss([80, 20], tau=0.0)(logits, target).item() == pytest.approx(math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="must be positive"):
        BalancedSoftmaxLoss([3, 0])


def test_ldam_margin_by_hand():
    loss = LDAMLoss([16, 1], max_margin=0.5, scale=1.0)
    assert torch.allclose(loss.margins, torch.tensor([0.25, 0.5]))  # 1/16**0.25 = 0.5 of the rarest
    logits = torch.tensor([[1.0, 1.0]])
    # class 1 (rare): its logit lowered by 0.5 -> CE([1, 0.5], 1) = log(e + e**0.5) - 0.5
    expected = math.log(math.e + math.e**0.5) - 0.5
    assert loss(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-5)
