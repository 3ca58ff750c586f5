"""Statistics of ``bench lt``: has validation stopped rising, paired differences and bootstrap intervals over test
images, and the malignancy reading of subtype predictions (AUC, sensitivity at a set specificity)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
import numpy as np

__all__ = ["bootstrap_difference", "group_reading", "has_plateaued", "read_predictions", "read_probabilities"]


def has_plateaued(values: Sequence[float], tail: float = 0.5, z: float = 1.645) -> bool | None:
    """Whether a validation curve had stopped rising: over its last ``tail`` fraction, the least-squares slope is not
    significantly positive (its t statistic below ``z``, a one-sided 5 % test). Readings with 2-6 images per tail class
    swing by several points, so a single higher reading late in training is not counted as a rise. ``None`` for curves
    too short to judge (fewer than 8 readings)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) < 8:
        return None
    y = v[int(round(len(v) * (1 - tail))):]
    x = np.arange(len(y), dtype=float)
    x -= x.mean()
    slope = float((x * (y - y.mean())).sum() / (x * x).sum())
    resid = y - y.mean() - slope * x
    se = math.sqrt(float((resid * resid).sum()) / max(len(y) - 2, 1) / float((x * x).sum()))
    return bool(slope <= 0 or (se > 0 and slope / se < z))


def read_predictions(path: str | os.PathLike, classes: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Images, true labels and class probabilities ``(N, C)`` of a ``PredictionTable`` CSV."""
    index = {c: k for k, c in enumerate(classes)}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    images = [r["image"] for r in rows]
    labels = np.asarray([index[r["label"]] for r in rows], dtype=np.int64)
    probs = np.asarray([[float(r[f"p_{c}"]) for c in classes] for r in rows], dtype=float)
    return images, labels, probs


def read_probabilities(path: str | os.PathLike, num_classes: int) -> dict[str, list[float]]:
    """Class probabilities per image of the classification bundle's ``inference.yaml`` CSV (``filename`` then one column
    per class; a header row, if any, is skipped)."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.reader(f):
            try:
                values = [float(v) for v in row[1:]]
            except ValueError:  # the header
                continue
            if len(values) != num_classes:
                raise ValueError(f"{path}: row for {row[0]} has {len(values)} probabilities, expected {num_classes}.")
            out[row[0]] = values
    return out


def _macro_f1_and_tail(y: np.ndarray, p: np.ndarray, c: int, tail: np.ndarray) -> tuple[float, float]:
    """Macro-F1 over the classes present in ``y`` (zero division 0) and the mean recall of the present tail classes."""
    cm = np.bincount(y * c + p, minlength=c * c).reshape(c, c)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(c), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(c), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(c), where=precision + recall > 0)
    t = present & tail
    return float(f1[present].mean()), float(recall[t].mean()) if t.any() else float("nan")


def bootstrap_difference(
    labels: np.ndarray,
    method: Sequence[np.ndarray],
    baseline: Sequence[np.ndarray],
    num_classes: int,
    tail: Sequence[bool],
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """Paired difference ``method - baseline`` of macro-F1 and tail recall on one test set, per seed and as the mean
    over seeds, with a 95 % percentile interval from resampling the test images (the same resample for every seed
    and both arms, so image difficulty cancels).

    Args:
        labels: true classes of the test images.
        method, baseline: predicted classes of the test images, one array per seed (paired by position).
        num_classes: number of classes.
        tail: per class, whether it is a tail class.
        n_boot: resamples.
        seed: seed of the resampling.

    Returns:
        ``{"macro_f1": {...}, "tail_recall": {...}}`` each with ``per_seed`` differences, ``mean`` and ``ci95``, and
        ``n_images``.
    """
    tail = np.asarray(tail, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)

    def diffs(idx: np.ndarray) -> np.ndarray:  # (seeds, 2): macro-F1 and tail-recall differences
        y = labels[idx]
        return np.asarray([np.subtract(_macro_f1_and_tail(y, m[idx], num_classes, tail), _macro_f1_and_tail(y, b[idx], num_classes, tail))
                           for m, b in zip(method, baseline)])

    point = diffs(np.arange(len(labels)))
    rng = np.random.default_rng(seed)
    boots = np.asarray([np.nanmean(diffs(rng.integers(0, len(labels), len(labels))), axis=0) for _ in range(n_boot)])
    out: dict = {"n_images": int(len(labels))}
    for k, name in enumerate(("macro_f1", "tail_recall")):
        col = boots[:, k][np.isfinite(boots[:, k])]
        out[name] = {"per_seed": point[:, k].tolist(), "mean": float(np.nanmean(point[:, k])),
                     "ci95": [float(np.percentile(col, 2.5)), float(np.percentile(col, 97.5))] if len(col) else [float("nan")] * 2}
    return out


def group_reading(positive: np.ndarray, score: np.ndarray, specificity: float = 0.9) -> dict:
    """ROC AUC of ``score`` for the positive group and the sensitivity at the threshold that keeps at least
    ``specificity`` of the negatives below it (``NaN`` without both groups)."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    pos, neg = score[positive], score[~positive]
    if not len(pos) or not len(neg):
        return {"auc": float("nan"), "sensitivity": float("nan"), "specificity": specificity, "positives": int(len(pos)), "negatives": int(len(neg))}
    # AUC as the probability that a positive outranks a negative (ties count half): the Mann-Whitney statistic
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    threshold = np.quantile(neg, specificity, method="higher")
    return {"auc": float(greater / (len(pos) * len(neg))), "sensitivity": float((pos > threshold).mean()),
            "specificity": specificity, "positives": int(len(pos)), "negatives": int(len(neg))}
