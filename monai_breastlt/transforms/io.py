"""Reading ultrasound files: PNG/JPEG as rows x columns, and DICOM (single- or multi-frame, grey, RGB or YBR) through
MONAI's ``ITKReader``, one frame per item."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ITKReader, MetaTensor, PILReader
from monai.transforms import LoadImage, MapTransform, Transform
from monai.utils import TransformBackends, ensure_tuple, optional_import
from PIL import ImageOps

itk, _ = optional_import("itk")

__all__ = [
    "DICOM_EXTENSIONS",
    "FRAME_CHOICES",
    "is_dicom",
    "dicom_header",
    "frame_index",
    "UltrasoundDicomReader",
    "LoadUltrasoundImage",
    "LoadUltrasoundImaged",
    "LoadUltrasoundImageD",
    "LoadUltrasoundImageDict",
]

DICOM_EXTENSIONS = (".dcm", ".dicom")
FRAME_CHOICES = ("first", "middle", "all")  # which frames of a multi-frame (cine) file become items
# header fields GDCM takes the pixel spacing from; without any of them ITK reports 1.0, which means "unknown"
_SPACING_TAGS = ("0028|0030", "0018|1164", "0018|2010", "0018|6011")


def ultrasound_reader() -> PILReader:
    """MONAI's ``PILReader`` reading arrays as ``(H, W)`` like the files, with a JPEG's EXIF orientation applied (a
    scan exported by a phone or a viewer may be stored sideways with an orientation tag; the viewer shows it upright)."""
    return PILReader(reverse_indexing=False, converter=ImageOps.exif_transpose)


def is_dicom(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a DICOM extension (``.dcm``, ``.dicom``)."""
    return str(path).lower().endswith(DICOM_EXTENSIONS)


def _check_readable(path: str) -> None:
    """One clear line when ``path`` is no readable DICOM image, before ITK's multi-line errors."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: DICOM file not found.")
    if not itk.GDCMImageIO.New().CanReadFile(path):
        with open(path, "rb") as f:
            head = f.read(132)
        if head[128:132] == b"DICM":
            raise ValueError(f"{path}: DICOM file holds no image GDCM can read (no pixel data: a structured report, presentation "
                             "state or other non-image object?); expected an ultrasound image.")
        raise ValueError(f"{path}: not a DICOM file (no 'DICM' marker) or not one GDCM can read; expected an ultrasound image.")


def dicom_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header facts an ultrasound pipeline needs, without reading the pixels.

    Returns:
        ``frames``, ``rows``, ``columns``, ``channels``, ``photometric`` (e.g. ``MONOCHROME2``, ``RGB``, ``YBR_FULL``),
        ``modality`` and ``pixel_spacing`` (``[row, column]`` in the header's unit, mm for ``PixelSpacing``; ``None``
        when the header states none).

    Raises:
        ValueError: the file is not DICOM, or holds no image (a structured report, no pixel data).
    """
    path = str(path)
    _check_readable(path)
    io = itk.GDCMImageIO.New()
    io.SetFileName(path)
    io.ReadImageInformation()
    md = io.GetMetaDataDictionary()
    tag = lambda k: str(md[k]).strip() if md.HasKey(k) else ""  # noqa: E731
    dims = [io.GetDimensions(i) for i in range(io.GetNumberOfDimensions())]
    row_col = [float(io.GetSpacing(1)), float(io.GetSpacing(0))]
    return {
        "frames": int(dims[2]) if len(dims) > 2 else 1,
        "rows": int(dims[1]),
        "columns": int(dims[0]),
        "channels": int(io.GetNumberOfComponents()),
        "photometric": tag("0028|0004"),
        "modality": tag("0008|0060"),
        "pixel_spacing": row_col if _states_spacing(row_col, [k for k in _SPACING_TAGS if md.HasKey(k)]) else None,
    }


def _states_spacing(row_col: Sequence[float], spacing_tags: Sequence[str]) -> bool:
    """Whether a spacing came from the header: a spacing tag, or (multi-frame files keep it in functional groups) a
    value other than ITK's default of 1."""
    return bool(spacing_tags) or any(abs(s - 1.0) > 1e-9 for s in row_col)


def frame_index(frame: str | int, frames: int, path: str = "<image>") -> int:
    """The index of ``frame`` (``"first"``, ``"middle"`` or an index) in a file of ``frames`` frames.

    Raises:
        ValueError: an index outside the file, or an unknown policy (``"all"`` is expanded in the datalist, not here).
    """
    if isinstance(frame, str):
        if frame not in ("first", "middle"):
            raise ValueError(f"{path}: frame '{frame}' is not 'first', 'middle' or a frame index.")
        return 0 if frame == "first" else (frames - 1) // 2
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= frame < frames:
        raise ValueError(f"{path}: frame {frame!r} is not a frame index in [0, {frames - 1}].")
    return int(frame)


class UltrasoundDicomReader(ITKReader):
    """
    MONAI's ``ITKReader`` for ultrasound DICOM: every frame of a single- or multi-frame file, in the orientation of
    a PNG of the same screen (rows x columns), frames last.

    ``get_data`` returns ``(rows, columns, frames)`` for grey files and ``(rows, columns, frames, 3)`` for colour
    ones (GDCM decodes YBR to RGB; ``EnsureGrayscale`` then averages the channels); ``MONOCHROME1`` is inverted so that
    bright is echogenic. The metadata holds ``frames``, ``photometric`` and, when the header states one,
    ``pixel_spacing`` (``[row, column]``), and the affine carries that spacing.
    A file that is no DICOM image (a structured report, no pixel data) raises one ``ValueError`` naming it.

    Args:
        kwargs: passed to ``ITKReader`` (``reverse_indexing`` is fixed: numpy order, frames first, then moved last).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.pop("reverse_indexing", None)
        super().__init__(reverse_indexing=True, **kwargs)

    def verify_suffix(self, filename: Sequence[os.PathLike] | os.PathLike) -> bool:
        return all(is_dicom(f) for f in ensure_tuple(filename))

    def read(self, data: Sequence[os.PathLike] | os.PathLike, **kwargs: Any):
        for f in ensure_tuple(data):
            _check_readable(str(f))
        return super().read(data, **kwargs)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        data, meta = super().get_data(img)  # numpy order: (frames, rows, columns[, channels])
        data = np.moveaxis(data, 0, 2)
        photometric = str(meta.get("0028|0004", "")).strip()
        if photometric == "MONOCHROME1":
            data = data.max() - data
        spacing = np.asarray(meta.get("spacing", [1.0, 1.0, 1.0]), dtype=float)  # ITK order: (column, row, frame)
        row_col = [float(spacing[1]), float(spacing[0])]
        affine = np.diag([*row_col, 1.0, 1.0])
        meta.update({"spacing": np.asarray([*row_col, 1.0]), "affine": affine, "original_affine": affine.copy(),
                     "spatial_shape": np.asarray(data.shape[:3]), "frames": int(data.shape[2]), "photometric": photometric})
        if _states_spacing(row_col, [k for k in _SPACING_TAGS if k in meta]):
            meta["pixel_spacing"] = row_col
        return data, meta


def _select_frame(img: MetaTensor, frame: str | int) -> MetaTensor:
    """``(C, rows, columns, frames)`` -> ``(C, rows, columns)``: one frame, with a 2D affine and the frame recorded."""
    src = str(img.meta.get("filename_or_obj", "<image>"))
    k = 0 if img.shape[-1] == 1 else frame_index(frame, img.shape[-1], src)  # a single-frame file serves every frame
    out = img[..., k].clone()
    if isinstance(out, MetaTensor):
        affine = torch.as_tensor(img.affine, dtype=torch.float64)
        out.affine = affine[[0, 1, 3]][:, [0, 1, 3]]
        out.meta["spatial_shape"] = np.asarray(out.shape[1:])
        out.meta["frame"] = k
    return out


class LoadUltrasoundImage(Transform):
    """
    Load an ultrasound image channel-first: PNG/JPEG/BMP with :func:`ultrasound_reader` (rows x columns, as
    the file, EXIF orientation applied), DICOM with :py:class:`UltrasoundDicomReader` (one frame), other formats with MONAI's default readers.

    Args:
        frame: the frame of a multi-frame DICOM when the call names none: ``"first"``, ``"middle"`` or an index.
        dtype: the loaded data type.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, frame: str | int = "middle", dtype: Any = np.float32) -> None:
        if frame == "all":
            raise ValueError("frame 'all' makes one item per frame: expand the datalist (data.expand_dicom_frames), then load each.")
        self.frame = frame
        self.loader = LoadImage(reader=ultrasound_reader(), image_only=True, ensure_channel_first=True, dtype=dtype)
        self.dicom_reader = UltrasoundDicomReader()

    def __call__(self, filename: str | os.PathLike | Sequence[str], frame: str | int | None = None) -> MetaTensor:
        """Load ``filename`` (several files: stacked as channels); ``frame`` overrides the constructor's for a DICOM."""
        names = ensure_tuple(filename)
        if names and all(is_dicom(f) for f in names):
            # the reader named at run time: a bad DICOM raises its own one-line error, no fallback to other readers
            img = self.loader(filename, reader=self.dicom_reader)
            return _select_frame(img, self.frame if frame is None else frame)
        return self.loader(filename)


class LoadUltrasoundImaged(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`LoadUltrasoundImage`; a DICOM's frame is the item's ``frame_key`` field
    (written by ``data.expand_dicom_frames``), else ``frame``.

    Args:
        keys: the keys of file paths to load.
        frame: the frame of a multi-frame DICOM whose item names none: ``"first"``, ``"middle"`` or an index.
        frame_key: the item field holding a frame index.
        dtype: the loaded data type.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = LoadUltrasoundImage.backend

    def __init__(self, keys: KeysCollection, frame: str | int = "middle", frame_key: str = "frame", dtype: Any = np.float32,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.frame_key = frame_key
        self.loader = LoadUltrasoundImage(frame, dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], d.get(self.frame_key))
        return d


LoadUltrasoundImageD = LoadUltrasoundImageDict = LoadUltrasoundImaged
