"""Phase-1 training engines: MONAI ``SupervisedTrainer`` subclasses for the autoencoder and the diffusion stages."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import PrepareBatch, SupervisedTrainer
from monai.networks.nets import PatchDiscriminator
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from monai_breastlt.inferers import ClassSketchLatentDiffusionInferer, drop_class_labels
from monai_breastlt.losses.diffusion import min_snr_weights, weighted_diffusion_loss
from monai_breastlt.networks import SketchConditionedLDM
from monai_breastlt.utils import rank_and_world_size

__all__ = ["PrepareBatchKeys", "AutoencoderTrainer", "LatentDiffusionTrainer", "compute_scale_factor", "kl_loss"]


def _unwrap(network: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (or the network itself)."""
    return getattr(network, "module", network)


class PrepareBatchKeys(PrepareBatch):
    """``(batch[image_key], batch[target_key])`` on the device: for trainers whose target is not ``label``."""

    def __init__(self, image_key: str = "image", target_key: str = "label") -> None:
        self.image_key, self.target_key = image_key, target_key

    def __call__(self, batchdata: dict, device=None, non_blocking: bool = False, **kwargs):
        return (
            batchdata[self.image_key].to(device=device, non_blocking=non_blocking),
            batchdata[self.target_key].to(device=device, non_blocking=non_blocking),
        )


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(mu, sigma)`` from ``N(0, 1)``, summed over latent elements, averaged over the batch."""
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-8) - 1)
    return kl.flatten(1).sum(1).mean()


class AutoencoderTrainer(SupervisedTrainer):
    """
    Trains an ``AutoencoderKL``: L1 reconstruction + ``kl_weight`` * KL, plus an optional adversarial term from a
    MONAI ``PatchDiscriminator`` (least-squares GAN). No perceptual loss: it needs weights that cannot be
    downloaded offline.

    Args:
        device, max_epochs, train_data_loader, optimizer: as ``SupervisedTrainer``.
        network: the ``AutoencoderKL``.
        kl_weight: weight of the KL term.
        discriminator: a ``PatchDiscriminator`` (``None``: no adversarial term).
        d_optimizer: the discriminator's optimizer.
        adv_weight: weight of the generator's adversarial term.
        image_key: batch key of the images.
        kwargs: passed to ``SupervisedTrainer`` (handlers, amp...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        kl_weight: float = 1e-6,
        discriminator: PatchDiscriminator | None = None,
        d_optimizer: torch.optim.Optimizer | None = None,
        adv_weight: float = 0.01,
        image_key: str = "image",
        **kwargs,
    ) -> None:
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, loss_function=nn.L1Loss(), **kwargs)
        if (discriminator is None) != (d_optimizer is None):
            raise ValueError("give both discriminator and d_optimizer, or neither.")
        self.kl_weight, self.adv_weight, self.image_key = kl_weight, adv_weight, image_key
        self.discriminator, self.d_optimizer = discriminator, d_optimizer

    def _iteration(self, engine, batchdata: dict) -> dict:
        images = batchdata[self.image_key].to(engine.state.device)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        recon, z_mu, z_sigma = self.network(images)
        rec, kl = F.l1_loss(recon, images), kl_loss(z_mu, z_sigma)
        loss = rec + self.kl_weight * kl
        adv = torch.zeros(())
        if self.discriminator is not None:
            logits = self.discriminator(recon.contiguous())[-1]
            adv = F.mse_loss(logits, torch.ones_like(logits))
            loss = loss + self.adv_weight * adv
        loss.backward()
        self.optimizer.step()
        d_loss = torch.zeros(())
        if self.discriminator is not None:
            self.d_optimizer.zero_grad(set_to_none=True)
            fake = self.discriminator(recon.detach().contiguous())[-1]
            real = self.discriminator(images.contiguous())[-1]
            d_loss = 0.5 * (F.mse_loss(fake, torch.zeros_like(fake)) + F.mse_loss(real, torch.ones_like(real)))
            d_loss.backward()
            self.d_optimizer.step()
        engine.state.output = {
            CommonKeys.IMAGE: images, CommonKeys.PRED: recon.detach(), CommonKeys.LOSS: loss.detach(),
            "recon_loss": rec.detach(), "kl_loss": kl.detach(), "adv_loss": adv.detach(), "d_loss": d_loss.detach(),
        }
        engine.fire_event(IterationEvents.MODEL_COMPLETED)  # as SupervisedTrainer: decollation and metrics hook here
        return engine.state.output


@torch.no_grad()
def compute_scale_factor(model: SketchConditionedLDM, loader: Sequence | object, device="cpu", image_key: str = "image", max_batches: int = 8) -> float:
    """Set ``model.scale_factor`` to ``1 / std`` of the latents over a few batches (unit-variance latents)."""
    model.autoencoder.eval()
    zs = []
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        zs.append(model.autoencoder.encode_stage_2_inputs(batch[image_key].to(device)).flatten())
    if not zs:
        raise ValueError("compute_scale_factor: the loader yielded no batch.")
    scale = 1.0 / float(torch.cat(zs).std().clamp_min(1e-6))
    model.scale_factor.fill_(scale)
    return scale


class LatentDiffusionTrainer(SupervisedTrainer):
    """
    Trains the class-conditional UNet (``use_controlnet=False``), then the sketch ControlNet
    (``use_controlnet=True``; the UNet frozen unless ``train_unet``), with labels dropped to the null class with
    probability ``class_dropout`` (classifier-free guidance). The autoencoder stays frozen.

    The network regresses to what the inferer's scheduler predicts (``prediction_type``: the noise, the velocity or
    the clean latents; set it in ``SketchConditionedLDM(noise_schedule=...)`` so sampling reads the output the same
    way), optionally with Min-SNR-gamma weighting of the noise levels.

    Args:
        device, max_epochs, train_data_loader, optimizer: as ``SupervisedTrainer``; the optimizer must hold the
            parameters of the parts being trained (see :meth:`trainable_parameters`).
        network: the ``SketchConditionedLDM``, or its ``DistributedDataParallel`` wrapper (multi-process training:
            :func:`monai_breastlt.workflows.distributed_module`).
        inferer: the ``ClassSketchLatentDiffusionInferer`` (its scheduler gives the noise levels).
        use_controlnet: train the ControlNet stage.
        train_unet: in the ControlNet stage, fine-tune the UNet jointly.
        class_dropout: probability of replacing a label by the null class.
        seed: seed of the noise, timesteps and label dropout generator (plus the rank in a multi-process run).
        scale_factor_batches: at start (after checkpoint loaders ran), set the latent scale factor from this many
            batches (0: keep the model's).
        init_controlnet: at start, copy the UNet's weights into the ControlNet (first ControlNet run only).
        image_key, label_key, sketch_key: batch keys.
        snr_gamma: Min-SNR-gamma loss weighting (:func:`~monai_breastlt.losses.diffusion.min_snr_weights`; the paper
            uses 5); ``None``: every noise level weighted alike.
        kwargs: passed to ``SupervisedTrainer``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader,
        network: SketchConditionedLDM,
        optimizer: torch.optim.Optimizer,
        inferer: ClassSketchLatentDiffusionInferer,
        use_controlnet: bool = False,
        train_unet: bool = True,
        class_dropout: float = 0.1,
        seed: int = 0,
        scale_factor_batches: int = 0,
        init_controlnet: bool = False,
        image_key: str = "image",
        label_key: str = "label",
        sketch_key: str = "sketch",
        snr_gamma: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, loss_function=weighted_diffusion_loss, inferer=inferer, **kwargs)
        if snr_gamma is not None and snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be > 0 or None, got {snr_gamma}.")
        self.snr_gamma = snr_gamma
        self.scale_factor_batches, self.init_controlnet = scale_factor_batches, init_controlnet
        # registered after the train handlers, so a CheckpointLoader has restored the previous stage first
        self.add_event_handler(Events.STARTED, self._prepare_stage)
        self.use_controlnet, self.train_unet, self.class_dropout = use_controlnet, train_unet, class_dropout
        self.image_key, self.label_key, self.sketch_key = image_key, label_key, sketch_key
        # each rank of a multi-process run draws its own noise, timesteps and dropped labels
        self.generator = torch.Generator().manual_seed(seed + rank_and_world_size()[0])
        ldm = _unwrap(network)
        ldm.autoencoder.requires_grad_(False)
        ldm.unet.requires_grad_(train_unet or not use_controlnet)
        ldm.controlnet.requires_grad_(use_controlnet)

    def _prepare_stage(self, engine) -> None:
        if engine.state.iteration > 0:  # resumed mid-stage: the checkpoint holds the prepared model
            return
        ldm = _unwrap(self.network)
        if self.scale_factor_batches > 0:
            compute_scale_factor(ldm, self.data_loader, engine.state.device, self.image_key, self.scale_factor_batches)
            if rank_and_world_size()[1] > 1:  # each rank saw its own batches: all take rank 0's factor
                torch.distributed.broadcast(ldm.scale_factor, src=0)
            self.logger.info(f"latent scale factor set to {float(ldm.scale_factor):.4f}")
        if self.init_controlnet:
            ldm.init_controlnet_from_unet()

    @staticmethod
    def trainable_parameters(network: SketchConditionedLDM, use_controlnet: bool = False, train_unet: bool = True) -> list:
        """The parameters the optimizer of a stage should hold."""
        if not use_controlnet:
            return list(network.unet.parameters())
        return list(network.controlnet.parameters()) + (list(network.unet.parameters()) if train_unet else [])

    def _iteration(self, engine, batchdata: dict) -> dict:
        net: SketchConditionedLDM = _unwrap(self.network)
        device = engine.state.device
        images = batchdata[self.image_key].to(device)
        size = list(images.shape[2:])
        if net.image_size is not None and net.image_size != size:
            raise ValueError(f"the model's earlier stages were trained on {'x'.join(map(str, net.image_size))} images, this stage "
                             f"gets {'x'.join(map(str, size))}: train every stage with the same image_size.")
        net.image_size = size  # saved with the weights: generation refuses another size
        labels = batchdata[self.label_key].long().view(-1).to(device)
        sketch = batchdata[self.sketch_key].to(device) if self.use_controlnet else None
        net.autoencoder.eval()
        net.unet.train(self.train_unet or not self.use_controlnet)
        net.controlnet.train(self.use_controlnet)
        self.inferer.scale_factor = float(net.scale_factor)
        latent_shape = (images.shape[0], net.autoencoder.latent_channels, *[s // net.latent_downsample for s in images.shape[2:]])
        noise = torch.randn(latent_shape, generator=self.generator).to(device)
        steps = self.inferer.scheduler.num_train_timesteps
        timesteps = torch.randint(0, steps, (images.shape[0],), generator=self.generator).to(device)
        labels = drop_class_labels(labels, self.class_dropout, net.null_class, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        latents = self.inferer.encode(images, net.autoencoder)
        noisy = self.inferer.scheduler.add_noise(original_samples=latents, noise=noise, timesteps=timesteps)
        # through the network's own forward: under DistributedDataParallel that is what averages the gradients
        pred = self.network(noisy, timesteps, labels, sketch, self.inferer.conditioning_scale)
        target = self.inferer.target(latents, noise, timesteps)
        weights = None if self.snr_gamma is None else min_snr_weights(self.inferer.scheduler, timesteps, self.snr_gamma)
        loss = self.loss_function(pred, target, weights)
        loss.backward()
        self.optimizer.step()
        engine.state.output = {CommonKeys.IMAGE: images, CommonKeys.PRED: pred.detach(), CommonKeys.LABEL: target, CommonKeys.LOSS: loss.detach()}
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
