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
