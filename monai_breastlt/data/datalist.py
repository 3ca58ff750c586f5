"""Datalists: scan image folders, read/write MONAI datalist JSON and CSV, validate entries.

An entry is a dict with ``image`` (path), ``label`` (int index into the class list), ``class_name``,
``source`` (``"real"`` or ``"synthetic"``) and optionally ``mask`` (a path, or a list of paths that are
merged), ``group`` (patient id: one patient never spans two splits) and any extra metadata.
A datalist file is MONAI's decathlon layout plus the class list::

    {"classes": ["cyst", ...], "training": [...], "validation": [...], "test": [...]}
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import numbers
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from monai_breastlt.transforms.preprocess import PRESCALED_KEY  # the datalist field the loaders read
from monai_breastlt.utils import atomic_open, atomic_write_json, read_json

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "SECTIONS",
    "is_image_file",
    "scan_class_folder",
    "inference_items",
    "load_datalist",
    "load_datalist_file",
    "write_datalist",
    "read_csv_datalist",
    "write_csv_datalist",
    "validate_items",
    "deduplicate_by_hash",
    "merge_rare_classes",
    "load_mixed_datalist",
    "load_pool_items",
    "load_training_data",
    "check_classes",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm", ".dicom")
SECTIONS = ("training", "validation", "test")
_PATH_KEYS = ("image", "mask", "sketch")
_MASK_RE = re.compile(r"^(?P<stem>.+)_mask(_\d+)?$")


def _split_ext(name: str) -> tuple[str, str]:
    """``"a.nii.gz" -> ("a", ".nii.gz")``; the extension is lower-cased."""
    lower = name.lower()
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return name[: -len(ext)], ext
    return os.path.splitext(name)[0], os.path.splitext(name)[1].lower()


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS`."""
    return _split_ext(Path(path).name)[1] in IMAGE_EXTENSIONS


def scan_class_folder(
    root: str | os.PathLike, classes: Sequence[str] | None = None, mask_suffix: str = "_mask"
) -> tuple[list[dict], list[str]]:
    """Read a BUSI-style folder ``ROOT/<class>/<name>.<ext>`` with optional masks ``<name>_mask[_N].<ext>``.

    Several masks of one image (``_mask``, ``_mask_1``, ...) are returned as a list under ``mask``; the
    loading transforms merge them. Classes are the sub-folder names in sorted order unless given.

    Args:
        root: the data folder.
        classes: class names in label order; each must be a sub-folder. Default: all sub-folders, sorted.
        mask_suffix: suffix that marks a mask file.

    Raises:
        FileNotFoundError: ``root`` or a named class folder does not exist.
        ValueError: no class folders, or a class folder holds no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data folder not found (expected ROOT/<class>/<image files>).")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
    if not classes:
        raise ValueError(f"{root}: no class sub-folders found (expected ROOT/<class>/<image files>).")
    check_classes(classes, f"{root}: classes")
    mask_re = re.compile(rf"^(?P<stem>.+){re.escape(mask_suffix)}(_\d+)?$")
    items: list[dict] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: class folder '{name}' not found under {root}.")
        images: dict[str, Path] = {}
        masks: dict[str, list[Path]] = {}
        for f in sorted(folder.iterdir()):
            if not f.is_file() or not is_image_file(f):
                continue
            stem, _ = _split_ext(f.name)
            m = mask_re.match(stem)
            if m:
                masks.setdefault(m.group("stem"), []).append(f)
            else:
                images[stem] = f
        if not images:
            raise ValueError(f"{folder}: class '{name}' has no images (extensions {', '.join(IMAGE_EXTENSIONS)}).")
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise ValueError(f"{folder}: mask files without an image: {', '.join(orphans[:5])}.")
        for stem, path in images.items():
            item: dict[str, Any] = {"image": str(path), "label": label, "class_name": name, "source": "real"}
            if stem in masks:
                ms = [str(p) for p in masks[stem]]
                item["mask"] = ms[0] if len(ms) == 1 else ms
            items.append(item)
    return items, list(classes)


def _resolve(item: dict, base: Path) -> dict:
    out = dict(item)
    for k in _PATH_KEYS:
        v = out.get(k)
        if isinstance(v, str) and v and not os.path.isabs(v):
            out[k] = str(base / v)
        elif isinstance(v, list):
            out[k] = [str(base / p) if not os.path.isabs(p) else p for p in v]
    return out


def _relativize(item: dict, base: Path) -> dict:
    out = dict(item)
    for k in _PATH_KEYS:
        v = out.get(k)
        if isinstance(v, str) and v:
            out[k] = _rel(v, base)
        elif isinstance(v, list):
            out[k] = [_rel(p, base) for p in v]
    return out


def _rel(path: str, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return path


def write_datalist(
    path: str | os.PathLike, sections: dict[str, list[dict]], classes: Sequence[str], **extra: Any
) -> Path:
    """Write a datalist JSON atomically; paths are stored relative to the file's folder.

    Args:
        path: destination ``.json``.
        sections: e.g. ``{"training": [...], "validation": [...], "test": [...]}``.
        classes: class names in label order.
        extra: further top-level keys (e.g. the split settings) kept for provenance.
    """
    path = Path(path)
    base = path.parent.resolve()
    doc: dict[str, Any] = {"classes": list(classes), **extra}
    for name, items in sections.items():
        doc[name] = [_relativize(i, base) for i in items]
    atomic_write_json(doc, path)
    return path


def check_classes(classes: Any, where: str) -> list[str]:
    """Refuse a class list that is not a non-empty list of distinct, non-empty names.

    A name given twice would make two outputs of one class and map a label given by name to the last one.

    Raises:
        ValueError: naming ``where``, the entry and what is wrong.
    """
    if not isinstance(classes, (list, tuple)) or not classes:
        raise ValueError(f"{where}: missing or invalid 'classes' (expected a non-empty list of class names), got {classes!r}.")
    seen: dict[str, int] = {}
    for n, c in enumerate(classes):
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"{where}: 'classes' entry {n} is {c!r}; every class needs a non-empty name.")
        if c in seen:
            raise ValueError(f"{where}: 'classes' names '{c}' twice (entries {seen[c]} and {n}); class names must be distinct.")
        seen[c] = n
    return list(classes)


def load_datalist_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a whole datalist JSON: ``classes`` plus any of the sections, paths made absolute."""
    path = Path(path)
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object with 'classes' and sections {SECTIONS}.")
    classes = check_classes(doc.get("classes"), str(path))
    for s in SECTIONS:  # a known section that is not a list would otherwise be dropped without a word
        if s in doc and not isinstance(doc[s], list):
            raise ValueError(f"{path}: section '{s}' is {type(doc[s]).__name__} {_preview(doc[s])}, expected a list of entries.")
    sections = [k for k, v in doc.items() if isinstance(v, list) and k != "classes"]
    if not sections:
        raise ValueError(f"{path}: no data sections (expected at least one of {SECTIONS}).")
    base = path.parent.resolve()
    for s in sections:
        doc[s] = validate_items([_resolve(i, base) if isinstance(i, dict) else i for i in doc[s]], classes, f"{path}[{s}]")
    return doc


def _preview(value: Any, limit: int = 40) -> str:
    """A short JSON rendering of ``value`` for messages."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_datalist(path: str | os.PathLike, section: str = "training") -> tuple[list[dict], list[str]]:
    """Return ``(items, classes)`` of one section of a datalist JSON.

    Raises:
        KeyError: the section is missing (the message lists those present).
    """
    doc = load_datalist_file(path)
    if section not in doc:
        present = [k for k, v in doc.items() if isinstance(v, list) and k != "classes"]
        raise KeyError(f"{path}: section '{section}' not found (present: {', '.join(present)}).")
    return doc[section], doc["classes"]


def load_items_for_classes(path: str | os.PathLike, section: str, classes: Sequence[str]) -> list[dict]:
    """The entries of one section of a datalist whose class list must be ``classes`` (a model's), in that order: a
    test set labelled with other names or another order would be scored against the wrong classes.

    Raises:
        ValueError: naming the datalist and the classes that differ.
    """
    items, found = load_datalist(path, section)
    if list(found) != list(classes):
        missing, extra = [c for c in classes if c not in found], [c for c in found if c not in classes]
        detail = f"missing {missing}, unknown {extra}" if missing or extra else "same names in another order"
        raise ValueError(f"{path}: its classes differ from the model's ({detail}); map its labels onto the model's "
                         "classes first (bench lt --test DATALIST --class-map JSON does).")
    return items


def inference_items(folder: str | os.PathLike, section: str = "test") -> list[dict]:
    """The images to classify: the ``section`` entries of a datalist JSON given as ``folder``, or of
    ``<folder>/datalist.json`` when there is one, else every image file under ``folder`` (sorted, sub-folders included;
    ``*_mask`` files and hidden folders are left out), with no label needed.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: it holds no image file.
    """
    folder = Path(folder)
    if folder.suffix == ".json":
        return load_datalist(folder, section)[0]
    if (folder / "datalist.json").is_file():
        return load_datalist(folder / "datalist.json", section)[0]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found (expected a folder of images, or one with datalist.json).")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and is_image_file(p) and not _MASK_RE.match(_split_ext(p.name)[0])
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise ValueError(f"{folder}: no image files (extensions {', '.join(IMAGE_EXTENSIONS)}) and no datalist.json.")
    return [{"image": str(p)} for p in files]


def validate_items(items: Iterable[Any], classes: Sequence[str], where: str = "datalist", check_files: bool = False) -> list[dict]:
    """Check entries: required keys, label range, class name agreement, duplicates, optional file existence.

    Fills ``class_name`` from the label and ``source`` with ``"real"`` when absent. A label may be given as
    a class name; it is converted to its index.

    Raises:
        ValueError: with ``where``, the entry index and the field at fault.
    """
    out: list[dict] = []
    seen: dict[str, int] = {}
    index = {c: i for i, c in enumerate(check_classes(classes, where))}
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{where}: entry {n} is {type(item).__name__}, expected an object with 'image' and 'label'.")
        for key in ("image", "label"):
            if key not in item:
                raise ValueError(f"{where}: entry {n} has no '{key}' field (keys present: {sorted(item)}).")
        item = _checked_paths(dict(item), f"{where}: entry {n}")
        label = item["label"]
        if isinstance(label, str):
            if label not in index:
                raise ValueError(f"{where}: entry {n} ({item['image']}): label '{label}' is not in the class list {list(classes)}.")
            label = index[label]
        if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < len(classes):
            kind = "an integer class index" if not isinstance(label, numbers.Integral) or isinstance(label, bool) else "a class index"
            raise ValueError(
                f"{where}: entry {n} ({item['image']}): label {label!r} is not {kind} in [0, {len(classes) - 1}] (or a class name)."
            )
        item["label"] = int(label)
        name = item.setdefault("class_name", classes[label])
        if name != classes[label]:
            raise ValueError(
                f"{where}: entry {n} ({item['image']}): class_name '{name}' disagrees with label {label} ('{classes[label]}')."
            )
        source = item.setdefault("source", "real")
        if source not in ("real", "synthetic"):
            raise ValueError(f"{where}: entry {n} ({item['image']}): source '{source}' is not 'real' or 'synthetic'.")
        if not isinstance(item.get(PRESCALED_KEY, False), bool):
            raise ValueError(
                f"{where}: entry {n} ({item['image']}): {PRESCALED_KEY} {item[PRESCALED_KEY]!r} is not true or false "
                "(true: the file holds intensities already scaled to [0, 1], as synthetic pools do)."
            )
        key = str(item["image"]) + (f" frame {item['frame']}" if "frame" in item else "")  # a cine loop: one entry per frame
        if key in seen:
            raise ValueError(f"{where}: duplicate entry for image {key} (entries {seen[key]} and {n}).")
        frame = item.get("frame", 0)
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise ValueError(f"{where}: entry {n} ({item['image']}): frame {frame!r} is not a frame index (an integer >= 0).")
        seen[key] = n
        if check_files:
            for k in _PATH_KEYS:
                paths = item.get(k)
                for p in [paths] if isinstance(paths, str) else paths or []:
                    if not os.path.isfile(p):
                        raise FileNotFoundError(f"{where}: entry {n}: {k} file {p} does not exist.")
        out.append(item)
    return out


def _checked_paths(item: dict, where: str) -> dict:
    """``image`` must be a non-empty path; ``mask``/``sketch`` too when present (``null``: no such file)."""
    for key in _PATH_KEYS:
        if key not in item:
            continue
        value = item[key]
        if value is None and key != "image":
            del item[key]
            continue
        values = value if isinstance(value, list) and key != "image" else [value]
        for v in values:
            if isinstance(v, os.PathLike):
                v = os.fspath(v)
            if not isinstance(v, str) or not v.strip():
                raise ValueError(f"{where}: '{key}' is {_preview(v)}, expected a file path.")
        item[key] = [os.fspath(v) for v in values] if isinstance(value, list) and key != "image" else os.fspath(value)
    return item


def read_csv_datalist(
    path: str | os.PathLike,
    image_col: str = "image",
    label_col: str = "label",
    mask_col: str | None = None,
    group_col: str | None = None,
    classes: Sequence[str] | None = None,
    image_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    image_template: str = "{}",
    mask_template: str = "{}",
) -> tuple[list[dict], list[str]]:
    """Read a CSV (one image per row) into entries.

    Args:
        path: the CSV file.
        image_col, label_col: column names of the image file (or id) and of the class name.
        mask_col, group_col: optional columns for the mask file and the patient/group id.
        classes: class names in label order; default: sorted by decreasing count, then name.
        image_dir, mask_dir: folders that relative file names are joined to (default: the CSV's folder).
        image_template, mask_template: format strings applied to the column value, e.g. ``"{}.png"``.

    Raises:
        ValueError: a required column is missing (the message names the present columns), or a label is
            not in ``classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CSV file not found.")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: the CSV has no rows.")
    for col in (image_col, label_col, mask_col, group_col):
        if col is not None and col not in rows[0]:
            raise ValueError(f"{path}: column '{col}' not found (columns: {', '.join(rows[0])}).")
    for n, r in enumerate(rows):
        for col in (image_col, label_col):
            if not (r[col] or "").strip():  # an empty class name, or an entry without a file
                raise ValueError(f"{path}: line {n + 2}: column '{col}' is empty; every row needs an image and a class name.")
    if classes is None:
        counts = Counter(r[label_col] for r in rows)
        classes = sorted(counts, key=lambda c: (-counts[c], c))
    img_base = Path(image_dir) if image_dir is not None else path.parent
    mask_base = Path(mask_dir) if mask_dir is not None else path.parent
    items = []
    for r in rows:
        item: dict[str, Any] = {"image": str(img_base / image_template.format(r[image_col])), "label": r[label_col]}
        if mask_col is not None and r[mask_col]:
            item["mask"] = str(mask_base / mask_template.format(r[mask_col]))
        if group_col is not None:
            item["group"] = r[group_col]
        items.append(item)
    return validate_items(items, classes, str(path)), list(classes)


def write_csv_datalist(path: str | os.PathLike, items: Sequence[dict]) -> Path:
    """Write entries as CSV (atomically); list-valued fields are joined with ``;``."""
    path = Path(path)
    cols: list[str] = []
    for i in items:
        cols += [k for k in i if k not in cols]
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for i in items:
            w.writerow({k: ";".join(map(str, v)) if isinstance(v, list) else v for k, v in i.items()})
    return path


def deduplicate_by_hash(items: Sequence[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Drop entries whose image bytes equal an earlier entry's (BUSI has such pairs, even across classes).

    Returns:
        the kept entries and the ``(dropped, kept)`` path pairs.
    """
    seen: dict[str, str] = {}
    kept, dropped = [], []
    for item in items:
        with open(item["image"], "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        if digest in seen:
            dropped.append((item["image"], seen[digest]))
            continue
        seen[digest] = item["image"]
        kept.append(item)
    return kept, dropped


def merge_rare_classes(
    items: Sequence[dict], classes: Sequence[str], min_count: int, other_name: str = "other"
) -> tuple[list[dict], list[str]]:
    """Merge every class with fewer than ``min_count`` entries into one ``other_name`` class (placed last).

    Report this merge wherever results are given: it changes what the tail means.
    """
    counts = Counter(i["label"] for i in items)
    keep = [c for i, c in enumerate(classes) if counts.get(i, 0) >= min_count]
    rare = [c for i, c in enumerate(classes) if counts.get(i, 0) < min_count and counts.get(i, 0) > 0]
    if not rare:
        return [dict(i) for i in items], list(classes)
    new_classes = keep + [other_name]
    index = {c: n for n, c in enumerate(new_classes)}
    out = []
    for i in items:
        name = classes[i["label"]]
        new_name = name if name in index else other_name
        out.append({**i, "label": index[new_name], "class_name": new_name, "original_class": name})
    return out, new_classes



def load_mixed_datalist(
    datalist: str | os.PathLike, pool: str | os.PathLike | None = None, section: str = "training", check_files: bool = True
) -> tuple[list[dict], list[str]]:
    """Real entries of one section followed by a synthetic pool's entries (the layout the sampler indexes).

    Args:
        datalist: the real datalist JSON.
        pool: a synthetic pool's datalist JSON (``generate`` writes one); ``None`` or a missing file: real only.
        section: the real section.
        check_files: fail early, naming the entry, if a pool entry points at a missing file.

    Raises:
        ValueError: the pool's classes differ from the datalist's.
    """
    items, classes = load_datalist(datalist, section)
    if pool is None or not Path(pool).is_file():
        return items, classes
    syn = load_pool_items(pool, classes, check_files, datalist)
    unmarked = sum(PRESCALED_KEY not in i for i in syn)
    if unmarked:  # pools written before the flag existed: still usable, but read as real scans are
        logger.warning(
            f"{pool}: {unmarked} of {len(syn)} synthetic entries have no '{PRESCALED_KEY}' field, so each image is stretched to "
            "its own min and max like a real scan; pools from `generate` mark it (true: divided by 255, as written)."
        )
    return items + syn, classes


def load_pool_items(
    pool: str | os.PathLike, classes: Sequence[str], check_files: bool = True, datalist: str | os.PathLike | None = None
) -> list[dict]:
    """Every entry of a synthetic pool manifest, marked ``source: synthetic``, checked against ``classes``.

    Args:
        pool: the manifest (``generate`` writes ``POOL/pool.json``).
        classes: the class list of the real datalist the pool goes with.
        check_files: fail early, naming the entry, if an entry points at a missing file.
        datalist: the real datalist, for the message.

    Raises:
        ValueError: the pool's classes (or their order) differ from ``classes``: its labels would mean other classes.
    """
    doc = load_datalist_file(pool)
    if doc["classes"] != list(classes):
        order = " (same names, another order: its labels would mean other classes)" if sorted(doc["classes"]) == sorted(classes) else ""
        raise ValueError(f"{pool}: pool classes {doc['classes']} differ from {datalist or 'the datalist'} classes {list(classes)}{order}.")
    syn = [i for k, v in doc.items() if isinstance(v, list) and k != "classes" for i in v]
    return validate_items([{**i, "source": "synthetic"} for i in syn], classes, str(pool), check_files=check_files)


def load_training_data(
    datalist: str | os.PathLike,
    pool: str | os.PathLike | None = None,
    section: str = "training",
    head_ratio: float = 0.5,
    tail_ratio: float = 0.1,
) -> dict[str, Any]:
    """Everything a classification config needs from the data in one object.

    Returns:
        ``{"items", "classes", "real_counts", "groups", "synthetic_count"}``: real entries then the pool's,
        the class names, the real training count per class and its head/medium/tail groups.
    """
    from monai_breastlt.data.profile import long_tail_profile  # profile imports nothing of this module

    items, classes = load_mixed_datalist(datalist, pool, section)
    prof = long_tail_profile([i["label"] for i in items if i["source"] == "real"], classes, head_ratio, tail_ratio)
    synthetic = Counter(i["label"] for i in items if i["source"] == "synthetic")
    for c, name in enumerate(classes):
        if prof.counts[c] == 0:
            what = (f"it is learnt from its {synthetic[c]} synthetic images only" if synthetic[c]
                    else "no real or synthetic image: the classifier never sees it and its recall will be 0")
            logger.warning(f"{datalist}: class '{name}' has no real image in section '{section}'; {what}.")
    return {
        "items": items,
        "classes": classes,
        "real_counts": prof.counts,
        "groups": prof.groups,
        "synthetic_count": sum(i["source"] == "synthetic" for i in items),
    }
