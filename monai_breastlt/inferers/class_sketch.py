"""Class + sketch conditioned latent diffusion inferer (MONAI's ControlNet inferers drop class labels)."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.inferers import Inferer
from monai.networks.schedulers import Scheduler
from monai.utils import optional_import

from monai_breastlt.networks.ldm import controlled_prediction, prediction_type
from monai_breastlt.networks.schedulers import is_truncated_ddpm

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["ClassSketchLatentDiffusionInferer", "drop_class_labels"]


def drop_class_labels(labels: torch.Tensor, prob: float, null_class: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_class`` with probability ``prob`` (trains the unconditional branch of CFG)."""
    if prob <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device="cpu").to(labels.device) < prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)


class ClassSketchLatentDiffusionInferer(Inferer):
    """
    Latent diffusion with a class label (``DiffusionModelUNet`` class embedding) and a sketch (``ControlNet``),
    with classifier-free guidance over the class. API shaped like MONAI's ``ControlNetLatentDiffusionInferer``.

    The sketch is given at image resolution; the ControlNet's conditioning embedding downsamples it to the
    latent grid (see :func:`monai_breastlt.networks.matched_conditioning_channels`), so it is not resized here.

    Args:
        scheduler: a MONAI scheduler (``DDIMScheduler``...); for DDPM with fewer steps than training,
            :class:`~monai_breastlt.networks.RespacedDDPMScheduler` (MONAI's ``DDPMScheduler`` then ends at high noise).
        scale_factor: latent scale (``1 / std`` of the latents); ``SketchConditionedLDM`` keeps its own.
        guidance_scale: classifier-free guidance scale at sampling (1: no guidance).
        conditioning_scale: ControlNet residual scale (0: sketch ignored).
        null_class: the label of the unconditional class.
        guidance_interval: ``(t_low, t_high)``: guide only the steps whose timestep lies in this range, and use the
            conditional prediction alone elsewhere (guidance in a limited interval, Kynkaanniemi et al., NeurIPS 2024:
            at the noisiest steps guidance pushes every sample towards one stereotyped layout); ``None``: every step.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        scale_factor: float = 1.0,
        guidance_scale: float = 1.0,
        conditioning_scale: float = 1.0,
        null_class: int | None = None,
        guidance_interval: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if guidance_interval is not None and (len(guidance_interval) != 2 or guidance_interval[0] > guidance_interval[1]):
            raise ValueError(f"guidance_interval must be (t_low, t_high) with t_low <= t_high, got {guidance_interval}.")
        self.guidance_interval = tuple(int(t) for t in guidance_interval) if guidance_interval is not None else None
        self.scheduler = scheduler
        self.scale_factor = scale_factor
        self.guidance_scale = guidance_scale
        self.conditioning_scale = conditioning_scale
        self.null_class = null_class

    def _predict(
        self,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        diffusion_model: nn.Module,
        class_labels: torch.Tensor,
        controlnet: nn.Module | None,
        cn_cond: torch.Tensor | None,
        conditioning_scale: float,
    ) -> torch.Tensor:
        return controlled_prediction(diffusion_model, controlnet, latents, timesteps, class_labels, cn_cond, conditioning_scale)

    def encode(self, inputs: torch.Tensor, autoencoder_model: nn.Module) -> torch.Tensor:
        """Scaled latents of images: one posterior sample, as MONAI's latent inferers draw (encode once per step, since
        a second call draws other latents)."""
        with torch.no_grad():
            return autoencoder_model.encode_stage_2_inputs(inputs) * self.scale_factor

    def denoise(
        self,
        latents: torch.Tensor,
        diffusion_model: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        class_labels: torch.Tensor,
        controlnet: nn.Module | None = None,
        cn_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training pass on latents: noise them at ``timesteps`` and return the model output (compare it with
        :meth:`target`)."""
        if noise.shape != latents.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal the latent shape {tuple(latents.shape)}.")
        noisy = self.scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)
        return self._predict(noisy, timesteps, diffusion_model, class_labels, controlnet, cn_cond, self.conditioning_scale)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the model output regresses to under the scheduler's ``prediction_type``: the noise (``epsilon``), the
        velocity ``sqrt(a) * noise - sqrt(1 - a) * latents`` (``v_prediction``) or the clean latents (``sample``).
        Sampling reads the output the same way, so training and sampling always agree."""
        kind = prediction_type(self.scheduler)
        if kind == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return latents if kind == "sample" else noise

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        autoencoder_model: nn.Module,
        diffusion_model: nn.Module,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        class_labels: torch.Tensor,
        controlnet: nn.Module | None = None,
        cn_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Training pass: encode ``inputs``, noise the latents at ``timesteps`` and return the model output, which
        regresses to the noise for an ``epsilon`` scheduler (other prediction types: :meth:`encode`, :meth:`denoise`
        and :meth:`target`).

        Args:
            inputs: images ``(B, C, H, W)``.
            autoencoder_model: the (frozen) ``AutoencoderKL``.
            diffusion_model: the class-conditional ``DiffusionModelUNet``.
            noise: latent-shaped noise.
            timesteps: ``(B,)`` integer timesteps.
            class_labels: ``(B,)`` labels (the null class where dropped).
            controlnet: the ``ControlNet`` (``None``: class conditioning only).
            cn_cond: sketches ``(B, S, H, W)`` at image resolution.
        """
        latents = self.encode(inputs, autoencoder_model)
        return self.denoise(latents, diffusion_model, noise, timesteps, class_labels, controlnet, cn_cond)

    @torch.no_grad()
    def sample(  # type: ignore[override]
        self,
        input_noise: torch.Tensor,
        autoencoder_model: nn.Module,
        diffusion_model: nn.Module,
        class_labels: torch.Tensor,
        controlnet: nn.Module | None = None,
        cn_cond: torch.Tensor | None = None,
        scheduler: Scheduler | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        conditioning_scale: float | None = None,
        generator: torch.Generator | None = None,
        verbose: bool = False,
    ) -> torch.Tensor:
        """
        Generate images from latent noise (deterministic for DDIM; DDPM draws its noise from ``generator``).

        Args:
            input_noise: latent noise ``(B, latent_channels, h, w)``.
            autoencoder_model, diffusion_model, controlnet: as in ``__call__``.
            class_labels: ``(B,)`` target classes.
            cn_cond: sketches ``(B, S, H, W)``.
            scheduler: overrides the inferer's scheduler (e.g. a ``DDIMScheduler`` for fast sampling).
            num_inference_steps: set on the scheduler when given.
            guidance_scale: overrides the classifier-free guidance scale; > 1 needs ``null_class``. Applied at the
                steps inside the inferer's ``guidance_interval``.
            conditioning_scale: overrides the ControlNet scale.
            generator: seeds the stochastic steps.
            verbose: show a progress bar.
        """
        scheduler = scheduler or self.scheduler
        if num_inference_steps is not None:
            scheduler.set_timesteps(num_inference_steps, device=input_noise.device)
        if is_truncated_ddpm(scheduler):
            raise ValueError(
                f"MONAI's DDPMScheduler set to {len(scheduler.timesteps)} of {scheduler.num_train_timesteps} steps still steps t -> t-1 "
                "and returns noise: use monai_breastlt.networks.RespacedDDPMScheduler, a DDIMScheduler, or every step."
            )
        gs = self.guidance_scale if guidance_scale is None else guidance_scale
        cs = self.conditioning_scale if conditioning_scale is None else conditioning_scale
        cfg = gs != 1.0
        if cfg and self.null_class is None:
            raise ValueError("guidance_scale != 1 needs the inferer's null_class (the label trained with dropped classes).")
        labels = class_labels.long().to(input_noise.device)
        both_labels = torch.cat([labels, torch.full_like(labels, self.null_class)]) if cfg else labels
        both_cond = torch.cat([cn_cond, cn_cond]) if cfg and cn_cond is not None else cn_cond
        lo, hi = self.guidance_interval or (-1, float("inf"))
        latents = input_noise
        steps = scheduler.timesteps
        for t in tqdm(steps, desc="sampling") if verbose and has_tqdm else steps:
            guided = cfg and lo <= int(t) <= hi
            model_in = torch.cat([latents, latents]) if guided else latents
            ts = torch.full((model_in.shape[0],), int(t), device=latents.device, dtype=torch.long)
            pred = self._predict(model_in, ts, diffusion_model, both_labels if guided else labels, controlnet, both_cond if guided else cn_cond, cs)
            if guided:
                cond, uncond = pred.chunk(2)
                pred = uncond + gs * (cond - uncond)
            latents, _ = scheduler.step(pred, int(t), latents, generator=generator)
        return autoencoder_model.decode_stage_2_outputs(latents / self.scale_factor)
