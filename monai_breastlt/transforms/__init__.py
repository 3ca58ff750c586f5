from __future__ import annotations

from .preprocess import (
    EnsureGrayscale,
    EnsureGrayscaled,
    EnsureGrayscaleD,
    EnsureGrayscaleDict,
    PRESCALED_KEY,
    ScaleUltrasoundIntensity,
    ScaleUltrasoundIntensityd,
    ScaleUltrasoundIntensityD,
    ScaleUltrasoundIntensityDict,
    ValidateUltrasoundd,
    ValidateUltrasoundD,
    ValidateUltrasoundDict,
    ultrasound_preprocessing,
)
from .io import (
    DICOM_EXTENSIONS,
    LoadUltrasoundImage,
    LoadUltrasoundImaged,
    LoadUltrasoundImageD,
    LoadUltrasoundImageDict,
    UltrasoundDicomReader,
    dicom_header,
    is_dicom,
)
from .screen import (
    OVERLAY_KEY,
    CropScanArea,
    CropScanAread,
    CropScanAreaD,
    CropScanAreaDict,
    DetectOverlays,
    MaskOverlays,
    MaskOverlaysd,
    MaskOverlaysD,
    MaskOverlaysDict,
    inpaint,
    scan_area_box,
    scan_flags,
)
from .sketch import (
    ExtractSketch,
    ExtractSketchd,
    ExtractSketchD,
    ExtractSketchDict,
    RandSketchPerturb,
    RandSketchPerturbd,
    RandSketchPerturbD,
    RandSketchPerturbDict,
    SketchTargetd,
    SketchTargetD,
    SketchTargetDict,
    mask_contour,
)
from .speckle import RandSpeckleNoise, RandSpeckleNoised, RandSpeckleNoiseD, RandSpeckleNoiseDict
