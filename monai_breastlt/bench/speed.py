"""Speed benchmarks that print ratios against a baseline measured in the same run."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from monai_breastlt.data.sampler import AdaptiveRatioSampler

__all__ = ["bench_sampler"]


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_sampler(sizes: Sequence[int] = (10_000, 100_000, 1_000_000), num_classes: int = 20, repeats: int = 5, seed: int = 0) -> list[dict]:
    """Time one full epoch of ``AdaptiveRatioSampler`` against torch's ``WeightedRandomSampler`` (class-balanced).

    Both samplers draw the same number of indices per epoch (the adaptive sampler's balanced plan); a long-tailed
    label set (imbalance 100) with a 30 % synthetic pool is used. Returns one row per size.
    """
    rows = []
    rng = np.random.default_rng(seed)
    for n in sizes:
        p = 100.0 ** (-np.arange(num_classes) / (num_classes - 1))
        labels = rng.choice(num_classes, size=n, p=p / p.sum())
        synthetic = rng.random(n) < 0.3
        ours = AdaptiveRatioSampler(labels, synthetic, num_classes, target="balanced", ratios=0.5, seed=seed)
        counts = np.bincount(labels[~synthetic], minlength=num_classes)
        weights = torch.as_tensor(1.0 / np.maximum(counts[labels], 1), dtype=torch.double)
        theirs = WeightedRandomSampler(weights, num_samples=len(ours), replacement=True, generator=torch.Generator().manual_seed(seed))
        t_ours = _best_of(lambda: sum(1 for _ in ours), repeats)
        t_theirs = _best_of(lambda: sum(1 for _ in theirs), repeats)
        rows.append({"items": n, "epoch_samples": len(ours), "adaptive_s": t_ours, "weighted_s": t_theirs, "ratio": t_ours / t_theirs})
    return rows
