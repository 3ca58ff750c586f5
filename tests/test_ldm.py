from __future__ import annotations

import pytest
import torch
from conftest import TINY_LDM, tiny_ldm, tiny_perception

from monai_breastlt.networks import SketchConditionedLDM, matched_conditioning_channels
from monai_breastlt.networks.ldm import DEFAULT_NOISE_SCHEDULE
from monai_breastlt.utils import atomic_torch_save, torch_load_safe


def test_matched_conditioning_channels():
    assert matched_conditioning_channels(1) == (16,)
    assert matched_conditioning_channels(4) == (16, 32, 64)
    with pytest.raises(ValueError, match="power of 2"):
        matched_conditioning_channels(3)


def test_shapes_and_mismatched_sketch_embedding():
    model = tiny_ldm(3)
    x = torch.rand(2, 1, 32, 32)
    z = model.encode(x)
    assert z.shape == (2, 2, 16, 16) and model.null_class == 3
    down, mid = model.controlnet(z, torch.tensor([1, 2]), torch.rand(2, 1, 32, 32), class_labels=torch.tensor([0, 3]))
    out = model.unet(z, torch.tensor([1, 2]), class_labels=torch.tensor([0, 3]), down_block_additional_residuals=down, mid_block_additional_residual=mid)
    assert out.shape == z.shape and model.decode(z).shape == x.shape
    with pytest.raises(ValueError, match="downsample the sketch by 4, but the autoencoder downsamples by 2"):
        SketchConditionedLDM(3, **{**TINY_LDM, "conditioning_channels": (8, 8, 8)})


def test_checkpoint_is_self_describing_and_weights_only(tmp_path):
    model = tiny_ldm(4)
    model.scale_factor.fill_(0.7)
    atomic_torch_save(model.state_dict(), tmp_path / "m.pt")
    loaded = SketchConditionedLDM.from_state_dict(torch_load_safe(tmp_path / "m.pt"))
    assert loaded.config == model.config and float(loaded.scale_factor) == pytest.approx(0.7)
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(loaded.decode(model.encode(x) * 0 + 1), model.decode(model.encode(x) * 0 + 1))
    with pytest.raises(ValueError, match="architecture"):
        tiny_ldm(5).load_state_dict(model.state_dict())
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.pt: not a PyTorch checkpoint, or a truncated one"):
        torch_load_safe(tmp_path / "bad.pt")


def test_perception_net():
    net = tiny_perception()
    x = torch.rand(2, 1, 32, 32)
    assert net(x).shape == (2, 2, 32, 32)
    s = net.predict_sketch(x)
    assert s.shape == (2, 1, 32, 32) and 0 <= s.min() and s.max() <= 1
    contour = net.predict_contour(x)  # the lesion-contour channel alone, below the sketch (their maximum)
    assert contour.shape == (2, 1, 32, 32) and torch.equal(contour, torch.sigmoid(net(x)[:, 1:2])) and (contour <= s).all()


def test_noise_schedule_travels_with_the_model():
    model = SketchConditionedLDM(2, **{**TINY_LDM, "noise_schedule": {"num_train_timesteps": 50, "schedule": "linear_beta"}})
    again = SketchConditionedLDM.from_state_dict(model.state_dict())
    ddpm, ddim = again.make_scheduler("ddpm"), again.make_scheduler("ddim", 5)
    assert ddpm.num_train_timesteps == 50 and torch.allclose(ddpm.betas, ddim.betas) and len(ddim.timesteps) == 5
    default = tiny_ldm(2).make_scheduler()
    assert default.betas[0] == pytest.approx(0.0015) and default.betas[-1] == pytest.approx(0.0195, rel=1e-3)


def test_prediction_type_travels_and_old_checkpoints_load():
    v = SketchConditionedLDM(2, **{**TINY_LDM, "noise_schedule": {"num_train_timesteps": 50, "schedule": "linear_beta", "prediction_type": "v_prediction"}})
    again = SketchConditionedLDM.from_state_dict(v.state_dict())
    assert again.make_scheduler("ddim", 5).prediction_type == "v_prediction" == again.make_scheduler("ddpm").prediction_type
    assert tiny_ldm(2).make_scheduler().prediction_type == "epsilon"
    old = tiny_ldm(2).state_dict()  # saved before the schedule recorded what the UNet predicts: it predicted the noise
    del old["_extra_state"]["config"]["noise_schedule"]["prediction_type"]
    assert SketchConditionedLDM.from_state_dict(old).make_scheduler().prediction_type == "epsilon"
    tiny_ldm(2).load_state_dict(old)
    with pytest.raises(ValueError, match="differs from this model"):  # an epsilon checkpoint is not a v-prediction model
        SketchConditionedLDM(2, **{**TINY_LDM, "noise_schedule": {**DEFAULT_NOISE_SCHEDULE, "prediction_type": "v_prediction"}}).load_state_dict(tiny_ldm(2).state_dict())
