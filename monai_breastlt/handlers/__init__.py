from __future__ import annotations

from .adaptive_sampler import AdaptiveSamplerHandler
from .checkpoint import ResumeCheckpointLoader, ResumeCheckpointSaver
from .report import LongTailReportHandler
from .reweighting import DeferredReweighting
