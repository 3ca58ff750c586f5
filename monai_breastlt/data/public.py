"""Readers for the public breast-ultrasound sets (BUS-BRA, BUSI) into the package's datalist entries."""

from __future__ import annotations

import os
from pathlib import Path

from monai_breastlt.data.dicom import expand_dicom_frames
from monai_breastlt.data.datalist import (
    deduplicate_by_hash,
    load_datalist_file,
    merge_rare_classes,
    read_csv_datalist,
    scan_class_folder,
)

__all__ = ["read_busbra", "read_busi"]


def read_busbra(
    root: str | os.PathLike, label_column: str = "Histology", min_count: int = 0, other_name: str = "other"
) -> tuple[list[dict], list[str]]:
    """Read BUS-BRA (``bus_data.csv``, ``Images/``, ``Masks/``): one entry per image, grouped by patient (``Case``).

    Args:
        root: the BUS-BRA folder.
        label_column: ``Histology`` (27 subtypes, long-tailed), ``Pathology`` or ``BIRADS``.
        min_count: subtypes with fewer images are merged into ``other_name`` (0: keep all). Say so in results.
        other_name: the merged class's name.
    """
    root = Path(root)
    csv_path = root / "bus_data.csv"
    items, classes = read_csv_datalist(
        csv_path,
        image_col="ID",
        label_col=label_column,
        mask_col="ID",
        group_col="Case",
        image_dir=root / "Images",
        mask_dir=root / "Masks",
        image_template="{}.png",
        mask_template="{}.png",
    )
    for item in items:  # masks are named mask_XXXX-s.png for image bus_XXXX-s.png
        name = Path(item["mask"]).name.replace("bus_", "mask_", 1)
        item["mask"] = str(root / "Masks" / name)
        item["group"] = f"busbra_{item['group']}"
    if min_count > 0:
        items, classes = merge_rare_classes(items, classes, min_count, other_name)
    return items, classes


def read_busi(root: str | os.PathLike, deduplicate: bool = True) -> tuple[list[dict], list[str]]:
    """Read BUSI (``<class>/<class> (N).png``, masks optional), dropping byte-identical duplicates."""
    items, classes = scan_class_folder(root)
    if deduplicate:
        items, _ = deduplicate_by_hash(items)
    return items, classes


def read_any_source(source: str | os.PathLike, min_count: int = 0, frames: str = "middle") -> tuple[dict[str, list[dict]], list[str]]:
    """Sections and class names of a datalist JSON, a folder holding ``datalist.json``, a BUS-BRA folder, a CSV or a
    ``ROOT/<class>/`` folder. Unsplit sources come back as one section ``"all"``. DICOM entries without a ``frame``
    get theirs (:func:`~monai_breastlt.data.dicom.expand_dicom_frames`).

    Args:
        source: the path.
        min_count: BUS-BRA only: merge classes with fewer images into ``other`` (refused for other sources).
        frames: the frames of multi-frame DICOM files that become entries: ``"first"``, ``"middle"`` or ``"all"``.
    """
    sections, classes = _read_source(source, min_count)
    return {k: expand_dicom_frames(v, frames) for k, v in sections.items()}, classes


def _read_source(source: str | os.PathLike, min_count: int = 0) -> tuple[dict[str, list[dict]], list[str]]:
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such data source (datalist JSON, data folder, BUS-BRA folder or CSV).")
    if path.is_dir() and (path / "datalist.json").is_file():
        path = path / "datalist.json"
    is_busbra = path.is_dir() and (path / "bus_data.csv").is_file()
    if min_count < 0:
        raise ValueError(f"min_count (--min-count) must be >= 0, got {min_count}.")
    if min_count > 0 and not is_busbra:
        kind = "datalist" if path.suffix == ".json" else "CSV" if path.suffix == ".csv" else "class folder"
        raise ValueError(f"{path}: min_count {min_count} (--min-count) merges the rare classes of a BUS-BRA folder (one holding "
                         f"bus_data.csv) only; this source is a {kind}, whose classes are used as they are: leave it out.")
    if path.suffix == ".json":
        doc = load_datalist_file(path)
        return {k: v for k, v in doc.items() if isinstance(v, list) and k != "classes"}, doc["classes"]
    if path.suffix == ".csv":
        items, classes = read_csv_datalist(path)
    elif is_busbra:
        items, classes = read_busbra(path, min_count=min_count)
    else:
        items, classes = scan_class_folder(path)
    return {"all": items}, classes
