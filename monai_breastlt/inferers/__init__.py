from __future__ import annotations

from .class_sketch import ClassSketchLatentDiffusionInferer, drop_class_labels
from .logit_adjusted import LogitAdjustedInferer
