"""Ratio policies: from per-class validation figures to per-class synthetic ratios."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from monai_breastlt.data.profile import HEAD
from monai_breastlt.utils import clip_ratios

__all__ = ["RatioPolicy", "FixedRatioPolicy", "HeuristicRatioPolicy"]


class RatioPolicy(ABC):
    """
    Decides every class's synthetic fraction after each validation.

    ``update`` receives the report of :func:`monai_breastlt.metrics.report_from_confusion` (per-class ``recall``,
    ``f1``, ``groups``; global ``macro_f1``, ``balanced_accuracy``, ``head_recall``...) and the training progress
    in [0, 1], and returns one ratio per class in ``[0, max_ratio]``.
    """

    def __init__(self, max_ratio: float = 0.9) -> None:
        self.max_ratio = max_ratio
        self.class_counts: np.ndarray | None = None
        self.ratios: np.ndarray | None = None

    def reset(self, class_counts: Sequence[int], ratios: Sequence[float] | float = 0.0) -> None:
        """Start a run: real training counts per class and the initial ratios."""
        self.class_counts = np.asarray(class_counts, dtype=float)
        self.ratios = clip_ratios(ratios, len(self.class_counts), self.max_ratio)

    def _check_reset(self) -> None:
        if self.ratios is None or self.class_counts is None:
            raise RuntimeError(f"{type(self).__name__}.reset(class_counts, ratios) must be called before update().")

    @abstractmethod
    def update(self, report: dict, progress: float) -> np.ndarray:
        """New ratios from the latest validation ``report``."""

    def state_dict(self) -> dict:
        return {"ratios": None if self.ratios is None else self.ratios.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("ratios") is not None:
            self.ratios = np.asarray(state["ratios"], dtype=float)


class FixedRatioPolicy(RatioPolicy):
    """
    Constant ratios: one value for every class, one per class, or ``"fill"`` (the fraction that tops each
    class up to the largest class, SYNAuG-style uniform fill, capped at ``max_ratio``).

    Args:
        ratios: a float, a per-class sequence, or ``"fill"``.
        max_ratio: upper bound.
    """

    def __init__(self, ratios: float | Sequence[float] | str = 0.0, max_ratio: float = 0.9) -> None:
        super().__init__(max_ratio)
        self.fixed = ratios

    def reset(self, class_counts: Sequence[int], ratios: Sequence[float] | float = 0.0) -> None:
        counts = np.asarray(class_counts, dtype=float)
        if isinstance(self.fixed, str):
            if self.fixed != "fill":
                raise ValueError(f"ratios must be a number, a list or 'fill', got '{self.fixed}'.")
            value = 1.0 - counts / max(counts.max(), 1.0)
        else:
            value = self.fixed
        super().reset(class_counts, value)

    def update(self, report: dict, progress: float) -> np.ndarray:
        self._check_reset()
        return self.ratios.copy()


class HeuristicRatioPolicy(RatioPolicy):
    """
    Raise a class's ratio while its validation recall lags the mean recall, lower it once it leads; when the
    head classes' recall falls by more than ``head_tolerance``, lower every non-head ratio.

    Args:
        step: ratio change per update.
        margin: recall gap counted as lagging/leading.
        head_tolerance: head-recall drop that triggers the back-off.
        max_ratio: upper bound.
    """

    def __init__(self, step: float = 0.1, margin: float = 0.02, head_tolerance: float = 0.02, max_ratio: float = 0.9) -> None:
        super().__init__(max_ratio)
        self.step, self.margin, self.head_tolerance = step, margin, head_tolerance
        self._last_head: float | None = None

    def update(self, report: dict, progress: float) -> np.ndarray:
        self._check_reset()
        recall = np.asarray(report["recall"], dtype=float)
        present = np.asarray(report.get("support", np.ones_like(recall)), dtype=float) > 0
        mean = recall[present].mean() if present.any() else 0.0
        groups = report.get("groups") or [HEAD] * len(recall)
        head = np.asarray([g == HEAD for g in groups])
        delta = np.where(recall < mean - self.margin, self.step, np.where(recall > mean + self.margin, -self.step, 0.0))
        delta[~present] = 0.0
        head_recall = report.get("head_recall", float("nan"))
        if self._last_head is not None and np.isfinite(head_recall) and head_recall < self._last_head - self.head_tolerance:
            delta = np.where(head, delta, -self.step)
        if np.isfinite(head_recall):
            self._last_head = head_recall
        self.ratios = np.clip(self.ratios + delta, 0.0, self.max_ratio)
        return self.ratios.copy()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "last_head": self._last_head}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._last_head = state.get("last_head")
