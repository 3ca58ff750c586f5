"""DICOM entries of a datalist: one entry per file, or per frame of a cine loop, with the header's pixel spacing."""

from __future__ import annotations

from collections.abc import Sequence

from monai_breastlt.transforms.io import FRAME_CHOICES, dicom_header, frame_index, is_dicom

__all__ = ["expand_dicom_frames"]


def expand_dicom_frames(items: Sequence[dict], frames: str = "middle") -> list[dict]:
    """Give every DICOM entry without a ``frame`` field its frame(s), reading each file's header once.

    ``"first"`` and ``"middle"`` set one frame per file; ``"all"`` makes one entry per frame, in one patient ``group``
    (the file's, unless the entry has one), so that the frames of a loop never span two splits. The header's pixel
    spacing (``[row, column]``) goes to ``pixel_spacing`` where it states one. Other entries are returned unchanged.

    Args:
        items: datalist entries.
        frames: ``"first"``, ``"middle"`` or ``"all"``.

    Raises:
        ValueError: an unknown ``frames``, or a file that is no DICOM image (the message names it).
    """
    if frames not in FRAME_CHOICES:
        raise ValueError(f"frames must be one of {FRAME_CHOICES}, got '{frames}'.")
    out: list[dict] = []
    for item in items:
        if "frame" in item or not isinstance(item.get("image"), str) or not is_dicom(item["image"]):
            out.append(item)
            continue
        head = dicom_header(item["image"])
        extra = {"pixel_spacing": head["pixel_spacing"]} if head["pixel_spacing"] else {}
        if frames == "all":
            group = item.get("group", item["image"])
            out += [{**item, **extra, "frame": k, "group": group} for k in range(head["frames"])]
        else:
            out.append({**item, **extra, "frame": frame_index(frames, head["frames"], item["image"])})
    return out
