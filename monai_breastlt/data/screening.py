"""Scan filtering before anything is learnt: which images of a data set are colour Doppler, split-screen dual views or
near-blank frames (:func:`~monai_breastlt.transforms.screen.scan_flags`)."""

from __future__ import annotations

from collections.abc import Sequence

from monai_breastlt.transforms.io import LoadUltrasoundImage
from monai_breastlt.transforms.screen import scan_flags

__all__ = ["SCAN_FLAGS", "screen_items", "format_screening"]

SCAN_FLAGS = ("colour", "split_screen", "blank")


def screen_items(items: Sequence[dict], frame: str = "middle") -> dict[str, list[str]]:
    """The entries of each scan flag, by image (``path`` or ``path frame K``).

    Args:
        items: datalist entries (their ``frame`` field picks a DICOM frame).
        frame: the frame of a DICOM entry without one.

    Returns:
        ``{flag: [image, ...]}`` for every flag of :data:`SCAN_FLAGS`, and ``"checked"`` with every image looked at.
    """
    load = LoadUltrasoundImage(frame)
    out: dict[str, list[str]] = {f: [] for f in (*SCAN_FLAGS, "checked")}
    for item in items:
        name = item["image"] + (f" frame {item['frame']}" if "frame" in item else "")
        flags = scan_flags(load(item["image"], item.get("frame")))
        out["checked"].append(name)
        for f in SCAN_FLAGS:
            if flags[f]:
                out[f].append(name)
    return out


def format_screening(result: dict[str, list[str]], show: int = 3) -> str:
    """One line per flag: its count and the first ``show`` images."""
    lines = [f"scan filter: {len(result['checked'])} images checked"]
    labels = {"colour": "colour Doppler / colour-mapped", "split_screen": "split-screen dual view", "blank": "near-blank"}
    for f in SCAN_FLAGS:
        names = result[f]
        first = f" (e.g. {', '.join(names[:show])})" if names else ""
        lines.append(f"  {labels[f]}: {len(names)}{first}")
    return "\n".join(lines)
