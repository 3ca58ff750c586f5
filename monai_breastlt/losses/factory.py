"""``build_loss``: the long-tail baselines by name, for bundle overrides (``--loss_name focal``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .long_tail import BalancedSoftmaxLoss, LDAMLoss, LogitAdjustedLoss, effective_number_weights

__all__ = ["LOSS_NAMES", "ClassIndexFocalLoss", "build_loss", "inverse_frequency_weights"]

LOSS_NAMES = ("ce", "weighted_ce", "focal", "cb_focal", "ldam", "ldam_drw", "balanced_softmax", "logit_adjusted")


def inverse_frequency_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """``1 / n_c`` normalised to sum to the number of classes (classes without images get weight 0)."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    w = torch.where(n > 0, 1.0 / n.clamp_min(1), torch.zeros_like(n))
    return (w * len(n) / w.sum()).float()


class ClassIndexFocalLoss(nn.Module):
    """MONAI's :py:class:`monai.losses.FocalLoss` (softmax) for ``(B, C)`` logits and ``(B,)`` class indices.

    Args:
        gamma: focusing parameter.
        weight: optional per-class weights (class-balanced focal loss with :func:`effective_number_weights`).
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        from monai.losses import FocalLoss

        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma, weight=weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.focal(logits, target.long().view(-1, 1))


def build_loss(name: str, class_counts: Sequence[int], gamma: float = 2.0, beta: float = 0.999, tau: float = 1.0) -> nn.Module:
    """The classification loss called ``name``; every option takes the real training count per class.

    Args:
        name: one of :data:`LOSS_NAMES`: ``ce``; ``weighted_ce`` (inverse frequency); ``focal``; ``cb_focal``
            (focal with effective-number weights, Cui et al. 2019); ``ldam`` / ``ldam_drw`` (the deferred
            re-weighting is switched on by :py:class:`monai_breastlt.handlers.DeferredReweighting`);
            ``balanced_softmax``; ``logit_adjusted`` (the loss form; the post-hoc form is
            :py:class:`monai_breastlt.inferers.LogitAdjustedInferer`).
        class_counts: real training images per class.
        gamma: focal-loss focusing parameter.
        beta: effective-number parameter of the class-balanced weights.
        tau: logit-adjustment strength.
    """
    counts = [int(c) for c in class_counts]
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "weighted_ce":
        return nn.CrossEntropyLoss(weight=inverse_frequency_weights(counts))
    if name == "focal":
        return ClassIndexFocalLoss(gamma)
    if name == "cb_focal":
        return ClassIndexFocalLoss(gamma, weight=effective_number_weights(counts, beta))
    if name in ("ldam", "ldam_drw"):
        return LDAMLoss([max(c, 1) for c in counts])
    if name == "balanced_softmax":  # a class without training images gets the prior of one image
        return BalancedSoftmaxLoss([max(c, 1) for c in counts])
    if name == "logit_adjusted":
        return LogitAdjustedLoss([max(c, 1) for c in counts], tau)
    raise ValueError(f"loss_name must be one of {', '.join(LOSS_NAMES)}, got '{name}'.")
