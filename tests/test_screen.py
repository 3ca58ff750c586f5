"""Scanner screens: scan-area crop, overlay detection and masking (against the phantom's burnt-in ground truth), scan
flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from monai_breastlt.data import generate_phantom, load_datalist_file, render_phantom
from monai_breastlt.data.overlays import burn_overlays
from monai_breastlt.data.phantom import DEFAULT_SUBTYPES
from monai_breastlt.data.screening import screen_items
from monai_breastlt.transforms import ultrasound_preprocessing
from monai_breastlt.transforms.screen import (
    CropScanArea,
    CropScanAread,
    DetectOverlays,
    MaskOverlays,
    MaskOverlaysd,
    inpaint,
    scan_flags,
)


def scan(size: int = 128, seed: int = 0) -> np.ndarray:
    return render_phantom(DEFAULT_SUBTYPES[0], size, np.random.default_rng(seed))[0]


def screen_with_scan(sector: bool) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 200 x 300 black screen with UI text outside the scan (rows 40-180, columns 60-260)."""
    screen = np.zeros((200, 300), np.float32)
    img = scan(140, 1)[:, :140]
    region = np.ones((140, 200), bool)
    if sector:  # a fan: the apex at the top centre
        yy, xx = np.mgrid[0:140, 0:200]
        region = np.abs(np.arctan2(xx - 100, yy + 20)) < 0.75
    screen[40:180, 60:260] = np.where(region, np.resize(img, (140, 200)).clip(0.1, 1), 0)
    canvas = Image.fromarray(np.zeros((200, 300), np.uint8))
    from PIL import ImageDraw

    ImageDraw.Draw(canvas).text((5, 5), "GE LOGIQ  12L  MI 0.9  TIS 0.1", fill=255)
    ImageDraw.Draw(canvas).text((270, 100), "Gn 50", fill=255)
    screen = np.maximum(screen, np.asarray(canvas) / 255.0)
    rows, cols = np.nonzero(np.pad(region, ((40, 20), (60, 40))))
    return screen, (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)


@pytest.mark.parametrize("sector", [False, True])
def test_crop_scan_area_linear_and_sector(sector):
    screen, (top, left, bottom, right) = screen_with_scan(sector)
    out = CropScanArea()(torch.from_numpy(screen)[None])
    box = CropScanArea().find_box(torch.from_numpy(screen)[None])
    assert np.allclose(box, (top, left, bottom, right), atol=6), (box, (top, left, bottom, right))
    assert out.shape[1:] == (box[2] - box[0], box[3] - box[1])
    assert out[0, :5].max() < 1.0 or box[0] > 10  # the UI text row is gone


def test_crop_fallback_box_and_dict_crops_the_mask():
    blank = torch.zeros(1, 100, 120)
    assert CropScanArea()(blank).shape == (1, 100, 120)  # nothing found, no box: kept whole
    assert CropScanArea(box=(10, 20, 60, 100))(blank).shape == (1, 50, 80)  # the manual fallback
    with pytest.raises(ValueError, match="bottom > top"):
        CropScanArea(box=(10, 20, 5, 100))
    screen, _ = screen_with_scan(False)
    mask = torch.zeros(1, 200, 300)
    mask[0, 100:110, 150:160] = 1
    d = CropScanAread(["image", "mask"])({"image": torch.from_numpy(screen)[None], "mask": mask})
    assert d["image"].shape == d["mask"].shape and d["mask"].sum() == 100
    assert len(d["scan_box"]) == 4


@pytest.fixture(scope="module")
def phantom_pair(tmp_path_factory):
    """The same phantom without and with overlays (strength 1: odd labels always, even never)."""
    root = tmp_path_factory.mktemp("overlays")
    kwargs = dict(counts=[4, 4, 3, 3, 2, 2], image_size=128, seed=3)
    clean = load_datalist_file(generate_phantom(root / "clean", **kwargs))
    marked = load_datalist_file(generate_phantom(root / "marked", overlay_strength=1.0, **kwargs))
    items = lambda doc: sorted((i for s in ("training", "validation", "test") for i in doc[s]), key=lambda i: i["image"])  # noqa: E731
    return items(clean), items(marked)


def _grey(path) -> np.ndarray:
    return np.asarray(Image.open(path), np.float32)


def test_phantom_overlays_follow_the_class_and_leave_the_lesion(phantom_pair):
    clean, marked = phantom_pair
    for c, m in zip(clean, marked):
        assert m["attributes"]["overlays"] == (m["label"] % 2 == 1)
        differ = np.abs(_grey(c["image"]) - _grey(m["image"])) > 0
        assert differ.any() == m["attributes"]["overlays"]  # the same lesion images; only the burnt-in marks differ


def test_detect_and_mask_overlays_against_ground_truth(phantom_pair):
    clean, marked = phantom_pair
    detect, mask = DetectOverlays(), MaskOverlays()
    found = truth = false_images = 0
    before = after = 0.0
    for c, m in zip(clean, marked):
        a, b = _grey(m["image"]), _grey(c["image"])
        gt = np.abs(a - b) > 5
        got = detect(torch.from_numpy(a)[None])[0].numpy()
        found += (got & gt).sum()
        truth += gt.sum()
        false_images += int(not gt.any() and got.any())
        if gt.any():
            cleaned = mask(torch.from_numpy(a)[None])[0].numpy()
            before += np.abs(a - b)[gt].mean()
            after += np.abs(cleaned - b)[gt].mean()
    assert found / truth > 0.8  # recall of the burnt-in pixels
    # of the 9 images without overlays; at 128 px some white-clipped speckle grains are long enough to pass as strokes
    assert false_images <= 5
    # inpainting brings the marked pixels back towards the clean image (with tissue beside them: not the closest
    # value, the mean, but one with the tissue's speckle)
    assert after < 0.7 * before


def test_colour_marks_masked_but_doppler_flagged():
    grey = (scan(96) * 200).astype(np.float32)
    rgb = np.repeat(grey[None], 3, 0)
    rgb[:, 40, 20:40] = np.array([255, 255, 0], np.float32)[:, None]  # a yellow caliper line
    found = DetectOverlays()(torch.from_numpy(rgb))[0]
    assert found[40, 20:40].all() and found.sum() < 200
    assert not scan_flags(torch.from_numpy(rgb))["colour"]
    doppler = rgb.copy()
    doppler[0, 30:60, 30:60], doppler[1, 30:60, 30:60], doppler[2, 30:60, 30:60] = 220, 30, 30  # a colour flow box
    assert scan_flags(torch.from_numpy(doppler))["colour"]
    assert not DetectOverlays()(torch.from_numpy(doppler))[0, 30:60, 30:60].any()  # a colour map is not a mark


def test_scan_flags_split_screen_and_blank():
    one = torch.from_numpy(scan(96))[None]
    dual = torch.cat([one, torch.zeros(1, 96, 8), one], 2)
    assert not any(scan_flags(one)[f] for f in ("colour", "split_screen", "blank"))
    assert scan_flags(dual)["split_screen"] and not scan_flags(dual)["blank"]
    text_only = np.zeros((96, 96), np.float32)
    text_only[5:8, 5:40] = 1.0
    assert scan_flags(torch.from_numpy(text_only)[None])["blank"]
    assert scan_flags(torch.zeros(1, 96, 96))["blank"]


def test_screen_items_counts(tmp_path):
    one = scan(64)
    Image.fromarray((one * 255).astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((np.concatenate([one, np.zeros((64, 6)), one], 1) * 255).astype(np.uint8)).save(tmp_path / "dual.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "blank.png")
    got = screen_items([{"image": str(tmp_path / n), "label": 0} for n in ("a.png", "dual.png", "blank.png")])
    assert len(got["checked"]) == 3 and got["split_screen"] == [str(tmp_path / "dual.png")]
    assert got["blank"] == [str(tmp_path / "blank.png")] and got["colour"] == []


def test_mask_overlays_dict_and_preprocessing_write_the_overlay_key(tmp_path):
    rng = np.random.default_rng(0)
    img, lesion, _ = render_phantom(DEFAULT_SUBTYPES[1], 128, rng)
    burnt, truth = burn_overlays(img, lesion, rng)
    d = MaskOverlaysd("image", mode="detect")({"image": torch.from_numpy(burnt * 255)[None]})
    assert d["overlay"].shape == (1, 128, 128) and d["overlay"].sum() > 0.8 * truth.sum()
    assert torch.equal(d["image"][0], torch.from_numpy(burnt * 255))  # detect: the image is left as it is
    Image.fromarray((burnt * 255).round().astype(np.uint8)).save(tmp_path / "x.png")
    out = ultrasound_preprocessing(64, mask_key=None, mask_overlays=True)({"image": str(tmp_path / "x.png")})
    assert out["overlay"].shape == (1, 64, 64) and out["overlay"].sum() > 0
    with pytest.raises(ValueError, match="whole image"):
        inpaint(torch.ones(1, 4, 4), torch.ones(1, 4, 4, dtype=torch.bool))


@pytest.mark.parametrize("seed", [0, 1])
def test_marks_blurred_below_white_are_found_by_shape_and_a_bright_tissue_line_is_not(seed):
    """Public scans were resampled after their marks were burnt in: calipers and text end below the display's white,
    under a specular tissue line that is the brightest thing in the image. The marks are still found by their shape;
    the line, horizontal and wide, is not taken for one."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.uniform(0, 1, (256, 256)), (0.7, 2.0))  # speckle, blurred sideways
    img = (0.18 + 0.36 * (noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)
    yy, xx = np.mgrid[0:256, 0:256]
    lesion = np.hypot(yy - 150, xx - 120) < 30
    img[lesion] = 0.07
    marked, truth = burn_overlays(img, lesion, rng)
    marked[60:66, 20:236] = 1.0
    blurred = ndimage.gaussian_filter(marked, 1.0).astype(np.float32)
    blurred /= blurred.max()
    assert blurred[truth].max() < 0.95  # below the white a scanner burns marks in at
    found = DetectOverlays().mask(blurred[None])
    assert (found & truth).sum() > 0.85 * truth.sum()
    assert not found[56:70].any()


def test_inpainting_fills_marks_with_the_speckle_beside_them_not_a_flat_patch():
    """The fill has the tissue's texture, not one flat value, and falls back to the box mean only where no clean box of
    the same size fits beside the mark."""
    rng = np.random.default_rng(0)
    tissue = ndimage.gaussian_filter(rng.uniform(0, 1, (128, 128)), (0.7, 2.0)).astype(np.float32)
    mask = np.zeros((128, 128), bool)
    mask[60:64, 40:80] = True  # a line of text
    img = tissue.copy()
    img[mask] = 1.0
    out = inpaint(torch.from_numpy(img)[None], torch.from_numpy(mask)[None])[0].numpy()
    assert np.array_equal(out[~mask], tissue[~mask])  # nothing else changes
    filled = out[mask]
    assert filled.std() > 0.6 * tissue[mask].std()  # speckle, not one value
    assert abs(filled.mean() - tissue[mask].mean()) < tissue.std()
    assert np.isin(filled, tissue[~mask]).all()  # real tissue pixels, copied
    # a box with no room for another beside it (the whole image): the mean of its unmasked pixels
    flat = inpaint(torch.from_numpy(img)[None], torch.from_numpy(mask)[None], boxes=[(0, 128, 0, 128)])[0].numpy()
    assert np.allclose(flat[mask], tissue[~mask].mean(), atol=1e-5)
