from __future__ import annotations

import math

import torch

from monai_breastlt.inferers import LogitAdjustedInferer


def test_posthoc_adjustment_by_hand():
    net = torch.nn.Identity()
    x = torch.zeros(1, 2)
    out = LogitAdjustedInferer([75, 25], tau=1.0)(x, net)
    # zero logits minus log prior (0.75, 0.25): the rare class wins
    assert torch.allclose(out, torch.tensor([[-math.log(0.75), -math.log(0.25)]]))
    assert out.argmax(1).item() == 1
    assert torch.equal(LogitAdjustedInferer([75, 25], tau=0.0)(x, net), x)
    # a class without training images counts as one image
    assert torch.isfinite(LogitAdjustedInferer([3, 0])(x, net)).all()
