"""Shortcut audit: a classifier that reads only the burnt-in overlays loses its accuracy when they are swapped between
classes, and stops reading them behind the overlay masking transform; the `shortcuts` command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from scipy import ndimage

from monai_breastlt.cli.main import main
from monai_breastlt.data.overlays import burn_overlays, overlay_probabilities
from monai_breastlt.shortcuts import ShortcutAudit, balanced_accuracy_difference, format_shortcut_table, overlay_share


class OverlayReader(nn.Module):
    """Class 1 when more than 0.1 % of the pixels are white (burnt-in calipers), else class 0: a pure shortcut."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = (x >= 0.99).float().flatten(1).mean(1)
        return torch.stack([0.001 - white, white - 0.001], 1)


SIZE = 128  # the phantom's calipers at this size: 7 pixels, as large as the detector needs


@pytest.fixture(scope="module")
def marked_items(tmp_path_factory):
    """Class 1 always carries calipers, class 0 never (speckle-like noise backgrounds, a dark lesion). Text is left out:
    a lone word without a vertical stem ("SAG") is one the detector misses, and this test is about the audit."""
    root = tmp_path_factory.mktemp("shortcut")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    items = []
    for k in range(12):
        label = k % 2
        # speckle-like: noise blurred more sideways than in depth, as scanners blur it, in [0.2, 0.6]
        noise = ndimage.gaussian_filter(rng.uniform(0, 1, (SIZE, SIZE)), (0.7, 2.0))
        img = (0.2 + 0.4 * (noise - noise.min()) / (noise.max() - noise.min())).astype(np.float32)
        img[0, 0] = 0.7  # one brightest pixel: a clean image's white after min-max scaling
        lesion = np.hypot(yy - SIZE // 2, xx - 40 - 4 * k) < 13
        img[lesion] = 0.05
        if label:
            img, _ = burn_overlays(img, lesion, rng, text=False)
        Image.fromarray((img * 255).round().astype(np.uint8)).save(root / f"{k}.png")
        items.append({"image": str(root / f"{k}.png"), "label": label})
    return items


def test_swapping_overlays_exposes_the_shortcut_and_masking_removes_it(marked_items):
    plain = ShortcutAudit(OverlayReader(), ["clean", "marked"], image_size=SIZE).audit(marked_items)
    assert plain["per_class"]["marked"]["overlay_share"] == 1.0 and plain["per_class"]["clean"]["overlay_share"] == 0.0
    bal = plain["overall"]["balanced_accuracy"]
    assert bal["as_is"] == 1.0  # the marks give the class away
    assert bal["swapped"] == 0.0 and bal["masked"] == 0.5  # swapped: every prediction flips; masked: all read as clean
    masked = ShortcutAudit(OverlayReader(), ["clean", "marked"], image_size=SIZE, mask_overlays=True).audit(marked_items)
    bal = masked["overall"]["balanced_accuracy"]
    assert bal["as_is"] == bal["masked"] == bal["swapped"] == 0.5  # behind the masking transform the marks are gone
    diff = plain["overall"]["difference_to_as_is"]["swapped"]  # every image flips: -1 with nothing to resample
    assert diff["difference"] == -1.0 and diff["ci95"] == [-1.0, -1.0]
    table = format_shortcut_table(plain, "plain")
    assert "| marked | 6 | 100 % | 100.0 | 0.0 | 0.0 |" in table
    share = overlay_share(marked_items)
    assert share["with_overlays"] == 6 and share["per_class"] == {0: 0.0, 1: 1.0}


def test_balanced_accuracy_difference_interval():
    labels = np.repeat([0, 1], [40, 10])
    reference = np.ones(50, bool)
    correct = reference.copy()
    correct[[0, 1, 2, 3, 40, 41]] = False  # class 0 loses 10 %, class 1 loses 20 %
    d = balanced_accuracy_difference(correct, reference, labels, seed=0)
    assert d["difference"] == pytest.approx(-0.15)
    low, high = d["ci95"]
    assert low < -0.15 < high and high < 0  # every resample of the images loses some
    again = balanced_accuracy_difference(correct, reference, labels, seed=0)
    assert again == d and balanced_accuracy_difference(correct, reference, labels, seed=1)["ci95"] != d["ci95"]


def test_overlay_probabilities():
    assert overlay_probabilities(4, 1.0) == [0.0, 1.0, 0.0, 1.0]
    assert overlay_probabilities(3, 0.5, marked=[0]) == [0.75, 0.25, 0.25]
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        overlay_probabilities(3, 1.5)
    with pytest.raises(ValueError, match="not class indices"):
        overlay_probabilities(3, 0.5, marked=[3])


def test_shortcuts_command_trains_both_arms_and_audits(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--head-count", "6", "--imbalance-ratio", "2", "--image-size", "64",
                 "--overlay-strength", "1"]) == 0
    out = tmp_path / "sc"
    assert main(["shortcuts", str(tmp_path / "ph"), "--train-epochs", "1", "--out", str(out), "--image-size", "32",
                 "--batch-size", "8"]) == 0
    report = json.loads((out / "shortcuts_report.json").read_text())
    assert set(report["arms"]) == {"plain", "masked"}
    for arm in report["arms"].values():
        assert set(arm["overall"]["balanced_accuracy"]) == {"as_is", "masked", "swapped"}
    assert "acc. swapped" in capsys.readouterr().out
    assert main(["shortcuts", str(tmp_path / "ph"), "--out", str(out)]) == 2  # neither a classifier nor training
    assert "give either --classifier" in capsys.readouterr().err
