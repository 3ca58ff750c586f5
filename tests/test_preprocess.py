from __future__ import annotations

import logging
import re

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_breastlt.synthesis.generate import save_png
from monai_breastlt.transforms import (
    EnsureGrayscale,
    ScaleUltrasoundIntensity,
    ScaleUltrasoundIntensityd,
    ultrasound_preprocessing,
)
from monai_breastlt.utils import root_cause


def test_png_loaded_as_rows_by_columns_and_scaled(tmp_path):
    arr = np.zeros((20, 40), np.uint8)
    arr[:5] = 255  # bright top rows
    Image.fromarray(arr).save(tmp_path / "a.png")
    mask = np.zeros((20, 40), np.uint8)
    mask[10:15, 5:10] = 255
    Image.fromarray(mask).save(tmp_path / "m1.png")
    Image.fromarray(np.roll(mask, 20, axis=1)).save(tmp_path / "m2.png")
    out = ultrasound_preprocessing((10, 20))({"image": str(tmp_path / "a.png"), "mask": [str(tmp_path / "m1.png"), str(tmp_path / "m2.png")]})
    assert out["image"].shape == (1, 10, 20) and out["image"].max() == 1 and out["image"].min() == 0
    assert out["image"][0, 0].mean() > out["image"][0, -1].mean()  # orientation kept: top stays top
    assert out["mask"].shape == (1, 10, 20) and set(out["mask"].unique().tolist()) == {0.0, 1.0}
    assert out["mask"][0, :, 10:].sum() > 0 and out["mask"][0, :, :10].sum() > 0  # both mask files merged


def test_rgb_and_16bit_and_nifti(tmp_path, caplog):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * 200).save(tmp_path / "deep.png")
    nib.save(nib.Nifti1Image(np.random.default_rng(1).random((16, 16)).astype(np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    pre = ultrasound_preprocessing(8, mask_key=None)
    with caplog.at_level(logging.WARNING):
        rgb = pre({"image": str(tmp_path / "rgb.png")})
    assert rgb["image"].shape == (1, 8, 8) and "converted to greyscale" in caplog.text
    deep = pre({"image": str(tmp_path / "deep.png")})
    assert deep["image"].max() == 1.0
    assert pre({"image": str(tmp_path / "x.nii.gz")})["image"].shape == (1, 8, 8)


def test_bad_inputs_named(tmp_path):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small_mask.png")
    pre = ultrasound_preprocessing(8)
    with pytest.raises(RuntimeError) as e:
        pre({"image": str(tmp_path / "a.png"), "mask": str(tmp_path / "small_mask.png")})
    assert re.search(r"small_mask.png: mask shape \(8, 8\) differs from image .*a.png", str(root_cause(e.value)))
    (tmp_path / "trunc.png").write_bytes((tmp_path / "a.png").read_bytes()[:30])
    with pytest.raises(RuntimeError) as e:
        pre({"image": str(tmp_path / "trunc.png")})
    assert "trunc.png" in str(e.value) + str(root_cause(e.value))
    with pytest.raises(ValueError, match="expected 1 \\(grey\\), 3 \\(RGB\\) or 4"):
        EnsureGrayscale()(torch.zeros(5, 4, 4))


def test_scale_intensity_min_max_or_by_stored_range():
    img = torch.tensor([[[51.0, 102.0], [153.0, 204.0]]])  # 0.2 .. 0.8 of 255
    assert torch.allclose(ScaleUltrasoundIntensity()(img), torch.tensor([[[0.0, 1 / 3], [2 / 3, 1.0]]]))
    assert torch.allclose(ScaleUltrasoundIntensity(prescaled=True)(img), img / 255)
    assert torch.allclose(ScaleUltrasoundIntensity()(img, prescaled=True), img / 255)  # per call
    np_out = ScaleUltrasoundIntensity(prescaled=True)(img.numpy())
    assert isinstance(np_out, np.ndarray) and np.allclose(np_out, img.numpy() / 255)
    assert ScaleUltrasoundIntensity(prescaled=True)(torch.tensor([[[300.0]]])).item() == 1.0  # clipped
    d = ScaleUltrasoundIntensityd(["image", "sketch"])
    marked = d({"image": img, "sketch": img, "prescaled": True})
    assert torch.allclose(marked["image"], img / 255) and torch.allclose(marked["sketch"], img / 255)
    assert d({"image": img, "sketch": img})["image"].min() == 0  # unmarked: min-max
    with pytest.raises(ValueError, match="stored_max must be positive"):
        ScaleUltrasoundIntensity(stored_max=0)


def test_synthetic_image_is_not_stretched_on_reload(tmp_path):
    """A generated image (no speckle, so a narrow range) must come back as written, not contrast-stretched."""
    smooth = torch.linspace(0.2, 0.8, 16 * 16).reshape(1, 16, 16)
    save_png(smooth, tmp_path / "syn.png")
    pre = ultrasound_preprocessing(16, mask_key=None)
    back = pre({"image": str(tmp_path / "syn.png"), "prescaled": True})["image"]
    assert torch.allclose(back, smooth, atol=1 / 255)
    stretched = pre({"image": str(tmp_path / "syn.png")})["image"]  # a real scan: its own range
    assert stretched.min() == 0 and stretched.max() == 1


def test_jpeg_exif_orientation_is_honoured(tmp_path):
    arr = np.zeros((16, 24), np.uint8)
    arr[:, :6] = 255  # bright left columns as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise, 24 high and 16 wide, bright at the top
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = ultrasound_preprocessing((24, 16), mask_key=None)({"image": str(tmp_path / "rot.jpg")})["image"][0]
    assert out.shape == (24, 16) and out[:6].mean() > 0.8 and out[-6:].mean() < 0.2


def test_volume_given_as_an_image_is_refused_naming_the_file(tmp_path):
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 8)).astype(np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    with pytest.raises(RuntimeError) as e:
        ultrasound_preprocessing(8, mask_key=None)({"image": str(tmp_path / "vol.nii.gz")})
    assert re.search(r"vol.nii.gz: image of shape \(16, 16, 8\) has 3 spatial dimensions, expected a 2D image", str(root_cause(e.value)))
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        ultrasound_preprocessing(0)
