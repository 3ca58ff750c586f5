"""What each class agent observes and is rewarded with; shared by the envs and the online policy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from monai_breastlt.utils import clip_ratios

__all__ = ["OBS_DIM", "NUM_ACTIONS", "ClassAgents"]

OBS_DIM = 12
NUM_ACTIONS = 3  # decrease, keep, increase


def _nan0(x) -> float:
    x = float(x)
    return x if np.isfinite(x) else 0.0


class ClassAgents:
    """
    The state of the per-class agents: current ratios, last moves and the previous validation report.

    Observation of class ``c`` (``OBS_DIM`` values): normalised log frequency, ratio, last ratio move (in steps),
    recall and its change, F1 and its change, global macro-F1 and its change, balanced accuracy and its change,
    training progress. Changes are scaled by 10 and clipped to [-1, 1].

    Reward of class ``c``: ``scale * (d_global + class_weight * d_class_c - head_penalty * max(0, -d_head))``
    where ``d`` is the change since the previous validation of ``metric``, of class ``c``'s ``class_metric`` and of
    the head classes' mean recall (the stable-discriminative-capability term).

    With ``smoothing`` > 0 every figure is an exponential moving average over the validations
    (``m <- smoothing * m + (1 - smoothing) * reading``) before anything is computed from it: a tail class with 2-6
    validation images moves its recall by 17-50 points on one image, so single readings reward noise.

    Args:
        class_counts: real training count per class.
        step: ratio change of one increase/decrease action.
        max_ratio: upper bound of every ratio.
        metric: global report key of the shared reward (``macro_f1`` or ``balanced_accuracy``).
        class_metric: per-class report key of the own reward (``f1`` or ``recall``).
        class_weight, head_penalty, scale: reward weights.
        smoothing: weight of the past in the moving average of every figure, in ``[0, 1)``; 0: single readings.
    """

    def __init__(
        self,
        class_counts: Sequence[int],
        step: float = 0.1,
        max_ratio: float = 0.9,
        metric: str = "macro_f1",
        class_metric: str = "f1",
        class_weight: float = 0.5,
        head_penalty: float = 2.0,
        scale: float = 10.0,
        smoothing: float = 0.0,
    ) -> None:
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
        counts = np.asarray(class_counts, dtype=float)
        self.num_classes = len(counts)
        self.log_freq = np.log(np.maximum(counts, 1) / max(counts.max(), 1)) / np.log(max(counts.max(), 2))  # in [-1, 0]
        self.step, self.max_ratio = step, max_ratio
        self.metric, self.class_metric = metric, class_metric
        self.class_weight, self.head_penalty, self.scale = class_weight, head_penalty, scale
        self.smoothing = float(smoothing)
        self.ratios = np.zeros(self.num_classes)
        self.last_move = np.zeros(self.num_classes)
        self.prev: dict | None = None

    def reset(self, ratios: float | Sequence[float] = 0.0) -> None:
        self.ratios = clip_ratios(ratios, self.num_classes, self.max_ratio)
        self.last_move = np.zeros(self.num_classes)
        self.prev = None

    def apply(self, actions: np.ndarray) -> np.ndarray:
        """Move every ratio by ``(action - 1) * step`` (0: down, 1: keep, 2: up); returns the new ratios."""
        moves = (np.asarray(actions, dtype=float).reshape(self.num_classes) - 1.0) * self.step
        new = np.clip(self.ratios + moves, 0.0, self.max_ratio)
        self.last_move = (new - self.ratios) / self.step
        self.ratios = new
        return self.ratios.copy()

    def observe(self, report: dict, progress: float) -> tuple[np.ndarray, np.ndarray]:
        """Observations ``(C, OBS_DIM)`` and rewards ``(C,)`` for a new validation report."""
        report = self._smooth(report)
        prev = self.prev if self.prev is not None else report
        cur_c = np.nan_to_num(np.asarray(report[self.class_metric], dtype=float))
        prev_c = np.nan_to_num(np.asarray(prev[self.class_metric], dtype=float))
        rec, prev_rec = np.asarray(report["recall"], dtype=float), np.asarray(prev["recall"], dtype=float)
        f1, prev_f1 = np.asarray(report["f1"], dtype=float), np.asarray(prev["f1"], dtype=float)
        d = lambda a, b: np.clip(10 * (a - b), -1, 1)  # noqa: E731
        g_now, g_prev = _nan0(report[self.metric]), _nan0(prev[self.metric])
        ba_now, ba_prev = _nan0(report["balanced_accuracy"]), _nan0(prev["balanced_accuracy"])
        mf_now, mf_prev = _nan0(report["macro_f1"]), _nan0(prev["macro_f1"])
        obs = np.stack(
            [
                self.log_freq,
                self.ratios,
                self.last_move,
                rec,
                d(rec, prev_rec),
                f1,
                d(f1, prev_f1),
                np.full(self.num_classes, mf_now),
                np.full(self.num_classes, d(mf_now, mf_prev)),
                np.full(self.num_classes, ba_now),
                np.full(self.num_classes, d(ba_now, ba_prev)),
                np.full(self.num_classes, float(np.clip(progress, 0, 1))),
            ],
            axis=1,
        ).astype(np.float32)
        head_drop = max(0.0, _nan0(prev.get("head_recall", 0.0)) - _nan0(report.get("head_recall", 0.0)))
        rewards = self.scale * ((g_now - g_prev) + self.class_weight * (cur_c - prev_c) - self.head_penalty * head_drop)
        self.prev = report
        return np.nan_to_num(obs), rewards.astype(np.float32)

    def _smooth(self, report: dict) -> dict:
        """The report with every figure the agents read replaced by its moving average (a missing reading, NaN, keeps
        the average)."""
        if not self.smoothing or self.prev is None:
            return report
        out = dict(report)
        for key in {"recall", "f1", self.class_metric, self.metric, "macro_f1", "balanced_accuracy", "head_recall"}:
            if key in report and key in self.prev:
                now, past = np.asarray(report[key], dtype=float), np.asarray(self.prev[key], dtype=float)
                avg = self.smoothing * past + (1 - self.smoothing) * now
                avg = np.where(np.isfinite(now), avg, past)
                out[key] = avg.tolist() if avg.ndim else float(avg)
        return out
