from __future__ import annotations

from .diffusion import min_snr_weights, weighted_diffusion_loss
from .long_tail import BalancedSoftmaxLoss, LDAMLoss, LogitAdjustedLoss, effective_number_weights
from .perception import SketchPerceptionLoss
from .synthetic import PrepareSourceBatch, SyntheticWeightedLoss
from .factory import LOSS_NAMES, ClassIndexFocalLoss, build_loss, inverse_frequency_weights
