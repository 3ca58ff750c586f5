from __future__ import annotations

from .perception import SketchPerceptionLoss
