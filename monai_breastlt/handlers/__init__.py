from __future__ import annotations

from .adaptive_sampler import AdaptiveSamplerHandler
from .checkpoint import AtomicCheckpointSaver, BestModelState, ResumeCheckpointLoader, ResumeCheckpointSaver, RNGStates
from .determinism import EpochDeterminism
from .ema import ExponentialMovingAverage
from .report import ClassProbabilityCSVSaver, LongTailReportHandler
from .reweighting import DeferredReweighting
from .tracking import FaultTolerantMLFlowHandler, mlflow_tracking_settings
