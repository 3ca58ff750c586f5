from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from conftest import tiny_ldm, tiny_perception
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.handlers import from_engine
from monai.networks.nets import PatchDiscriminator
from monai.networks.schedulers import DDPMScheduler
from monai.transforms import Compose

from monai_breastlt.data import load_datalist
from monai_breastlt.inferers import ClassSketchLatentDiffusionInferer
from monai_breastlt.losses import SketchPerceptionLoss, min_snr_weights, weighted_diffusion_loss
from monai_breastlt.networks import SketchConditionedLDM, SketchPerceptionNet
from monai_breastlt.synthesis import AutoencoderTrainer, LatentDiffusionTrainer, PrepareBatchKeys, compute_scale_factor
from monai_breastlt.transforms import ExtractSketchd, SketchTargetd, ultrasound_preprocessing


def _loader(tiny_phantom, *extra):
    items, _ = load_datalist(tiny_phantom, "training")
    return DataLoader(Dataset(items[:8], Compose([ultrasound_preprocessing(32), *extra])), batch_size=4)


def test_autoencoder_trainer_with_discriminator(tiny_phantom):
    model = tiny_ldm(6)
    disc = PatchDiscriminator(2, 8, 1, 1, num_layers_d=2, norm="BATCH")
    trainer = AutoencoderTrainer(
        "cpu", 2, _loader(tiny_phantom), model.autoencoder, torch.optim.Adam(model.autoencoder.parameters(), 1e-3),
        discriminator=disc, d_optimizer=torch.optim.Adam(disc.parameters(), 1e-3),
    )
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["recon_loss"], first=True)(e.state.output))))
    trainer.run()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_scale_factor_and_both_diffusion_stages(tiny_phantom):
    model = tiny_ldm(6)
    loader = _loader(tiny_phantom, ExtractSketchd())
    scale = compute_scale_factor(model, loader)
    assert scale > 0 and float(model.scale_factor) == pytest.approx(scale)
    inferer = ClassSketchLatentDiffusionInferer(DDPMScheduler(100), null_class=model.null_class)
    for use_cn, train_unet in ((False, True), (True, False)):
        unet_before = [p.clone() for p in model.unet.parameters()]
        params = LatentDiffusionTrainer.trainable_parameters(model, use_cn, train_unet)
        trainer = LatentDiffusionTrainer("cpu", 1, loader, model, torch.optim.Adam(params, 1e-3), inferer, use_controlnet=use_cn, train_unet=train_unet)
        trainer.run()
        assert math.isfinite(float(from_engine(["loss"], first=True)(trainer.state.output)))
        unet_changed = any(not torch.equal(a, b) for a, b in zip(unet_before, model.unet.parameters()))
        assert unet_changed == train_unet  # frozen UNet in the ControlNet stage stays frozen
    # the training image size travels with the weights, and a stage at another size is refused
    assert model.image_size == [32, 32] and SketchConditionedLDM.from_state_dict(model.state_dict()).image_size == [32, 32]
    items, _ = load_datalist(tiny_phantom, "training")
    other = DataLoader(Dataset(items[:4], Compose([ultrasound_preprocessing(16), ExtractSketchd()])), batch_size=4)
    params = LatentDiffusionTrainer.trainable_parameters(model, True, False)
    trainer = LatentDiffusionTrainer("cpu", 1, other, model, torch.optim.Adam(params, 1e-3), inferer, use_controlnet=True, train_unet=False)
    with pytest.raises(ValueError, match="earlier stages were trained on 32x32 images, this stage gets 16x16"):
        trainer.run()


def test_perception_trains_with_plain_supervised_trainer(tiny_phantom):
    net = tiny_perception()
    loader = _loader(tiny_phantom, SketchTargetd())
    trainer = SupervisedTrainer("cpu", 3, loader, net, torch.optim.Adam(net.parameters(), 3e-3), SketchPerceptionLoss(), prepare_batch=PrepareBatchKeys("image", "sketch_target"))
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(from_engine(["loss"], first=True)(e.state.output))))
    trainer.run()
    assert losses[-1] < losses[0]


def test_sketch_target_without_mask():
    d = SketchTargetd()({"image": torch.rand(1, 32, 32)})
    assert d["sketch_target"].shape == (3, 32, 32) and d["sketch_target"][1:].abs().sum() == 0


def test_diffusion_trainer_regresses_the_schedulers_target_with_min_snr(tiny_phantom):
    # v-prediction: the loss compares the UNet output with the velocity of the latents it encoded, weighted by Min-SNR
    model = tiny_ldm(6, noise_schedule={"num_train_timesteps": 100, "schedule": "linear_beta", "prediction_type": "v_prediction"})
    inferer = ClassSketchLatentDiffusionInferer(model.make_scheduler("ddpm"), null_class=model.null_class)
    seen = []
    real_target = inferer.target
    inferer.target = lambda latents, noise, t: seen.append((latents, noise, t)) or real_target(latents, noise, t)
    trainer = LatentDiffusionTrainer("cpu", 1, _loader(tiny_phantom), model, torch.optim.Adam(model.unet.parameters(), 1e-3), inferer, snr_gamma=5.0)
    trainer.run()
    latents, noise, t = seen[-1]
    label, pred = (torch.stack(from_engine([k])(trainer.state.output)) for k in ("label", "pred"))  # decollated
    velocity = inferer.scheduler.get_velocity(latents, noise, t)
    assert torch.allclose(label, velocity) and not torch.allclose(label, noise)
    expected = weighted_diffusion_loss(pred, velocity, min_snr_weights(inferer.scheduler, t, 5.0))
    assert float(from_engine(["loss"], first=True)(trainer.state.output)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="snr_gamma must be > 0"):
        LatentDiffusionTrainer("cpu", 1, _loader(tiny_phantom), model, torch.optim.Adam(model.unet.parameters()), inferer, snr_gamma=0)
