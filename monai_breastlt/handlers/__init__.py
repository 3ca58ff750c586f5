from __future__ import annotations

from .adaptive_sampler import AdaptiveSamplerHandler
