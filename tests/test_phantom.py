from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from monai_breastlt.data import DEFAULT_SUBTYPES, generate_phantom, load_datalist_file, long_tail_counts, render_phantom


def test_long_tail_counts():
    assert long_tail_counts(6, 200, 50) == [200, 91, 42, 19, 9, 4]
    with pytest.raises(ValueError, match="imbalance_ratio >= 1"):
        long_tail_counts(3, 10, 0.5)


def test_render_is_seeded_and_subtypes_differ():
    a = render_phantom(DEFAULT_SUBTYPES[2], 64, np.random.default_rng(5))
    b = render_phantom(DEFAULT_SUBTYPES[2], 64, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    assert a[0].shape == (64, 64) and 0 <= a[0].min() and a[0].max() <= 1 and a[1].any()
    # a cyst is anechoic: its interior is darker than a fibroadenoma's on average over draws
    rng = np.random.default_rng(0)
    mean_in = {}
    for sub in (DEFAULT_SUBTYPES[0], DEFAULT_SUBTYPES[2]):
        vals = [img[mask].mean() for img, mask, _ in (render_phantom(sub, 64, rng, atypical_prob=0) for _ in range(8))]
        mean_in[sub.name] = np.mean(vals)
    assert mean_in["cyst"] < mean_in["fibroadenoma"]


def test_generate_phantom_layout_and_determinism(tiny_phantom, tmp_path):
    doc = load_datalist_file(tiny_phantom)
    assert doc["classes"] == [s.name for s in DEFAULT_SUBTYPES]
    items = [i for s in ("training", "validation", "test") for i in doc[s]]
    assert sorted(np.bincount([i["label"] for i in items]).tolist(), reverse=True) == long_tail_counts(6, 12, 4)
    assert all(i["mask"].endswith("_mask.png") and "shape" in i["attributes"] for i in items)
    again = generate_phantom(tmp_path, head_count=12, imbalance_ratio=4, image_size=32, seed=0)
    digest = lambda p: hashlib.sha1(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(again.parent / "cyst" / "cyst_0000.png") == digest(tiny_phantom.parent / "cyst" / "cyst_0000.png")
    assert json.loads(again.read_text())["training"] == json.loads(tiny_phantom.read_text())["training"]
