"""A DDPM scheduler that can sample with fewer steps than it was trained with."""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler
from monai.networks.schedulers.ddpm import DDPMPredictionType, DDPMVarianceType

__all__ = ["RespacedDDPMScheduler", "is_truncated_ddpm"]


class RespacedDDPMScheduler(DDPMScheduler):
    """
    MONAI's ``DDPMScheduler``, stepping from each timestep set by ``set_timesteps`` to the next one.

    MONAI 1.6's ``DDPMScheduler.step`` always moves from ``t`` to ``t - 1``. After ``set_timesteps(n)`` with ``n`` below
    the training steps (``990, 980, ...`` for 100 of 1000), each step still removes one training step's worth of
    noise, so the chain ends at high noise and returns noise (diffusers fixed the same flaw in its PR #2076). This
    subclass takes the previous timestep ``s`` from ``self.timesteps`` and samples the posterior
    ``q(x_s | x_t, x_0)`` of the respaced chain, whose step variance is ``1 - alpha_bar_t / alpha_bar_s`` (Nichol &
    Dhariwal 2021, section 4). With every training step it is ``DDPMScheduler`` exactly.

    Args:
        num_train_timesteps, schedule, variance_type, clip_sample, prediction_type, clip_sample_min, clip_sample_max,
        schedule_args: as for ``monai.networks.schedulers.DDPMScheduler``; learned variances are not supported
            (their range is defined per training step).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.variance_type in (DDPMVarianceType.LEARNED, DDPMVarianceType.LEARNED_RANGE):
            raise ValueError(f"variance_type '{self.variance_type}' is not supported by RespacedDDPMScheduler; use fixed_small or fixed_large.")

    def previous_timestep(self, timestep: int) -> int:
        """The timestep after ``timestep`` in ``self.timesteps`` (``-1``: the clean image); ``timestep - 1`` for a
        timestep outside it, as ``DDPMScheduler`` steps."""
        steps = self.timesteps.tolist()
        if timestep not in steps:
            return timestep - 1
        k = steps.index(timestep)
        return int(steps[k + 1]) if k + 1 < len(steps) else -1

    def step(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        One ancestral step from ``timestep`` to the previous timestep of the schedule.

        Args:
            model_output: the model's prediction (noise, velocity or sample, per ``prediction_type``).
            timestep: current timestep, one of ``self.timesteps``.
            sample: the current noisy sample.
            generator: random number generator of the step's noise.

        Returns:
            the sample at the previous timestep, and the predicted clean sample.
        """
        timestep = int(timestep)
        prev = self.previous_timestep(timestep)
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_prev = self.alphas_cumprod[prev] if prev >= 0 else self.one
        beta_prod_t, beta_prod_prev = 1 - alpha_prod_t, 1 - alpha_prod_prev
        beta = 1 - alpha_prod_t / alpha_prod_prev  # the variance of the respaced forward step s -> t

        if self.prediction_type == DDPMPredictionType.EPSILON:
            pred_original = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
        elif self.prediction_type == DDPMPredictionType.SAMPLE:
            pred_original = model_output
        else:  # v-prediction
            pred_original = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
        if self.clip_sample:
            pred_original = torch.clamp(pred_original, self.clip_sample_values[0], self.clip_sample_values[1])

        # posterior mean, formula (7) of Ho et al. 2020 with the respaced step's alpha and beta
        mean = (alpha_prod_prev**0.5 * beta / beta_prod_t) * pred_original + ((1 - beta) ** 0.5 * beta_prod_prev / beta_prod_t) * sample
        if prev < 0:
            return mean, pred_original
        if self.variance_type == DDPMVarianceType.FIXED_LARGE:
            variance = beta
        else:
            variance = torch.clamp(beta_prod_prev / beta_prod_t * beta, min=1e-20)
        noise = torch.randn(model_output.size(), dtype=model_output.dtype, layout=model_output.layout, generator=generator, device=model_output.device)
        return mean + variance**0.5 * noise, pred_original


def is_truncated_ddpm(scheduler: object) -> bool:
    """Whether ``scheduler`` is MONAI's plain ``DDPMScheduler`` set to fewer steps than it was trained with: a chain
    that ends at high noise (see :class:`RespacedDDPMScheduler`)."""
    return (
        isinstance(scheduler, DDPMScheduler)
        and not isinstance(scheduler, RespacedDDPMScheduler)
        and len(scheduler.timesteps) < scheduler.num_train_timesteps
    )
