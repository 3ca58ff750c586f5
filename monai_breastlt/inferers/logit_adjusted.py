"""``LogitAdjustedInferer``: post-hoc logit adjustment of a classifier trained with plain cross-entropy."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer

__all__ = ["LogitAdjustedInferer"]


class LogitAdjustedInferer(Inferer):
    """
    Run the network and subtract ``tau * log(prior)`` from its logits (Menon et al., ICLR 2021, post-hoc form): the
    Bayes-optimal correction of a model trained on a long-tailed prior for a balanced test distribution.
    With ``tau = 0`` it is MONAI's ``SimpleInferer``.

    Args:
        class_counts: training count per class (the prior); zero counts are treated as one image. ``None`` only with
            ``tau = 0`` (no adjustment, so no prior needed: inference on new images without the training datalist).
        tau: adjustment strength.
    """

    def __init__(self, class_counts: Sequence[int] | None, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = float(tau)
        if class_counts is None:
            if self.tau:
                raise ValueError(f"LogitAdjustedInferer: tau {tau} needs the training class counts (class_counts is None).")
            self.log_prior = torch.zeros(())
            return
        counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
        if counts.ndim != 1:
            raise ValueError(f"class_counts must be one count per class, got shape {counts.shape}.")
        self.log_prior = torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = network(inputs, *args, **kwargs)
        return logits - self.tau * self.log_prior.to(logits.device, logits.dtype)
