"""Checks of a whole datalist before any long work: every file readable as a 2D image, and no split leakage.

Both are cheap: image files are judged from their headers (plus the chunk checksums of a PNG and the end marker of a
JPEG, which find truncated files without decoding them), and leakage compares paths, groups and the images' bytes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_breastlt.data.datalist import SECTIONS, _split_ext, load_datalist_file, load_pool_items

logger = logging.getLogger(__name__)

__all__ = ["inspect_image", "check_image_files", "find_leakage", "warn_leakage", "check_datalist"]

FILE_KEYS = ("image", "mask", "sketch")
_PIL_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_ITK_FORMATS = (".nrrd", ".mha", ".mhd")
_DICOM_FORMATS = (".dcm", ".dicom")
MAX_ASPECT = 20.0  # a wider (or taller) image is a strip, not a scan: warned
LISTED = 20  # bad files named in an error message; every one is logged when there are more


def _stat_problem(path: str) -> tuple[os.stat_result | None, str | None]:
    """``os.stat`` of ``path`` or why it is not a readable regular file."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "symbolic link loop"
        if os.path.islink(path):
            return None, f"broken symbolic link (to {os.readlink(path)})"
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None, "file not found"
        return None, f"cannot be read ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return None, "is a folder, not an image file"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_size == 0:
        return None, "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return None, "not readable (permission denied)"
    return st, None


def _pil_header(path: str, ext: str) -> tuple[tuple[int, ...], str | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h, fmt = *im.size, im.format
            frames = getattr(im, "n_frames", 1)
            # a PNG's getexif() decodes the pixels to look past them: read it only when the header holds an eXIf chunk
            exif = im.getexif() if fmt != "PNG" or "exif" in im.info else {}
            if exif.get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: the image is read rotated by 90 degrees
                w, h = h, w
        if fmt == "PNG":
            with Image.open(path) as im:
                im.verify()  # chunk checksums: finds truncated and damaged files without decoding the pixels
    except UnidentifiedImageError:
        return (), f"not a readable image (its contents are not a {ext[1:].upper()} image)"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        return (), f"truncated or damaged image ({e})"
    if frames > 1:
        return (h, w, frames), f"holds {frames} frames (a volume or a cine loop); expected one 2D image per entry"
    if ext in (".jpg", ".jpeg"):
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            if b"\xff\xd9" not in f.read():
                return (h, w), "truncated JPEG (no end-of-image marker)"
    return (h, w), None


def _nifti_header(path: str) -> tuple[tuple[int, ...], str | None]:
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as e:  # nibabel raises several types for damaged headers
        return (), f"not a readable NIfTI image ({e})"
    shape = tuple(int(s) for s in img.shape)
    if path.lower().endswith(".nii"):
        header = img.header
        need = int(header.get_data_offset()) + int(header.get_data_dtype().itemsize) * int(max(1, _prod(shape)))
        if os.path.getsize(path) < need:
            return shape, f"truncated NIfTI ({os.path.getsize(path)} of {need} bytes)"
    return shape, None


def _itk_header(path: str) -> tuple[tuple[int, ...], str | None]:
    import itk  # only for NRRD/MetaImage: slow to import

    io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        return (), "not a readable image (ITK knows no reader for it)"
    try:
        io.SetFileName(path)
        io.ReadImageInformation()
    except Exception as e:  # ITK raises RuntimeError with its own report
        return (), f"not a readable image ({str(e).strip().splitlines()[-1]})"
    dims = [int(io.GetDimensions(i)) for i in range(io.GetNumberOfDimensions())]
    return tuple(reversed(dims)), None  # ITK lists x first


def _dicom_header(path: str) -> tuple[tuple[int, ...], str | None]:
    from monai_breastlt.transforms.io import dicom_header  # ITK: slow to import, only for DICOM

    try:
        h = dicom_header(path)
    except (ValueError, RuntimeError) as e:
        return (), str(e).split(": ", 1)[-1] if str(e).startswith(path) else str(e)
    return (h["rows"], h["columns"]), None  # a multi-frame file: one 2D frame per entry


def _prod(shape: Sequence[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def inspect_image(path: str | os.PathLike) -> tuple[tuple[int, ...], str | None]:
    """The spatial shape of an image file (``(H, W)`` as the loaders read it) and what is wrong with it, if anything.

    Only the header is read (and, for PNG, the chunk checksums; for JPEG, the end marker). Problems: missing, a folder,
    a broken symbolic link or a link loop, unreadable, empty, truncated or damaged, not an image, an unknown
    extension, or more than two spatial dimensions (a volume or a cine loop given as a 2D image).

    Returns:
        ``(shape, problem)``; ``problem`` is ``None`` for a usable 2D image.
    """
    path = str(path)
    _, problem = _stat_problem(path)
    if problem:
        return (), problem
    ext = _split_ext(os.path.basename(path))[1]
    if ext in _PIL_FORMATS:
        shape, problem = _pil_header(path, ext)
    elif ext in (".nii", ".nii.gz"):
        shape, problem = _nifti_header(path)
    elif ext in _ITK_FORMATS:
        shape, problem = _itk_header(path)
    elif ext in _DICOM_FORMATS:
        shape, problem = _dicom_header(path)
    else:
        known = _PIL_FORMATS + (".nii", ".nii.gz") + _ITK_FORMATS + _DICOM_FORMATS
        return (), f"extension '{ext}' is not a readable image format ({', '.join(known)})"
    if problem is None and sum(s > 1 for s in shape) > 2:
        problem = f"a volume of shape {shape}, not a 2D image; give one 2D slice per entry"
    return shape, problem


def _paths(item: Mapping, key: str) -> list[str]:
    value = item.get(key)
    return [value] if isinstance(value, str) else [p for p in value if isinstance(p, str)] if isinstance(value, list) else []


def _spatial(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(s for s in shape if s > 1)


def check_image_files(
    sections: Mapping[str, Sequence[Mapping]], where: str, keys: Sequence[str] = FILE_KEYS, raise_error: bool = True
) -> list[str]:
    """Check every file of every entry (``image``, ``mask``, ``sketch``) before any long work, and list every bad one.

    A mask whose size differs from its image's is bad too. Degenerate images (a side of 1 pixel, or an aspect ratio
    over :data:`MAX_ASPECT`) are warned about, not refused.

    Args:
        sections: entries per section name (``{"training": [...], ...}``).
        where: the datalist's name, for the messages.
        keys: the entry fields that hold file paths.
        raise_error: raise when anything is bad; otherwise only return the problems.

    Returns:
        one line per bad file (or per missing folder, with its number of entries).

    Raises:
        ValueError: naming every bad file, its section, entry and field (the first :data:`LISTED` in the message and
            all of them in the log when there are more).
    """
    problems: list[str] = []
    missing_dirs: dict[str, list[str]] = defaultdict(list)
    degenerate: list[str] = []
    total = 0
    for name, items in sections.items():
        for n, item in enumerate(items):
            image_shape: tuple[int, ...] = ()
            for key in keys:
                for path in _paths(item, key):
                    total += 1
                    label = f"{name} entry {n} {key} {path}"
                    parent = os.path.dirname(path) or "."
                    if not os.path.isdir(parent) and not os.path.exists(path):
                        missing_dirs[parent].append(label)
                        continue
                    shape, problem = inspect_image(path)
                    if problem:
                        problems.append(f"{label}: {problem}")
                        continue
                    if key == "image":
                        image_shape = _spatial(shape)
                        side = min(image_shape or (1,))
                        if side <= 1 or max(image_shape) / side > MAX_ASPECT:
                            degenerate.append(f"{label} ({'x'.join(map(str, shape))})")
                    elif key == "mask" and image_shape and _spatial(shape) != image_shape:
                        problems.append(f"{label}: mask of size {'x'.join(map(str, shape))}, its image is {'x'.join(map(str, image_shape))}")
    for folder, labels in missing_dirs.items():
        problems.append(f"folder {folder} does not exist ({len(labels)} files, e.g. {labels[0]})")
    if degenerate:
        logger.warning("%s: %d image(s) of degenerate size (a side of 1 pixel or an aspect ratio over %g): %s.",
                       where, len(degenerate), MAX_ASPECT, "; ".join(degenerate[:LISTED]) + (" ..." if len(degenerate) > LISTED else ""))
    if problems and raise_error:
        if len(problems) > LISTED:
            for p in problems:
                logger.error("%s: %s", where, p)
        more = f"; ... and {len(problems) - LISTED} more (all listed in the log above)" if len(problems) > LISTED else ""
        raise ValueError(f"{where}: {len(problems)} unusable image file(s) among {total}: " + "; ".join(problems[:LISTED]) + more + ".")
    return problems


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()
    except OSError:
        return None


def find_leakage(sections: Mapping[str, Sequence[Mapping]], group_key: str = "group", compare_bytes: bool = True) -> dict[str, list]:
    """Images and patients that appear in more than one section.

    Args:
        sections: entries per section.
        group_key: the patient field; entries without it belong to no patient.
        compare_bytes: also find the same image under two names (same bytes).

    Returns:
        ``{"images": [[(section, entry, path), ...], ...], "groups": [(group, [(section, entry), ...]), ...]}``: each
        list holds entries from at least two sections.
    """
    by_image: dict[str, list[tuple[str, int, str]]] = defaultdict(list)
    by_group: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for name, items in sections.items():
        for n, item in enumerate(items):
            path = str(item["image"])
            key = (_digest(path) if compare_bytes else None) or os.path.realpath(path)
            by_image[key].append((name, n, path))
            if item.get(group_key) is not None:
                by_group[str(item[group_key])].append((name, n))
    spans = lambda hits: len({h[0] for h in hits}) > 1  # noqa: E731
    return {"images": [hits for hits in by_image.values() if spans(hits)],
            "groups": [(g, hits) for g, hits in by_group.items() if spans(hits)]}


def warn_leakage(sections: Mapping[str, Sequence[Mapping]], where: str, group_key: str = "group", shown: int = 3) -> dict[str, list]:
    """Log a warning with the count and the first entries of images and patients found in two splits.

    Returns:
        what :func:`find_leakage` found.
    """
    leak = find_leakage({k: v for k, v in sections.items() if k in SECTIONS}, group_key)
    parts = []
    if leak["images"]:
        first = ", ".join(" = ".join(f"{s} entry {n} ({Path(p).name})" for s, n, p in hits) for hits in leak["images"][:shown])
        parts.append(f"{len(leak['images'])} image(s) in more than one split (same file or same bytes), e.g. {first}")
    if leak["groups"]:
        first = ", ".join(f"'{g}' in " + " and ".join(sorted({s for s, _ in hits})) for g, hits in leak["groups"][:shown])
        parts.append(f"{len(leak['groups'])} patient(s) ('{group_key}') in more than one split, e.g. {first}")
    if parts:
        logger.warning("%s: split leakage: %s; validation and test figures will be optimistic (re-split with "
                       "`python -m monai_breastlt split`, which keeps a patient in one split).", where, "; ".join(parts))
    return leak


def check_datalist(
    path: str | os.PathLike, pool: str | os.PathLike | None = None, required: Sequence[str] = ("training",)
) -> dict[str, Any]:
    """Everything a run checks before its long work: the datalist's structure, every file of every section (and of
    the pool), non-empty ``required`` sections, and split leakage (warned).

    Args:
        path: the datalist JSON.
        pool: a synthetic pool manifest whose classes must equal the datalist's (``None`` or a missing file: none).
        required: sections that must hold entries.

    Returns:
        the datalist (as :func:`~monai_breastlt.data.load_datalist_file` reads it).

    Raises:
        FileNotFoundError: no datalist at ``path``.
        ValueError: a bad entry, an unusable file (all of them listed), or a missing or empty required section.
    """
    doc = load_datalist_file(path)
    for s in required:
        if not doc.get(s):
            present = ", ".join(f"{k} {len(v)}" for k, v in doc.items() if isinstance(v, list) and k != "classes")
            raise ValueError(f"{path}: section '{s}' is {'empty' if s in doc else 'missing'} (present: {present}); a run needs "
                             f"{' and '.join(required)} entries: split the data again with non-zero fractions for them.")
    sections = {k: v for k, v in doc.items() if isinstance(v, list) and k != "classes"}
    if pool is not None and Path(pool).is_file():
        sections[f"pool {pool}"] = load_pool_items(pool, doc["classes"], check_files=False)
    check_image_files(sections, str(path))
    warn_leakage(sections, str(path))
    return doc
