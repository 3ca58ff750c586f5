from __future__ import annotations

import math

import numpy as np
import torch
from monai.networks.nets import ResNet
from PIL import Image

from monai_breastlt.data import load_datalist
from monai_breastlt.networks import SketchPerceptionNet
from monai_breastlt.synthesis import PoolAuditor


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
    auditor = PoolAuditor(_classifier(), classes, SketchPerceptionNet(features=(4, 4, 8, 8, 16, 4)), image_size=32)
    rep_copy = auditor.audit(copies, real)
    rep_noise = auditor.audit(noise, real, out_dir=tmp_path / "audit")
    assert rep_copy["overall"]["near_copies"] == 8 and rep_noise["overall"]["near_copies"] == 0
    assert rep_noise["overall"]["fid"] > rep_copy["overall"]["fid"]
    assert rep_noise["overall"]["mmd"] > rep_copy["overall"]["mmd"]
    assert 0 <= rep_noise["overall"]["sketch_dice"] <= 1 and math.isnan(rep_copy["overall"]["sketch_dice"])
    assert set(rep_copy["per_class"]) <= set(classes) and rep_copy["overall"]["real_vs_real"]["fid"] >= 0
    assert (tmp_path / "audit/audit_report.json").is_file() and (tmp_path / "audit/audit_grid.png").is_file()
    kept = PoolAuditor.filter_pool(copies, rep_copy, classes, tmp_path / "filtered.json", min_class_prob=0.0)
    assert kept == []  # every memorised image is dropped
    kept = PoolAuditor.filter_pool(noise, rep_noise, classes, tmp_path / "filtered.json", min_class_prob=0.0)
    assert len(kept) == 8 and load_datalist(tmp_path / "filtered.json")[0][0]["id"] == "noise0"
