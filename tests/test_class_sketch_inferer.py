from __future__ import annotations

import pytest
import torch
from conftest import tiny_ldm
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_breastlt.inferers import ClassSketchLatentDiffusionInferer, drop_class_labels
from monai_breastlt.networks import RespacedDDPMScheduler


@pytest.fixture(scope="module")
def setup():
    model = tiny_ldm(3)
    inferer = ClassSketchLatentDiffusionInferer(DDIMScheduler(100, clip_sample=False), null_class=3)
    noise = torch.randn(2, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    sketch = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, inferer, noise, sketch


def _sample(setup, labels=(0, 1), sketch=None, **kw):
    model, inferer, noise, sk = setup
    kw.setdefault("num_inference_steps", 4)
    return inferer.sample(noise, model.autoencoder, model.unet, torch.tensor(labels), model.controlnet, sk if sketch is None else sketch, **kw)


def test_training_call_shape_and_noise_check(setup):
    model, inferer, _, sketch = setup
    x = torch.rand(2, 1, 32, 32)
    noise = torch.randn(2, 2, 16, 16)
    pred = inferer(x, model.autoencoder, model.unet, noise, torch.tensor([3, 70]), torch.tensor([0, 3]), model.controlnet, sketch)
    assert pred.shape == noise.shape
    with pytest.raises(ValueError, match="must equal the latent shape"):
        inferer(x, model.autoencoder, model.unet, torch.randn(2, 2, 8, 8), torch.tensor([3, 70]), torch.tensor([0, 1]))


def test_class_sketch_cfg_and_determinism(setup):
    base = _sample(setup)
    assert base.shape == (2, 1, 32, 32)
    assert torch.equal(base, _sample(setup))  # DDIM from the same noise: same images
    assert not torch.allclose(base, _sample(setup, labels=(2, 2)))  # class changes the output
    assert not torch.allclose(base, _sample(setup, sketch=torch.zeros(2, 1, 32, 32)))  # sketch changes it
    assert not torch.allclose(base, _sample(setup, guidance_scale=3.0))  # CFG on vs off
    no_cn = _sample(setup, conditioning_scale=0.0)
    assert torch.allclose(no_cn, _sample(setup, sketch=torch.zeros(2, 1, 32, 32), conditioning_scale=0.0), atol=1e-6)


def test_ddpm_seeded_and_differs_from_ddim(setup):
    kw = dict(scheduler=RespacedDDPMScheduler(100, clip_sample=False), num_inference_steps=5)
    a = _sample(setup, generator=torch.Generator().manual_seed(4), **kw)
    b = _sample(setup, generator=torch.Generator().manual_seed(4), **kw)
    c = _sample(setup, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a, _sample(setup, scheduler=DDIMScheduler(100, clip_sample=False), num_inference_steps=5))


def test_truncated_monai_ddpm_is_refused(setup):
    """MONAI's DDPMScheduler with fewer steps than training ends at high noise: a clear error, not noisy images."""
    with pytest.raises(ValueError, match="RespacedDDPMScheduler"):
        _sample(setup, scheduler=DDPMScheduler(100, clip_sample=False), num_inference_steps=5)
    _sample(setup, scheduler=DDPMScheduler(10, clip_sample=False), num_inference_steps=10)  # every training step: a valid chain


def test_guidance_interval(setup):
    """Guidance limited to a range of timesteps: all of them is plain CFG, none is the conditional model alone, and
    a part is neither."""
    model, _, noise, sketch = setup

    def sample(interval, scale=3.0):
        inferer = ClassSketchLatentDiffusionInferer(DDIMScheduler(100, clip_sample=False), null_class=3, guidance_interval=interval)
        return inferer.sample(noise, model.autoencoder, model.unet, torch.tensor([0, 1]), model.controlnet, sketch,
                              num_inference_steps=4, guidance_scale=scale)

    guided, unguided = sample(None), sample(None, scale=1.0)  # DDIM, 4 steps: timesteps 99, 66, 33, 0
    assert torch.equal(sample((0, 99)), guided)
    assert torch.equal(sample((67, 98)), unguided)
    part = sample((0, 40))
    assert not torch.allclose(part, guided) and not torch.allclose(part, unguided)
    with pytest.raises(ValueError, match="t_low <= t_high"):
        ClassSketchLatentDiffusionInferer(DDIMScheduler(100), guidance_interval=(500, 100))


def test_cfg_needs_null_class(setup):
    model, _, noise, sketch = setup
    inferer = ClassSketchLatentDiffusionInferer(DDIMScheduler(100))
    with pytest.raises(ValueError, match="needs the inferer's null_class"):
        inferer.sample(noise, model.autoencoder, model.unet, torch.tensor([0, 1]), guidance_scale=2.0, num_inference_steps=2)


def test_drop_class_labels():
    labels = torch.zeros(1000, dtype=torch.long)
    dropped = drop_class_labels(labels, 0.3, 9, torch.Generator().manual_seed(0))
    assert 250 < int((dropped == 9).sum()) < 350 and set(dropped.unique().tolist()) == {0, 9}
    assert torch.equal(drop_class_labels(labels, 0.0, 9), labels)


class _Oracle(torch.nn.Module):
    """Predicts exactly what the inferer trains towards for known clean latents ``x0``."""

    def __init__(self, inferer, x0):
        super().__init__()
        self.inferer, self.x0 = inferer, x0

    def forward(self, x, timesteps, class_labels=None, **kwargs):
        a = self.inferer.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        noise = (x - a.sqrt() * self.x0) / (1 - a).sqrt()
        return self.inferer.target(self.x0, noise, timesteps)


class _IdentityDecoder(torch.nn.Module):
    def decode_stage_2_outputs(self, z):
        return z


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_training_target_is_what_sampling_reads(kind):
    # a network that outputs the training target exactly must lead DDIM back to the clean latents: the target and the
    # scheduler's reading of the output agree for every prediction type
    inferer = ClassSketchLatentDiffusionInferer(DDIMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False, prediction_type=kind))
    x0 = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    out = inferer.sample(noise, _IdentityDecoder(), _Oracle(inferer, x0), torch.tensor([0, 1]), num_inference_steps=10)
    assert torch.allclose(out, x0, atol=1e-3)


def test_target_per_prediction_type():
    x0, noise, t = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.tensor([0, 500, 999])
    eps = ClassSketchLatentDiffusionInferer(DDPMScheduler(1000))
    assert torch.equal(eps.target(x0, noise, t), noise)
    v = ClassSketchLatentDiffusionInferer(DDPMScheduler(1000, prediction_type="v_prediction"))
    a = v.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(v.target(x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0)
    assert torch.equal(ClassSketchLatentDiffusionInferer(DDPMScheduler(1000, prediction_type="sample")).target(x0, noise, t), x0)
    eps.scheduler.prediction_type = "score"
    with pytest.raises(ValueError, match="prediction_type must be"):
        eps.target(x0, noise, t)


def test_call_is_encode_then_denoise(setup):
    model, inferer, _, sketch = setup
    x, noise, t, y = torch.rand(2, 1, 32, 32), torch.randn(2, 2, 16, 16), torch.tensor([3, 70]), torch.tensor([0, 3])
    torch.manual_seed(7)  # the encoder draws a posterior sample
    a = inferer(x, model.autoencoder, model.unet, noise, t, y, model.controlnet, sketch)
    torch.manual_seed(7)
    b = inferer.denoise(inferer.encode(x, model.autoencoder), model.unet, noise, t, y, model.controlnet, sketch)
    assert torch.equal(a, b)
