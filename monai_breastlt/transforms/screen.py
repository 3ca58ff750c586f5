"""What a scanner adds around and onto the ultrasound image: the screen's UI outside the scan area, and overlays (calipers,
annotation text, coloured marks) burnt into it. Transforms to crop the one and find and mask the other, and the scan
checks that ``data-info`` runs first (colour Doppler, split-screen dual views, near-blank frames)."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.data.meta_tensor import MetaTensor
from monai.transforms import MapTransform, SpatialCrop, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor
from scipy import ndimage

__all__ = [
    "OVERLAY_KEY",
    "scan_area_box",
    "CropScanArea",
    "CropScanAread",
    "CropScanAreaD",
    "CropScanAreaDict",
    "DetectOverlays",
    "MaskOverlays",
    "MaskOverlaysd",
    "MaskOverlaysD",
    "MaskOverlaysDict",
    "inpaint",
    "scan_flags",
]

logger = logging.getLogger(__name__)

OVERLAY_KEY = "overlay"  # the item field that MaskOverlaysd writes the overlay mask to


def _grey_and_colour(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(C, H, W)`` -> grey ``(H, W)`` in [0, 1] of the image's own maximum, and the saturation ``(H, W)`` of a colour
    image (``None`` for grey; channel max minus min over max, 0 for grey pixels)."""
    x = img.float()
    top = x.amax().clamp_min(1e-6)
    if x.shape[0] < 3:
        return x[0] / top, None
    rgb = x[:3] / top
    hi, lo = rgb.amax(0), rgb.amin(0)
    return rgb.mean(0), (hi - lo) / hi.clamp_min(1e-3)


def _box_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over a ``size`` x ``size`` window (same shape, edges averaged over the window's inside part)."""
    return F.avg_pool2d(x[None, None], size | 1, 1, size // 2, count_include_pad=False)[0, 0]


def scan_area_box(img: NdarrayOrTensor, threshold: float = 0.06, density: float = 0.6, window: float = 0.04) -> tuple[int, int, int, int] | None:
    """The bounding box ``(top, left, bottom, right)`` (end exclusive) of the ultrasound image region of a screen.

    Speckle fills the scan area (sector or linear) densely with non-black pixels; the screen around it is black with
    sparse text and icons. Pixels brighter than ``threshold`` are counted in a window of ``window`` times the image
    side; the bounding box of the largest connected region where they are denser than ``density`` is the scan area
    (dark holes inside it, anechoic lesions, do not matter; its edge falls about half a window inside the scan's).

    Args:
        img: a channel-first image.
        threshold: the relative intensity above black that counts as signal.
        density: the least share of signal pixels in a window inside the scan area.
        window: the window side as a fraction of the image's shorter side.

    Returns:
        the box, or ``None`` when no region is found.
    """
    grey, _ = _grey_and_colour(convert_to_tensor(img, track_meta=False))
    size = max(3, int(window * min(grey.shape)) | 1)
    dense = (_box_mean((grey > threshold).float(), size) >= density).numpy()
    labels, n = ndimage.label(dense)
    if n == 0:
        return None
    largest = 1 + int(np.argmax(ndimage.sum_labels(dense, labels, index=np.arange(1, n + 1))))
    rows, cols = np.nonzero(labels == largest)
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


class CropScanArea(Transform):
    """
    Crop a scanner screen to the ultrasound image region (sector or linear), dropping the UI around it.

    The region is found by :func:`scan_area_box`; when it covers less than ``min_area`` of the image (a blank frame,
    an unusual layout) the manual ``box`` is used, and without one the image is returned whole (logged once).

    Args:
        box: the manual scan area ``(top, left, bottom, right)`` in pixels, used when detection fails.
        detect: find the region; ``False``: always crop to ``box``.
        min_area: the least share of the image a detected region must cover.
        threshold, density, window: see :func:`scan_area_box`.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, box: Sequence[int] | None = None, detect: bool = True, min_area: float = 0.15,
                 threshold: float = 0.06, density: float = 0.6, window: float = 0.04) -> None:
        if box is not None and (len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]):
            raise ValueError(f"box must be (top, left, bottom, right) with bottom > top and right > left, got {box}.")
        if not detect and box is None:
            raise ValueError("CropScanArea needs a box when detect is False.")
        self.box = tuple(int(b) for b in box) if box is not None else None
        self.detect, self.min_area = detect, min_area
        self.settings = {"threshold": threshold, "density": density, "window": window}
        self._warned = False

    def find_box(self, img: NdarrayOrTensor) -> tuple[int, int, int, int] | None:
        """The crop box of ``img`` (detected, else the manual one), or ``None`` for no crop."""
        h, w = img.shape[-2:]
        if self.detect:
            found = scan_area_box(img, **self.settings)
            if found is not None and (found[2] - found[0]) * (found[3] - found[1]) >= self.min_area * h * w:
                return found
        if self.box is None and not self._warned:
            logger.warning("%s: no scan area found; the image is kept whole (give a manual box for this layout).",
                           getattr(img, "meta", {}).get("filename_or_obj", "<image>"))
            self._warned = True
        return self.box

    def __call__(self, img: NdarrayOrTensor, box: Sequence[int] | None = None) -> NdarrayOrTensor:
        """Crop ``img`` to ``box`` (default: :meth:`find_box`)."""
        box = self.find_box(img) if box is None else box
        if box is None:
            return img
        return SpatialCrop(roi_start=box[:2], roi_end=box[2:])(img)


class CropScanAread(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`CropScanArea`: the box is found on ``source_key`` and every key is cropped
    to it (the lesion mask with its image); the box is recorded under ``box_key``.

    Args:
        keys: the keys to crop.
        source_key: the image the scan area is found on.
        box_key: the item field the box ``(top, left, bottom, right)`` is written to (``None``: not recorded).
        allow_missing_keys: don't raise if a key is missing.
        kwargs: :py:class:`CropScanArea`'s settings.
    """

    backend = CropScanArea.backend

    def __init__(self, keys: KeysCollection, source_key: str = "image", box_key: str | None = "scan_box",
                 allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.source_key, self.box_key = source_key, box_key
        self.cropper = CropScanArea(**kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        box = self.cropper.find_box(d[self.source_key])
        if box is None:
            return d
        for key in self.key_iterator(d):
            d[key] = self.cropper(d[key], box)
        if self.box_key is not None:
            d[self.box_key] = list(box)
        return d


STROKE, TALL, CROSS = 0, 1, 2  # the kinds of candidate points of DetectOverlays
# Hot-path note: marks are looked for in every image a pipeline loads, so the code below sticks to ufuncs, their
# reduce methods and indexing: numpy's Python-level wrappers (ndarray.max/sum/any, np.clip, np.unique) and scipy's
# label each cost more, run once per image between other transforms, than the arithmetic itself.
_max, _add, _all, _any = np.maximum.reduce, np.add.reduce, np.logical_and.reduce, np.logical_or.reduce


def _side_max(g: np.ndarray, d: int, edge: int) -> np.ndarray:
    """The brighter of the two pixels ``d`` columns left and right of each pixel of a contiguous image; infinite in
    the ``edge`` columns at the left and right edges (no stroke is found there). Computed on the flattened image,
    which is faster; the pixels that wrap around a row end are edge ones."""
    h, w = g.shape
    side = np.empty(h * w, g.dtype)
    gf = g.ravel()
    np.maximum(gf[: -2 * d], gf[2 * d :], out=side[d:-d])
    side = side.reshape(h, w)
    side[:, :edge] = side[:, w - edge :] = np.inf
    return side


@functools.lru_cache(maxsize=16)
def _cross_offsets(d: int, w: int) -> np.ndarray:
    """Flat offsets ``(arm pixels, 3)`` from a + centre of its arm pixels (but the left one, tested first, and the
    upper arm) and of their two neighbours ``d`` away across the arm, in an image ``w`` wide."""
    out = []
    for dy, dx in ((0, d), (0, -d - 1), (0, d + 1), (d, 0), (d + 1, 0)):
        across = ((-d, 0), (d, 0)) if dy == 0 else ((0, -d), (0, d))
        out.append([dy * w + dx] + [(dy + ay) * w + dx + ax for ay, ax in across])
    return np.array(out)


def _crosses(g: np.ndarray, tops: np.ndarray, contrast: float, d: int) -> np.ndarray:
    """The centres (flat indices) of ``+`` marks among the points ``d + 1`` rows below the tops (flat indices) of
    vertical strokes two pixels high (the upper arm, ``d + 1`` and ``d`` pixels above the centre): the arms below,
    left and right of the centre are thin strokes too, at ``d`` and ``d + 1`` pixels from it, each arm pixel brighter
    by ``contrast`` than the brighter of its two neighbours ``d`` pixels away across the arm. One arm pixel is tested
    on every point, the others in one gather on the few points left. The tops are at least ``2 * d + 2`` columns from
    the left and right edges; centres closer than that to the top and bottom edges are not tested."""
    h, w = g.shape
    m = 2 * d + 2
    flat = tops + (d + 1) * w
    flat = flat[(flat >= m * w) & (flat < (h - m) * w)]
    gf = g.ravel()
    left = flat - d
    flat = flat[gf[left] - np.maximum(gf[left - d * w], gf[left + d * w]) > contrast]
    v = gf[flat[:, None, None] + _cross_offsets(d, w)[None]]
    return flat[_all(v[..., 0] - np.maximum(v[..., 1], v[..., 2]) > contrast, axis=1)]


def _grow(m: np.ndarray) -> np.ndarray:
    """Binary dilation by one pixel, diagonals included (anti-aliased glyph edges), by shifted ORs."""
    out = m.copy()
    out[1:] |= m[:-1]
    out[:-1] |= m[1:]
    row = out.copy()
    out[:, 1:] |= row[:, :-1]
    out[:, :-1] |= row[:, 1:]
    return out


Box = tuple[int, int, int, int]  # (top, bottom, left, right)


def _grow_in(m: np.ndarray, boxes: list[Box]) -> tuple[np.ndarray, list[Box]]:
    """:func:`_grow` of a mask whose pixels all lie in ``boxes`` ``(top, bottom, left, right)``, computed on the
    region that holds them only (marks cover little of an image), and the boxes grown by one pixel."""
    h, w = m.shape
    boxes = [(max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)) for y0, y1, x0, x1 in boxes]
    y0, y1 = min(b[0] for b in boxes), max(b[1] for b in boxes)
    x0, x1 = min(b[2] for b in boxes), max(b[3] for b in boxes)
    out = m.copy()
    out[y0:y1, x0:x1] = _grow(m[y0:y1, x0:x1])  # nothing to grow beyond the grown boxes
    return out, boxes


def _run_ids(index: np.ndarray, gap: int) -> np.ndarray:
    """For sorted indices, the number of the run each belongs to (runs: steps of at most ``gap``)."""
    ids = np.zeros(len(index), np.intp)
    ids[1:] = np.add.accumulate(index[1:] - index[:-1] > gap)
    return ids


def _dotted_line(g: np.ndarray, a: tuple[int, int], b: tuple[int, int], d: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The share of the points between ``a`` and ``b`` (4 pixels off each end) that are brighter than both pixels
    ``d`` away across the line, on the best of the lines shifted by -1, 0 and 1 pixel across; and that line's pixels
    (all of it in the image)."""
    h, w = g.shape
    (ya, xa), (yb, xb) = a, b
    length = math.hypot(yb - ya, xb - xa)
    t = np.arange(4, max(int(length) - 3, 5)) / length
    # rows and columns of every point, (2, shift, sample, points): samples on the line and d pixels to either side
    start, step = np.array([ya, xa], np.float64), np.array([yb - ya, xb - xa], np.float64)
    normal = np.array([xb - xa, ya - yb], np.float64) / length
    across = np.array([-1, 0, 1])[:, None, None] + np.array([0, d, -d])[None, :, None]  # (shift, sample, 1)
    p = np.rint((start[:, None, None, None] + t * step[:, None, None, None]) + across * normal[:, None, None, None])
    for axis, size in enumerate((h, w)):  # ufuncs in place, not np.clip (the hot-path note above)
        np.minimum(np.maximum(p[axis], 0, out=p[axis]), size - 1, out=p[axis])
    py, px = p.astype(np.intp)
    v = g.ravel()[py * w + px]
    shares = _add(v[:, 0] > np.maximum(v[:, 1], v[:, 2]), axis=1) / len(t)
    best = int(shares.argmax())
    return float(shares[best]), py[best, 0], px[best, 0]


class DetectOverlays(Transform):
    """
    Find what a scanner burns into an ultrasound image: calipers (``+`` marks and the dotted lines between them),
    annotation text and coloured marks (saturated colour on a grey scan).

    Public scans are often resampled after the marks were burnt in, so the marks are blurred below the display's
    white, and bright tissue (specular lines, cyst walls) can be as bright. What sets a mark apart at these
    resolutions is its shape: thin strokes that stand out from a smooth neighbourhood, and among them vertical ones,
    which tissue seldom makes (ultrasound blurs structures sideways, so bright tissue runs horizontally). So:

    - candidates are *vertical strokes*: pixels brighter by ``contrast`` than both pixels ``width // 2 + 1`` columns
      to their left and right (or at white, ``white``, between pixels that are not), over ``height`` rows or more,
      and the centres of ``+`` marks (thin arms up, down, left and right, brighter by ``cross_contrast``);
    - candidates in touching cells of 8 pixels form a group (a caliper with its number, a word);
    - a group is a mark when it holds a ``+`` or a stroke ``min_stroke`` pixels tall, or three candidates or more (two
      at white) in different columns (glyphs); when it stands out from its box (its extent, ``min_stroke`` pixels
      below, and 4 pixels around) by ``group_contrast`` (the candidates' mean over the box mean; half of it for a
      ``+`` or at white); and when its bright pixels (brighter than the midpoint of the two means; at white: at
      white) cover at most ``dense`` of the box (more is a blob or band of tissue);
    - the mark is those bright pixels; marks on the same rows less than 4 cells apart are a line of text, and the
      bright pixels between them belong to it; two ``+`` marks joined by a dotted line (at least ``dotted`` of the
      points between them brighter than the pixels beside the line) get the line too.

    Coloured marks are pixels whose saturation exceeds ``saturation``, as long as they cover less than ``max_colour``
    of the image (more is a colour Doppler or tinted scan, which :func:`scan_flags` reports, not a mark); a scan
    stored as three equal channels is grey. Contrasts are relative to the image maximum. Most images hold few
    candidates: after one pass over the image, everything runs on candidate coordinates and small boxes.

    Args:
        contrast: the least brightness of a stroke over the pixels on its both sides (relative intensity).
        white: strokes at the display's white: at least this (relative) between pixels that are not; ``None``: off.
        width: the widest vertical stroke in pixels.
        height: the least height of a vertical stroke in pixels.
        min_stroke: the height of a stroke that is a mark on its own (a caliper's arm, a letter's stem).
        cross_contrast: the least brightness of a ``+`` mark's arms over the pixels beside them.
        group_contrast: the least difference between a mark's mean and its box's mean.
        dense: the largest share of its box that a mark's bright pixels cover.
        dotted: the least share of bright points on the line between two ``+`` marks that makes it a dotted line;
            ``None``: no dotted lines.
        saturation: the least saturation ``(max - min) / max`` over the colour channels of a coloured mark.
        max_colour: the largest image share of coloured pixels that are treated as marks.
        dilate: grow the mask by this many pixels, diagonals included (anti-aliased glyph edges).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    cell = 8  # candidates in touching cells of this side (pixels) are one group
    pad = 4  # a mark's box reaches this many pixels around its candidates

    def __init__(self, contrast: float = 0.12, white: float | None = 0.98, width: int = 3, height: int = 3,
                 min_stroke: int = 5, cross_contrast: float = 0.08, group_contrast: float = 0.2, dense: float = 0.3,
                 dotted: float | None = 0.8, saturation: float = 0.35, max_colour: float = 0.05, dilate: int = 1) -> None:
        if width < 1 or not 3 <= height <= min_stroke:
            raise ValueError(f"width must be at least 1 and 3 <= height <= min_stroke, got {width}, {height}, {min_stroke}.")
        self.contrast, self.white, self.side = contrast, white, width // 2 + 1
        self.height, self.min_stroke, self.cross_contrast = height, min_stroke, cross_contrast
        self.group_contrast, self.dense, self.dotted = group_contrast, dense, dotted
        self.saturation, self.max_colour, self.dilate = saturation, max_colour, dilate

    def _candidates(self, g: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Vertical stroke points (the top of each ``height`` run) and ``+`` centres: ``(ys, xs, kind)``, kind one of
        ``STROKE``, ``TALL`` (``min_stroke`` high) and ``CROSS``; ``None`` when no group of them can be a mark (the
        common case). One pass over the image finds the strokes two pixels high; the rest runs on their coordinates."""
        h, w = g.shape
        d = self.side
        # none within 2 d + 2 columns of the left and right edges: frames and cut borders are not marks
        side = _side_max(g, d, 2 * d + 2)
        stroke = g > side + self.contrast * top
        if self.white is not None:
            stroke |= (g >= self.white * top) & (side < self.white * top)
        tops = (stroke[:-1] & stroke[1:]).ravel().nonzero()[0]  # the tops (flat) of strokes two pixels high
        below = stroke.ravel()[np.minimum(tops[:, None] + w * np.arange(2, self.min_stroke), h * w - 1)]
        run, tall = _all(below[:, : self.height - 2], axis=1), _all(below, axis=1)  # height, min_stroke pixels high
        crosses = _crosses(g, tops[~tall], self.cross_contrast * top, d)  # a tall stroke is a mark already
        if len(crosses) == 0 and not _any(tall) and np.count_nonzero(run) < 2:
            return None
        ys, xs = np.divmod(np.concatenate((tops[run], crosses)), w)
        return ys, xs, np.concatenate((tall[run].astype(np.int8), np.zeros(len(crosses), np.int8) + CROSS))

    def _groups(self, g: np.ndarray, top: float, ys: np.ndarray, xs: np.ndarray, kind: np.ndarray) -> list[tuple]:
        """The groups of candidates (touching cells: runs of occupied cell rows, then runs of occupied columns in
        them) with the evidence of a mark, each ``(top, bottom, left, right, level, what, centre)``: its candidates'
        extent and mean, ``CROSS`` if it holds a +, ``TALL`` if at white, else ``STROKE``, and its + centre."""
        c = self.cell
        cy, cx = ys // c, xs // c
        ncol = g.shape[1] // c + 3  # spare columns: keys of two bands are never one column apart
        occupied = np.zeros(g.shape[0] // c + 1, bool)
        occupied[cy] = True
        rows = occupied.nonzero()[0]
        band = np.zeros(len(occupied), np.intp)
        band[rows] = _run_ids(rows, 1)
        key = band[cy] * ncol + cx
        cells = np.zeros((int(band[rows[-1]]) + 1) * ncol, bool)
        cells[key] = True
        keys = cells.nonzero()[0]
        lookup = np.zeros(len(cells), np.intp)
        lookup[keys] = _run_ids(keys, 1)
        group = lookup[key]
        n = int(lookup[keys[-1]]) + 1
        count, is_cross = np.bincount(group, minlength=n), kind == CROSS
        level = np.bincount(group, weights=g[ys, xs], minlength=n) / count
        crosses = np.bincount(group, weights=is_cross, minlength=n)
        centre_y = np.bincount(group, weights=ys * is_cross, minlength=n) / np.maximum(crosses, 1)
        centre_x = np.bincount(group, weights=xs * is_cross, minlength=n) / np.maximum(crosses, 1)
        extent = np.zeros((4, n), np.intp)
        extent[0], extent[2] = g.shape
        np.minimum.at(extent[0], group, ys)
        np.maximum.at(extent[1], group, ys)
        np.minimum.at(extent[2], group, xs)
        np.maximum.at(extent[3], group, xs)
        at_white = level >= (self.white if self.white is not None else np.inf) * top
        strong = np.bincount(group, weights=kind != STROKE, minlength=n) > 0
        glyphs = (count >= np.where(at_white, 2, 3)) & (extent[3] - extent[2] >= 2)
        what = np.where(crosses > 0, CROSS, np.where(at_white, TALL, STROKE))
        keep = (strong | glyphs).nonzero()[0]
        return list(zip(*extent[:, keep].tolist(), level[keep].tolist(), what[keep].tolist(),
                        zip(centre_y[keep].astype(int).tolist(), centre_x[keep].astype(int).tolist())))

    def marks(self, g: np.ndarray) -> list[tuple[int, int, int, int, np.ndarray]]:
        """The marks of a contiguous grey image ``(H, W)``, each ``(top, bottom, left, right, pixels)``: a box and the
        mark's pixels in it (the steps of the class docstring; not grown by ``dilate``)."""
        h, w = g.shape
        top = float(_max(g, axis=None))
        if top <= 0 or min(h, w) < 6 * self.side + 2 * self.pad:
            return []
        found = self._candidates(g, top)
        if found is None:
            return []
        white = self.white * top if self.white is not None else np.inf
        marks, centres = [], []
        for y0, y1, x0, x1, level, what, centre in self._groups(g, top, *found):
            y0, y1 = max(y0 - self.pad, 0), min(y1 + self.min_stroke + self.pad, h)
            x0, x1 = max(x0 - self.pad, 0), min(x1 + 1 + self.pad, w)
            box = g[y0:y1, x0:x1]
            mean = float(_add(box, axis=None)) / box.size
            # + marks are marks by their shape, strokes at white by their colour: they need less contrast
            if level - mean < (1.0 if what == STROKE else 0.5) * self.group_contrast * top:
                continue
            threshold = white if level >= white else 0.5 * (level + mean)
            bright = box >= threshold
            if np.count_nonzero(bright) > self.dense * bright.size:  # a blob or band of tissue, not strokes
                continue
            marks.append([y0, y1, x0, x1, threshold, bright])
            if what == CROSS:
                centres.append(centre)
        return [(y0, y1, x0, x1, m) for y0, y1, x0, x1, _, m in marks + self._gaps(g, marks) + self._dotted_lines(g, centres)]

    def _gaps(self, g: np.ndarray, marks: list[list]) -> list[list]:
        """The bright pixels between marks on the same rows (overlapping by half the lower one) less than 4 cells
        apart: the letters of a line of text between those found (the lower threshold of the two)."""
        out = []
        marks = sorted(marks, key=lambda m: m[2])
        for i, a in enumerate(marks):
            for b in marks[i + 1 :]:
                if b[2] - a[3] >= 4 * self.cell:
                    break
                y0, y1 = max(a[0], b[0]), min(a[1], b[1])
                if b[2] > a[3] and y1 - y0 >= 0.5 * min(a[1] - a[0], b[1] - b[0]):
                    y0, y1 = min(a[0], b[0]), max(a[1], b[1])
                    out.append([y0, y1, a[3], b[2], None, g[y0:y1, a[3] : b[2]] >= min(a[4], b[4])])
                    break
        return out

    def _dotted_lines(self, g: np.ndarray, centres: list[tuple[int, int]]) -> list[list]:
        """The dotted lines between pairs of + marks at least 3 cells apart, as marks ``[top, bottom, left, right,
        None, pixels]``."""
        out = []
        h, w = g.shape
        for i, a in enumerate(centres if self.dotted is not None else []):
            for b in centres[i + 1 :]:
                if (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 >= (3 * self.cell) ** 2:
                    share, py, px = _dotted_line(g, a, b, self.side)
                    if share >= self.dotted:
                        y0, x0 = max(int(py.min()) - 1, 0), max(int(px.min()) - 1, 0)
                        m = np.zeros((min(int(py.max()) + 2, h) - y0, min(int(px.max()) + 2, w) - x0), bool)
                        m[py - y0, px - x0] = True
                        out.append([y0, y0 + m.shape[0], x0, x0 + m.shape[1], None, m])
        return out

    def find(self, img: NdarrayOrTensor) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
        """The overlay mask ``(H, W)`` (bool numpy) of a channel-first image, grown by ``dilate``, and the boxes
        ``(top, bottom, left, right)`` holding its marks (for :func:`inpaint`)."""
        x = convert_to_tensor(img, track_meta=False)
        x = x if x.dtype == torch.float32 else x.float()
        # grey scans saved as RGB (three equal channels) are grey: no averaging, no colour marks to look for
        colour = x.shape[0] >= 3 and not (torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]))
        g = np.ascontiguousarray((x[:3].mean(0) if colour else x[0]).numpy())
        mask = np.zeros(g.shape, bool)
        boxes = []
        for y0, y1, x0, x1, m in self.marks(g):
            mask[y0:y1, x0:x1] |= m
            boxes.append((y0, y1, x0, x1))
        if colour:
            _, sat = _grey_and_colour(x)
            marks = ((sat >= self.saturation) & (x[:3].amax(0) >= 0.2 * x.amax())).numpy()
            n = np.count_nonzero(marks)
            if 0 < n <= self.max_colour * marks.size:
                mask |= marks
                rows, cols = _bbox(marks)
                boxes.append((rows.start, rows.stop, cols.start, cols.stop))
        for _ in range(self.dilate if boxes else 0):
            mask, boxes = _grow_in(mask, boxes)
        return mask, boxes

    def mask(self, img: NdarrayOrTensor) -> np.ndarray:
        """The overlay mask ``(H, W)`` (bool numpy) of a channel-first image."""
        return self.find(img)[0]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """The overlay mask ``(1, H, W)`` (bool) of a channel-first image."""
        return convert_to_dst_type(torch.from_numpy(self.mask(img))[None], img, dtype=torch.bool)[0]


def _bbox(mask: np.ndarray) -> tuple[slice, slice]:
    rows, cols = _any(mask, axis=1).nonzero()[0], _any(mask, axis=0).nonzero()[0]
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def _mark_boxes(m: np.ndarray, margin: int) -> list[tuple[int, int, int, int]]:
    """Boxes ``(top, bottom, left, right)`` around the clusters of a mask (runs of rows, then of columns, less than
    ``2 * margin + 1`` apart), widened by ``margin`` pixels."""
    h, w = m.shape
    gap, boxes = 2 * margin + 1, []
    rows = _any(m, axis=1).nonzero()[0]
    for band in np.split(rows, (_run_ids(rows, gap)[1:] != _run_ids(rows, gap)[:-1]).nonzero()[0] + 1) if len(rows) else []:
        y0, y1 = max(int(band[0]) - margin, 0), min(int(band[-1]) + margin + 1, h)
        cols = _any(m[y0:y1], axis=0).nonzero()[0]
        for run in np.split(cols, (cols[1:] - cols[:-1] > gap).nonzero()[0] + 1):
            boxes.append((y0, y1, max(int(run[0]) - margin, 0), min(int(run[-1]) + margin + 1, w)))
    return boxes


def _clean_neighbour(m: np.ndarray, box: Box, marks: np.ndarray) -> tuple[int, int] | None:
    """The top-left corner of the nearest box of the same size beside ``box`` (left or right first: the same depth,
    so the same attenuation; then above or below), inside the image, whose pixels at ``marks`` are not masked."""
    h, w = m.shape
    y0, y1, x0, x1 = box
    bh, bw = y1 - y0, x1 - x0
    for sy, sx in ((y0, x0 - bw), (y0, x1), (y0 - bh, x0), (y1, x0)):
        if 0 <= sy <= h - bh and 0 <= sx <= w - bw and not _any(m[sy : sy + bh, sx : sx + bw][marks], axis=None):
            return sy, sx
    return None


def inpaint(img: NdarrayOrTensor, mask: NdarrayOrTensor, margin: int = 3,
            boxes: Sequence[tuple[int, int, int, int]] | None = None) -> NdarrayOrTensor:
    """Fill the masked pixels of a channel-first image with the tissue beside them.

    Marks are small and few. In each box around a cluster of them, the masked pixels take the pixels at the same
    places in the nearest box of the same size beside it whose pixels there are not masked (left or right first,
    then above or below), so the fill has the speckle of the tissue around rather than one flat value. Where no such
    box fits, they take the mean of the box's unmasked pixels (per channel; of all unmasked pixels for a box that has
    none). No fill is the tissue that was under a mark: where marks follow the class (calipers on the lesion's
    border), a classifier can still learn where they were (docs/shortcuts.md in the repository).

    Args:
        img: ``(C, H, W)``.
        mask: ``(1, H, W)`` or ``(H, W)``, true where pixels are replaced.
        margin: how far beyond the marks the boxes reach, in pixels, when they are found here.
        boxes: the boxes ``(top, bottom, left, right)``, as :meth:`DetectOverlays.find` gives them; ``None``: the
            clusters of the mask (runs of rows, then of columns, less than ``2 * margin + 1`` apart), widened by
            ``margin``.
    """
    m = mask if isinstance(mask, np.ndarray) else convert_to_tensor(mask, track_meta=False).numpy()
    m = m.astype(bool, copy=False).reshape(m.shape[-2:])
    if boxes is None:
        boxes = _mark_boxes(m, margin)
    if not boxes:  # the common case: nothing to fill, no copy
        return img
    if _all(m, axis=None):
        raise ValueError("inpaint: the mask covers the whole image; nothing to fill it from.")
    x = np.array(convert_to_tensor(img, track_meta=False).numpy(), dtype=np.float32)  # a copy, filled in place
    for y0, y1, x0, x1 in boxes:
        box, marks = x[:, y0:y1, x0:x1], m[y0:y1, x0:x1]
        source = _clean_neighbour(m, (y0, y1, x0, x1), marks)
        if source is not None:
            sy, sx = source
            box[:, marks] = x[:, sy : sy + y1 - y0, sx : sx + x1 - x0][:, marks]
            continue
        known = box[:, ~marks]
        if known.shape[1] == 0:
            known = x[:, ~m]
        box[:, marks] = (_add(known, axis=1) / known.shape[1])[:, None]
    if isinstance(img, MetaTensor):
        return _with_meta_of(torch.from_numpy(x), img)
    return convert_to_dst_type(torch.from_numpy(x), img, dtype=torch.float32)[0]


def _with_meta_of(x: torch.Tensor, img: MetaTensor) -> MetaTensor:
    """``x`` as a MetaTensor with a shallow copy of ``img``'s metadata and operations. The ``MetaTensor``
    constructor and ``convert_to_dst_type`` rebuild the affine and deep-copy, which costs more than the inpainting."""
    out = x.as_subclass(MetaTensor)
    out.copy_meta_from(img, copy_attr=False)
    out.meta, out.applied_operations = dict(img.meta), list(img.applied_operations)
    return out


class MaskOverlays(Transform):
    """
    Remove scanner overlays (:py:class:`DetectOverlays`) from a channel-first image: ``"inpaint"`` fills them from
    the pixels around (:func:`inpaint`), ``"zero"`` blacks them out.

    Args:
        mode: ``"inpaint"`` or ``"zero"``.
        margin: how far the inpainting boxes reach beyond the marks, in pixels (see :func:`inpaint`).
        kwargs: :py:class:`DetectOverlays`' settings.
    """

    backend = DetectOverlays.backend

    def __init__(self, mode: str = "inpaint", margin: int = 3, **kwargs) -> None:
        if mode not in ("inpaint", "zero"):
            raise ValueError(f"mode must be 'inpaint' or 'zero', got '{mode}'.")
        self.mode, self.margin = mode, margin
        self.detector = DetectOverlays(**kwargs)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None,
                 boxes: Sequence[tuple[int, int, int, int]] | None = None) -> NdarrayOrTensor:
        """The image without overlays; ``mask`` (default: detected, with its boxes) marks them."""
        if mask is None:
            mask, boxes = self.detector.find(img)
        if self.mode == "inpaint":
            return inpaint(img, mask, self.margin, boxes)
        out = convert_to_tensor(img, track_meta=get_track_meta()).clone()
        out[:, convert_to_tensor(mask, track_meta=False).bool().reshape(out.shape[-2:])] = 0
        return out


class MaskOverlaysd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`MaskOverlays`: the overlays of each key are masked and their mask is written
    to ``overlay_key`` (``(1, H, W)``, float 0/1, a plain tensor), for the shortcut audit and the perception net.

    Args:
        keys: the image keys.
        overlay_key: the item field of the overlay mask (with several keys: ``{key}_{overlay_key}``).
        mode: ``"inpaint"``, ``"zero"``, or ``"detect"`` (write the mask, leave the image as it is).
        mask_size: the spatial size the mask is written at (nearest neighbour), e.g. the pipeline's output size, so
            that no resizing transform has to follow for it; ``None``: the image's size.
        allow_missing_keys: don't raise if a key is missing.
        kwargs: :py:class:`MaskOverlays`' and :py:class:`DetectOverlays`' settings.
    """

    backend = MaskOverlays.backend

    def __init__(self, keys: KeysCollection, overlay_key: str = OVERLAY_KEY, mode: str = "inpaint",
                 mask_size: Sequence[int] | None = None, allow_missing_keys: bool = False, **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.overlay_key, self.mode = overlay_key, mode
        self.mask_size = tuple(mask_size) if mask_size is not None else None
        self.masker = MaskOverlays("inpaint" if mode == "detect" else mode, **kwargs)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        for key in keys:
            mask, boxes = self.masker.detector.find(d[key])
            if self.mode != "detect" and boxes:
                d[key] = self.masker(d[key], mask, boxes)
            out_key = self.overlay_key if len(keys) == 1 else f"{key}_{self.overlay_key}"
            size = self.mask_size or mask.shape
            if not boxes:  # the common case: no mark, nothing to resize
                out = torch.zeros(1, *size)
            else:
                out = torch.from_numpy(mask.astype(np.float32))[None]
                if tuple(out.shape[1:]) != tuple(size):
                    out = F.interpolate(out[None], size=size, mode="nearest")[0]
            d[out_key] = out
        return d


CropScanAreaD = CropScanAreaDict = CropScanAread
MaskOverlaysD = MaskOverlaysDict = MaskOverlaysd


def scan_flags(img: NdarrayOrTensor, colour_share: float = 0.02, blank_share: float = 0.1, gap_share: float = 0.05,
               side_share: float = 0.3, threshold: float = 0.06) -> dict[str, bool | float]:
    """Checks of one channel-first frame, as a scan filter runs them before training (BUSClean does likewise).

    - ``colour``: colour Doppler or a colour-mapped frame: saturated colour covers at least ``colour_share``;
    - ``split_screen``: a dual view: a dark column gap in the middle third (at most ``gap_share`` of its rows carry
      signal) with signal on both sides (each at least ``side_share`` on average);
    - ``blank``: near-blank: less than ``blank_share`` of the pixels carry signal, or the frame is flat.

    Signal is intensity above ``threshold`` of the frame maximum.

    Returns:
        the three flags and the measures behind them (``colour_share``, ``signal_share``).
    """
    x = convert_to_tensor(img, track_meta=False).float()
    grey, sat = _grey_and_colour(x)
    signal = grey > threshold
    colour = 0.0 if sat is None else float(((sat >= 0.35) & (x[:3].amax(0) >= 0.2 * x.amax())).float().mean())
    share = float(signal.float().mean())
    flat = float(grey.std()) < 0.02 or float(x.amax()) <= 0
    cols = signal.float().mean(0)
    w = len(cols)
    middle = cols[w // 3 : 2 * w // 3]
    left, right = cols[: w // 3], cols[2 * w // 3 :]
    split = bool((middle <= gap_share).any()) and float(left.mean()) >= side_share and float(right.mean()) >= side_share
    return {"colour": colour >= colour_share, "split_screen": split, "blank": share < blank_share or flat,
            "colour_share": colour, "signal_share": share}
