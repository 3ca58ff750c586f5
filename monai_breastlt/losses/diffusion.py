"""Loss weighting of diffusion training over noise levels."""

from __future__ import annotations

import torch
from monai.networks.schedulers import Scheduler

from monai_breastlt.networks.ldm import prediction_type

__all__ = ["min_snr_weights", "weighted_diffusion_loss"]


def min_snr_weights(scheduler: Scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """
    Min-SNR-gamma loss weights (Hang et al., "Efficient Diffusion Training via Min-SNR Weighting Strategy",
    ICCV 2023): each timestep's loss is weighted so that its effective weight on the clean-sample error is
    ``min(SNR(t), gamma)``, which stops the many easy low-noise steps from dominating the gradient.

    ``SNR(t) = a_t / (1 - a_t)`` with ``a_t`` the scheduler's ``alphas_cumprod``. The weight depends on what the
    network predicts (``scheduler.prediction_type``): ``min(SNR, gamma) / SNR`` for the noise,
    ``min(SNR, gamma) / (SNR + 1)`` for the velocity, ``min(SNR, gamma)`` for the clean sample.

    Args:
        scheduler: the MONAI scheduler whose noise levels the training draws.
        timesteps: ``(B,)`` integer timesteps of the batch.
        gamma: the SNR clip (the paper uses 5).

    Returns:
        ``(B,)`` float weights, on the device of ``timesteps``.
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}.")
    alpha = scheduler.alphas_cumprod.to(timesteps.device)[timesteps.long()].double()
    snr = alpha / (1 - alpha).clamp_min(1e-12)
    clipped = snr.clamp(max=gamma)
    kind = prediction_type(scheduler)
    if kind == "epsilon":  # min(SNR, gamma) / SNR, written so that SNR = 0 (pure noise) gives its limit, 1
        weights = torch.where(snr > gamma, gamma / snr.clamp_min(gamma), torch.ones_like(snr))
    elif kind == "v_prediction":
        weights = clipped / (snr + 1)
    else:
        weights = clipped
    return weights.float()


def weighted_diffusion_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample, weighted per sample, averaged over the batch (``weights=None``: plain MSE).

    Args:
        pred: model output ``(B, ...)``.
        target: regression target, the shape of ``pred``.
        weights: ``(B,)`` per-sample weights (e.g. :func:`min_snr_weights`).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} must equal target shape {tuple(target.shape)}.")
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if weights is None:
        return per_sample.mean()
    if weights.shape != per_sample.shape:
        raise ValueError(f"weights must have shape {tuple(per_sample.shape)} (one per sample), got {tuple(weights.shape)}.")
    return (weights.to(per_sample) * per_sample).mean()
