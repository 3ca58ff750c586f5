"""Long-tail classification metrics: macro-F1, balanced accuracy, G-mean, per-class and per-group recall."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.utils import optional_import
from sklearn.metrics import precision_recall_fscore_support

from monai_breastlt.data.profile import HEAD, MEDIUM, TAIL

Metric, _ = optional_import("ignite.metrics", name="Metric", as_type="base")
reinit__is_reduced, _ = optional_import("ignite.metrics.metric", name="reinit__is_reduced", as_type="decorator")
sync_all_reduce, _ = optional_import("ignite.metrics.metric", name="sync_all_reduce", as_type="decorator")

__all__ = ["confusion_matrix", "long_tail_report", "report_from_confusion", "LongTailMetric", "REPORT_SCALARS"]

REPORT_SCALARS = ("accuracy", "macro_f1", "balanced_accuracy", "g_mean", "head_recall", "medium_recall", "tail_recall")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``(C, C)`` counts; rows are true classes, columns predictions."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def report_from_confusion(cm: np.ndarray, groups: Sequence[str] | None = None) -> dict:
    """All long-tail figures from a confusion matrix.

    Classes absent from the evaluated set (zero support) are left out of the macro averages, as
    scikit-learn's ``balanced_accuracy_score`` does.

    Args:
        cm: ``(C, C)`` confusion matrix.
        groups: per-class ``"head"``/``"medium"``/``"tail"`` (see :func:`monai_breastlt.data.long_tail_groups`).

    Returns:
        a dict with ``per_class`` lists (``recall``, ``precision``, ``f1``, ``support``), the scalars of
        :data:`REPORT_SCALARS` (group recalls are NaN when a group has no evaluated class), ``groups`` and
        ``confusion_matrix``.
    """
    cm = np.asarray(cm, dtype=np.int64)
    c = cm.shape[0]
    y_true = np.repeat(np.repeat(np.arange(c), c), cm.flatten())
    y_pred = np.repeat(np.tile(np.arange(c), c), cm.flatten())
    support = cm.sum(1)
    present = support > 0
    if len(y_true):
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=np.arange(c), zero_division=0)
    else:
        precision = recall = f1 = np.zeros(c)
    rec_present = recall[present]
    groups = list(groups) if groups is not None else [HEAD] * c

    def group_recall(name: str) -> float:
        sel = [i for i in range(c) if groups[i] == name and present[i]]
        return float(np.mean(recall[sel])) if sel else float("nan")

    return {
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "macro_f1": float(np.mean(f1[present])) if present.any() else 0.0,
        "balanced_accuracy": float(np.mean(rec_present)) if present.any() else 0.0,
        "g_mean": float(np.prod(rec_present) ** (1.0 / len(rec_present))) if present.any() else 0.0,
        "head_recall": group_recall(HEAD),
        "medium_recall": group_recall(MEDIUM),
        "tail_recall": group_recall(TAIL),
        "recall": recall.tolist(),
        "precision": precision.tolist(),
        "f1": f1.tolist(),
        "support": support.tolist(),
        "groups": groups,
        "confusion_matrix": cm.tolist(),
    }


def long_tail_report(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int, groups: Sequence[str] | None = None
) -> dict:
    """:func:`report_from_confusion` of integer labels and predictions."""
    return report_from_confusion(confusion_matrix(y_true, y_pred, num_classes), groups)


def _to_indices(x) -> torch.Tensor:
    """Class indices from logits/one-hot ``(B, C)``, a list of per-item tensors (MONAI decollated), or indices."""
    if isinstance(x, (list, tuple)):
        x = torch.stack([torch.as_tensor(i) for i in x])
    x = torch.as_tensor(x)
    if x.ndim >= 2 and x.shape[1] > 1:
        return x.argmax(1).flatten()
    return x.flatten().long()


class LongTailMetric(Metric):
    """
    Ignite metric that accumulates a confusion matrix; usable in a MONAI evaluator's ``key_val_metric``.

    ``compute()`` returns the scalar ``key`` (``macro_f1`` by default, so it can select the best model); the full
    report of :func:`report_from_confusion` is put in ``engine.state.metric_details[name]``, where
    :py:class:`monai_breastlt.handlers.AdaptiveSamplerHandler` reads it.

    Args:
        num_classes: number of classes.
        groups: per-class head/medium/tail names.
        key: the scalar that ``compute()`` returns; one of :data:`REPORT_SCALARS`.
        output_transform: maps the engine output to ``(y_pred, y)``; with MONAI engines use
            ``monai.handlers.from_engine(["pred", "label"])``.
        device: accumulation device.
    """

    def __init__(
        self,
        num_classes: int,
        groups: Sequence[str] | None = None,
        key: str = "macro_f1",
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        if key not in REPORT_SCALARS:
            raise ValueError(f"key must be one of {REPORT_SCALARS}, got '{key}'.")
        self.num_classes = num_classes
        self.groups = list(groups) if groups is not None else None
        self.key = key
        self.report: dict = {}
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self._cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=self._device)

    @reinit__is_reduced
    def update(self, output) -> None:
        y_pred, y = output
        p, t = _to_indices(y_pred).to(self._device), _to_indices(y).to(self._device)
        self._cm += torch.bincount(t * self.num_classes + p, minlength=self.num_classes**2).reshape(self.num_classes, -1)

    @sync_all_reduce("_cm")
    def compute(self) -> float:
        self.report = report_from_confusion(self._cm.cpu().numpy(), self.groups)
        return self.report[self.key]

    def completed(self, engine, name: str) -> None:
        super().completed(engine, name)
        details = getattr(engine.state, "metric_details", None)
        if not isinstance(details, dict):
            details = {}
            engine.state.metric_details = details
        details[name] = self.report
        for key in REPORT_SCALARS:  # each figure as its own metric, so MLFlowHandler/StatsHandler log them
            if key != self.key:
                engine.state.metrics[f"{name}_{key}"] = self.report[key]
