"""What a scanner adds around and onto the ultrasound image: the screen's UI outside the scan area, and overlays (calipers,
annotation text, coloured marks) burnt into it. Transforms to crop the one and find and mask the other, and the scan
checks that ``data-info`` runs first (colour Doppler, split-screen dual views, near-blank frames)."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
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
_AROUND = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)  # the 8-neighbourhood
_OFFSETS = np.array([(0, 0), *_AROUND])


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


class DetectOverlays(Transform):
    """
    Find what a scanner burns into an ultrasound image: calipers, dotted measurement lines, annotation text (thin glyphs
    at the display's maximum brightness) and coloured marks (saturated colour on a grey scan).

    Glyphs are 8-connected groups of pixels within ``bright`` of the image maximum that are large and long enough
    (speckle clips to white only in small grains), thin (at most ``thin`` of their pixels have 8 white neighbours: a
    band of bright tissue is wider) and brighter than the rest of their bounding box by ``contrast``. White pixels
    are few, so the groups are measured on their coordinates rather than over the image. Colour marks are pixels
    whose saturation exceeds ``saturation``, as long as they cover less than ``max_colour`` of the image (more is a
    colour Doppler or tinted scan, which :func:`scan_flags` reports, not a mark); a scan stored as three equal
    channels is grey. Sizes scale with the image's shorter side (given for 128 px).

    Args:
        bright: the least intensity of a glyph pixel, relative to the image maximum.
        contrast: the least mean difference between a glyph and the rest of its bounding box (relative intensity).
        min_area: the least glyph size in pixels at 128 px (scaled with the image area).
        min_length: the least extent of a glyph along rows or columns, in pixels at 128 px.
        thin: the largest share of a glyph's pixels whose 8 neighbours are all white (what a 3 x 3 erosion keeps).
        saturation: the least saturation ``(max - min) / max`` over the colour channels of a coloured mark.
        max_colour: the largest image share of coloured pixels that are treated as marks.
        dilate: grow the mask by this many pixels, diagonals included (anti-aliased glyph edges).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, bright: float = 0.98, contrast: float = 0.2, min_area: float = 10.0, min_length: float = 6.0,
                 thin: float = 0.4, saturation: float = 0.35, max_colour: float = 0.05, dilate: int = 1) -> None:
        self.bright, self.contrast = bright, contrast
        self.min_area, self.min_length, self.thin = min_area, min_length, thin
        self.saturation, self.max_colour, self.dilate = saturation, max_colour, dilate

    def _glyphs(self, g: np.ndarray) -> np.ndarray:
        """The glyph mask ``(H, W)`` of a grey image."""
        out = np.zeros(g.shape, bool)
        top = g.max()
        scale = min(g.shape) / 128
        min_area, min_length = self.min_area * scale**2, self.min_length * scale
        sat = g >= self.bright * top
        if np.count_nonzero(sat) < min_area:  # nothing white enough
            return out
        lab, n = ndimage.label(sat, structure=np.ones((3, 3), bool))
        ys, xs = np.divmod(np.flatnonzero(sat), sat.shape[1])  # white pixels are few: groups are measured on them
        labels = lab[ys, xs]
        area = np.bincount(labels, minlength=n + 1)
        big = area >= min_area
        big[0] = False
        if not big.any():
            return out
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], np.arange(n + 1))[1:]  # group k's first position in `order`
        top_row, bottom_row = np.minimum.reduceat(ys[order], starts), np.maximum.reduceat(ys[order], starts)
        left_col, right_col = np.minimum.reduceat(xs[order], starts), np.maximum.reduceat(xs[order], starts)
        extent = np.maximum(bottom_row - top_row, right_col - left_col) + 1
        # pixels whose 8 neighbours are all white: a stroke has few, a band of bright tissue many
        padded = np.pad(sat, 1)
        solid = np.ones(len(ys), bool)
        for dy, dx in _AROUND:
            solid &= padded[ys + 1 + dy, xs + 1 + dx]
        solid_count = np.bincount(labels[solid], minlength=n + 1)
        keep = big & (np.r_[0, extent] >= min_length) & (solid_count <= self.thin * area)
        # the few candidates left: brighter than the rest of their bounding box?
        candidates = np.nonzero(keep)[0]
        own_sum = np.bincount(labels, weights=g[ys, xs], minlength=n + 1)[candidates]
        box_sum = np.array([g[top_row[i - 1] : bottom_row[i - 1] + 1, left_col[i - 1] : right_col[i - 1] + 1].sum() for i in candidates])
        box_area = (bottom_row - top_row + 1)[candidates - 1] * (right_col - left_col + 1)[candidates - 1]
        rest = box_area - area[candidates]
        dimmer = (rest > 0) & (own_sum / area[candidates] - (box_sum - own_sum) / np.maximum(rest, 1) < self.contrast * top)
        keep[candidates[dimmer]] = False
        if not keep.any():
            return out
        own = keep[labels]
        ys, xs = ys[own], xs[own]
        for _ in range(self.dilate):  # grow over the anti-aliased edge: the 8 neighbours of every glyph pixel
            ys = np.clip((ys[:, None] + _OFFSETS[:, 0]).ravel(), 0, g.shape[0] - 1)
            xs = np.clip((xs[:, None] + _OFFSETS[:, 1]).ravel(), 0, g.shape[1] - 1)
        out[ys, xs] = True
        return out

    def mask(self, img: NdarrayOrTensor) -> np.ndarray:
        """The overlay mask ``(H, W)`` (bool numpy) of a channel-first image."""
        x = convert_to_tensor(img, track_meta=False)
        x = x if x.dtype == torch.float32 else x.float()
        # grey scans saved as RGB (three equal channels) are grey: no averaging, no colour marks to look for
        colour = x.shape[0] >= 3 and not (torch.equal(x[0], x[1]) and torch.equal(x[1], x[2]))
        mask = self._glyphs(x[:3].mean(0).numpy() if colour else x[0].numpy())
        if colour:
            _, sat = _grey_and_colour(x)
            marks = ((sat >= self.saturation) & (x[:3].amax(0) >= 0.2 * x.amax())).numpy()
            if marks.mean() <= self.max_colour:
                mask |= _dilate(marks, self.dilate) if self.dilate and marks.any() else marks
        return mask

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """The overlay mask ``(1, H, W)`` (bool) of a channel-first image."""
        return convert_to_dst_type(torch.from_numpy(self.mask(img))[None], img, dtype=torch.bool)[0]


def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return (slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, mask.shape[0])),
            slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, mask.shape[1])))


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation (8-neighbourhood) computed over the mask's bounding box only (overlays are small)."""
    out = mask.copy()
    sl = _bbox(mask, pixels)
    out[sl] = ndimage.binary_dilation(mask[sl], structure=np.ones((3, 3), bool), iterations=pixels)
    return out


def _fill(x: np.ndarray, mask: np.ndarray, todo: np.ndarray, radius: int) -> None:
    """Fill ``x`` (``(C, H, W)``, in place) at ``todo`` with the mean of the pixels outside ``mask`` in a window around
    each, over ``todo``'s bounding box; the window doubles for pixels that have none."""
    while todo.any():
        rows, cols = np.nonzero(todo.any(1))[0], np.nonzero(todo.any(0))[0]
        y0, y1 = max(rows[0] - radius, 0), min(rows[-1] + radius + 1, mask.shape[0])
        x0, x1 = max(cols[0] - radius, 0), min(cols[-1] + radius + 1, mask.shape[1])
        known = (~mask[y0:y1, x0:x1]).astype(np.float32)
        den = ndimage.uniform_filter(known, 2 * radius + 1, mode="constant")
        fill = todo[y0:y1, x0:x1] & (den > 0)
        for c in range(x.shape[0]):
            num = ndimage.uniform_filter(x[c, y0:y1, x0:x1] * known, 2 * radius + 1, mode="constant")
            x[c, y0:y1, x0:x1][fill] = num[fill] / den[fill]
        todo[y0:y1, x0:x1] &= ~fill
        radius *= 2


def inpaint(img: NdarrayOrTensor, mask: NdarrayOrTensor, radius: int = 3) -> NdarrayOrTensor:
    """Fill the masked pixels of a channel-first image with the mean of the unmasked pixels around them.

    A normalised box filter of side ``2 * radius + 1`` over the bounding box of each band of rows holding marks,
    widened until every masked pixel has unmasked neighbours.

    Args:
        img: ``(C, H, W)``.
        mask: ``(1, H, W)`` or ``(H, W)``, true where pixels are replaced.
        radius: the first window radius in pixels.
    """
    m = convert_to_tensor(mask, track_meta=False).numpy().astype(bool, copy=False)
    m = m.reshape(m.shape[-2:])
    if not m.any():  # the common case: nothing to fill, no copy
        return img
    if m.all():
        raise ValueError("inpaint: the mask covers the whole image; nothing to fill it from.")
    x = np.array(convert_to_tensor(img, track_meta=False).numpy(), dtype=np.float32)  # a copy, filled in place
    busy = np.nonzero(m.any(1))[0]
    # marks far apart in rows (a caption at the bottom, calipers in the middle) are filled in their own boxes
    for run in np.split(busy, np.nonzero(np.diff(busy) > 2 * radius + 1)[0] + 1):
        todo = np.zeros_like(m)
        todo[run[0] : run[-1] + 1] = m[run[0] : run[-1] + 1]
        _fill(x, m, todo, radius)
    return convert_to_dst_type(torch.from_numpy(x), img, dtype=torch.float32)[0]


class MaskOverlays(Transform):
    """
    Remove scanner overlays (:py:class:`DetectOverlays`) from a channel-first image: ``"inpaint"`` fills them from
    the pixels around (:func:`inpaint`), ``"zero"`` blacks them out.

    Args:
        mode: ``"inpaint"`` or ``"zero"``.
        radius: the inpainting window radius in pixels.
        kwargs: :py:class:`DetectOverlays`' settings.
    """

    backend = DetectOverlays.backend

    def __init__(self, mode: str = "inpaint", radius: int = 3, **kwargs) -> None:
        if mode not in ("inpaint", "zero"):
            raise ValueError(f"mode must be 'inpaint' or 'zero', got '{mode}'.")
        self.mode, self.radius = mode, radius
        self.detector = DetectOverlays(**kwargs)

    def __call__(self, img: NdarrayOrTensor, mask: NdarrayOrTensor | None = None) -> NdarrayOrTensor:
        """The image without overlays; ``mask`` (default: detected) marks them."""
        mask = self.detector(img) if mask is None else mask
        if self.mode == "inpaint":
            return inpaint(img, mask, self.radius)
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
            mask = self.masker.detector.mask(d[key])
            if self.mode != "detect":
                d[key] = self.masker(d[key], mask)
            out_key = self.overlay_key if len(keys) == 1 else f"{key}_{self.overlay_key}"
            out = torch.from_numpy(mask.astype(np.float32))[None]
            if self.mask_size is not None and tuple(out.shape[1:]) != self.mask_size:
                out = F.interpolate(out[None], size=self.mask_size, mode="nearest")[0]
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
