"""Loading and preprocessing of 2D ultrasound images that MONAI does not provide as such."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    Resized,
    ScaleIntensity,
    Transform,
)
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from monai_breastlt.transforms.io import LoadUltrasoundImaged, ultrasound_reader
from monai_breastlt.transforms.screen import OVERLAY_KEY, CropScanAread, MaskOverlaysd

__all__ = [
    "EnsureGrayscale",
    "EnsureGrayscaled",
    "EnsureGrayscaleD",
    "EnsureGrayscaleDict",
    "ValidateUltrasoundd",
    "ValidateUltrasoundD",
    "ValidateUltrasoundDict",
    "ScaleUltrasoundIntensity",
    "ScaleUltrasoundIntensityd",
    "ScaleUltrasoundIntensityD",
    "ScaleUltrasoundIntensityDict",
    "PRESCALED_KEY",
    "ultrasound_reader",
    "ultrasound_preprocessing",
]

logger = logging.getLogger(__name__)

# datalist field of an entry whose file already holds intensities in [0, 1] (stored x 255 in 8 bits): the synthetic
# pools ``generate`` writes. Such an image is scaled by the stored range, never stretched to its own min and max.
PRESCALED_KEY = "prescaled"


def _source(img: NdarrayOrTensor) -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<array>"))


class EnsureGrayscale(Transform):
    """
    Reduce a channel-first image to one channel: RGB(A) scans saved in colour become grey.

    An alpha channel is dropped; colour channels are averaged (ultrasound B-mode is grey in three equal
    channels, so nothing is lost). A notice is logged once per transform instance.

    Args:
        notice: log a notice the first time a multi-channel image is converted.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, notice: bool = True) -> None:
        self.notice = notice
        self._noticed = False

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if img.shape[0] == 1:
            return img
        if img.shape[0] not in (2, 3, 4):
            raise ValueError(f"{_source(img)}: expected 1 (grey), 3 (RGB) or 4 (RGBA) channels, got shape {tuple(img.shape)}.")
        if self.notice and not self._noticed:
            logger.warning("%s: %d-channel image converted to greyscale.", _source(img), img.shape[0])
            self._noticed = True
        channels = img[:3] if img.shape[0] == 4 else img[:1] if img.shape[0] == 2 else img
        return channels.float().mean(0, keepdim=True)


class EnsureGrayscaled(MapTransform):
    """Dictionary-based wrapper of :py:class:`EnsureGrayscale`."""

    backend = EnsureGrayscale.backend

    def __init__(self, keys: KeysCollection, notice: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = EnsureGrayscale(notice)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class ValidateUltrasoundd(MapTransform):
    """
    Check a loaded sample and turn masks into one binary channel.

    - the image must be 2D (a volume or a cine loop given as an image is refused, naming the file);
    - the image must be finite (no NaN/Inf);
    - several mask files (loaded as channels) are merged by their union;
    - the mask must have the image's spatial shape.

    Args:
        keys: the image key.
        mask_key: the mask key (may be absent from a sample); ``None``: no mask is loaded.
        allow_missing_keys: don't raise if the image key is missing.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, keys: KeysCollection = "image", mask_key: str | None = "mask", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            src = _source(img)
            if img.ndim != 3:  # channel-first 2D: (C, H, W)
                raise ValueError(f"{src}: image of shape {tuple(img.shape[1:])} has {img.ndim - 1} spatial dimensions, expected a 2D image.")
            t = torch.as_tensor(img)
            if not torch.isfinite(t).all():
                raise ValueError(f"{src}: image has {int((~torch.isfinite(t)).sum())} NaN/Inf pixels.")
            if self.mask_key is not None and d.get(self.mask_key) is not None:
                mask = d[self.mask_key]
                if tuple(mask.shape[1:]) != tuple(img.shape[1:]):
                    raise ValueError(
                        f"{_source(mask)}: mask shape {tuple(mask.shape[1:])} differs from image {src} shape {tuple(img.shape[1:])}."
                    )
                merged = (torch.as_tensor(mask) > 0).any(0, keepdim=True).float()
                d[self.mask_key], *_ = convert_to_dst_type(merged, mask, dtype=torch.float32)  # keeps the file's metadata
        return d


class ScaleUltrasoundIntensity(Transform):
    """
    Scale an image to [0, 1]: by its own minimum and maximum, or, for an image stored already scaled, by the stored range.

    Real B-mode scans are min-max scaled, as MONAI's ``ScaleIntensity`` does; speckle reaches nearly black and white in
    every one of them, so the scaling changes them little. An image written by a generator trained on such scaled
    images is already in that space, but without speckle its own range is narrower (a latent diffusion model's
    decoder smooths speckle away): stretching it to its own min and max would darken its lesions and shadows and raise
    its contrast, a shift a classifier trained on real images reads as another subtype. Such an image is divided by
    ``stored_max`` instead.

    Args:
        prescaled: the image is stored already scaled (``x * stored_max``); ``False``: min-max scaling.
        stored_max: the stored value of intensity 1 (255 for 8-bit files).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prescaled: bool = False, stored_max: float = 255.0) -> None:
        if stored_max <= 0:
            raise ValueError(f"stored_max must be positive, got {stored_max}.")
        self.prescaled, self.stored_max = prescaled, float(stored_max)
        self.minmax = ScaleIntensity(minv=0.0, maxv=1.0)

    def __call__(self, img: NdarrayOrTensor, prescaled: bool | None = None) -> NdarrayOrTensor:
        """Scale ``img``; ``prescaled`` overrides the constructor's setting for this call."""
        if not (self.prescaled if prescaled is None else prescaled):
            return self.minmax(img)
        t = convert_to_tensor(img, track_meta=get_track_meta())
        out = (t.float() / self.stored_max).clamp(0.0, 1.0)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class ScaleUltrasoundIntensityd(MapTransform):
    """
    Dictionary-based wrapper of :py:class:`ScaleUltrasoundIntensity`; whether a sample is stored already scaled is read
    from the sample itself (its datalist entry's ``prescaled_key``, which ``generate`` sets on synthetic images).

    Args:
        keys: the image keys to scale.
        prescaled_key: the field of a sample that marks it as stored already scaled (absent or false: min-max).
        stored_max: the stored value of intensity 1 (255 for 8-bit files).
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = ScaleUltrasoundIntensity.backend

    def __init__(
        self, keys: KeysCollection, prescaled_key: str = PRESCALED_KEY, stored_max: float = 255.0, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.prescaled_key = prescaled_key
        self.scaler = ScaleUltrasoundIntensity(stored_max=stored_max)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        prescaled = bool(d.get(self.prescaled_key, False))
        for key in self.key_iterator(d):
            d[key] = self.scaler(d[key], prescaled=prescaled)
        return d


def ultrasound_preprocessing(
    image_size: int | Sequence[int] = 64,
    image_key: str = "image",
    mask_key: str | None = "mask",
    extra_keys: Sequence[str] = (),
    crop_scan_area: bool | Sequence[int] = False,
    mask_overlays: bool | str = False,
    overlay_key: str = OVERLAY_KEY,
    frame: str | int = "middle",
    load: bool = True,
) -> Compose:
    """Load, grey, validate, resize and scale 2D ultrasound entries: the shared front of every pipeline.

    PNG/JPG/BMP are read by :func:`ultrasound_reader` so arrays are ``(H, W)`` like the files, upright; DICOM
    (``.dcm``) with :py:class:`~monai_breastlt.transforms.io.UltrasoundDicomReader`, one frame per entry (its
    ``frame`` field, else ``frame``); NIfTI, NRRD and other formats fall back to MONAI's default readers (nibabel,
    ITK). Images are scaled to [0, 1] by :py:class:`ScaleUltrasoundIntensityd` (min-max, or by the stored range for an
    entry marked ``prescaled``, as synthetic images are); masks are resized with nearest neighbour. A missing mask is
    fine.

    Scanner screens: ``crop_scan_area`` crops the scanner UI around the scan (:py:class:`CropScanAread`; a box
    ``(top, left, bottom, right)`` is the manual fallback), and ``mask_overlays`` finds calipers, text and coloured
    marks at the file's resolution, before colour is lost (:py:class:`MaskOverlaysd`: ``True`` or ``"inpaint"``,
    ``"zero"``, or ``"detect"`` to leave the image as it is), and writes their mask to ``overlay_key``.

    Args:
        image_size: output spatial size (an int for square images).
        image_key: key of the image path.
        mask_key: key of the mask path(s), or ``None``.
        extra_keys: further image-like keys to load and resize bilinearly (e.g. ``"sketch"``).
        crop_scan_area: crop to the scan area (``True``, or a manual fallback box).
        mask_overlays: mask scanner overlays (``True`` = ``"inpaint"``, ``"zero"``, ``"detect"``; ``False``: no).
        overlay_key: the item field of the overlay mask.
        frame: the frame of a multi-frame DICOM whose entry names none (``"first"``, ``"middle"`` or an index).
        load: ``False``: the entries hold channel-first arrays already, not paths.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise ValueError(f"image_size must be a positive integer (or two), got {image_size!r}.")
    keys = [image_key, *extra_keys]
    all_keys = keys + ([mask_key] if mask_key else [])
    screen: list = []
    if crop_scan_area is not False:
        box = None if crop_scan_area is True else crop_scan_area
        screen.append(CropScanAread(all_keys, source_key=image_key, box=box, allow_missing_keys=True))
    if mask_overlays is not False:
        mode = "inpaint" if mask_overlays is True else mask_overlays
        screen.append(MaskOverlaysd(image_key, overlay_key=overlay_key, mode=mode, mask_size=size))  # written at the output size
    overlay = [overlay_key] if mask_overlays is not False else []
    return Compose(
        [
            *([LoadUltrasoundImaged(all_keys, frame=frame, allow_missing_keys=True)] if load else []),
            ValidateUltrasoundd(image_key, mask_key=mask_key),
            *screen,
            EnsureGrayscaled(keys, allow_missing_keys=True),
            Resized(keys, spatial_size=size, mode="bilinear", anti_aliasing=True, allow_missing_keys=True),
            *([Resized(mask_key, spatial_size=size, mode="nearest", allow_missing_keys=True)] if mask_key else []),
            ScaleUltrasoundIntensityd(keys, allow_missing_keys=True),
            EnsureTyped(all_keys + overlay, dtype=torch.float32, track_meta=False, allow_missing_keys=True),
        ]
    )


EnsureGrayscaleD = EnsureGrayscaleDict = EnsureGrayscaled
ValidateUltrasoundD = ValidateUltrasoundDict = ValidateUltrasoundd
ScaleUltrasoundIntensityD = ScaleUltrasoundIntensityDict = ScaleUltrasoundIntensityd
