"""DICOM input: ITK-written files from phantom images, single- and multi-frame, grey, RGB and YBR, through the loader,
the datalist readers, `split`, `data-info` and the classification bundle."""

from __future__ import annotations

import json
import re

import itk
import numpy as np
import pytest
import torch

from monai_breastlt.cli.main import main
from monai_breastlt.data import expand_dicom_frames, read_any_source, render_phantom, scan_class_folder
from monai_breastlt.data.phantom import DEFAULT_SUBTYPES
from monai_breastlt.transforms import ultrasound_preprocessing
from monai_breastlt.transforms.io import LoadUltrasoundImage, dicom_header
from monai_breastlt.utils import root_cause

_RGB_TAG = b"(\x00\x04\x00\x04\x00\x00\x00RGB "  # (0028,0004) 'RGB ' as GDCM writes it (implicit VR little endian)


def phantom_frames(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([(render_phantom(DEFAULT_SUBTYPES[2], size, rng)[0] * 255).round().astype(np.uint8) for _ in range(n)])


def write_dicom(path, frames: np.ndarray, spacing=(0.2, 0.1), rgb: bool = False) -> None:
    """ITK writes ``(frames, rows, cols)`` as a (multi-frame) DICOM; ``rgb``: three equal channels."""
    if rgb:
        img = itk.image_from_array(np.repeat(frames[0][..., None], 3, -1), is_vector=True)
    else:
        img = itk.image_from_array(frames if len(frames) > 1 else frames[0])
        img.SetSpacing(list(spacing) + ([1.0] if len(frames) > 1 else []))  # ITK order: column, row
    itk.imwrite(img, str(path))


def write_ybr(path, grey: np.ndarray, cb: int = 128, cr: int = 128) -> None:
    """GDCM writes only RGB; a YBR_FULL file is the RGB one with YBR values and the photometric tag rewritten."""
    ybr = np.stack([grey, np.full_like(grey, cb), np.full_like(grey, cr)], -1)
    itk.imwrite(itk.image_from_array(ybr, is_vector=True), str(path))
    raw = path.read_bytes()
    assert _RGB_TAG in raw
    path.write_bytes(raw.replace(_RGB_TAG, b"(\x00\x04\x00\x08\x00\x00\x00YBR_FULL"))


def write_no_pixels(path) -> None:
    """A DICOM without pixel data (as a structured report has none): an ITK file cut before (7FE0,0010)."""
    write_dicom(path, phantom_frames(1, 16))
    raw = path.read_bytes()
    path.write_bytes(raw[: raw.index(b"\xe0\x7f\x10\x00")])


def test_single_multi_rgb_ybr_read_as_the_png_would_be(tmp_path):
    frames = phantom_frames(5)
    write_dicom(tmp_path / "one.dcm", frames[:1])
    write_dicom(tmp_path / "cine.dcm", frames)
    write_dicom(tmp_path / "rgb.dcm", frames[:1], rgb=True)
    write_ybr(tmp_path / "ybr.dcm", frames[0])
    load = LoadUltrasoundImage()
    one = load(str(tmp_path / "one.dcm"))
    assert one.shape == (1, 32, 32) and np.array_equal(one[0].numpy(), frames[0])  # rows x columns, like a PNG
    assert one.meta["pixel_spacing"] == pytest.approx([0.1, 0.2])  # [row, column] from the header
    assert np.array_equal(load(str(tmp_path / "cine.dcm"))[0].numpy(), frames[2])  # middle frame by default
    assert np.array_equal(load(str(tmp_path / "cine.dcm"), frame="first")[0].numpy(), frames[0])
    assert np.array_equal(load(str(tmp_path / "cine.dcm"), frame=4)[0].numpy(), frames[4])
    with pytest.raises(ValueError, match=r"cine.dcm: frame 5 is not a frame index in \[0, 4\]"):
        load(str(tmp_path / "cine.dcm"), frame=5)
    assert dicom_header(tmp_path / "cine.dcm")["frames"] == 5
    pre = ultrasound_preprocessing(32, mask_key=None)
    png_like = pre({"image": str(tmp_path / "one.dcm")})["image"]
    for name in ("rgb.dcm", "ybr.dcm"):  # colour to grey: equal RGB channels, or YBR with neutral chroma, give the grey image
        assert load(str(tmp_path / name)).shape[0] == 3
        assert torch.allclose(pre({"image": str(tmp_path / name)})["image"], png_like, atol=2 / 255), name


def test_non_image_dicom_is_one_clear_line(tmp_path):
    write_no_pixels(tmp_path / "report.dcm")
    with pytest.raises(ValueError, match=r"report.dcm: DICOM file holds no image GDCM can read \(no pixel data"):
        dicom_header(tmp_path / "report.dcm")
    with pytest.raises(RuntimeError) as e:
        ultrasound_preprocessing(16, mask_key=None)({"image": str(tmp_path / "report.dcm")})
    assert "report.dcm: DICOM file holds no image" in str(root_cause(e.value))
    (tmp_path / "notdicom.dcm").write_bytes(b"hello")
    with pytest.raises(ValueError, match=r"notdicom.dcm: not a DICOM file"):
        dicom_header(tmp_path / "notdicom.dcm")


def _dicom_folder(root, files_per_class: int = 4, frames: int = 3):
    for c, name in enumerate(("cyst", "fibroadenoma")):
        (root / name).mkdir(parents=True)
        for k in range(files_per_class):
            write_dicom(root / name / f"{name}_{k}.dcm", phantom_frames(frames, 16, seed=10 * c + k))
    return root


def test_dicom_folder_datalists_split_and_data_info(tmp_path, capsys):
    root = _dicom_folder(tmp_path / "data")
    items, classes = scan_class_folder(root)
    assert classes == ["cyst", "fibroadenoma"] and len(items) == 8 and all(i["image"].endswith(".dcm") for i in items)
    every = expand_dicom_frames(items, "all")
    assert len(every) == 24 and {i["frame"] for i in every} == {0, 1, 2}
    assert all(i["group"] == i["image"] for i in every) and every[0]["pixel_spacing"] == pytest.approx([0.1, 0.2])
    assert [i["frame"] for i in expand_dicom_frames(items, "middle")] == [1] * 8
    assert main(["split", str(root), "--out", str(tmp_path / "dl.json"), "--frames", "all"]) == 0
    doc = json.loads((tmp_path / "dl.json").read_text())
    where = {}
    for section in ("training", "validation", "test"):
        for i in doc[section]:
            where.setdefault(i["image"], set()).add(section)
    assert sum(len(doc[s]) for s in ("training", "validation", "test")) == 24
    assert all(len(s) == 1 for s in where.values())  # the frames of one loop stay in one split
    sections, _ = read_any_source(tmp_path / "dl.json")
    assert len(sections["training"]) == len(doc["training"])  # framed entries are not duplicates
    capsys.readouterr()
    assert main(["data-info", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.index("scan filter: 8 images checked") < out.index("imbalance ratio")
    write_no_pixels(root / "cyst" / "sr.dcm")
    assert main(["data-info", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"error: .*sr.dcm: DICOM file holds no image", err[0])


def test_classification_bundle_trains_on_dicom(tmp_path):
    from monai_breastlt.workflows import find_bundles, run_bundle

    root = _dicom_folder(tmp_path / "data", files_per_class=5, frames=2)
    assert main(["split", str(root), "--out", str(root / "datalist.json"), "--frames", "all"]) == 0
    _, cls = find_bundles()
    run_bundle(cls, ["train.yaml"], dataset_dir=str(root), output_dir=str(tmp_path / "out"), pool=None, policy_name="none",
               sampler_target="real", max_epochs=1, image_size=16, batch_size=8, mask_overlays=True, crop_scan_area=True)
    assert (tmp_path / "out" / "models" / "model.pt").is_file()
