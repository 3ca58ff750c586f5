"""monai-breastlt: long-tailed breast-ultrasound lesion subtyping for MONAI."""

from __future__ import annotations

__version__ = "0.1.0"
