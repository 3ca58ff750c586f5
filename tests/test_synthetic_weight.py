from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_breastlt.handlers import DeferredReweighting
from monai_breastlt.losses import LDAMLoss, PrepareSourceBatch, SyntheticWeightedLoss


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, 3, generator=g, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    flags = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    return logits, labels, flags


def test_synthetic_items_are_weighted():
    logits, labels, flags = _batch()
    ce = nn.CrossEntropyLoss(reduction="none")
    per = ce(logits, labels)
    expected = (per[:4].sum() + 0.25 * per[4:].sum()) / 8
    got = SyntheticWeightedLoss(nn.CrossEntropyLoss(), 0.25)(logits, torch.stack([labels, flags], 1))
    assert torch.allclose(got, expected)
    # weight 1 and plain labels: the wrapped loss unchanged
    assert torch.allclose(SyntheticWeightedLoss(nn.CrossEntropyLoss(), 1.0)(logits, torch.stack([labels, flags], 1)), per.mean())
    assert torch.allclose(SyntheticWeightedLoss(nn.CrossEntropyLoss(), 0.25)(logits, labels), per.mean())
    # weight 0: synthetic items get no gradient
    SyntheticWeightedLoss(nn.CrossEntropyLoss(), 0.0)(logits, torch.stack([labels, flags], 1)).backward()
    assert logits.grad[4:].abs().sum() == 0 and logits.grad[:4].abs().sum() > 0


def test_bad_weight_is_refused():
    for bad in (-1.0, float("nan"), "0.5"):
        with pytest.raises(ValueError, match="synthetic_weight must be a finite number >= 0"):
            SyntheticWeightedLoss(nn.CrossEntropyLoss(), bad)


def test_prepare_source_batch_and_drw_reach_the_wrapped_loss():
    batch = {"image": torch.zeros(3, 1, 4, 4), "label": torch.tensor([2, 0, 1]), "source": ["real", "synthetic", "real"]}
    image, target = PrepareSourceBatch()(batch, "cpu")
    assert image.shape == (3, 1, 4, 4) and target.tolist() == [[2, 0], [0, 1], [1, 0]]
    wrapped = SyntheticWeightedLoss(LDAMLoss([10, 5, 2]), 0.5)
    drw = DeferredReweighting(wrapped, [1.0, 2.0, 3.0], start_epoch=0)
    assert drw.loss is wrapped.loss
