from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_breastlt.transforms import RandSpeckleNoise, RandSpeckleNoised


@pytest.mark.parametrize("distribution", ["rayleigh", "gamma"])
def test_speckle_is_unit_mean_multiplicative(distribution):
    img = torch.full((1, 128, 128), 0.5)
    out = RandSpeckleNoise(prob=1.0, distribution=distribution, strength=1.0, sample_strength=False, clip=None).set_random_state(0)(img)
    assert out.mean().item() == pytest.approx(0.5, rel=0.03)
    assert out.std().item() > 0.1
    assert torch.equal(RandSpeckleNoise(prob=1.0).set_random_state(0)(torch.zeros(1, 8, 8)), torch.zeros(1, 8, 8))


def test_speckle_numpy_seed_and_prob():
    img = np.full((1, 16, 16), 0.5, np.float32)
    a = RandSpeckleNoise(prob=1.0).set_random_state(1)(img)
    b = RandSpeckleNoise(prob=1.0).set_random_state(1)(img)
    assert isinstance(a, torch.Tensor) and torch.equal(a, b)
    assert torch.equal(RandSpeckleNoise(prob=0.0)(img), torch.as_tensor(img))


def test_speckle_dict_matches_array():
    img = torch.rand(1, 16, 16)
    d = RandSpeckleNoised(keys="image", prob=1.0, strength=0.5).set_random_state(2)({"image": img})
    arr = RandSpeckleNoise(prob=1.0, strength=0.5).set_random_state(2)
    assert torch.allclose(d["image"], arr(img))


def test_speckle_bad_args():
    with pytest.raises(ValueError, match="'rayleigh' or 'gamma'"):
        RandSpeckleNoise(distribution="gauss")
