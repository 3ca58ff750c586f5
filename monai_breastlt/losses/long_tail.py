"""Long-tail classification losses (baselines of the benchmark); MONAI's ``FocalLoss`` covers focal loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["effective_number_weights", "BalancedSoftmaxLoss", "LogitAdjustedLoss", "LDAMLoss"]


def _prior(class_counts: Sequence[int]) -> torch.Tensor:
    counts = torch.as_tensor(np.asarray(class_counts, dtype=np.float64))
    if counts.ndim != 1 or (counts <= 0).any():
        raise ValueError(f"class_counts must be positive per class, got {counts.tolist()}.")
    return (counts / counts.sum()).float()


def effective_number_weights(class_counts: Sequence[int], beta: float = 0.999) -> torch.Tensor:
    """Class-balanced weights ``(1 - beta) / (1 - beta ** n_c)``, normalised to sum to the number of classes
    (Cui et al., CVPR 2019); use as ``weight`` of ``CrossEntropyLoss`` or MONAI's ``FocalLoss``."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1), got {beta}.")
    n = torch.as_tensor(np.asarray(class_counts, dtype=np.float64))
    w = (1 - beta) / (1 - beta**n)
    return (w * len(n) / w.sum()).float()


class BalancedSoftmaxLoss(nn.Module):
    """Cross-entropy on ``logits + log(prior)`` (Ren et al., NeurIPS 2020).

    Args:
        class_counts: training count per class.
    """

    def __init__(self, class_counts: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("log_prior", _prior(class_counts).log())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.log_prior, target.long().view(-1))


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy ``CE(logits + tau * log(prior))`` (Menon et al., ICLR 2021); with ``tau = 1`` it
    equals Balanced Softmax. For post-hoc adjustment subtract ``tau * log(prior)`` from a CE model's logits.

    Args:
        class_counts: training count per class.
        tau: adjustment strength.
    """

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0) -> None:
        super().__init__()
        self.tau = tau
        self.register_buffer("log_prior", _prior(class_counts).log())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior, target.long().view(-1))


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019): the true class's logit is lowered by
    ``m_c = C / n_c ** 0.25`` (``C`` so that the largest margin is ``max_margin``) before a scaled cross-entropy.
    With ``weight`` from :func:`effective_number_weights` switched on late in training it is LDAM-DRW.

    Args:
        class_counts: training count per class.
        max_margin: the largest margin (of the rarest class).
        scale: logit scale ``s``.
        weight: optional per-class weights (deferred re-weighting).
    """

    def __init__(self, class_counts: Sequence[int], max_margin: float = 0.5, scale: float = 30.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        m = 1.0 / torch.as_tensor(np.asarray(class_counts, dtype=np.float64)) ** 0.25
        self.register_buffer("margins", (m * (max_margin / m.max())).float())
        self.scale = scale
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long().view(-1)
        adjusted = logits - F.one_hot(target, logits.shape[1]).to(logits.dtype) * self.margins[target][:, None]
        w = self.weight.to(logits.device) if self.weight is not None else None
        return F.cross_entropy(self.scale * adjusted, target, weight=w)
