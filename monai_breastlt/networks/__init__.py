from __future__ import annotations

from .ldm import SketchConditionedLDM, matched_conditioning_channels
from .perception import SketchPerceptionNet
from .schedulers import RespacedDDPMScheduler, is_truncated_ddpm
from .decoupled import classifier_parameters
