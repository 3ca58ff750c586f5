"""Procedural long-tailed breast-ultrasound phantom with known ground truth.

Each image is built the way a B-mode image forms: an echogenicity map (skin, subcutaneous fat with
Cooper's ligaments, glandular tissue, pectoral muscle, a lesion with posterior acoustic features and
calcifications) modulates a field of random scatterers, which is blurred by an anisotropic point-spread
function; the envelope (Rayleigh speckle) is log-compressed. Lesion subtypes differ by shape
(oval/round/lobulated/irregular/spiculated), orientation (parallel or taller-than-wide), margin, echo
pattern, posterior features and calcifications, as in BI-RADS descriptors. Every parameter is drawn per
lesion from overlapping class distributions, and a fraction of lesions are *atypical* (drawn from a
look-alike subtype), so the classes overlap as real ones do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from monai_breastlt.utils import check_range, check_writable_dir, read_json
from monai_breastlt.data.overlays import burn_overlays, overlay_probabilities

__all__ = ["LesionSubtype", "DEFAULT_SUBTYPES", "long_tail_counts", "render_phantom", "generate_phantom"]

MIN_IMAGE_SIZE = 16  # the tissue layers, lesion and speckle of render_phantom need a few pixels each


@dataclass(frozen=True)
class LesionSubtype:
    """Distribution of the appearance of one subtype (ranges are uniform draws; dicts are choice probabilities).

    Args:
        name: class name.
        shape: probabilities of ``oval``, ``round``, ``lobulated``, ``irregular``, ``spiculated``.
        aspect: width/height range (> 1: parallel to the skin; < 1: taller-than-wide).
        radius: mean radius range, as a fraction of the image size.
        margin_blur: edge blur range in pixels at 128 px (0: circumscribed; large: indistinct).
        echo: probabilities of ``anechoic``, ``hypo``, ``heterogeneous``, ``complex`` (cystic-solid), ``clefts``.
        posterior: probabilities of ``none``, ``enhancement``, ``shadowing``.
        calcification: probability of microcalcifications.
        halo: probability of an echogenic halo (malignant rim).
        lookalike: the subtype an atypical lesion of this class is drawn from.
    """

    name: str
    shape: dict
    aspect: tuple[float, float]
    radius: tuple[float, float]
    margin_blur: tuple[float, float]
    echo: dict
    posterior: dict
    calcification: float = 0.0
    halo: float = 0.0
    lookalike: str | None = None


DEFAULT_SUBTYPES: tuple[LesionSubtype, ...] = (
    LesionSubtype(
        "fibroadenoma", {"oval": 0.6, "lobulated": 0.3, "round": 0.1}, (1.3, 2.1), (0.09, 0.15), (0.3, 1.2),
        {"hypo": 0.8, "heterogeneous": 0.2}, {"none": 0.6, "enhancement": 0.4}, 0.05, 0.0, "phyllodes_tumor",
    ),
    LesionSubtype(
        "invasive_ductal_carcinoma", {"irregular": 0.5, "spiculated": 0.5}, (0.7, 1.25), (0.07, 0.13), (1.0, 3.0),
        {"hypo": 0.5, "heterogeneous": 0.5}, {"shadowing": 0.65, "none": 0.35}, 0.5, 0.5, "invasive_lobular_carcinoma",
    ),
    LesionSubtype(
        "cyst", {"oval": 0.5, "round": 0.5}, (1.0, 1.6), (0.05, 0.1), (0.2, 0.8),
        {"anechoic": 0.9, "complex": 0.1}, {"enhancement": 0.9, "none": 0.1}, 0.0, 0.0, "intraductal_papilloma",
    ),
    LesionSubtype(
        "intraductal_papilloma", {"oval": 0.7, "lobulated": 0.3}, (1.2, 2.0), (0.05, 0.09), (0.3, 1.2),
        {"complex": 0.8, "hypo": 0.2}, {"enhancement": 0.5, "none": 0.5}, 0.1, 0.0, "cyst",
    ),
    LesionSubtype(
        "invasive_lobular_carcinoma", {"irregular": 0.8, "spiculated": 0.2}, (1.0, 1.7), (0.08, 0.14), (2.0, 3.5),
        {"hypo": 0.8, "heterogeneous": 0.2}, {"shadowing": 0.9, "none": 0.1}, 0.05, 0.3, "invasive_ductal_carcinoma",
    ),
    LesionSubtype(
        "phyllodes_tumor", {"lobulated": 0.8, "oval": 0.2}, (1.3, 2.0), (0.14, 0.2), (0.3, 1.2),
        {"clefts": 0.8, "heterogeneous": 0.2}, {"enhancement": 0.7, "none": 0.3}, 0.0, 0.0, "fibroadenoma",
    ),
)


def long_tail_counts(num_classes: int, head_count: int, imbalance_ratio: float, min_count: int = 1) -> list[int]:
    """Exponentially decaying counts ``head_count * imbalance_ratio ** (-c / (C - 1))`` (CIFAR-LT profile)."""
    if num_classes < 1 or head_count < 1 or imbalance_ratio < 1:
        raise ValueError(
            f"need num_classes >= 1, head_count >= 1, imbalance_ratio >= 1; got {num_classes}, {head_count}, {imbalance_ratio}."
        )
    denom = max(num_classes - 1, 1)
    return [max(min_count, int(round(head_count * imbalance_ratio ** (-c / denom)))) for c in range(num_classes)]


def _choice(rng: np.random.Generator, probs: dict) -> str:
    keys = list(probs)
    p = np.asarray([probs[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (f - f.mean()) / (f.std() + 1e-8)


def _boundary(rng: np.random.Generator, width: int, base: float, amp: float) -> np.ndarray:
    """A smooth random curve across the image (a tissue-layer boundary), in rows."""
    x = np.linspace(0, 2 * np.pi, width)
    curve = sum(rng.uniform(0.3, 1.0) / k * np.sin(k * x + rng.uniform(0, 2 * np.pi)) for k in (1, 2, 3))
    return base + amp * curve


def _radial_profile(rng: np.random.Generator, shape: str, theta: np.ndarray) -> np.ndarray:
    """Radius multiplier r(theta) of the lesion outline for a BI-RADS shape."""
    r = np.ones_like(theta)
    if shape == "round":
        r += 0.03 * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    elif shape == "oval":
        r += 0.05 * np.cos(3 * theta + rng.uniform(0, 2 * np.pi))
    elif shape == "lobulated":
        k = int(rng.integers(3, 6))
        r += rng.uniform(0.12, 0.22) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    else:  # irregular and spiculated share an angular, noisy outline
        for k in range(2, 9):
            r += rng.uniform(0.02, 0.09) / np.sqrt(k - 1) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        if shape == "spiculated":
            for c in rng.uniform(0, 2 * np.pi, size=int(rng.integers(7, 14))):
                d = np.angle(np.exp(1j * (theta - c)))
                r += rng.uniform(0.35, 0.8) * np.exp(-((d / rng.uniform(0.04, 0.08)) ** 2))
    return np.clip(r, 0.4, None)


def render_phantom(
    subtype: LesionSubtype,
    size: int = 128,
    rng: np.random.Generator | None = None,
    subtypes: Sequence[LesionSubtype] = DEFAULT_SUBTYPES,
    atypical_prob: float = 0.15,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one image of ``subtype``.

    Args:
        subtype: the class to draw.
        size: image height and width in pixels.
        rng: the random generator (``np.random.default_rng(seed)``); all randomness comes from it.
        subtypes: the subtype table that ``subtype.lookalike`` refers to.
        atypical_prob: probability that the lesion's appearance is drawn from the look-alike subtype.

    Returns:
        the image in [0, 1] (float32, ``(size, size)``), the lesion mask (bool) and the drawn attributes.
    """
    rng = rng if rng is not None else np.random.default_rng()
    table = {s.name: s for s in subtypes}
    look = subtype
    atypical = bool(subtype.lookalike in table and rng.random() < atypical_prob)
    if atypical:
        look = table[subtype.lookalike]
    s = size / 128.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # tissue layers: echogenicity (mean scatter amplitude) per layer
    skin = _boundary(rng, size, rng.uniform(0.04, 0.07) * size, 1.0 * s)
    fat = _boundary(rng, size, rng.uniform(0.18, 0.32) * size, rng.uniform(2, 5) * s)
    gland = _boundary(rng, size, rng.uniform(0.66, 0.8) * size, rng.uniform(2, 6) * s)
    echo = np.full((size, size), 0.75, np.float32)  # glandular tissue
    echo *= 1.0 + 0.25 * _smooth_noise(rng, (size, size), 4 * s)
    fat_layer = (yy >= skin[None, :]) & (yy < fat[None, :])
    echo[fat_layer] = 0.3 + 0.05 * _smooth_noise(rng, (size, size), 3 * s)[fat_layer]
    ligaments = np.abs(np.sin(xx / (rng.uniform(9, 16) * s) + 0.6 * np.sin(yy / (7 * s)) + rng.uniform(0, 6)))
    echo[fat_layer & (ligaments < 0.12)] = 0.8
    echo[yy < skin[None, :]] = 1.0
    muscle = yy >= gland[None, :]
    stripes = 0.55 + 0.2 * np.sin(yy / (1.6 * s) + 0.5 * _smooth_noise(rng, (size, size), 6 * s))
    echo[muscle] = stripes[muscle]

    # lesion outline: orientation, shape and margin
    shape = _choice(rng, look.shape)
    aspect = rng.uniform(*look.aspect)
    radius = rng.uniform(*look.radius) * size
    cy = rng.uniform(max(fat.mean(), 0.35 * size), min(gland.mean() - 0.6 * radius, 0.62 * size))
    cx = rng.uniform(0.3, 0.7) * size
    angle = rng.uniform(-0.25, 0.25)
    dx, dy = xx - cx, yy - cy
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / (radius * np.sqrt(aspect))
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / (radius / np.sqrt(aspect))
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    mask = rho <= _radial_profile(rng, shape, theta)
    blur = rng.uniform(*look.margin_blur) * s
    inside = ndimage.gaussian_filter(mask.astype(np.float32), max(blur, 0.3))

    pattern = _choice(rng, look.echo)
    level = {"anechoic": 0.015, "hypo": rng.uniform(0.07, 0.16)}
    lesion = np.full((size, size), level.get(pattern, 0.015), np.float32)
    if pattern in ("heterogeneous", "clefts"):
        lesion = rng.uniform(0.12, 0.22) * np.exp(0.6 * _smooth_noise(rng, (size, size), 2.0 * s))
    if pattern == "clefts":  # leaf-like anechoic slits of phyllodes tumours
        slits = np.abs(np.sin((u * rng.uniform(5, 8) + 0.8 * v * v) * np.pi + rng.uniform(0, 6)))
        lesion[slits < 0.18] = 0.015
    if pattern == "complex":  # cyst with a solid intracystic nodule on its wall
        lesion[:] = 0.015
        a = rng.uniform(0, 2 * np.pi)
        ny, nx = cy + 0.5 * radius * np.sin(a) / np.sqrt(aspect), cx + 0.5 * radius * np.cos(a) * np.sqrt(aspect)
        nodule = np.hypot(yy - ny, xx - nx) < rng.uniform(0.35, 0.55) * radius / np.sqrt(aspect)
        lesion[nodule] = rng.uniform(0.25, 0.45)
    echo = echo * (1 - inside) + np.clip(lesion, 0.01, None) * inside

    halo = bool(rng.random() < look.halo)
    if halo:
        ring = ndimage.binary_dilation(mask, iterations=max(1, int(2 * s))) & ~mask
        echo[ndimage.gaussian_filter(ring.astype(np.float32), 1.0 * s) > 0.3] *= 1.5

    # posterior acoustic features: a column under the lesion, fading with depth
    posterior = _choice(rng, look.posterior)
    if posterior != "none":
        cols = ndimage.gaussian_filter1d(mask.any(axis=0).astype(np.float32), 1.5 * s)
        bottom = np.where(mask.any(axis=1))[0].max() if mask.any() else size
        below = np.clip((yy - bottom) / (0.5 * size), 0, 1)
        fade = np.where(yy > bottom - 0.2 * radius, np.exp(-below * rng.uniform(0.5, 1.5)), 0)
        gain = rng.uniform(0.5, 0.9) if posterior == "enhancement" else -rng.uniform(0.55, 0.8)
        echo *= (1 + gain * cols[None, :] * fade * (1 - inside)).astype(np.float32)

    calc = bool(rng.random() < look.calcification)
    if calc:
        ys, xs = np.nonzero(mask)
        for k in rng.choice(len(ys), size=min(len(ys), int(rng.integers(3, 9))), replace=False):
            echo[ys[k], xs[k]] = 3.0

    # image formation: scatterers x echogenicity, PSF blur, envelope, depth attenuation, log compression
    psf = (rng.uniform(0.5, 0.8) * s, rng.uniform(1.0, 1.6) * s)  # (axial, lateral) pixels
    field = echo * (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size)))
    env = np.abs(ndimage.gaussian_filter(field.real, psf) + 1j * ndimage.gaussian_filter(field.imag, psf))
    env *= np.exp(-rng.uniform(0.3, 0.8) * yy / size) * rng.uniform(0.8, 1.2)
    # log compression into the display dynamic range, as a scanner does
    dynamic_range = rng.uniform(40, 50)
    img = 1 + 20 * np.log10(env / (np.percentile(env, 99.5) + 1e-8) + 1e-6) / dynamic_range
    img = np.clip(img, 0, 1).astype(np.float32)
    attrs = {
        "shape": shape,
        "orientation": "parallel" if aspect >= 1 else "taller-than-wide",
        "aspect": round(float(aspect), 3),
        "margin": "circumscribed" if blur < 1.5 * s and shape in ("oval", "round", "lobulated") else "indistinct",
        "echo": pattern,
        "posterior": posterior,
        "calcification": calc,
        "halo": halo,
        "atypical": atypical,
    }
    return img, mask, attrs


def generate_phantom(
    out_dir: str | os.PathLike,
    head_count: int = 200,
    imbalance_ratio: float = 50.0,
    image_size: int = 128,
    seed: int = 0,
    subtypes: Sequence[LesionSubtype] = DEFAULT_SUBTYPES,
    counts: Sequence[int] | None = None,
    images_per_patient: tuple[int, int] = (1, 2),
    atypical_prob: float = 0.15,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    overwrite: bool = False,
    overlay_strength: float | None = None,
    overlay_classes: Sequence[int] | None = None,
) -> Path:
    """Write a long-tailed phantom: ``OUT/<class>/<id>.png``, ``<id>_mask.png`` and ``OUT/datalist.json``.

    The folder is readable by :func:`~monai_breastlt.data.scan_class_folder` too. The datalist holds a
    patient-grouped stratified split; every entry carries its drawn ``attributes`` and patient ``group``.
    The same arguments always give the same files, so a folder holding the phantom of the same arguments is written
    again (byte-identical); a ``datalist.json`` of other data or other arguments is refused unless ``overwrite``.
    Every argument and the output folder are checked before anything is written.

    Args:
        out_dir: destination folder.
        head_count: number of images of the largest class.
        imbalance_ratio: largest / smallest class count (counts decay exponentially).
        image_size: image side in pixels.
        seed: the seed of everything.
        subtypes: the subtype table, largest class first.
        counts: explicit per-class counts (overrides ``head_count`` / ``imbalance_ratio``).
        images_per_patient: range of images drawn per patient (several views of one lesion).
        atypical_prob: fraction of lesions that look like their look-alike subtype.
        fractions: train/validation/test fractions of the datalist split.
        overwrite: replace a ``datalist.json`` already in ``out_dir`` that another call (or other data) wrote.
        overlay_strength: burn calipers and annotation text into images, their presence correlated with the class
            at this strength in [0, 1] (:func:`~monai_breastlt.data.overlays.overlay_probabilities`); each entry's
            ``attributes["overlays"]`` records it. ``None``: no overlays. The lesion images are the same either way.
        overlay_classes: with ``overlay_strength``, the labels that carry overlays more often (default: odd labels).

    Returns:
        the path of the datalist JSON.

    Raises:
        ValueError: an argument out of its range, or ``out_dir`` holds another datalist (and not ``overwrite``).
        OSError: ``out_dir`` cannot be created or written.
    """
    from monai_breastlt.data.split import prepare_split  # local: split imports datalist, which this module feeds

    out = Path(out_dir)
    check_range("image_size", image_size, MIN_IMAGE_SIZE, integer=True)
    check_range("seed", seed, 0, integer=True)
    check_range("atypical_prob", atypical_prob, 0, 1)
    if counts is None:
        check_range("head_count", head_count, 1, integer=True)
        check_range("imbalance_ratio", imbalance_ratio, 1)
    counts = list(counts) if counts is not None else long_tail_counts(len(subtypes), head_count, imbalance_ratio)
    if len(counts) != len(subtypes):
        raise ValueError(f"counts has {len(counts)} entries for {len(subtypes)} subtypes.")
    for k, c in enumerate(counts):
        check_range(f"counts[{k}]", c, 1, integer=True)
    lo, hi = images_per_patient
    check_range("images_per_patient[0]", lo, 1, integer=True)
    check_range("images_per_patient[1]", hi, lo, integer=True)
    path = out / "datalist.json"
    settings = {"counts": counts, "image_size": image_size, "seed": seed, "subtypes": [s.name for s in subtypes],
                "images_per_patient": [lo, hi], "atypical_prob": atypical_prob}
    if overlay_strength is not None:  # overlays change the files: another phantom
        settings.update(overlay_strength=overlay_strength, overlay_classes=None if overlay_classes is None else list(overlay_classes))
    check_writable_dir(out, "phantom folder")
    if path.exists() and not overwrite and _phantom_settings(path) != settings:
        raise FileExistsError(f"{path} already exists (other data, or a phantom made with other arguments); pass --overwrite "
                              "(overwrite=True) to replace it, or choose another output folder.")
    items = []
    overlay_p = overlay_probabilities(len(subtypes), overlay_strength, overlay_classes) if overlay_strength is not None else None
    for label, (sub, n) in enumerate(zip(subtypes, counts)):
        folder = out / sub.name
        folder.mkdir(parents=True, exist_ok=True)
        # one child seed per class keeps a class's images unchanged when other classes' counts change
        rng = np.random.default_rng([seed, label])
        overlay_rng = np.random.default_rng([seed, label, 1])  # its own stream: the lesions do not change with overlays
        k = patient = 0
        while k < n:
            views = min(int(rng.integers(images_per_patient[0], images_per_patient[1] + 1)), n - k)
            for _ in range(views):
                img, mask, attrs = render_phantom(sub, image_size, rng, subtypes, atypical_prob)
                if overlay_p is not None:
                    attrs["overlays"] = bool(overlay_rng.random() < overlay_p[label])
                    if attrs["overlays"]:
                        img, _ = burn_overlays(img, mask, overlay_rng)
                stem = f"{sub.name}_{k:04d}"
                Image.fromarray((img * 255).round().astype(np.uint8)).save(folder / f"{stem}.png")
                Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"{stem}_mask.png")
                items.append(
                    {
                        "image": str(folder / f"{stem}.png"),
                        "mask": str(folder / f"{stem}_mask.png"),
                        "label": label,
                        "class_name": sub.name,
                        "source": "real",
                        "group": f"{sub.name}_p{patient:04d}",
                        "attributes": attrs,
                    }
                )
                k += 1
            patient += 1
    # what made it is recorded: a call with the same arguments may write it again
    prepare_split(items, [s.name for s in subtypes], path, fractions=fractions, seed=seed, overwrite=True, check_files=False,
                  extra={"phantom": settings})
    return path


def _phantom_settings(path: Path) -> dict | None:
    """The phantom arguments recorded in an existing datalist, or ``None`` (unreadable, or not a phantom's)."""
    try:
        doc = read_json(path)
    except (ValueError, OSError):
        return None
    return doc.get("phantom") if isinstance(doc, dict) else None
