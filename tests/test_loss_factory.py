from __future__ import annotations

import math

import pytest
import torch

from monai_breastlt.losses import LOSS_NAMES, ClassIndexFocalLoss, build_loss, effective_number_weights, inverse_frequency_weights


def test_inverse_frequency_weights_by_hand():
    # 1/n = (0.01, 0.1, 0) normalised to sum to 3 classes
    w = inverse_frequency_weights([100, 10, 0])
    assert torch.allclose(w, torch.tensor([3 * 0.01 / 0.11, 3 * 0.1 / 0.11, 0.0]))


def test_focal_by_hand():
    # two classes, logits (0, 0): p_t = 0.5; MONAI's softmax focal term per element is -(1 - p)^gamma * log(p) on
    # the one-hot target and averaged over the B x C elements, so loss = 0.25 * log(2) / 2 for gamma = 2
    loss = ClassIndexFocalLoss(gamma=2.0)(torch.zeros(1, 2), torch.tensor([1]))
    assert loss.item() == pytest.approx(0.25 * math.log(2) / 2, rel=1e-5)
    # gamma 0 is cross-entropy spread over the C elements
    assert ClassIndexFocalLoss(gamma=0.0)(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(math.log(2) / 2, rel=1e-5)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_named_loss_trains_on_class_indices(name):
    torch.manual_seed(0)
    logits = torch.randn(8, 3, requires_grad=True)
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0])
    loss = build_loss(name, [50, 10, 2])
    value = loss(logits, target)
    value.backward()
    assert value.ndim == 0 and math.isfinite(value.item()) and logits.grad.abs().sum() > 0


def test_weighted_losses_use_the_counts():
    ce, wce = build_loss("ce", [90, 10]), build_loss("weighted_ce", [90, 10])
    logits, target = torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1])
    # the rare class's error weighs 9x the head's in the weighted loss: (0.2 * l0 + 1.8 * l1) / 2.0
    l0, l1 = torch.nn.functional.cross_entropy(logits, target, reduction="none").tolist()
    assert wce(logits, target).item() == pytest.approx((0.2 * l0 + 1.8 * l1) / 2.0, rel=1e-5)
    assert ce(logits, target).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert torch.allclose(build_loss("cb_focal", [90, 10]).focal.class_weight.flatten(), effective_number_weights([90, 10]))


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(ValueError, match="loss_name must be one of ce, weighted_ce"):
        build_loss("crossentropy", [1, 2])
    # zero training images in a class: the prior-based losses still build (one pseudo-image)
    assert math.isfinite(build_loss("balanced_softmax", [5, 0])(torch.zeros(1, 2), torch.tensor([0])).item())
