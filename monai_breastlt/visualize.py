"""Figures for reports and MLflow: confusion matrix, ratio trajectories, per-class sample grid."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from monai_breastlt.utils import atomic_open

__all__ = ["plot_arm_bars", "plot_confusion_matrix", "plot_demo_summary", "plot_ratio_trajectory", "save_near_copies", "save_sample_grid"]


def _figure_to(path: str | os.PathLike, fig) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Row-normalised confusion matrix (recall on the diagonal) with counts, true classes on the rows."""
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.1 * n + 3, 0.9 * n + 2.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = [f"{c.replace('_', ' ')} (n={int(r)})" for c, r in zip(class_names, rows[:, 0])]
    ax.set_xticks(range(n), [c.replace("_", " ") for c in class_names], rotation=40, ha="right")
    ax.set_yticks(range(n), labels)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, f"{100 * norm[i, j]:.0f}%\n({int(cm[i, j])})", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted subtype")
    ax.set_ylabel("true subtype (test images)")
    ax.set_title(title or "Confusion matrix (row %: recall)")
    _figure_to(path, fig)
    plt.close(fig)


def plot_ratio_trajectory(history: Sequence[dict], class_names: Sequence[str], path: str | os.PathLike, counts: Sequence[int] | None = None) -> None:
    """Synthetic fraction per class over training (``history`` rows: ``{"epoch", "iteration", "ratios"}``; by
    iteration where rows have one, since a policy may act several times an epoch)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    by_iteration = bool(history) and all("iteration" in h for h in history)
    if history:
        epochs = [h["iteration" if by_iteration else "epoch"] for h in history]
        ratios = np.asarray([h["ratios"] for h in history])
        for c, name in enumerate(class_names):
            label = name.replace("_", " ") + (f" ({counts[c]} real)" if counts is not None else "")
            ax.plot(epochs, 100 * ratios[:, c], marker="o" if len(epochs) < 40 else None, label=label)
    ax.set_xlabel("iteration" if by_iteration else "epoch")
    ax.set_ylabel("synthetic share of the class's samples (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Synthetic/real mix chosen per subtype")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.grid(alpha=0.3)
    _figure_to(path, fig)
    plt.close(fig)


def save_sample_grid(images_by_class: dict[str, Sequence[np.ndarray]], path: str | os.PathLike, per_class: int = 6,
                     title: str = "Synthetic samples per subtype") -> None:
    """One row per class (or any row label) of up to ``per_class`` grey images in [0, 1], row labels on the left."""
    plt = _plt()
    names = list(images_by_class)
    fig, axes = plt.subplots(len(names), per_class, figsize=(1.4 * per_class + 1.5, 1.4 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        imgs = list(images_by_class[name])[:per_class]
        for c in range(per_class):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(imgs):
                ax.imshow(np.asarray(imgs[c]).squeeze(), cmap="gray", vmin=0, vmax=1)
        axes[r][0].text(-0.1, 0.5, name.replace("_", " "), transform=axes[r][0].transAxes, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    _figure_to(path, fig)
    plt.close(fig)


def save_near_copies(rows: dict[str, Sequence[np.ndarray]], path: str | os.PathLike) -> None:
    """The audit's near-copies figure: one row per flagged synthetic image (labelled with its id and relative
    distance) beside its nearest real image and, where found, its nearest real lesion."""
    save_sample_grid(rows, path, per_class=3, title="Near-copies (relative distance): synthetic | nearest real image | nearest real lesion")


def plot_demo_summary(
    samples: dict[str, tuple[np.ndarray | None, Sequence[np.ndarray]]],
    recalls: dict[str, Sequence[float]],
    ratio_history: Sequence[dict],
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """One figure for a two-phase run: per class a real image beside synthetic ones; the per-class test recall of each
    arm; the synthetic share the ratio policy chose per class over the epochs.

    Args:
        samples: class name -> (one real image or ``None``, synthetic images), grey images in [0, 1], in label order.
        recalls: arm name -> per-class test recall in [0, 1] (NaN: no test image of that class).
        ratio_history: rows ``{"epoch", "ratios"}`` of the ratio-policy arm.
        path: PNG to write.
        title: figure title.
    """
    plt = _plt()
    names = list(samples)
    n_syn = max([len(s) for _, s in samples.values()] + [1])
    fig = plt.figure(figsize=(1.1 * (n_syn + 1) + 8.5, max(6.0, 1.1 * len(names) + 1)))
    grid = fig.add_gridspec(len(names), n_syn + 3, width_ratios=[1] * (n_syn + 1) + [0.6, 6.5], hspace=0.08, wspace=0.05)
    for r, name in enumerate(names):
        real, synthetic = samples[name]
        images = [real, *list(synthetic)[:n_syn]]
        for c in range(n_syn + 1):
            ax = fig.add_subplot(grid[r, c])
            ax.axis("off")
            if c < len(images) and images[c] is not None:
                ax.imshow(np.asarray(images[c]).squeeze(), cmap="gray", vmin=0, vmax=1)
            if r == 0 and c < 2:
                ax.set_title("real" if c == 0 else "synthetic", fontsize=9, loc="left")
            if c == 0:
                ax.text(-0.08, 0.5, name.replace("_", " "), transform=ax.transAxes, ha="right", va="center", fontsize=8)
    right = grid[:, -1].subgridspec(2, 1, hspace=0.45)
    ax = fig.add_subplot(right[0])
    x = np.arange(len(names))
    width = 0.8 / max(len(recalls), 1)
    for k, (arm, rec) in enumerate(recalls.items()):
        ax.bar(x + (k - (len(recalls) - 1) / 2) * width, np.nan_to_num(100 * np.asarray(rec, dtype=float)), width, label=arm)
    ax.set_xticks(x, [n.replace("_", " ") for n in names], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("test recall (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Per-class recall on the test split")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax = fig.add_subplot(right[1])
    if ratio_history:
        epochs = [h["epoch"] for h in ratio_history]
        ratios = np.asarray([h["ratios"] for h in ratio_history], dtype=float)
        for c, name in enumerate(names):
            ax.plot(epochs, 100 * ratios[:, c], marker="o", markersize=3, label=name.replace("_", " "))
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("synthetic share (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Synthetic share chosen per subtype")
    if ratio_history:
        ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    _figure_to(path, fig)
    plt.close(fig)


def plot_arm_bars(rows: Sequence[dict], path: str | os.PathLike, metrics: Sequence[tuple[str, str]] = (
        ("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy"), ("tail_recall", "tail recall"))) -> None:
    """Grouped bars (mean ± std over seeds, percent) of each benchmark arm (``rows`` from ``summarize_runs``)."""
    plt = _plt()
    arms = [r["arm"] for r in rows]
    x = np.arange(len(arms))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(arms) + 2), 4))
    for k, (key, label) in enumerate(metrics):
        mean = np.nan_to_num([100 * r[f"{key}_mean"] for r in rows])
        std = np.nan_to_num([100 * r[f"{key}_std"] for r in rows])
        ax.bar(x + (k - (len(metrics) - 1) / 2) * width, mean, width, yerr=std, capsize=2, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(arms, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("test %, mean ± std over seeds")
    ax.set_ylim(0, 100)
    ax.set_title(f"Long-tail arms ({rows[0]['seeds'] if rows else 0} seeds)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _figure_to(path, fig)
    plt.close(fig)
