from __future__ import annotations

from .engines import AutoencoderTrainer, LatentDiffusionTrainer, PrepareBatchKeys, compute_scale_factor, kl_loss
from .audit import PoolAuditor, audit_pool, filter_pool
from .memorization import NearestRealCheck, lesion_boxes
from .generate import SyntheticPoolGenerator, plan_targets, save_png
