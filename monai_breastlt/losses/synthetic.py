"""A per-sample loss weight for synthetic training items: the loss and the batch preparation that carries the flag."""

from __future__ import annotations

import torch
from monai.engines import PrepareBatch
from torch import nn

__all__ = ["SyntheticWeightedLoss", "PrepareSourceBatch"]


class SyntheticWeightedLoss(nn.Module):
    """
    Any classification loss with the synthetic items of a batch weighted by ``synthetic_weight``:
    ``(n_real * L(real items) + synthetic_weight * n_syn * L(synthetic items)) / n``.

    Each part is the wrapped loss on its own items, so class weights, margins or priors of the wrapped loss apply as
    they are (DiffuLT, Shao et al. 2024, weights its generated samples this way). Targets come from
    :class:`PrepareSourceBatch`: ``(B, 2)`` rows of ``[label, is_synthetic]``; plain ``(B,)`` labels mean all real.
    With ``synthetic_weight == 1`` the wrapped loss is called once on the whole batch, unchanged.

    Args:
        loss: the wrapped loss, called as ``loss(logits, labels)``.
        synthetic_weight: weight of the synthetic items, ``>= 0``.
    """

    def __init__(self, loss: nn.Module, synthetic_weight: float = 1.0) -> None:
        super().__init__()
        if not (isinstance(synthetic_weight, (int, float)) and synthetic_weight >= 0 and torch.isfinite(torch.tensor(float(synthetic_weight)))):
            raise ValueError(f"synthetic_weight must be a finite number >= 0, got {synthetic_weight!r}.")
        self.loss = loss
        self.synthetic_weight = float(synthetic_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 1 or target.shape[-1] == 1:
            return self.loss(logits, target.view(-1))
        labels, synthetic = target[:, 0], target[:, 1] > 0
        if self.synthetic_weight == 1.0 or synthetic.all() or not synthetic.any():
            weight = self.synthetic_weight if synthetic.all() else 1.0
            return weight * self.loss(logits, labels)
        n_syn, n = synthetic.sum(), len(labels)
        real = self.loss(logits[~synthetic], labels[~synthetic])
        syn = self.loss(logits[synthetic], labels[synthetic])
        return ((n - n_syn) * real + self.synthetic_weight * n_syn * syn) / n


class PrepareSourceBatch(PrepareBatch):
    """
    Batch preparation for :class:`SyntheticWeightedLoss` (MONAI engines' ``prepare_batch``): inputs are
    ``batch[image_key]``, targets ``(B, 2)`` rows of ``[label, is_synthetic]`` with the flag read from
    ``batch[source_key]`` (``"real"`` / ``"synthetic"`` strings, as the datalists hold them).

    Args:
        image_key: key of the images.
        label_key: key of the class indices.
        source_key: key of each item's source.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", source_key: str = "source") -> None:
        self.image_key, self.label_key, self.source_key = image_key, label_key, source_key

    def __call__(self, batchdata: dict, device: str | torch.device | None = None, non_blocking: bool = False, **kwargs):
        labels = torch.as_tensor(batchdata[self.label_key]).view(-1)
        flags = torch.as_tensor([s == "synthetic" for s in batchdata[self.source_key]], dtype=labels.dtype)
        image = batchdata[self.image_key].to(device=device, non_blocking=non_blocking, **kwargs)
        return image, torch.stack([labels, flags], dim=1).to(device=device, non_blocking=non_blocking)
