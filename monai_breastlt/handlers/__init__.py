from __future__ import annotations

from .adaptive_sampler import AdaptiveSamplerHandler
from .checkpoint import (
    AtomicCheckpointSaver,
    BestModelState,
    ResumeCheckpointLoader,
    ResumeCheckpointSaver,
    RNGStates,
    SafeCheckpointLoader,
)
from .determinism import EpochDeterminism, MetaTrackingOff
from .ema import ExponentialMovingAverage
from .report import ClassProbabilityCSVSaver, LongTailReportHandler, PredictionTable, ValidationHistory
from .reweighting import DeferredReweighting
from .tracking import FaultTolerantMLFlowHandler, mlflow_tracking_settings
