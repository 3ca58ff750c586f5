from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from monai_breastlt.data import generate_phantom, load_datalist
from monai_breastlt.synthesis.memorization import NearestRealCheck, lesion_boxes
from monai_breastlt.transforms import ultrasound_preprocessing


def _load(datalist):
    items, _ = load_datalist(datalist, "training")
    pre = ultrasound_preprocessing(64, mask_key="mask")
    out = [pre({"image": i["image"], "mask": i["mask"]}) for i in items]
    return torch.stack([o["image"] for o in out]), torch.stack([o["mask"] for o in out]), [i["group"] for i in items]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Real training images at 64 px (lesions need some pixels) and an independent phantom (new lesions)."""
    real = _load(generate_phantom(tmp_path_factory.mktemp("real"), head_count=24, imbalance_ratio=3, image_size=64, seed=0))
    novel = _load(generate_phantom(tmp_path_factory.mktemp("novel"), head_count=12, imbalance_ratio=2, image_size=64, seed=7))
    return real, novel


def _smooth(x: torch.Tensor) -> torch.Tensor:
    """What a latent diffusion model's decoder does to speckle, roughly."""
    return torch.from_numpy(ndimage.gaussian_filter(x.numpy(), (0, 0, 1.0, 1.0))).float()


def _transplant(images, masks, n, seed=0):
    """Lesion ``i`` (its box plus 3 px) cut from one real image and pasted at another place of another real image."""
    rng = np.random.default_rng(seed)
    out, out_masks = [], []
    for _ in range(n):
        i, j = rng.choice(len(images), 2, replace=False)
        (y0, y1, x0, x1) = lesion_boxes(masks[i : i + 1])[0]
        y0, x0, y1, x1 = max(0, y0 - 3), max(0, x0 - 3), min(64, y1 + 3), min(64, x1 + 3)
        h, w = y1 - y0, x1 - x0
        ty, tx = int(rng.integers(0, 64 - h + 1)), int(rng.integers(0, 64 - w + 1))
        img, m = images[j].clone(), torch.zeros_like(masks[j])
        img[:, ty : ty + h, tx : tx + w] = images[i, :, y0:y1, x0:x1]
        m[:, ty : ty + h, tx : tx + w] = masks[i, :, y0:y1, x0:x1]
        out.append(img)
        out_masks.append(m)
    return _smooth(torch.stack(out)), torch.stack(out_masks)


def test_lesion_boxes_take_the_largest_region():
    maps = torch.zeros(3, 1, 16, 16)
    maps[0, 0, 2:4, 2:4] = 1.0  # a small blob
    maps[0, 0, 8:14, 5:9] = 0.9  # the lesion
    maps[1, 0, 3, 3:12] = 0.8  # a thin open contour is one region too
    maps[1, 0, 4, 12] = 0.8  # touching diagonally
    assert lesion_boxes(maps) == [(8, 14, 5, 9), (3, 5, 3, 13), None]
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        lesion_boxes(torch.zeros(2, 16, 16))


def test_copies_and_transplanted_lesions_are_flagged_new_lesions_are_not(phantoms):
    (images, masks, groups), (novel, novel_masks, _) = phantoms
    check = NearestRealCheck().fit(images, masks, groups)
    base = check.baseline()
    assert base["real_lesions_found"] == 1.0 and base["real_flagged"] <= 0.05 and base["real_lesions_flagged"] <= 0.05
    assert base["real_median_ratio"] > 0.8 and base["real_lesion_median_ratio"] > 0.8  # real images are no copies of each other

    copies = check.query(_smooth(images[:12]), masks[:12])  # memorised images, speckle smoothed away
    assert copies["image_copy"].all() and copies["lesion_copy"].all()
    assert copies["image_nearest"].tolist() == list(range(12)) and copies["lesion_nearest"].tolist() == list(range(12))

    moved, moved_masks = _transplant(images, masks, 12)
    transplants = check.query(moved, moved_masks)
    assert transplants["lesion_copy"].all()  # the patient's lesion, on another background and at another place
    assert transplants["image_copy"].sum() <= 3  # which a whole-image comparison mostly misses

    new = check.query(_smooth(novel), novel_masks)
    assert not new["image_copy"].any() and new["lesion_copy"].float().mean() <= 0.05
    assert new["lesion_ratio"].median() > 2 * transplants["lesion_ratio"].median()


def test_images_without_a_lesion_get_no_lesion_verdict(phantoms):
    (images, masks, groups), _ = phantoms
    check = NearestRealCheck().fit(images, masks, groups)
    out = check.query(_smooth(images[:3]), torch.zeros_like(masks[:3]))
    assert torch.isnan(out["lesion_distance"]).all() and not out["lesion_copy"].any()
    assert "lesion_distance" not in NearestRealCheck().fit(images, None, groups).query(images[:2], masks[:2])


def test_a_patients_other_views_are_not_the_reference(phantoms):
    """Two views of one patient are near-duplicates by nature: a copy of one must still stand out against the
    other patients, and the real data must not flag its own second views."""
    (images, masks, groups), _ = phantoms
    twins = torch.cat([images, _smooth(images)])  # every image with a second, near-identical view
    as_patients = NearestRealCheck().fit(twins, torch.cat([masks, masks]), groups + groups)
    assert as_patients.baseline()["real_flagged"] <= 0.05 and as_patients.baseline()["real_lesions_flagged"] <= 0.05
    assert NearestRealCheck().fit(twins, None, None).baseline()["real_flagged"] > 0.9  # as strangers they look copied
    copies = as_patients.query(_smooth(images[:12]), masks[:12])
    assert copies["image_copy"].all() and copies["lesion_copy"].all()


def test_bad_input_is_refused(phantoms):
    (images, masks, groups), _ = phantoms
    with pytest.raises(ValueError, match="0 < factor <= 1"):
        NearestRealCheck(factor=0)
    with pytest.raises(ValueError, match="at least 2 patients"):
        NearestRealCheck().fit(images[:2], None, ["p1", "p1"])
    with pytest.raises(ValueError, match="groups has 3 entries"):
        NearestRealCheck().fit(images, None, groups[:3])
    with pytest.raises(ValueError, match="lesions were found in 0"):
        NearestRealCheck().fit(images, torch.zeros_like(masks), groups)
    with pytest.raises(RuntimeError, match="fit"):
        NearestRealCheck().query(images)


def test_queries_in_chunks_give_the_same_answer(phantoms):
    (images, masks, groups), (novel, novel_masks, _) = phantoms
    whole = NearestRealCheck().fit(images, masks, groups)
    chunked = NearestRealCheck().fit(images, masks, groups)
    chunked.chunk = 5  # far fewer queries per distance matrix than there are images
    a, b = whole.query(_smooth(novel), novel_masks), chunked.query(_smooth(novel), novel_masks)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) or torch.allclose(a[k], b[k], equal_nan=True) for k in a)
    assert whole.baseline() == pytest.approx(chunked.baseline())
