"""Audit a synthetic pool: class fidelity, sketch adherence, distribution distance, memorisation."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.data import PILReader
from monai.metrics import FIDMetric, MMDMetric
from monai.transforms import LoadImage

from monai_breastlt.data.datalist import write_datalist
from monai_breastlt.metrics import confusion_matrix, report_from_confusion
from monai_breastlt.networks import SketchPerceptionNet
from monai_breastlt.shortcuts import overlay_share
from monai_breastlt.synthesis.memorization import NearestRealCheck
from monai_breastlt.transforms import PRESCALED_KEY, ultrasound_preprocessing
from monai_breastlt.utils import atomic_write_json
from monai_breastlt.visualize import save_near_copies, save_sample_grid

__all__ = ["PoolAuditor", "audit_pool", "filter_pool"]


def _dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    inter = (a * b).flatten(1).sum(1)
    return 2 * inter / (a.flatten(1).sum(1) + b.flatten(1).sum(1)).clamp_min(1e-6)


class PoolAuditor:
    """
    Per class, four checks of a synthetic pool against the real training images:

    - **fidelity**: accuracy of a classifier trained on real data on the synthetic images of the class, and what the
      rest is taken for (``taken_for``: the classifier's predictions over the class's synthetic images, a row of
      the confusion matrix; look-alike subtypes show up there);
    - **sketch adherence**: Dice between the conditioning sketch and the perception net's sketch of the generated
      image (both thresholded at ``sketch_threshold``), next to its chance level: the Dice of the same conditioning
      sketch against the sketch of another generated image (tissue layers are alike in every image, so this is
      well above 0);
    - **distance**: MONAI ``FIDMetric`` and ``MMDMetric`` on the classifier's penultimate features (no ImageNet weights
      offline), with a real-vs-real baseline (the real features split in two halves);
    - **memorisation** (:py:class:`~monai_breastlt.synthesis.memorization.NearestRealCheck`): the nearest real
      training image of each synthetic image, and the nearest real *lesion* (a copied lesion on a new background),
      both compared despeckled; a nearest real image (lesion) closer than ``near_copy_factor`` times the mean
      distance to the next real images (lesions) of other patients flags a near-copy. Lesions are located by an
      entry's ``mask`` where it has one (real images usually; generated ones never), else by the perception net's
      contour channel; without any real mask (the contour channel then learnt nothing) only whole images are compared.

    With ``out_dir``, :meth:`audit` writes the report, a per-class sample grid and, when images are flagged,
    ``near_copies.png``: the closest flagged images beside the real image and the real lesion they resemble.

    With an ``autoencoder``, the classifier's accuracy on the real images and on their autoencoder reconstructions
    is reported per class too: the fidelity that the first stage of a latent diffusion model leaves attainable.

    Args:
        classifier: a network trained on real data (logits); its ``fc`` input is the feature, else the logits.
        perception: the trained ``SketchPerceptionNet`` (``None``: no adherence check).
        classes: class names in label order.
        image_size: the size the classifier expects.
        near_copy_factor: memorisation threshold on the relative distance: the distance to the nearest real image over
            the mean distance to the next 3 real images of other patients.
        sketch_threshold: binarisation threshold of the sketches.
        batch_size: images per forward pass.
        device: torch device.
        autoencoder: the LDM's ``AutoencoderKL`` (``None``: no reconstruction check).
    """

    copies_shown = 12  # rows of near_copies.png

    def __init__(
        self,
        classifier: nn.Module,
        classes: Sequence[str],
        perception: SketchPerceptionNet | None = None,
        image_size: int = 64,
        near_copy_factor: float = 0.5,
        sketch_threshold: float = 0.5,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        autoencoder: nn.Module | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.autoencoder = autoencoder.eval().to(self.device) if autoencoder is not None else None
        self.classifier = classifier.eval().to(self.device)
        self.perception = perception.eval().to(self.device) if perception is not None else None
        self.classes = list(classes)
        self.image_size, self.sketch_threshold = image_size, sketch_threshold
        self.batch_size = batch_size
        self.preprocess = ultrasound_preprocessing(image_size, mask_key="mask")
        self.memorization = NearestRealCheck(factor=near_copy_factor)
        # the orientation ultrasound_preprocessing reads images in (and the generator writes sketches in)
        self.load_sketch = LoadImage(reader=PILReader(reverse_indexing=False), image_only=True, ensure_channel_first=True)

    def _images_and_masks(self, items: Sequence[dict]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Images and their lesion masks (``None`` where an entry has none)."""
        out = [self.preprocess({k: i[k] for k in ("image", "mask", PRESCALED_KEY) if i.get(k) is not None}) for i in items]
        return torch.stack([o["image"] for o in out]), [(o["mask"] > 0).float() if "mask" in o else None for o in out]

    @torch.no_grad()
    def _batched(self, predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """``predict`` (a perception-net method) over ``images`` in batches, on the auditor's device."""
        return torch.cat([predict(images[b : b + self.batch_size].to(self.device)).cpu() for b in range(0, len(images), self.batch_size)])

    def _lesion_maps(self, images: torch.Tensor, masks: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
        """Masks where given, else the perception net's lesion contours; ``None`` when neither is available."""
        missing = [k for k, m in enumerate(masks) if m is None]
        if missing and self.perception is None:
            return None
        maps = torch.zeros_like(images)
        if missing:
            maps[missing] = self._batched(self.perception.predict_contour, images[missing])
        for k, m in enumerate(masks):
            if m is not None:
                maps[k] = m
        return maps

    @torch.no_grad()
    def _run(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and features of the classifier, batched."""
        feats: list[torch.Tensor] = []
        fc = getattr(self.classifier, "fc", None)
        hook = fc.register_forward_hook(lambda m, inp, out: feats.append(inp[0].flatten(1).cpu())) if isinstance(fc, nn.Module) else None
        logits = []
        try:
            for b in range(0, len(images), self.batch_size):
                out = self.classifier(images[b : b + self.batch_size].to(self.device)).cpu()
                logits.append(out)
                if hook is None:
                    feats.append(out)
        finally:
            if hook is not None:
                hook.remove()
        return torch.cat(logits), torch.cat(feats)

    @torch.no_grad()
    def _reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        assert self.autoencoder is not None
        out = []
        for b in range(0, len(images), self.batch_size):
            x = images[b : b + self.batch_size].to(self.device)
            z_mu, _ = self.autoencoder.encode(x)  # the posterior mean: a deterministic reconstruction
            out.append(self.autoencoder.decode(z_mu).clamp(0, 1).cpu())
        return torch.cat(out)

    @staticmethod
    def _distances(feats_a: torch.Tensor, feats_b: torch.Tensor) -> dict:
        if len(feats_a) < 2 or len(feats_b) < 2:
            return {"fid": float("nan"), "mmd": float("nan")}
        n = min(len(feats_a), len(feats_b))  # MONAI's MMD compares sets of equal size
        return {
            "fid": float(FIDMetric()(feats_a.double(), feats_b.double())),
            "mmd": float(MMDMetric()(feats_a[:n].flatten(1), feats_b[:n].flatten(1)).mean()),
        }

    @torch.no_grad()
    def audit(self, pool: Sequence[dict], real: Sequence[dict], out_dir: str | os.PathLike | None = None) -> dict:
        """The report (per class and overall); with ``out_dir``, also ``audit_report.json``, ``audit_grid.png`` and
        ``near_copies.png`` (see :meth:`write`)."""
        if not pool or not real:
            raise ValueError(f"audit needs synthetic and real images (got {len(pool)} and {len(real)}).")
        for k, item in enumerate(pool):  # a pool of another class order would be audited against the wrong labels
            label, name = int(item["label"]), item.get("class_name")
            if not 0 <= label < len(self.classes) or name not in (None, self.classes[label]):
                raise ValueError(f"pool entry {k} ({item['image']}): label {label} '{name}' is not class {label} of the auditor's "
                                 f"{self.classes}: the pool's class order differs from the real datalist's.")
        syn_img, syn_masks = self._images_and_masks(pool)
        real_img, real_masks = self._images_and_masks(real)
        syn_logits, syn_feat = self._run(syn_img)
        real_logits, real_feat = self._run(real_img)
        syn_lab = torch.tensor([int(i["label"]) for i in pool])
        real_lab = torch.tensor([int(i["label"]) for i in real])
        probs = torch.softmax(syn_logits, 1)
        mem = self._memorisation(syn_img, syn_masks, real_img, real_masks, real)
        adherence, chance = self._adherence(pool, syn_img)
        half = torch.arange(len(real_feat)) % 2 == 0
        pred_lab = probs.argmax(1)
        correct = pred_lab == syn_lab
        report: dict = {
            "classes": self.classes,
            "overall": {
                "n": len(pool),
                "fidelity": float(correct.float().mean()),
                "sketch_dice": _nanmean(adherence),
                "sketch_dice_chance": _nanmean(chance),
                "near_copies": int(mem["image_copy"].sum()),
                "lesion_near_copies": int(mem["lesion_copy"].sum()),
                # graded, not only flagged: real images sit near 1 against other patients (memorization.real_median_ratio)
                "nn_ratio_median": _nanmedian(mem["image_ratio"]),
                "lesion_nn_ratio_median": _nanmedian(mem["lesion_ratio"]),
                "lesions_found": int((~torch.isnan(mem["lesion_distance"])).sum()),
                "memorization": self.memorization.baseline(),  # the rule on the real images: its false-alarm rate
                **self._distances(syn_feat, real_feat),
                "real_vs_real": self._distances(real_feat[half], real_feat[~half]),
            },
            "per_class": self._per_class(syn_lab, real_lab, correct, pred_lab, adherence, chance, mem, syn_feat, real_feat),
            "images": [
                {"id": i.get("id", i["image"]), "class_prob": float(probs[k, syn_lab[k]]), "predicted": self.classes[int(pred_lab[k])],
                 "nn_distance": float(mem["image_distance"][k]), "nn_ratio": float(mem["image_ratio"][k]),
                 "near_copy": bool(mem["image_copy"][k]), "nearest_real": real[int(mem["image_nearest"][k])]["image"],
                 "lesion_nn_distance": float(mem["lesion_distance"][k]), "lesion_nn_ratio": float(mem["lesion_ratio"][k]),
                 "lesion_near_copy": bool(mem["lesion_copy"][k]),
                 "nearest_real_lesion": real[int(mem["lesion_nearest"][k])]["image"] if not torch.isnan(mem["lesion_distance"][k]) else None,
                 "sketch_dice": float(adherence[k])}
                for k, i in enumerate(pool)
            ],
        }
        if self.autoencoder is not None:
            self._add_real_accuracy(report, real_img, real_logits, real_lab)
        overlays = overlay_share(pool)  # generated images that copy the calipers and text of their training images
        report["overall"]["overlay_share"] = overlays["share"]
        for c, share in overlays["per_class"].items():
            report["per_class"][self.classes[c]]["overlay_share"] = share
        if out_dir is not None:
            self.write(report, out_dir, pool, syn_img, syn_lab, real_img, mem)
        return report

    def _memorisation(self, syn_img, syn_masks, real_img, real_masks, real: Sequence[dict]) -> dict:
        """Nearest real image and nearest real lesion of every synthetic image, against real-to-real distances of
        other patients. Without any real mask there is nothing to locate real lesions with, and the perception net's
        contour channel (trained only where masks exist) has learnt nothing: no lesion check then."""
        real_maps = self._lesion_maps(real_img, real_masks) if any(m is not None for m in real_masks) else None
        syn_maps = self._lesion_maps(syn_img, syn_masks) if real_maps is not None else None
        self.memorization.fit(real_img, real_maps, [i.get("group", i["image"]) for i in real])
        mem = self.memorization.query(syn_img, syn_maps)
        n = len(syn_img)
        mem.setdefault("lesion_distance", torch.full((n,), float("nan")))
        mem.setdefault("lesion_ratio", torch.full((n,), float("nan")))
        mem.setdefault("lesion_copy", torch.zeros(n, dtype=torch.bool))
        return mem

    def _adherence(self, pool: Sequence[dict], syn_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sketch Dice of every generated image (NaN without a sketch or a perception net) and its chance level."""
        adherence = torch.full((len(pool),), float("nan"))
        chance = torch.full((len(pool),), float("nan"))
        has = [k for k, i in enumerate(pool) if i.get("sketch")]
        if self.perception is None or not has:
            return adherence, chance
        cond = torch.stack([self.load_sketch(pool[k]["sketch"]) for k in has]).float()
        cond = F.interpolate(cond / cond.amax().clamp_min(1), size=syn_img.shape[-2:], mode="bilinear")
        pred = self._batched(self.perception.predict_sketch, syn_img)
        cond_bin, pred_bin = (cond > self.sketch_threshold).float(), (pred[has] > self.sketch_threshold).float()
        adherence[has] = _dice(cond_bin, pred_bin)
        if len(has) > 1:  # each sketch against another generated image (half the pool away: another source)
            chance[has] = _dice(cond_bin, pred_bin.roll(len(has) // 2, 0))
        return adherence, chance

    def _per_class(self, syn_lab, real_lab, correct, pred_lab, adherence, chance, mem, syn_feat, real_feat) -> dict:
        """Every figure of the report per generated class; ``taken_for`` is the class's row of the confusion matrix."""
        taken = confusion_matrix(syn_lab.tolist(), pred_lab.tolist(), len(self.classes))
        out = {}
        for c, name in enumerate(self.classes):
            sel = syn_lab == c
            if not sel.any():
                continue
            out[name] = {
                "n": int(sel.sum()),
                "fidelity": float(correct[sel].float().mean()),
                "sketch_dice": _nanmean(adherence[sel]),
                "sketch_dice_chance": _nanmean(chance[sel]),
                "near_copies": int(mem["image_copy"][sel].sum()),
                "lesion_near_copies": int(mem["lesion_copy"][sel].sum()),
                "nn_ratio_median": _nanmedian(mem["image_ratio"][sel]),
                "lesion_nn_ratio_median": _nanmedian(mem["lesion_ratio"][sel]),
                "taken_for": {n: float(taken[c, k] / taken[c].sum()) for k, n in enumerate(self.classes) if taken[c, k]},
                **self._distances(syn_feat[sel], real_feat[real_lab == c]),
            }
        return out

    def _add_real_accuracy(self, report: dict, real_img, real_logits, real_lab) -> None:
        """The classifier on the real images and on their autoencoder reconstructions: per class (where the class is
        generated) and balanced over every real class."""
        recon_pred = self._run(self._reconstruct(real_img))[0].argmax(1)
        for key, pred in (("real", real_logits.argmax(1)), ("reconstruction", recon_pred)):
            rep = report_from_confusion(confusion_matrix(real_lab.tolist(), pred.tolist(), len(self.classes)))
            for c, name in enumerate(self.classes):
                if name in report["per_class"] and rep["support"][c]:
                    report["per_class"][name][f"{key}_accuracy"] = rep["recall"][c]
            report["overall"][f"{key}_balanced_accuracy"] = rep["balanced_accuracy"]

    def write(self, report: dict, out_dir: str | os.PathLike, pool: Sequence[dict], syn_img: torch.Tensor,
              syn_lab: torch.Tensor, real_img: torch.Tensor, mem: dict) -> None:
        """``audit_report.json``, ``audit_grid.png`` and, when images are flagged, ``near_copies.png``: the closest
        flagged images beside the real image and the real lesion they resemble (a previous audit's figure is removed,
        so it never outlives its flags)."""
        out = Path(out_dir)
        atomic_write_json(report, out / "audit_report.json")
        grid = {n: [syn_img[k, 0].numpy() for k in torch.nonzero(syn_lab == c).flatten()[:6].tolist()]
                for c, n in enumerate(self.classes) if (syn_lab == c).any()}
        save_sample_grid(grid, out / "audit_grid.png")
        flagged = torch.nonzero(mem["image_copy"] | mem["lesion_copy"]).flatten().tolist()
        (out / "near_copies.png").unlink(missing_ok=True)
        if flagged:
            closest = torch.fmin(mem["image_ratio"], mem["lesion_ratio"])
            rows = {}
            for k in sorted(flagged, key=lambda k: float(closest[k]))[: self.copies_shown]:
                shown = [syn_img[k, 0].numpy(), real_img[int(mem["image_nearest"][k]), 0].numpy()]
                if not torch.isnan(mem["lesion_distance"][k]):
                    shown.append(real_img[int(mem["lesion_nearest"][k]), 0].numpy())
                rows[f"{pool[k].get('id', k)} ({float(closest[k]):.2f})"] = shown
            save_near_copies(rows, out / "near_copies.png")


def _nanmean(v: torch.Tensor) -> float:
    return float(np.nanmean(v.numpy())) if not torch.isnan(v).all() else float("nan")


def _nanmedian(v: torch.Tensor) -> float:
    return float(np.nanmedian(v.numpy())) if not torch.isnan(v).all() else float("nan")


def filter_pool(
    pool: Sequence[dict],
    reports: Sequence[dict],
    classes: Sequence[str],
    path: str | os.PathLike,
    min_class_prob: float = 0.5,
    drop_near_copies: bool = True,
) -> list[dict]:
    """Drop near-copies of real images or lesions and the images that real-data classifiers do not take for their class
    (the in-distribution filter of DiffuLT, Shao et al. 2024); write the kept entries to ``path`` and return them.

    The manifest records, per class, how many images were kept and how many were dropped for each reason (an image
    may have several), and each dropped image with its reasons.

    Args:
        pool: the pool's entries, in the audit's order.
        reports: audit reports of the pool by one or more real-data classifiers (judges); an image's class probability is
            the mean over them; the near-copy flags (judge-independent) come from the first.
        classes: class names in label order.
        path: the filtered manifest (written atomically).
        min_class_prob: the least mean probability of the image's own class that keeps it.
        drop_near_copies: drop images flagged as near-copies of a real image or of a real lesion.
    """
    if not reports or any(len(r["images"]) != len(pool) for r in reports):
        raise ValueError(f"filter_pool needs audit reports of these {len(pool)} images (got {[len(r['images']) for r in reports]}).")
    if not 0.0 <= min_class_prob <= 1.0:
        raise ValueError(f"min_class_prob must be in [0, 1], got {min_class_prob}.")
    keep, dropped = [], []
    per_class = {n: {"kept": 0, "near_copy": 0, "lesion_near_copy": 0, "low_class_prob": 0} for n in classes}
    for k, item in enumerate(pool):
        first = reports[0]["images"][k]
        prob = float(np.mean([r["images"][k]["class_prob"] for r in reports]))
        reasons = [r for r, hit in (("near_copy", drop_near_copies and first["near_copy"]),
                                    ("lesion_near_copy", drop_near_copies and first.get("lesion_near_copy", False)),
                                    ("low_class_prob", prob < min_class_prob)) if hit]
        counts = per_class[classes[int(item["label"])]]
        for r in reasons:
            counts[r] += 1
        if reasons:
            dropped.append({"id": item.get("id", item["image"]), "class": classes[int(item["label"])], "class_prob": prob, "reasons": reasons})
        else:
            counts["kept"] += 1
            keep.append(item)
    record = {"min_class_prob": min_class_prob, "drop_near_copies": drop_near_copies, "judges": len(reports),
              "kept": len(keep), "dropped": len(dropped), "per_class": per_class, "dropped_images": dropped}
    write_datalist(path, {"training": keep}, classes, filtered=record)
    return keep


def audit_pool(
    auditor: PoolAuditor,
    pool: Sequence[dict],
    real: Sequence[dict],
    audit_dir: str | os.PathLike,
    filtered_manifest: str | os.PathLike | None = None,
    filter: bool = False,
    min_class_prob: float = 0.5,
) -> dict:
    """Audit ``pool`` into ``audit_dir`` and, with ``filter``, write the filtered pool to ``filtered_manifest`` (see
    :func:`filter_pool`); what the synthesis bundle's ``audit.yaml`` runs. Returns the audit report."""
    if filter and filtered_manifest is None:
        raise ValueError("audit_pool: filter=True needs a filtered_manifest path.")
    report = auditor.audit(pool, real, audit_dir)
    if filter:
        filter_pool(pool, [report], auditor.classes, filtered_manifest, min_class_prob)
    return report
