"""Shortcut audit: does a classifier read the lesion, or the calipers and text burnt into the scan?

Per class, a classifier's accuracy on the images with their overlays as they are, with the overlays masked
(:py:class:`~monai_breastlt.transforms.screen.MaskOverlays`), and with the overlays swapped between classes (each
image's own overlays masked, those of an image of another class pasted in). A classifier that learnt the overlays
loses accuracy when they are swapped; one that reads the lesion does not. The share of images that carry overlays
is reported per class too (a pool's synthetic images copy their training images' marks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from monai_breastlt.transforms.io import LoadUltrasoundImage
from monai_breastlt.transforms.preprocess import ultrasound_preprocessing
from monai_breastlt.transforms.screen import CropScanArea, DetectOverlays, inpaint

__all__ = ["VARIANTS", "balanced_accuracy_difference", "overlay_share", "ShortcutAudit", "format_shortcut_table"]

VARIANTS = ("as_is", "masked", "swapped")


def overlay_share(items: Sequence[dict], detector: DetectOverlays | None = None, frame: str = "middle") -> dict:
    """The share of ``items``' images that carry overlays (any pixel found by ``detector``), overall and per class.

    Returns:
        ``{"n", "with_overlays", "share", "per_class": {label: share}}``.
    """
    detector = detector or DetectOverlays()
    load = LoadUltrasoundImage(frame)
    found = [bool(detector(load(i["image"], i.get("frame"))).any()) for i in items]
    labels = [int(i["label"]) for i in items]
    per_class = {c: float(np.mean([f for f, lab in zip(found, labels) if lab == c])) for c in sorted(set(labels))}
    return {"n": len(items), "with_overlays": int(sum(found)), "share": float(np.mean(found)) if found else float("nan"),
            "per_class": per_class}


def balanced_accuracy_difference(correct: np.ndarray, reference: np.ndarray, labels: np.ndarray, n_boot: int = 2000,
                                  seed: int = 0) -> dict:
    """Balanced accuracy of ``correct`` minus that of ``reference`` (per-image hits of two variants of the same
    images), with a 95 % percentile interval from resampling the images within each class (paired: the same resample
    for both, so image difficulty cancels; class sizes fixed, so every class stays in the mean).

    Returns:
        ``{"difference", "ci95": [low, high]}``, as fractions.
    """
    point, boots = [], np.zeros(n_boot)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for c in classes:
        sel = labels == c
        hits = correct[sel].astype(float) - reference[sel].astype(float)
        point.append(hits.mean())
        boots += hits[rng.integers(0, len(hits), (n_boot, len(hits)))].mean(1)
    boots /= len(classes)
    return {"difference": float(np.mean(point)), "ci95": np.quantile(boots, [0.025, 0.975]).tolist()}


def _paste(img: torch.Tensor, donor: torch.Tensor, donor_mask: torch.Tensor) -> torch.Tensor:
    """``img`` with ``donor``'s overlay pixels (its mask, resized to ``img``) written over it."""
    size = img.shape[-2:]
    mask = F.interpolate(donor_mask[None].float(), size=size, mode="nearest")[0, 0] > 0
    pixels = F.interpolate(donor[None].float(), size=size, mode="nearest")[0]
    pixels = pixels.mean(0, keepdim=True) if pixels.shape[0] != img.shape[0] else pixels
    pixels = pixels * (img.float().amax() / pixels.amax().clamp_min(1e-6))  # the donor's white is this image's white
    out = img.clone()
    out[:, mask] = pixels.expand(img.shape[0], -1, -1)[:, mask].to(out.dtype)
    return out


class ShortcutAudit:
    """
    Accuracy of a classifier per class on images with overlays as they are, masked, and swapped between classes.

    Every image is loaded at its own resolution (cropped to the scan area with ``crop_scan_area``), its overlays are
    found there, the three variants are made there, and each variant then goes through the classifier's own
    preprocessing (``mask_overlays``: the classifier was trained with the overlay masking transform, which then runs
    on every variant too, the swapped one included). Swap partners are drawn, with ``seed``, among the images of the
    other classes that carry overlays (any image of another class when none does).

    Args:
        classifier: the trained network (logits).
        classes: class names in label order.
        image_size: the classifier's input size.
        mask_overlays: the classifier's preprocessing masks overlays (it was trained so).
        crop_scan_area: the classifier's preprocessing crops to the scan area.
        detector: the overlay detector of the variants (default settings).
        batch_size: images per forward pass.
        device: torch device.
        seed: the seed of the swap partners.
    """

    def __init__(self, classifier: nn.Module, classes: Sequence[str], image_size: int = 64, mask_overlays: bool = False,
                 crop_scan_area: bool = False, detector: DetectOverlays | None = None, batch_size: int = 32,
                 device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.device = torch.device(device)
        self.classifier = classifier.eval().to(self.device)
        self.classes, self.batch_size, self.seed = list(classes), batch_size, seed
        self.detector = detector or DetectOverlays()
        self.load = LoadUltrasoundImage()
        self.crop = CropScanArea() if crop_scan_area else None
        self.preprocess = ultrasound_preprocessing(image_size, mask_key=None, mask_overlays=mask_overlays, load=False)

    def _raw(self, items: Sequence[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        images, masks = [], []
        for i in items:
            img = self.load(i["image"], i.get("frame"))
            img = self.crop(img) if self.crop is not None else img
            images.append(img)
            masks.append(self.detector(img))
        return images, masks

    def _partners(self, labels: np.ndarray, has: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        out = np.empty(len(labels), dtype=int)
        for k, lab in enumerate(labels):
            pool = np.nonzero((labels != lab) & has)[0]
            pool = pool if len(pool) else np.nonzero(labels != lab)[0]
            out[k] = rng.choice(pool) if len(pool) else k
        return out

    @torch.no_grad()
    def _predict(self, images: Sequence[torch.Tensor], items: Sequence[dict]) -> np.ndarray:
        x = torch.stack([self.preprocess({"image": img, **{k: i[k] for k in ("prescaled",) if k in i}})["image"]
                         for img, i in zip(images, items)])
        logits = [self.classifier(x[b : b + self.batch_size].to(self.device)).cpu() for b in range(0, len(x), self.batch_size)]
        return torch.cat(logits).argmax(1).numpy()

    def audit(self, items: Sequence[dict]) -> dict:
        """The report: per class and overall, ``n``, ``overlay_share`` and the accuracy of each of :data:`VARIANTS`.

        Raises:
            ValueError: no items, or a label outside the classes.
        """
        if not items:
            raise ValueError("shortcut audit needs images (got none).")
        labels = np.asarray([int(i["label"]) for i in items])
        if labels.min() < 0 or labels.max() >= len(self.classes):
            raise ValueError(f"labels must be class indices in [0, {len(self.classes) - 1}], got {sorted(set(labels.tolist()))}.")
        raw, masks = self._raw(items)
        has = np.asarray([bool(m.any()) for m in masks])
        masked = [inpaint(img, m) for img, m in zip(raw, masks)]
        partners = self._partners(labels, has)
        swapped = [_paste(masked[k], raw[j], masks[j]) for k, j in enumerate(partners)]
        correct = {v: self._predict(imgs, items) == labels for v, imgs in zip(VARIANTS, (raw, masked, swapped))}
        row = lambda sel: {"n": int(sel.sum()), "overlay_share": float(has[sel].mean()),  # noqa: E731
                           **{f"accuracy_{v}": float(correct[v][sel].mean()) for v in VARIANTS}}
        report = {"classes": self.classes, "overall": row(np.ones(len(labels), bool)), "per_class": {}}
        for c, name in enumerate(self.classes):
            if (labels == c).any():
                report["per_class"][name] = row(labels == c)
        report["overall"]["balanced_accuracy"] = {v: float(np.mean([r[f"accuracy_{v}"] for r in report["per_class"].values()]))
                                                  for v in VARIANTS}
        report["overall"]["difference_to_as_is"] = {
            v: balanced_accuracy_difference(correct[v], correct["as_is"], labels, seed=self.seed) for v in VARIANTS[1:]}
        return report


def format_shortcut_table(report: dict, title: str = "") -> str:
    """A markdown table of a :meth:`ShortcutAudit.audit` report (accuracies in %)."""
    lines = ([f"**{title}**", ""] if title else []) + [
        "| class | n | with overlays | acc. as is | acc. masked | acc. swapped |", "|---|---|---|---|---|---|"]
    rows = [*report["per_class"].items(), ("all (balanced)", {**report["overall"], **{
        f"accuracy_{v}": a for v, a in report["overall"]["balanced_accuracy"].items()}})]
    for name, r in rows:
        lines.append(f"| {name} | {r['n']} | {100 * r['overlay_share']:.0f} % | " + " | ".join(
            f"{100 * r[f'accuracy_{v}']:.1f}" for v in VARIANTS) + " |")
    diffs = report["overall"].get("difference_to_as_is")
    if diffs:
        lines += ["", "Balanced accuracy against as is (95 % interval, resampling the images within each class): "
                  + "; ".join(f"{v} {100 * d['difference']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"
                              for v, d in diffs.items())]
    return "\n".join(lines)
