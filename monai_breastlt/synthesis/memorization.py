"""Memorisation check of a synthetic pool: the nearest real training image, and the nearest real lesion.

A latent diffusion model trained on a handful of images of a rare subtype can reproduce one of them. Two things hide
such a copy from a plain pixel comparison: the generated image has no speckle (the autoencoder smooths it away), so it
is never close to a real scan pixel by pixel; and the copied lesion may sit on another background (the sketch gives
the layers), so the whole image differs while the lesion, the patient-specific part, is the same. Both comparisons here
are therefore made on despeckled images, and the second one on lesion crops: each lesion's bounding box (from a mask,
or from the perception net's contour channel) resized to a fixed grid and normalised for brightness and contrast, so a
lesion copied to another place or scale still matches.

A synthetic image is a *near-copy* when its nearest real image is much closer to it than the real images of other
patients are: the ratio of the distance to the nearest real image to the mean distance to the ``k`` nearest real
images of other patients (the nearest one's own patient is left out, its other views being near-duplicates by nature)
falls below ``factor``, the relative-distance rule of Carlini et al., "Extracting training data from diffusion models"
(USENIX Security 2023). The rule adapts to how generic an image is: an anechoic cyst resembles many real cysts, so
its nearest one is not much nearer than the next ones, while a copied lesion is nearer to its source than to anything
else. The same rule applied to each real image against the other patients' images gives its false-alarm rate on real
data (:meth:`NearestRealCheck.baseline`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from monai_breastlt.transforms.sketch import smooth_image

__all__ = ["lesion_boxes", "NearestRealCheck"]

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive)


def lesion_boxes(maps: torch.Tensor, threshold: float = 0.5) -> list[Box | None]:
    """The bounding box of the largest connected region of each map above ``threshold``.

    Args:
        maps: ``(B, 1, H, W)`` lesion masks, or lesion-contour probabilities (the box of a closed contour is the
            lesion's box).
        threshold: binarisation threshold.

    Returns:
        one ``(y0, y1, x0, x1)`` box per map (end exclusive), ``None`` where nothing is above the threshold.
    """
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"expected lesion maps (B, 1, H, W), got {tuple(maps.shape)}.")
    boxes: list[Box | None] = []
    for m in (maps[:, 0] > threshold).cpu().numpy():
        labels, n = ndimage.label(m, structure=np.ones((3, 3)))  # 8-connected: thin contours stay in one piece
        if n == 0:
            boxes.append(None)
            continue
        largest = 1 + int(np.argmax(ndimage.sum_labels(m, labels, range(1, n + 1))))
        ys, xs = np.nonzero(labels == largest)
        boxes.append((int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1))
    return boxes


class NearestRealCheck:
    """
    Nearest real training image and nearest real lesion of every synthetic image, with near-copy flags.

    Call :meth:`fit` with the real training images once, then :meth:`query` with synthetic images.

    Args:
        factor: a relative distance (nearest real / mean of the ``k`` nearest real images of other patients) below
            this flags a near-copy.
        k: how many nearest real images of other patients make the reference distance.
        despeckle_sigma: Gaussian smoothing (pixels at 64 px; scaled with the image size) applied before comparing,
            so real speckle and its absence in generated images do not dominate the distance.
        image_grid: whole images are compared on this grid (area downsampling).
        lesion_grid: lesion crops are resized to this grid.
        lesion_margin: context added around a lesion box on each side, as a fraction of its height / width.
        search: a query's lesion box is also tried shifted by up to this many pixels in each direction (the
            perception net's box is not pixel-exact); the closest match counts.
    """

    def __init__(
        self,
        factor: float = 0.5,
        k: int = 3,
        despeckle_sigma: float = 1.0,
        image_grid: int = 32,
        lesion_grid: int = 12,
        lesion_margin: float = 0.1,
        search: int = 1,
    ) -> None:
        if not 0 < factor <= 1 or k < 1 or despeckle_sigma < 0 or image_grid < 2 or lesion_grid < 2 or lesion_margin < 0 or search < 0:
            raise ValueError(
                "need 0 < factor <= 1, k >= 1, despeckle_sigma >= 0, image_grid >= 2, lesion_grid >= 2, lesion_margin >= 0, "
                f"search >= 0; got {factor}, {k}, {despeckle_sigma}, {image_grid}, {lesion_grid}, {lesion_margin}, {search}."
            )
        self.factor, self.k, self.sigma = factor, k, despeckle_sigma
        self.image_grid, self.lesion_grid, self.margin, self.search = image_grid, lesion_grid, lesion_margin, search
        self.fitted = False

    def _despeckle(self, images: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma * images.shape[-1] / 64.0
        return smooth_image(images[:, 0].float(), sigma)[:, None] if sigma > 0 else images.float()  # images as channels

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 1, D)``: one try per image."""
        return F.adaptive_avg_pool2d(self._despeckle(images), self.image_grid).flatten(1)[:, None]

    def _crop(self, image: torch.Tensor, box: Box, dy: int = 0, dx: int = 0) -> torch.Tensor:
        """A lesion crop on the fixed grid, zero-mean and unit-norm (brightness and contrast do not count)."""
        h, w = image.shape[-2:]
        y0, y1, x0, x1 = box
        my, mx = int(round(self.margin * (y1 - y0))), int(round(self.margin * (x1 - x0)))
        y0, y1 = y0 - my + dy, y1 + my + dy
        x0, x1 = x0 - mx + dx, x1 + mx + dx
        if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
            y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
            if (dy, dx) != (0, 0):  # a shift that leaves the image is no new try
                return torch.full((self.lesion_grid**2,), float("nan"))
        c = F.interpolate(image[None, :, y0:y1, x0:x1], size=(self.lesion_grid, self.lesion_grid), mode="area").flatten()
        c = c - c.mean()
        return c / c.norm().clamp_min(1e-6)

    def _lesion_features(self, images: torch.Tensor, boxes: Sequence[Box | None], shifts: bool) -> torch.Tensor:
        """``(N, S, D)`` crops, ``S`` shifted boxes per image (NaN where an image has no lesion box)."""
        smooth = self._despeckle(images)
        r = self.search if shifts else 0
        offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
        nan = torch.full((len(offsets), self.lesion_grid**2), float("nan"))
        return torch.stack([nan if b is None else torch.stack([self._crop(img, b, dy, dx) for dy, dx in offsets]) for img, b in zip(smooth, boxes)])

    chunk = 256  # queries per distance matrix: (chunk * tries) x references floats at a time, whatever the pool size

    @staticmethod
    def _distances(query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """``(N, M)``: the distance of each query (its closest try) to each reference; ``inf`` where either is missing."""
        n, s, d = query.shape
        ref = ref[:, 0]
        dist = torch.cdist(torch.nan_to_num(query.reshape(n * s, d), nan=0.0), torch.nan_to_num(ref, nan=0.0)).reshape(n, s, -1)
        dist[torch.isnan(query).any(2)] = float("inf")  # tries that left the image, images without a lesion
        dist = dist.amin(1)
        dist[:, torch.isnan(ref).any(1)] = float("inf")
        return dist

    def _relative(self, query: torch.Tensor, ref: torch.Tensor, query_groups: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Nearest reference of each query (closest of its ``S`` tries), and the relative distance.

        Args:
            query: ``(N, S, D)``.
            ref: ``(M, 1, D)`` (NaN rows: no lesion there).
            query_groups: patient codes of the queries when they are real images themselves (their patient is left out).
        """
        dist = torch.cat([self._distances(query[b : b + self.chunk], ref) for b in range(0, len(query), self.chunk)])
        if query_groups is not None:
            dist[query_groups[:, None] == self.groups[None, :]] = float("inf")
        nearest, idx = dist.min(1)
        others = dist.masked_fill(self.groups[idx][:, None] == self.groups[None, :], float("inf"))
        k = min(self.k, others.shape[1])
        reference = others.topk(k, 1, largest=False).values
        reference = torch.where(torch.isinf(reference), torch.nan, reference).nanmean(1)  # fewer than k others: those there are
        ratio = nearest / reference
        bad = torch.isinf(nearest) | torch.isnan(ratio)  # no lesion, or no other patient to compare with
        nearest, ratio = nearest.masked_fill(bad, float("nan")), ratio.masked_fill(bad, float("nan"))
        return {"distance": nearest, "nearest": idx, "ratio": ratio, "copy": ratio < self.factor}  # NaN compares False

    def fit(self, images: torch.Tensor, lesion_maps: torch.Tensor | None = None, groups: Sequence | None = None, map_threshold: float = 0.5) -> NearestRealCheck:
        """Store the real training images' features.

        Args:
            images: real training images ``(N, 1, H, W)`` in [0, 1].
            lesion_maps: their lesion masks or contour probabilities ``(N, 1, H, W)`` (``None``: no lesion check).
            groups: patient id per image (``None``: every image its own patient).
            map_threshold: binarisation threshold of ``lesion_maps``.
        """
        groups = list(range(len(images))) if groups is None else list(groups)
        if len(groups) != len(images):
            raise ValueError(f"groups has {len(groups)} entries for {len(images)} images.")
        codes = {g: k for k, g in enumerate(dict.fromkeys(groups))}
        if len(codes) < 2:
            raise ValueError(f"the memorisation check needs real images of at least 2 patients, got {len(codes)}.")
        self.groups = torch.tensor([codes[g] for g in groups])
        self.image_ref = self._image_features(images)
        self.lesion_ref = None
        if lesion_maps is not None:
            self.lesion_ref = self._lesion_features(images, lesion_boxes(lesion_maps, map_threshold), shifts=False)
            found = ~torch.isnan(self.lesion_ref).any(2)[:, 0]
            if len(set(self.groups[found].tolist())) < 2:
                raise ValueError(f"lesions were found in {int(found.sum())} of {len(images)} real images, of fewer than 2 patients; the lesion check needs more.")
        self.fitted = True
        return self

    def baseline(self) -> dict:
        """The rule on the real images themselves, each against the other patients' images: how often it flags a real
        image (its false-alarm rate) and the median relative distance of real images."""
        if not self.fitted:
            raise RuntimeError("call fit() with the real training images first.")
        img = self._relative(self.image_ref, self.image_ref, self.groups)
        out = {"factor": self.factor, "k": self.k, "real_flagged": float(img["copy"].float().mean()), "real_median_ratio": float(img["ratio"].nanmedian())}
        if self.lesion_ref is not None:
            les = self._relative(self.lesion_ref, self.lesion_ref, self.groups)
            found = ~torch.isnan(les["ratio"])
            out.update(real_lesions_found=float(found.float().mean()), real_lesions_flagged=float(les["copy"][found].float().mean()),
                       real_lesion_median_ratio=float(les["ratio"][found].median()))
        return out

    def query(self, images: torch.Tensor, lesion_maps: torch.Tensor | None = None, map_threshold: float = 0.5) -> dict[str, torch.Tensor]:
        """Nearest real image (and lesion) of each image.

        Args:
            images: synthetic images ``(M, 1, H, W)`` in [0, 1], the size of the real ones.
            lesion_maps: their lesion masks or contour probabilities (needed for the lesion check).
            map_threshold: binarisation threshold of ``lesion_maps``.

        Returns:
            ``image_distance``, ``image_nearest`` (index into the real images), ``image_ratio`` (relative distance),
            ``image_copy`` (bool); with lesions, the same four with ``lesion_`` (NaN and ``False`` where no lesion
            was found).
        """
        if not self.fitted:
            raise RuntimeError("call fit() with the real training images first.")
        out = {f"image_{k}": v for k, v in self._relative(self._image_features(images), self.image_ref).items()}
        if self.lesion_ref is not None and lesion_maps is not None:
            q = self._lesion_features(images, lesion_boxes(lesion_maps, map_threshold), shifts=True)
            out.update({f"lesion_{k}": v for k, v in self._relative(q, self.lesion_ref).items()})
        return out
