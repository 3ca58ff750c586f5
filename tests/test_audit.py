from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_perception
from monai.networks.nets import ResNet
from PIL import Image

from monai_breastlt.data import load_datalist
from monai_breastlt.synthesis import PoolAuditor, filter_pool


def _classifier():
    torch.manual_seed(0)
    return ResNet("basic", [1, 1, 1, 1], [8, 8, 16, 16], spatial_dims=2, n_input_channels=1, num_classes=6)


def test_audit_responds_to_a_corrupted_pool(tiny_phantom, tmp_path):
    real, classes = load_datalist(tiny_phantom, "training")
    copies = [{**r, "source": "synthetic", "id": f"copy{k}"} for k, r in enumerate(real[:8])]  # memorised pool
    noise = []
    rng = np.random.default_rng(0)
    for k, r in enumerate(real[:8]):  # a broken generator: noise images
        p = tmp_path / f"noise{k}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(p)
        noise.append({"image": str(p), "label": r["label"], "id": f"noise{k}", "sketch": str(p)})
    auditor = PoolAuditor(_classifier(), classes, tiny_perception(), image_size=32)
    rep_copy = auditor.audit(copies, real)
    rep_noise = auditor.audit(noise, real, out_dir=tmp_path / "audit")
    assert rep_copy["overall"]["near_copies"] == 8 and rep_noise["overall"]["near_copies"] == 0
    assert rep_noise["overall"]["fid"] > rep_copy["overall"]["fid"]
    assert rep_noise["overall"]["mmd"] > rep_copy["overall"]["mmd"]
    assert 0 <= rep_noise["overall"]["sketch_dice"] <= 1 and math.isnan(rep_copy["overall"]["sketch_dice"])
    assert set(rep_copy["per_class"]) <= set(classes) and rep_copy["overall"]["real_vs_real"]["fid"] >= 0
    assert 0 <= rep_copy["overall"]["overlay_share"] <= 1  # images that carry burnt-in calipers or text
    assert all(0 <= r["overlay_share"] <= 1 for r in rep_copy["per_class"].values())
    assert (tmp_path / "audit/audit_report.json").is_file() and (tmp_path / "audit/audit_grid.png").is_file()
    assert not (tmp_path / "audit/near_copies.png").exists()  # nothing flagged in the noise pool: no figure
    kept = filter_pool(copies, [rep_copy], classes, tmp_path / "filtered.json", min_class_prob=0.0)
    assert kept == []  # every memorised image is dropped
    kept = filter_pool(noise, [rep_noise], classes, tmp_path / "filtered.json", min_class_prob=0.0)
    assert len(kept) == 8 and load_datalist(tmp_path / "filtered.json")[0][0]["id"] == "noise0"


class _Identity(torch.nn.Module):
    """Stands in for an autoencoder that reconstructs perfectly (or, with ``blank``, returns black images)."""

    def __init__(self, blank: bool = False) -> None:
        super().__init__()
        self.blank = blank

    def encode(self, x):
        return x, torch.zeros_like(x)

    def decode(self, z):
        return torch.zeros_like(z) if self.blank else z


def test_audit_sketch_adherence_beats_its_chance_level(tiny_phantom, tmp_path):
    real, classes = load_datalist(tiny_phantom, "training")
    torch.manual_seed(0)
    perception = tiny_perception()
    auditor = PoolAuditor(_classifier(), classes, perception, image_size=32)
    pool = []
    for k, r in enumerate(real[:10]):  # each image conditioned on exactly the sketch the perception net sees in it
        with torch.no_grad():
            sketch = perception.predict_sketch(auditor.preprocess({"image": r["image"]})["image"][None])[0, 0]
        p = tmp_path / f"sketch{k}.png"
        Image.fromarray(((sketch > 0.5).numpy() * 255).astype(np.uint8)).save(p)
        pool.append({**r, "id": f"s{k}", "sketch": str(p)})
    o = auditor.audit(pool, real)["overall"]
    assert o["sketch_dice"] == pytest.approx(1.0) and o["sketch_dice_chance"] < 0.9


def test_audit_reports_what_the_autoencoder_leaves_attainable(tiny_phantom):
    real, classes = load_datalist(tiny_phantom, "training")
    pool = [{**r, "id": f"c{k}"} for k, r in enumerate(real[:4])]
    perfect = PoolAuditor(_classifier(), classes, image_size=32, autoencoder=_Identity()).audit(pool, real)["overall"]
    assert perfect["reconstruction_balanced_accuracy"] == perfect["real_balanced_accuracy"]
    blank = PoolAuditor(_classifier(), classes, image_size=32, autoencoder=_Identity(blank=True)).audit(pool, real)
    present = len({int(r["label"]) for r in real})
    # every black image gets the same class: one class fully right, the others wrong
    assert blank["overall"]["reconstruction_balanced_accuracy"] == pytest.approx(1 / present)
    assert "reconstruction_accuracy" in next(iter(blank["per_class"].values()))
    assert "real_balanced_accuracy" not in PoolAuditor(_classifier(), classes, image_size=32).audit(pool, real)["overall"]


def test_audit_says_what_each_class_is_taken_for(tiny_phantom):
    real, classes = load_datalist(tiny_phantom, "training")
    clf = _classifier()
    with torch.no_grad():  # a classifier that calls everything the third subtype
        clf.fc.weight.zero_()
        clf.fc.bias.copy_(torch.tensor([0.0, 0.0, 9.0, 0.0, 0.0, 0.0]))
    pool = [{**r, "source": "synthetic", "id": f"s{k}"} for k, r in enumerate(real)]
    rep = PoolAuditor(clf, classes, None, image_size=32).audit(pool, real)
    for name, row in rep["per_class"].items():
        assert row["taken_for"] == {classes[2]: 1.0}
        assert row["fidelity"] == (1.0 if name == classes[2] else 0.0)
    assert {i["predicted"] for i in rep["images"]} == {classes[2]}


def test_audit_reads_synthetic_images_as_written(tiny_phantom, tmp_path):
    """A pool entry marked ``prescaled`` (as ``generate`` writes) is judged in its own intensity range, not stretched."""
    real, classes = load_datalist(tiny_phantom, "training")
    p = tmp_path / "syn.png"
    Image.fromarray(np.linspace(60, 180, 32 * 32).reshape(32, 32).astype(np.uint8)).save(p)
    auditor = PoolAuditor(_classifier(), classes, None, image_size=32)
    marked, unmarked = auditor._images_and_masks([{"image": str(p), "prescaled": True}, {"image": str(p)}])[0]
    assert abs(marked.min().item() - 60 / 255) < 1e-3 and abs(marked.max().item() - 180 / 255) < 1e-3
    assert unmarked.min() == 0 and unmarked.max() == 1


def test_audit_flags_a_copied_lesion_on_a_new_background(tmp_path):
    """A patient's lesion pasted elsewhere on another image: the whole-image comparison cannot see it, the lesion
    comparison does, names the source image, and the filter drops it; lesions of another phantom are not flagged."""
    from monai_breastlt.data import generate_phantom
    from monai_breastlt.synthesis import save_png

    real, classes = load_datalist(generate_phantom(tmp_path / "real", head_count=16, imbalance_ratio=2, image_size=64, seed=0), "training")
    novel, _ = load_datalist(generate_phantom(tmp_path / "novel", head_count=6, imbalance_ratio=1, image_size=64, seed=5), "training")
    auditor = PoolAuditor(_classifier(), classes, None, image_size=64)
    images, masks = auditor._images_and_masks(real)
    rng = np.random.default_rng(0)
    pool = []
    for k in range(8):
        i, j = (int(v) for v in rng.choice(len(real), 2, replace=False))
        ys, xs = np.nonzero(masks[i][0].numpy())
        y0, y1, x0, x1 = max(ys.min() - 3, 0), min(ys.max() + 4, 64), max(xs.min() - 3, 0), min(xs.max() + 4, 64)
        ty, tx = int(rng.integers(0, 65 - (y1 - y0))), int(rng.integers(0, 65 - (x1 - x0)))
        img, mask = images[j][0].clone(), torch.zeros(64, 64)
        img[ty : ty + y1 - y0, tx : tx + x1 - x0] = images[i][0, y0:y1, x0:x1]
        mask[ty : ty + y1 - y0, tx : tx + x1 - x0] = masks[i][0, y0:y1, x0:x1]
        save_png(img, tmp_path / f"t{k}.png")
        save_png(mask, tmp_path / f"t{k}_mask.png")
        pool.append({"id": f"t{k}", "image": str(tmp_path / f"t{k}.png"), "mask": str(tmp_path / f"t{k}_mask.png"),
                     "label": real[i]["label"], "prescaled": True, "source_of_lesion": real[i]["image"]})
    rep = auditor.audit(pool, real, out_dir=tmp_path / "audit")
    assert (tmp_path / "audit" / "near_copies.png").is_file()
    o = rep["overall"]
    assert o["lesions_found"] == 8 and o["lesion_near_copies"] == 8 and o["near_copies"] <= 2
    assert [r["nearest_real_lesion"] for r in rep["images"]] == [p["source_of_lesion"] for p in pool]
    assert o["memorization"]["real_lesions_flagged"] <= 0.05 and sum(c["lesion_near_copies"] for c in rep["per_class"].values()) == 8
    assert filter_pool(pool, [rep], classes, tmp_path / "filtered.json", min_class_prob=0.0) == []
    fresh = auditor.audit([{**n, "id": f"n{k}"} for k, n in enumerate(novel)], real)["overall"]
    assert fresh["lesions_found"] == len(novel) and fresh["lesion_near_copies"] == 0 and fresh["near_copies"] == 0
    assert o["lesion_nn_ratio_median"] < 0.5 < 0.8 < fresh["lesion_nn_ratio_median"]  # graded as well as flagged


def test_audit_without_real_masks_compares_whole_images_only(tiny_phantom):
    """No real mask: nothing locates real lesions and the perception net's contour channel learnt nothing."""
    real, classes = load_datalist(tiny_phantom, "training")
    unmasked = [{k: v for k, v in r.items() if k != "mask"} for r in real]
    pool = [{**r, "id": f"c{k}"} for k, r in enumerate(unmasked[:4])]
    rep = PoolAuditor(_classifier(), classes, tiny_perception(), image_size=32).audit(pool, unmasked)
    o = rep["overall"]
    assert o["near_copies"] == 4 and o["lesions_found"] == 0 and o["lesion_near_copies"] == 0
    assert "real_lesions_flagged" not in o["memorization"] and all(i["nearest_real_lesion"] is None for i in rep["images"])


def test_filter_records_each_reason_per_class_and_averages_judges(tmp_path):
    from monai_breastlt.data import load_datalist_file

    classes = ["a", "b"]
    pool = [{"image": f"x{k}.png", "label": k % 2, "id": f"x{k}"} for k in range(4)]

    def report(probs, copies=(False,) * 4, lesions=(False,) * 4):
        return {"images": [{"class_prob": p, "near_copy": c, "lesion_near_copy": l} for p, c, l in zip(probs, copies, lesions)]}

    # judge means 0.6, 0.3, 0.8, 0.55; x2 is a copy of a real image, x3 of a real lesion
    reports = [report([0.7, 0.2, 0.9, 0.5], copies=(False, False, True, False), lesions=(False, False, False, True)),
               report([0.5, 0.4, 0.7, 0.6])]
    kept = filter_pool(pool, reports, classes, tmp_path / "f.json", min_class_prob=0.5)
    assert [i["id"] for i in kept] == ["x0"]
    rec = load_datalist_file(tmp_path / "f.json")["filtered"]
    assert rec["per_class"] == {"a": {"kept": 1, "near_copy": 1, "lesion_near_copy": 0, "low_class_prob": 0},
                                "b": {"kept": 0, "near_copy": 0, "lesion_near_copy": 1, "low_class_prob": 1}}
    assert {d["id"]: d["reasons"] for d in rec["dropped_images"]} == {"x1": ["low_class_prob"], "x2": ["near_copy"], "x3": ["lesion_near_copy"]}
    assert rec["judges"] == 2 and rec["kept"] == 1 and rec["dropped"] == 3
    # the first judge alone would have kept x1? no (0.2); with threshold 0.25 the mean (0.3) keeps it
    assert [i["id"] for i in filter_pool(pool, reports, classes, tmp_path / "g.json", min_class_prob=0.25)] == ["x0", "x1"]
    with pytest.raises(ValueError, match="needs audit reports of these 4 images"):
        filter_pool(pool, [report([0.5] * 3)], classes, tmp_path / "h.json")


def test_a_pool_of_another_class_order_is_refused_before_auditing(tiny_phantom):
    real, classes = load_datalist(tiny_phantom, "training")
    reordered = classes[::-1]  # the pool's own labels and names, in another class order
    pool = [{**r, "label": reordered.index(r["class_name"]), "source": "synthetic"} for r in real[:2]]
    auditor = PoolAuditor(_classifier(), classes, image_size=32)
    with pytest.raises(ValueError, match=r"pool entry 0 \(.*\): label \d '\w+' is not class \d of the auditor's .*: the pool's class order "
                                         r"differs from the real datalist's"):
        auditor.audit(pool, real)
