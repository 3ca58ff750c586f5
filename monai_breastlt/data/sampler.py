"""``AdaptiveRatioSampler``: per-class real/synthetic mixing with ratios set between epochs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

from monai_breastlt.utils import clip_ratios

__all__ = ["AdaptiveRatioSampler"]


def _integers(values: Sequence, name: str) -> np.ndarray:
    """``values`` as int64, refusing anything that is not a whole number (``1.7`` would otherwise be truncated)."""
    arr = np.asarray(values)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise ValueError(f"{name} must be integers; entry {int(np.flatnonzero(bad)[0])} is {float(arr[bad][0])}.")
    return arr.astype(np.int64)


class AdaptiveRatioSampler(DistributedSampler):
    """
    Sample a dataset of real and synthetic items so that, in every epoch, class ``c`` gets ``T_c`` samples of
    which a fraction ``r_c`` is synthetic. Ratios are changed between epochs with :py:meth:`set_ratios`
    (e.g. by :py:class:`monai_breastlt.handlers.AdaptiveSamplerHandler`); this class does not care who sets them.

    The epoch plan is derived from ``(seed, epoch)`` alone, so every DDP rank builds the same plan and takes a
    disjoint, equal-length shard of it, as :py:class:`monai.data.DistributedSampler` does. It subclasses
    torch's ``DistributedSampler`` so MONAI workflows call :py:meth:`set_epoch` at each epoch start.
    ``(seed, epoch)`` goes through ``numpy.random.SeedSequence``, so two seeds give independent streams (seed 1 at
    epoch ``e`` does not repeat seed 0 at epoch ``e + 1``).

    Ratios set during an epoch take effect from the next sample drawn: the rest of the epoch is re-planned under the
    new ratios (with a generator derived from ``(seed, epoch, position)``, so the result stays reproducible and equal
    on every rank, provided every rank sets the same ratios at the same step). This lets a policy act every few
    iterations rather than once per epoch. The loader must draw lazily (``num_workers=0``, or accept that workers'
    prefetched batches keep the old ratios).

    Real items of a class are drawn without replacement until the class's real pool is exhausted, then the
    pool is reshuffled (over-sampling); synthetic items likewise from the class's synthetic pool. A class with
    no synthetic pool uses real data only; a class with no real item uses synthetic data only.

    Args:
        labels: class index of every dataset item (dataset order).
        synthetic: per item, whether it is synthetic; ``None``: all real.
        num_classes: number of classes (default: ``max(labels) + 1``).
        target: per-class samples per epoch ``T_c``: ``"balanced"`` (every class as many as the largest real
            class), ``"real"`` (the real counts), ``"distribution"`` (``epoch_size`` split by ``class_weights``),
            or a sequence of explicit counts.
        epoch_size: total samples per epoch: required for ``target="distribution"``; with ``"balanced"`` or
            ``"real"`` it rescales those targets to this size (same class proportions, a fixed compute budget).
        class_weights: target distribution for ``"distribution"`` (default: uniform).
        ratios: initial synthetic fraction, one value or one per class.
        max_ratio: upper bound of every ratio (keeps some real data in every class).
        num_replicas: number of DDP processes (default: the world size, or 1 without a process group).
        rank: this process's rank (default: the global rank, or 0).
        shuffle: shuffle the epoch plan (otherwise class by class).
        seed: base seed, a non-negative integer; each epoch's generator derives from ``(seed, epoch)``.
        drop_last: drop the plan's tail so it divides evenly (otherwise pad by repeating its start).
    """

    def __init__(
        self,
        labels: Sequence[int],
        synthetic: Sequence[bool] | None = None,
        num_classes: int | None = None,
        target: str | Sequence[int] = "balanced",
        epoch_size: int | None = None,
        class_weights: Sequence[float] | None = None,
        ratios: float | Sequence[float] = 0.0,
        max_ratio: float = 0.9,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        # torch's __init__ needs a dataset and a process group; set its attributes ourselves instead
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} must be in [0, {num_replicas - 1}] for num_replicas={num_replicas}.")
        labels_t = torch.as_tensor(_integers(labels, "labels"))
        if labels_t.ndim != 1 or labels_t.numel() == 0:
            raise ValueError("labels must be a non-empty 1D sequence of class indices.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
        if epoch_size is not None and (isinstance(epoch_size, bool) or not isinstance(epoch_size, (int, np.integer)) or epoch_size < 1):
            raise ValueError(f"epoch_size must be a positive integer or None, got {epoch_size!r}.")
        if labels_t.min() < 0:
            raise ValueError(f"labels must be >= 0, got {int(labels_t.min())}.")
        self.num_classes = int(num_classes) if num_classes is not None else int(labels_t.max()) + 1
        if labels_t.max() >= self.num_classes:
            raise ValueError(f"label {int(labels_t.max())} is out of range for num_classes={self.num_classes}.")
        syn = torch.zeros_like(labels_t, dtype=torch.bool) if synthetic is None else torch.as_tensor(np.asarray(synthetic, dtype=bool))
        if syn.shape != labels_t.shape:
            raise ValueError(f"synthetic has {syn.numel()} entries for {labels_t.numel()} labels.")
        if not 0 <= max_ratio <= 1:
            raise ValueError(f"max_ratio must be in [0, 1], got {max_ratio}.")
        order = torch.argsort(labels_t, stable=True)
        self._real_pools = self._pools(order[~syn[order]], labels_t[order[~syn[order]]])
        self._syn_pools = self._pools(order[syn[order]], labels_t[order[syn[order]]])
        self.real_counts = [len(p) for p in self._real_pools]
        self.synthetic_counts = [len(p) for p in self._syn_pools]
        self.targets = self._targets(target, epoch_size, class_weights)
        for c, t in enumerate(self.targets):
            if t > 0 and self.real_counts[c] == 0 and self.synthetic_counts[c] == 0:
                raise ValueError(f"class {c} has a target of {t} samples but no real or synthetic item.")
        self.max_ratio = float(max_ratio)
        self.ratios = np.zeros(self.num_classes)
        self._version = 0  # counts set_ratios calls: an epoch being drawn re-plans its rest when this changes
        self.set_ratios(ratios)
        self.dataset_len = int(labels_t.numel())
        self.num_replicas, self.rank, self.shuffle, self.seed, self.drop_last = num_replicas, rank, shuffle, int(seed), drop_last
        self.epoch = 0
        total = sum(self.targets)
        self.num_samples = total // num_replicas if drop_last else math.ceil(total / num_replicas)
        self.total_size = self.num_samples * num_replicas

    @classmethod
    def from_datalist(cls, items: Sequence[dict], num_classes: int | None = None, **kwargs) -> AdaptiveRatioSampler:
        """Build from datalist entries (``label`` and ``source``), in the order the dataset holds them."""
        return cls(
            [i["label"] for i in items], [i.get("source", "real") == "synthetic" for i in items], num_classes, **kwargs
        )

    def _pools(self, idx: torch.Tensor, lab: torch.Tensor) -> list[torch.Tensor]:
        bounds = torch.searchsorted(lab, torch.arange(self.num_classes + 1))
        return [idx[bounds[c] : bounds[c + 1]] for c in range(self.num_classes)]

    def _targets(self, target, epoch_size, class_weights) -> list[int]:
        available = [r + s for r, s in zip(self.real_counts, self.synthetic_counts)]
        if isinstance(target, str) and target in ("balanced", "real") and epoch_size:
            class_weights = None if target == "balanced" else self.real_counts
            target = "distribution"
        if isinstance(target, str):
            if target == "balanced":
                return [max(self.real_counts) if a else 0 for a in available]
            if target == "real":
                return list(self.real_counts)
            if target == "distribution":
                if not epoch_size or epoch_size < 1:
                    raise ValueError("target='distribution' needs a positive epoch_size.")
                w = np.ones(self.num_classes) if class_weights is None else np.asarray(class_weights, dtype=float)
                if w.shape != (self.num_classes,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                    raise ValueError(f"class_weights must be {self.num_classes} finite non-negative numbers, not all zero; got {w.tolist()}.")
                w = np.where(np.asarray(available) > 0, w, 0)
                exact = epoch_size * w / w.sum()
                counts = np.floor(exact).astype(int)
                counts[np.argsort(-(exact - counts), kind="stable")[: epoch_size - counts.sum()]] += 1  # largest remainder
                return counts.tolist()
            raise ValueError(f"target must be 'balanced', 'real', 'distribution' or a list of counts, got '{target}'.")
        counts = [int(t) for t in target]
        if len(counts) != self.num_classes or min(counts) < 0:
            raise ValueError(f"target counts must be {self.num_classes} non-negative integers, got {counts}.")
        return counts

    def set_ratios(self, ratios: float | Sequence[float]) -> None:
        """Set each class's synthetic fraction from the next sample drawn on; values are clipped to ``[0, max_ratio]``."""
        self.ratios = clip_ratios(ratios, self.num_classes, self.max_ratio)
        self._version += 1

    def plan(self) -> dict[str, list[int]]:
        """Per-class real and synthetic sample counts of an epoch under the current ratios."""
        real, syn = [], []
        for c, t in enumerate(self.targets):
            if self.synthetic_counts[c] == 0:
                s = 0
            elif self.real_counts[c] == 0:
                s = t
            else:
                s = int(round(self.ratios[c] * t))
            real.append(t - s)
            syn.append(s)
        return {"real": real, "synthetic": syn}

    def effective_ratios(self) -> list[float]:
        """The synthetic fraction each class actually gets (0 where it has no synthetic pool)."""
        p = self.plan()
        return [s / t if t else 0.0 for s, t in zip(p["synthetic"], self.targets)]

    @staticmethod
    def _draw(pool: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` items of ``pool``: whole shuffled passes over the pool, so no item repeats before all are used."""
        if n == 0:
            return pool[:0]
        reps = -(-n // len(pool))
        perm = torch.argsort(torch.rand(reps, len(pool), generator=g), dim=1)
        return pool[perm].flatten()[:n]

    def _generator(self, position: int = 0) -> torch.Generator:
        """The generator of the plan that starts at global ``position`` of this epoch, independent across seeds."""
        state = np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(2)
        g = torch.Generator()
        g.manual_seed(int(state[0]) << 32 | int(state[1]))
        return g

    def epoch_indices(self, position: int = 0) -> torch.Tensor:
        """The whole epoch plan (all ranks, before sharding) under the current ratios, drawn with the generator of
        ``position`` (0: the plan at the epoch start)."""
        g = self._generator(position)
        p = self.plan()
        parts = []
        for c in range(self.num_classes):
            parts.append(self._draw(self._real_pools[c], p["real"][c], g))
            parts.append(self._draw(self._syn_pools[c], p["synthetic"][c], g))
        idx = torch.cat(parts)
        if self.shuffle:
            idx = idx[torch.randperm(len(idx), generator=g)]
        return idx

    def _shard(self, position: int) -> list[int]:
        """This rank's share of the (padded or truncated) epoch plan drawn at ``position``."""
        idx = self.epoch_indices(position)
        if self.drop_last:
            idx = idx[: self.total_size]
        elif len(idx) < self.total_size:
            pad = self.total_size - len(idx)
            idx = torch.cat([idx, idx.repeat(-(-pad // max(len(idx), 1)))[:pad]])
        return idx[self.rank : self.total_size : self.num_replicas].tolist()

    def __iter__(self):
        k = 0  # samples this rank has yielded; every rank is at global position k * num_replicas
        while k < self.num_samples:
            version = self._version
            for i in self._shard(k * self.num_replicas)[k:]:
                if self._version != version:  # new ratios: re-plan the rest of the epoch
                    break
                yield i
                k += 1

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}.")
        self.epoch = int(epoch)

    def state_dict(self) -> dict:
        """Ratios, epoch and seed: what a resumed run needs to draw the same epochs."""
        return {"ratios": torch.as_tensor(self.ratios), "epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.set_ratios(torch.as_tensor(state["ratios"]).numpy())
        self.epoch = int(state["epoch"])
        if int(state["seed"]) != self.seed:
            warnings.warn(f"sampler seed {self.seed} replaced by the checkpoint's {int(state['seed'])}.", stacklevel=2)
            self.seed = int(state["seed"])
