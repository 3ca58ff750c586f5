from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_breastlt.transforms import ExtractSketch, ExtractSketchd, RandSketchPerturb, RandSketchPerturbd, mask_contour


def _image(size=64):
    yy, xx = np.mgrid[:size, :size]
    img = np.where((yy - 32) ** 2 / 100 + (xx - 32) ** 2 / 225 < 1, 0.1, 0.7).astype(np.float32)
    img[:4] = 1.0  # a skin line
    rng = np.random.default_rng(0)
    img *= rng.rayleigh(0.8, img.shape).astype(np.float32)
    mask = ((yy - 32) ** 2 / 100 + (xx - 32) ** 2 / 225 < 1).astype(np.float32)
    return img[None], mask[None]


@pytest.mark.parametrize("conv", [np.asarray, torch.as_tensor], ids=["numpy", "torch"])
def test_extract_sketch_types_and_range(conv):
    img, mask = _image()
    out = ExtractSketch()(conv(img), conv(mask))
    assert isinstance(out, type(conv(img))) and out.shape == (1, 64, 64)
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_sketch_follows_the_lesion_and_works_without_mask():
    img, mask = _image()
    with_mask = ExtractSketch()(img, mask)[0]
    without = ExtractSketch()(img)[0]
    contour = mask_contour(torch.as_tensor(mask))[0].numpy() > 0
    assert with_mask[contour].mean() == pytest.approx(1.0)
    assert without[contour].mean() > 3 * without[~contour].mean()  # the edges alone find the lesion
    assert without[1:7].max() > 0.5  # the skin boundary is a stroke
    channels = ExtractSketch(as_channels=True)(img, mask)
    assert channels.shape == (3, 64, 64) and np.allclose(channels.max(0), with_mask)


def test_extract_sketch_dict_matches_array_and_mask_optional():
    img, mask = _image()
    d = ExtractSketchd(keys="image", mask_key="mask")({"image": torch.as_tensor(img), "mask": torch.as_tensor(mask)})
    assert torch.allclose(d["sketch"], torch.as_tensor(ExtractSketch()(img, mask)))
    d2 = ExtractSketchd(keys="image")({"image": torch.as_tensor(img)})
    assert torch.allclose(d2["sketch"], torch.as_tensor(ExtractSketch()(img)))


def test_extract_sketch_rejects_bad_shapes():
    img, _ = _image()
    with pytest.raises(ValueError, match=r"mask spatial shape \(32, 32\) differs from image \(64, 64\)"):
        ExtractSketch()(img, np.zeros((1, 32, 32)))
    with pytest.raises(ValueError, match="channel-first 2D image"):
        ExtractSketch()(img[0])


def test_perturb_is_seeded_and_changes_the_sketch():
    img, mask = _image()
    sketch = torch.as_tensor(ExtractSketch()(img, mask))
    a = RandSketchPerturb(prob=1.0).set_random_state(3)(sketch)
    b = RandSketchPerturb(prob=1.0).set_random_state(3)(sketch)
    c = RandSketchPerturb(prob=1.0).set_random_state(4)(sketch)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, sketch)
    assert a.shape == sketch.shape and 0 <= a.min() and a.max() <= 1
    assert torch.equal(RandSketchPerturb(prob=0.0)(sketch), sketch)


def test_perturb_dict_matches_array():
    img, mask = _image()
    sketch = torch.as_tensor(ExtractSketch()(img, mask))
    d = RandSketchPerturbd(keys="sketch", prob=1.0).set_random_state(7)({"sketch": sketch})
    arr = RandSketchPerturb(prob=1.0).set_random_state(7)
    assert torch.allclose(d["sketch"], arr(sketch))
