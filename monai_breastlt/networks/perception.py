"""The perception branch: predicts the sketch of an image, so generation needs no mask."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import BasicUNet

__all__ = ["SketchPerceptionNet"]


class SketchPerceptionNet(nn.Module):
    """
    A MONAI ``BasicUNet`` with two output channels: (0) edges and tissue-layer boundaries, (1) the lesion contour.
    Trained on :py:class:`~monai_breastlt.transforms.ExtractSketch` targets, channel 1 only where a mask exists;
    at inference it sketches any image, annotated or not.

    Args:
        spatial_dims: 2 for B-mode images.
        in_channels: image channels.
        features: ``BasicUNet`` features (six numbers).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, features: Sequence[int] = (16, 16, 32, 64, 128, 16)) -> None:
        super().__init__()
        self.net = BasicUNet(spatial_dims, in_channels, 2, features=tuple(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 2, ...)``."""
        return self.net(x)

    @torch.no_grad()
    def predict_sketch(self, x: torch.Tensor) -> torch.Tensor:
        """The sketch in [0, 1], ``(B, 1, ...)``: the maximum of both channels' probabilities (as ``ExtractSketch``)."""
        return torch.sigmoid(self.forward(x)).amax(1, keepdim=True)

    @torch.no_grad()
    def predict_contour(self, x: torch.Tensor) -> torch.Tensor:
        """The lesion-contour channel alone in [0, 1], ``(B, 1, ...)``: where the net sees a lesion outline."""
        return torch.sigmoid(self.forward(x)[:, 1:2])
