"""Loss of the sketch perception network."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SketchPerceptionLoss"]


class SketchPerceptionLoss(nn.Module):
    """
    Binary cross-entropy of the two perception channels against a ``(B, 3, H, W)`` target:
    ``[edges_and_layers, contour, has_mask]``; the contour term counts only where ``has_mask`` is 1.

    Args:
        contour_weight: weight of the contour term.
        pos_weight: weight of stroke pixels (strokes are sparse).
    """

    def __init__(self, contour_weight: float = 1.0, pos_weight: float = 4.0) -> None:
        super().__init__()
        self.contour_weight = contour_weight
        self.pos_weight = pos_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] != 3 or logits.shape[1] != 2 or logits.shape[2:] != target.shape[2:]:
            raise ValueError(f"expected logits (B, 2, ...) and target (B, 3, ...), got {tuple(logits.shape)} and {tuple(target.shape)}.")
        pw = torch.tensor(self.pos_weight, device=logits.device)
        edges = F.binary_cross_entropy_with_logits(logits[:, :1], target[:, :1], pos_weight=pw)
        has = target[:, 2:3]
        per_px = F.binary_cross_entropy_with_logits(logits[:, 1:2], target[:, 1:2], pos_weight=pw, reduction="none")
        contour = (per_px * has).sum() / has.sum().clamp_min(1.0)
        return edges + self.contour_weight * contour
