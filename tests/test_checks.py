"""The checks a run makes before its long work: every image file of a datalist, and split leakage."""

from __future__ import annotations

import json
import os
import time

import nibabel as nib
import numpy as np
import pytest
from conftest import shared_data
from PIL import Image

from monai_breastlt.data import check_datalist, check_image_files, inspect_image, read_busbra, warn_leakage, write_datalist


def _png(path, shape=(16, 24), value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(len(str(path))).integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def bad_files(tmp_path):
    """One file of every kind a datalist must not point at, by what the check says about it."""
    good = _png(tmp_path / "good.png")
    files = {"file not found": tmp_path / "missing.png", "is a folder, not an image file": tmp_path / "folder.png",
             "symbolic link loop": tmp_path / "loop.png", "broken symbolic link": tmp_path / "dangling.png",
             "empty file (0 bytes)": tmp_path / "empty.png", "truncated or damaged image": tmp_path / "truncated.png",
             "not a readable image (its contents are not a PNG image)": tmp_path / "text.png",
             "truncated JPEG (no end-of-image marker)": tmp_path / "cut.jpg",
             "extension '.txt' is not a readable image format": tmp_path / "notes.txt",
             "a volume of shape (16, 16, 8), not a 2D image": tmp_path / "volume.nii.gz",
             "holds 3 frames (a volume or a cine loop)": tmp_path / "cine.tif"}
    (tmp_path / "folder.png").mkdir()
    os.symlink(tmp_path / "loop.png", tmp_path / "loop.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "dangling.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:-200])
    (tmp_path / "notes.txt").write_text("x")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.float32), np.eye(4)), tmp_path / "volume.nii.gz")
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (0, 9, 99)]
    frames[0].save(tmp_path / "cine.tif", save_all=True, append_images=frames[1:])
    return good, files


def test_every_kind_of_bad_image_file_is_named(bad_files):
    good, files = bad_files
    assert inspect_image(good) == ((16, 24), None)
    for problem, path in files.items():
        assert problem in str(inspect_image(path)[1]), (path, inspect_image(path))


def test_the_whole_datalist_is_checked_and_every_bad_file_listed_at_once(bad_files, tmp_path):
    good, files = bad_files
    items = [{"image": str(good), "label": 0}] + [{"image": str(p), "label": 0} for p in files.values()]
    items.append({"image": str(good), "mask": str(_png(tmp_path / "small_mask.png", (8, 8))), "label": 0})
    items.append({"image": str(tmp_path / "no_such_folder" / "a.png"), "label": 0})
    items.append({"image": str(tmp_path / "no_such_folder" / "b.png"), "label": 0})
    with pytest.raises(ValueError) as e:
        check_image_files({"training": items[:6], "test": items[6:]}, "dl.json")
    msg = str(e.value)
    assert msg.startswith(f"dl.json: {len(files) + 2} unusable image file(s) among {len(items) + 1}: training entry 1 image ")
    for problem, path in files.items():
        assert f"image {path}: {problem}" in msg
    assert f"test entry {len(files) - 5} mask {tmp_path / 'small_mask.png'}: mask of size 8x8, its image is 16x24" in msg
    assert f"folder {tmp_path / 'no_such_folder'} does not exist (2 files, e.g. test entry {len(files) - 4} image" in msg
    assert "\n" not in msg
    assert len(check_image_files({"training": items}, "dl.json", raise_error=False)) == len(files) + 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_is_named(tmp_path):
    path = _png(tmp_path / "secret.png")
    path.chmod(0)
    assert inspect_image(path)[1] == "not readable (permission denied)"


def test_degenerate_sizes_are_warned(tmp_path, caplog):
    items = [{"image": str(_png(tmp_path / "dot.png", (1, 1))), "label": 0}, {"image": str(_png(tmp_path / "strip.png", (4, 100))), "label": 0},
             {"image": str(_png(tmp_path / "fine.png", (40, 60))), "label": 0}]
    with caplog.at_level("WARNING"):
        assert check_image_files({"training": items}, "dl.json") == []
    assert "dl.json: 2 image(s) of degenerate size (a side of 1 pixel or an aspect ratio over 20)" in caplog.text
    assert "dot.png (1x1)" in caplog.text and "strip.png (4x100)" in caplog.text and "fine.png" not in caplog.text


def test_exif_rotated_jpeg_is_checked_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: a viewer shows it 24 high and 16 wide
    Image.fromarray(np.zeros((16, 24), np.uint8)).save(tmp_path / "rot.jpg", exif=exif)
    assert inspect_image(tmp_path / "rot.jpg") == ((24, 16), None)


def test_leakage_between_splits_is_warned_with_count_and_first_entries(tmp_path, caplog):
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", (20, 20))
    copy = tmp_path / "copy_of_a.png"
    copy.write_bytes(a.read_bytes())
    sections = {"training": [{"image": str(a), "label": 0, "group": "p1"}, {"image": str(b), "label": 0, "group": "p2"}],
                "test": [{"image": str(copy), "label": 0, "group": "p3"}, {"image": str(_png(tmp_path / "c.png", (30, 30))), "label": 0, "group": "p2"}]}
    with caplog.at_level("WARNING"):
        leak = warn_leakage(sections, "dl.json")
    assert len(leak["images"]) == 1 and len(leak["groups"]) == 1
    assert ("dl.json: split leakage: 1 image(s) in more than one split (same file or same bytes), e.g. training entry 0 (a.png) = "
            "test entry 0 (copy_of_a.png); 1 patient(s) ('group') in more than one split, e.g. 'p2' in test and training") in caplog.text


def test_check_datalist_refuses_an_empty_training_section_and_checks_the_pool(tmp_path):
    img = _png(tmp_path / "a.png")
    path = write_datalist(tmp_path / "dl.json", {"training": [], "validation": [{"image": str(img), "label": 0}]}, ["a"])
    with pytest.raises(ValueError, match=r"dl.json: section 'training' is empty \(present: training 0, validation 1\)"):
        check_datalist(path)
    with pytest.raises(ValueError, match=r"section 'test' is missing"):
        check_datalist(path, required=("validation", "test"))
    path = write_datalist(tmp_path / "dl.json", {"training": [{"image": str(img), "label": 0}]}, ["a"])
    write_datalist(tmp_path / "pool.json", {"training": [{"image": str(tmp_path / "gone.png"), "label": 0}]}, ["a"])
    with pytest.raises(ValueError, match=r"pool .*pool.json entry 0 image .*gone.png: file not found"):
        check_datalist(path, tmp_path / "pool.json")
    assert json.loads(path.read_text())["classes"] == ["a"]


def test_busbra_check_is_cheap():
    """The check reads headers (and PNG checksums), not pixels: BUS-BRA's 1483 images and 1483 masks in a few seconds."""
    items, _ = read_busbra(shared_data("busbra"))
    start = time.perf_counter()
    assert check_image_files({"all": items}, "busbra") == []
    assert time.perf_counter() - start < 30  # about 0.4 s on 2 loaded cores; a full decode takes about 3.5 s
