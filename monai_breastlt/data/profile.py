"""Long-tail profile of a labelled set: counts, imbalance ratio and head/medium/tail groups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LongTailProfile", "long_tail_groups", "long_tail_profile", "tempered_class_weights"]

HEAD, MEDIUM, TAIL = "head", "medium", "tail"


def long_tail_groups(counts: Sequence[int], head_ratio: float = 0.5, tail_ratio: float = 0.1) -> list[str]:
    """Group classes by their count relative to the largest class.

    Args:
        counts: training count per class.
        head_ratio: a class with ``count >= head_ratio * max`` is *head*.
        tail_ratio: a class with ``count <= tail_ratio * max`` is *tail*; the rest is *medium*.
    """
    if not 0 <= tail_ratio < head_ratio <= 1:
        raise ValueError(f"need 0 <= tail_ratio < head_ratio <= 1, got tail_ratio={tail_ratio}, head_ratio={head_ratio}.")
    counts = np.asarray(counts, dtype=float)
    top = counts.max() if counts.size else 0.0
    return [HEAD if c >= head_ratio * top else TAIL if c <= tail_ratio * top else MEDIUM for c in counts]


def tempered_class_weights(counts: Sequence[int], power: float = 0.5) -> list[float]:
    """Per-class sampling shares ``n_c ** (1 - power)``, normalised: ``power`` 0 keeps the natural frequencies, 1 is
    class-balanced, 0.5 is square-root sampling. Classes without items get 0.

    Use as ``AdaptiveRatioSampler(..., target="distribution", class_weights=...)``.
    """
    if not 0 <= power <= 1:
        raise ValueError(f"power must be in [0, 1], got {power}.")
    n = np.asarray(counts, dtype=float)
    if n.ndim != 1 or n.size == 0 or np.any(n < 0) or n.sum() <= 0:
        raise ValueError(f"counts must be non-negative per-class counts, not all zero; got {list(counts)}.")
    w = np.power(n, 1.0 - power, where=n > 0, out=np.zeros_like(n))  # masked: 0 ** 0 would give an empty class 1
    return (w / w.sum()).tolist()


@dataclass
class LongTailProfile:
    """Counts per class and their long-tail grouping."""

    classes: list[str]
    counts: list[int]
    groups: list[str] = field(default_factory=list)

    @property
    def imbalance_ratio(self) -> float:
        nonzero = [c for c in self.counts if c > 0]
        return max(nonzero) / min(nonzero) if nonzero else float("nan")

    def indices(self, group: str) -> list[int]:
        """Class indices of one group (``"head"``, ``"medium"`` or ``"tail"``)."""
        return [i for i, g in enumerate(self.groups) if g == group]

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "counts": self.counts,
            "groups": self.groups,
            "imbalance_ratio": self.imbalance_ratio,
        }

    def format_table(self) -> str:
        """A plain-text table, largest class first."""
        width = max([len("class")] + [len(c) for c in self.classes])
        total = max(sum(self.counts), 1)
        lines = [f"{'class':<{width}}  {'label':>5}  {'count':>6}  {'share':>6}  group", "-" * (width + 34)]
        for i in sorted(range(len(self.classes)), key=lambda i: (-self.counts[i], i)):
            lines.append(
                f"{self.classes[i]:<{width}}  {i:>5}  {self.counts[i]:>6}  {100 * self.counts[i] / total:>5.1f}%  {self.groups[i]}"
            )
        lines.append("-" * (width + 34))
        lines.append(f"{len(self.classes)} classes, {sum(self.counts)} images, imbalance ratio {self.imbalance_ratio:.1f}")
        lines.append(
            "groups: " + ", ".join(f"{g} {len(self.indices(g))}" for g in (HEAD, MEDIUM, TAIL))
        )
        return "\n".join(lines)


def long_tail_profile(
    labels: Sequence[int], classes: Sequence[str], head_ratio: float = 0.5, tail_ratio: float = 0.1
) -> LongTailProfile:
    """Profile integer ``labels`` over ``classes``."""
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=len(classes)).tolist()
    return LongTailProfile(list(classes), counts, long_tail_groups(counts, head_ratio, tail_ratio))
