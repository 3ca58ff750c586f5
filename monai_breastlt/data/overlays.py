"""Scanner overlays burnt into phantom images: calipers across the lesion and annotation text, as sonographers leave them.

Public breast-ultrasound sets carry such marks, and where they are more frequent in some subtypes a classifier can
learn the marks instead of the lesion. :func:`overlay_probabilities` makes that correlation with a known strength, so
the phantom has a shortcut with ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["ANNOTATIONS", "overlay_probabilities", "burn_overlays"]

# annotation text of the kind found on exported breast scans (side, clock position, distance, measurement)
ANNOTATIONS = ("RT BREAST", "LT BREAST", "RT 10", "LT 2", "R 3 3CM", "L 9 4CM", "RAD", "ARAD", "TRANS", "SAG", "1.2CM", "0.8CM")


def overlay_probabilities(num_classes: int, strength: float, marked: Sequence[int] | None = None) -> list[float]:
    """Per class, the probability that an image carries overlays: ``(1 + strength) / 2`` for the ``marked`` classes,
    ``(1 - strength) / 2`` for the others. At strength 0 overlays say nothing of the class; at 1 they give away
    whether it is marked.

    Args:
        num_classes: number of classes.
        strength: the shortcut's strength in [0, 1].
        marked: the labels that carry overlays more often (default: the odd labels).

    Raises:
        ValueError: strength outside [0, 1] or a marked label outside the classes.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"overlay strength must be in [0, 1], got {strength}.")
    marked = list(range(1, num_classes, 2)) if marked is None else list(marked)
    bad = [m for m in marked if not 0 <= m < num_classes]
    if bad:
        raise ValueError(f"overlay classes {bad} are not class indices in [0, {num_classes - 1}].")
    return [(1 + strength) / 2 if c in marked else (1 - strength) / 2 for c in range(num_classes)]


def _caliper_ends(lesion: np.ndarray, rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two points across the lesion's widest row (a measurement), or across the image centre without a lesion."""
    h, w = lesion.shape
    rows = np.nonzero(lesion.any(1))[0]
    if len(rows) == 0:
        y = h // 2
        return (y, w // 3), (y, 2 * w // 3)
    y = int(rows[np.argmax(lesion[rows].sum(1))])
    cols = np.nonzero(lesion[y])[0]
    return (y, int(cols.min())), (y + int(rng.integers(-1, 2)), int(cols.max()))


def burn_overlays(
    image: np.ndarray, lesion: np.ndarray, rng: np.random.Generator, calipers: bool = True, text: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Burn white calipers (two ``+`` marks joined by a dotted line across the lesion) and one annotation in a corner.

    Args:
        image: a grey image in [0, 1], ``(H, W)``.
        lesion: the lesion mask, ``(H, W)`` (calipers measure it).
        rng: the random generator of the marks' text and position.
        calipers: draw calipers.
        text: draw an annotation.

    Returns:
        the image with overlays and the overlay mask (bool).
    """
    h, w = image.shape
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    stroke = max(1, round(min(h, w) / 128))
    if calipers:
        arm = max(2, round(min(h, w) / 40))
        ends = _caliper_ends(lesion, rng)
        for y, x in ends:
            draw.line([(x - arm, y), (x + arm, y)], fill=255, width=stroke)
            draw.line([(x, y - arm), (x, y + arm)], fill=255, width=stroke)
        (y0, x0), (y1, x1) = ends
        n = max(2, int(np.hypot(y1 - y0, x1 - x0) / (3 * stroke + 2)))
        for t in np.linspace(0.0, 1.0, n)[1:-1]:
            x, y = round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))  # whole pixels: PIL rounds float corners apart
            draw.rectangle([x, y, x + stroke - 1, y + stroke - 1], fill=255)
    if text:
        font = ImageFont.load_default(size=max(8, round(min(h, w) / 12)))
        label = ANNOTATIONS[int(rng.integers(len(ANNOTATIONS)))]
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        x = int(rng.integers(2, max(3, w - (right - left) - 2)))
        y = int(rng.choice([2, max(2, h - bottom - 3)]))  # the top or bottom edge, as scanners place labels
        draw.text((x - left, y), label, fill=255, font=font)
    overlay = np.asarray(canvas) > 127
    out = image.copy()
    out[overlay] = 1.0
    return out, overlay
