"""The sketch-conditioned, class-controllable latent diffusion model, assembled from MONAI core networks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import AutoencoderKL, ControlNet, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, Scheduler

from monai_breastlt.networks.schedulers import RespacedDDPMScheduler

__all__ = ["SketchConditionedLDM", "controlled_prediction", "matched_conditioning_channels", "prediction_type", "DEFAULT_NOISE_SCHEDULE"]

# the latent-diffusion schedule of MONAI's 2D LDM tutorials; the UNet predicts the noise
DEFAULT_NOISE_SCHEDULE = {
    "num_train_timesteps": 1000, "schedule": "scaled_linear_beta", "beta_start": 0.0015, "beta_end": 0.0195, "prediction_type": "epsilon"
}


def _with_prediction_type(noise_schedule: dict) -> dict:
    """A schedule saved without ``prediction_type`` (checkpoints from before it was recorded) predicted the noise."""
    return {"prediction_type": "epsilon", **noise_schedule}


def prediction_type(scheduler: Scheduler) -> str:
    """What a network trained with ``scheduler`` predicts: ``epsilon`` (the noise; also for a scheduler that does not
    say), ``v_prediction`` (the velocity) or ``sample`` (the clean input).

    Raises:
        ValueError: for any other value.
    """
    kind = getattr(scheduler, "prediction_type", "epsilon")
    if kind not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"scheduler prediction_type must be 'epsilon', 'v_prediction' or 'sample', got '{kind}'.")
    return kind


def controlled_prediction(
    unet: nn.Module,
    controlnet: nn.Module | None,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    class_labels: torch.Tensor,
    sketch: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
) -> torch.Tensor:
    """The UNet's output for noisy latents ``x``, with the ControlNet's residuals added when a ``sketch`` is given:
    the one place where the two networks are combined (the inferer and :meth:`SketchConditionedLDM.forward`)."""
    down, mid = None, None
    if controlnet is not None and sketch is not None:
        down, mid = controlnet(
            x=x, timesteps=timesteps, controlnet_cond=sketch, conditioning_scale=conditioning_scale, class_labels=class_labels
        )
    return unet(x, timesteps, class_labels=class_labels, down_block_additional_residuals=down, mid_block_additional_residual=mid)


def _per_sample(value: torch.Tensor | int | Sequence[int], batch: int, name: str, device: torch.device) -> torch.Tensor:
    """``(batch,)`` long tensor from a tensor, an int or a list (one value is repeated for the batch)."""
    v = torch.as_tensor(value, device=device).long().reshape(-1)
    if v.numel() == 1:
        return v.expand(batch)
    if v.numel() != batch:
        raise ValueError(f"{name} must hold 1 or {batch} values (the batch size), got {v.numel()}.")
    return v


def matched_conditioning_channels(latent_downsample: int, base: int = 16) -> tuple[int, ...]:
    """ControlNet sketch-embedding channels whose stride-2 convolutions bring the sketch to the latent size.

    ``ControlNet`` adds one stride-2 convolution per entry after the first, so a ``2**k`` autoencoder needs
    ``k + 1`` entries.
    """
    k = int(round(math.log2(latent_downsample)))
    if 2**k != latent_downsample:
        raise ValueError(f"latent_downsample must be a power of 2, got {latent_downsample}.")
    return tuple(base * 2**i for i in range(k + 1))


class SketchConditionedLDM(nn.Module):
    """
    ``AutoencoderKL`` (image <-> latents), ``DiffusionModelUNet`` with class embeddings (class control, one extra
    *null* class for classifier-free guidance) and a ``ControlNet`` fed the sketch at image resolution, its
    conditioning embedding matched to the autoencoder's downsampling so the residuals land on the latent grid.

    One module so one checkpoint holds the whole generator, including the latent ``scale_factor``.

    Args:
        num_classes: number of lesion subtypes (the null class ``num_classes`` is added).
        spatial_dims: 2 for B-mode images.
        in_channels: image channels.
        latent_channels: autoencoder latent channels.
        ae_channels: autoencoder channels per level; the latents are ``2 ** (len - 1)`` times smaller.
        ae_res_blocks: residual blocks per autoencoder level.
        unet_channels: diffusion UNet channels per level.
        unet_attention: self-attention per UNet level.
        unet_res_blocks: residual blocks per UNet level.
        num_head_channels: attention head width.
        norm_num_groups: group-norm groups of every network.
        conditioning_channels: ControlNet sketch-embedding channels (default: matched to the autoencoder).
        sketch_channels: sketch channels (1, or 3 for ``ExtractSketch(as_channels=True)``).
        noise_schedule: the diffusion noise schedule (``num_train_timesteps``, ``schedule`` and its arguments, and
            ``prediction_type``: what the UNet predicts, ``epsilon``, ``v_prediction`` or ``sample``); kept
            with the weights so training and sampling always use the same one (see :meth:`make_scheduler`).
    """

    def __init__(
        self,
        num_classes: int,
        spatial_dims: int = 2,
        in_channels: int = 1,
        latent_channels: int = 3,
        ae_channels: Sequence[int] = (32, 64),
        ae_res_blocks: int = 1,
        unet_channels: Sequence[int] = (32, 64, 64),
        unet_attention: Sequence[bool] = (False, True, True),
        unet_res_blocks: int = 1,
        num_head_channels: int = 32,
        norm_num_groups: int = 16,
        conditioning_channels: Sequence[int] | None = None,
        sketch_channels: int = 1,
        noise_schedule: dict | None = None,
    ) -> None:
        super().__init__()
        self.noise_schedule = _with_prediction_type(noise_schedule if noise_schedule is not None else DEFAULT_NOISE_SCHEDULE)
        self.config = {
            "num_classes": num_classes, "spatial_dims": spatial_dims, "in_channels": in_channels,
            "latent_channels": latent_channels, "ae_channels": list(ae_channels), "ae_res_blocks": ae_res_blocks,
            "unet_channels": list(unet_channels), "unet_attention": list(unet_attention), "unet_res_blocks": unet_res_blocks,
            "num_head_channels": num_head_channels, "norm_num_groups": norm_num_groups,
            "conditioning_channels": list(conditioning_channels) if conditioning_channels is not None else None,
            "sketch_channels": sketch_channels,
            "noise_schedule": self.noise_schedule,
        }
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
        if len(unet_attention) != len(unet_channels):
            raise ValueError(f"unet_attention has {len(unet_attention)} entries for {len(unet_channels)} unet_channels.")
        self.num_classes = num_classes
        self.null_class = num_classes
        self.latent_downsample = 2 ** (len(ae_channels) - 1)
        expected = len(matched_conditioning_channels(self.latent_downsample))
        cond = tuple(conditioning_channels) if conditioning_channels is not None else matched_conditioning_channels(self.latent_downsample)
        if len(cond) != expected:
            raise ValueError(
                f"conditioning_channels {cond} downsample the sketch by {2 ** (len(cond) - 1)}, but the autoencoder "
                f"downsamples by {self.latent_downsample}: give {expected} entries."
            )
        self.autoencoder = AutoencoderKL(
            spatial_dims, in_channels, in_channels, ae_res_blocks, tuple(ae_channels), (False,) * len(ae_channels),
            latent_channels, norm_num_groups=norm_num_groups, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
        )
        unet_args = dict(
            spatial_dims=spatial_dims, in_channels=latent_channels, num_res_blocks=unet_res_blocks, channels=tuple(unet_channels),
            attention_levels=tuple(unet_attention), norm_num_groups=norm_num_groups, num_head_channels=num_head_channels,
            num_class_embeds=num_classes + 1,
        )
        self.unet = DiffusionModelUNet(out_channels=latent_channels, **unet_args)
        self.controlnet = ControlNet(
            conditioning_embedding_in_channels=sketch_channels, conditioning_embedding_num_channels=cond, **unet_args
        )
        self.register_buffer("scale_factor", torch.tensor(1.0))
        # (H, W) of the images the diffusion stages were trained on (set by the trainer, saved with the weights):
        # sampling at another size gives images the model never learnt, so generation refuses it
        self.image_size: list[int] | None = None

    def get_extra_state(self) -> dict:
        """The architecture (and the training image size) travel inside the state dict (plain types: loads with
        ``weights_only=True``)."""
        return {"config": self.config, "image_size": self.image_size}

    def set_extra_state(self, state: dict) -> None:
        config = state.get("config") if state else None
        if config is not None and "noise_schedule" in config:
            config = {**config, "noise_schedule": _with_prediction_type(config["noise_schedule"])}
        if config not in (None, self.config):
            raise ValueError(f"checkpoint architecture {state['config']} differs from this model's {self.config}.")
        size = state.get("image_size") if state else None
        self.image_size = [int(v) for v in size] if size is not None else None

    @staticmethod
    def image_size_from_state_dict(state_dict: dict) -> list[int] | None:
        """The ``(H, W)`` the diffusion stages of a saved model were trained on (``None``: not recorded)."""
        size = (state_dict.get("_extra_state") or {}).get("image_size")
        return [int(v) for v in size] if size is not None else None

    @classmethod
    def from_state_dict(cls, state_dict: dict) -> SketchConditionedLDM:
        """Build the model that a state dict was saved from, and load it."""
        model = cls(**cls.config_from_state_dict(state_dict))
        model.load_state_dict(state_dict)
        return model

    @staticmethod
    def config_from_state_dict(state_dict: dict) -> dict:
        """The constructor arguments a state dict was saved with (its architecture travels inside it).

        Raises:
            ValueError: the state dict was not saved from a ``SketchConditionedLDM``.
        """
        extra = state_dict.get("_extra_state") or {}
        if "config" not in extra:
            raise ValueError("state dict has no '_extra_state.config': not saved from a SketchConditionedLDM.")
        return extra["config"]

    def make_scheduler(self, kind: str = "ddpm", num_inference_steps: int | None = None) -> Scheduler:
        """A DDPM (:class:`RespacedDDPMScheduler`: MONAI's, able to take fewer steps) or MONAI DDIM scheduler with this
        model's noise schedule."""
        if kind not in ("ddpm", "ddim"):
            raise ValueError(f"kind must be 'ddpm' or 'ddim', got '{kind}'.")
        sched = (RespacedDDPMScheduler if kind == "ddpm" else DDIMScheduler)(clip_sample=False, **self.noise_schedule)
        if num_inference_steps is not None:
            sched.set_timesteps(num_inference_steps)
        return sched

    def init_controlnet_from_unet(self) -> None:
        """Copy the trained UNet's encoder weights into the ControlNet (its zero convolutions stay zero)."""
        self.controlnet.load_state_dict(self.unet.state_dict(), strict=False)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | int | Sequence[int],
        class_labels: torch.Tensor | int | Sequence[int],
        sketch: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
    ) -> torch.Tensor:
        """The denoiser: the UNet's prediction for noisy scaled latents (the noise, the velocity or the clean latents:
        ``noise_schedule["prediction_type"]``), steered by the class and, through the ControlNet, by the sketch.
        Training under ``DistributedDataParallel`` goes through this method, so the gradients of the UNet and the
        ControlNet are averaged over the ranks.

        Args:
            x: noisy latents ``(B, latent_channels, H / d, W / d)``, ``d`` = ``latent_downsample``.
            timesteps: ``(B,)`` integer timesteps, or one value for the whole batch (an int or a list, as MONAI's
                ``verify_net_in_out`` passes its ``extra_forward_args``).
            class_labels: ``(B,)`` labels (``num_classes`` is the null class), or one value for the whole batch.
            sketch: ``(B, sketch_channels, H, W)`` at image resolution; ``None``: class conditioning only (the UNet
                stage, and the unconditional branch of the ControlNet).
            conditioning_scale: ControlNet residual scale.
        """
        timesteps = _per_sample(timesteps, x.shape[0], "timesteps", x.device)
        class_labels = _per_sample(class_labels, x.shape[0], "class_labels", x.device)
        return controlled_prediction(self.unet, self.controlnet, x, timesteps, class_labels, sketch, conditioning_scale)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents of images (sampled from the posterior, as MONAI's latent inferers do)."""
        return self.autoencoder.encode_stage_2_inputs(images) * self.scale_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor)
