"""monai-breastlt: long-tailed breast-ultrasound lesion subtyping for MONAI.

The public API is re-exported here lazily (PEP 562): ``monai_breastlt.AdaptiveRatioSampler`` imports its
sub-package on first use, so ``import monai_breastlt.data`` does not load stable-baselines3 or MLflow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("data", "handlers", "inferers", "losses", "metrics", "networks", "pretrained", "rl", "shortcuts", "synthesis", "transforms")
_EXPORTS = {
    "data": ("AdaptiveRatioSampler", "generate_phantom", "load_datalist", "prepare_split", "scan_class_folder"),
    "handlers": ("AdaptiveSamplerHandler", "LongTailReportHandler"),
    "inferers": ("ClassSketchLatentDiffusionInferer",),
    "metrics": ("LongTailMetric", "long_tail_report"),
    "networks": ("SketchConditionedLDM", "SketchPerceptionNet"),
    "rl": ("FixedRatioPolicy", "HeuristicRatioPolicy", "MultiAgentRatioPolicy", "build_ratio_policy"),
    "shortcuts": ("ShortcutAudit",),
    "synthesis": ("SyntheticPoolGenerator",),
    "transforms": ("ExtractSketch", "ExtractSketchd", "RandSketchPerturb", "RandSketchPerturbd", "RandSpeckleNoise", "RandSpeckleNoised",
                   "LoadUltrasoundImaged", "CropScanAread", "MaskOverlaysd"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_SUBMODULES, *_WHERE]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
