"""Stratified, patient-aware train/validation/test splits, written once and reused by both phases."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monai_breastlt.data.checks import check_image_files, warn_leakage
from monai_breastlt.data.datalist import SECTIONS, load_datalist_file, validate_items, write_datalist
from monai_breastlt.data.public import read_any_source
from monai_breastlt.utils import check_writable_dir

logger = logging.getLogger(__name__)

__all__ = ["stratified_group_split", "long_tail_subsample", "prepare_split", "prepare_benchmark_data"]


def stratified_group_split(
    items: Sequence[dict],
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    group_key: str | None = "group",
    names: Sequence[str] = SECTIONS,
) -> dict[str, list[dict]]:
    """Split entries per class in the given fractions, keeping each group (patient) in one split.

    Groups are assigned whole, class by class (a group's class is its most frequent label), to the split
    whose share of that class lags its target most; a class with at least as many groups as splits gets
    one group in every split. Deterministic for a seed.

    Args:
        items: entries with ``label`` and optionally ``group_key``.
        fractions: target fraction per split, in ``names`` order; must sum to 1.
        seed: seed of the shuffling.
        group_key: entry field of the patient id; entries without it are their own group. ``None``: no groups.
        names: split names.
    """
    fractions = np.asarray(fractions, dtype=float)
    if len(fractions) != len(names) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"fractions {list(fractions)} must be {len(names)} non-negative numbers summing to 1.")
    if not items:
        raise ValueError("cannot split an empty dataset.")
    groups: dict[str, list[int]] = defaultdict(list)
    for n, item in enumerate(items):
        g = item.get(group_key) if group_key else None
        groups[f"g:{g}" if g is not None else f"i:{n}"].append(n)
    by_class: dict[int, list[str]] = defaultdict(list)
    for g, idx in groups.items():
        labels = [items[i]["label"] for i in idx]
        by_class[max(set(labels), key=lambda lab: (labels.count(lab), -lab))].append(g)
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict]] = {name: [] for name in names}
    # fill order for the first groups of a class: the largest split first, then the others by size
    order = list(np.argsort(-fractions, kind="stable"))
    for label in sorted(by_class):
        gs = sorted(by_class[label])
        rng.shuffle(gs)
        total = sum(len(groups[g]) for g in gs)
        have = np.zeros(len(names))
        for k, g in enumerate(gs):
            if k < len(order) and fractions[order[k]] > 0 and len(gs) >= len(names):
                s = order[k]
            else:
                s = int(np.argmax(fractions * total - have))
            have[s] += len(groups[g])
            out[names[s]].extend(items[i] for i in groups[g])
    return out


def long_tail_subsample(
    items: Sequence[dict], imbalance_ratio: float, seed: int = 0, num_classes: int | None = None
) -> list[dict]:
    """Subsample a training split exponentially so that ``max count / min count == imbalance_ratio``.

    The CIFAR-LT protocol: classes ordered by their real count (largest first) keep
    ``n_max * imbalance_ratio ** (-rank / (C - 1))`` entries. Validation and test splits stay untouched.
    """
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio}.")
    by_class: dict[int, list[dict]] = defaultdict(list)
    for item in items:
        by_class[item["label"]].append(item)
    labels = sorted(by_class, key=lambda c: (-len(by_class[c]), c))
    c_total = num_classes or len(labels)
    n_max = len(by_class[labels[0]])
    rng = np.random.default_rng(seed)
    out = []
    for rank, label in enumerate(labels):
        keep = max(1, int(round(n_max * imbalance_ratio ** (-rank / max(c_total - 1, 1)))))
        pool = by_class[label]
        chosen = sorted(rng.permutation(len(pool))[: min(keep, len(pool))])
        out.extend(pool[i] for i in chosen)
    return out


def prepare_split(
    items: Sequence[dict],
    classes: Sequence[str],
    path: str | os.PathLike,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    group_key: str | None = "group",
    overwrite: bool = False,
    check_files: bool = True,
    source: str | os.PathLike | None = None,
    extra: dict | None = None,
) -> dict:
    """Write the split datalist once; later calls with the same settings reuse the file.

    Both phases call this with the same ``path``, so synthesis never sees the classification test images. Before
    anything is written, every file of every entry is checked (all bad ones named at once); a split that leaves the
    training or validation section empty is refused (training learns on one and chooses its model on the other), an
    empty test section is warned about, and images or patients found in two splits (same bytes under two names, or
    a ``group`` spread by the source) are warned about.

    Args:
        items: the entries to split.
        classes: class names in label order.
        path: the datalist JSON to write.
        fractions, seed, group_key: see :func:`stratified_group_split`.
        overwrite: replace an existing file made with other settings.
        check_files: check the entries' files first (``False``: files written just before, by the caller).
        source: where the entries come from, for the messages.
        extra: further top-level keys of the file (provenance).

    Raises:
        ValueError: the file exists but was made with other settings or classes (pass ``overwrite=True``); an entry
            or a file is unusable; the split leaves training or validation empty.
        OSError: ``path`` cannot be written.
    """
    path = Path(path)
    settings = {"seed": int(seed), "fractions": [float(f) for f in fractions], "group_key": group_key}
    if path.exists() and not overwrite:
        doc = load_datalist_file(path)
        if doc.get("split") != settings or doc["classes"] != list(classes):
            raise ValueError(
                f"{path}: existing split was made with {doc.get('split')} and classes {doc['classes']}, "
                f"not {settings} and {list(classes)}; delete it or pass overwrite=True."
            )
        return doc
    check_writable_dir(path.parent, "folder of the datalist")
    where = str(source or path)
    items = validate_items(items, classes, where)
    sections = stratified_group_split(items, fractions, seed, group_key)
    empty = [k for k in SECTIONS if k in sections and not sections[k]]
    if {"training", "validation"} & set(empty):
        counts = ", ".join(f"{k} {len(v)}" for k, v in sections.items())
        raise ValueError(f"{path}: fractions {settings['fractions']} over {len(items)} entries leave {' and '.join(empty)} empty "
                         f"({counts}); training needs training and validation entries: give them non-zero fractions "
                         "(and enough patients per class); nothing was written.")
    if empty:
        logger.warning("%s: fractions %s leave %s empty: the classification bundle's evaluate.yaml has nothing to test on.",
                       path, settings["fractions"], " and ".join(empty))
    if check_files:
        check_image_files({"source": items}, where)
    warn_leakage(sections, str(path), group_key or "group")
    write_datalist(path, sections, classes, split=settings, **(extra or {}))
    return load_datalist_file(path)


def prepare_benchmark_data(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    imbalance_ratio: float | None = None,
    min_count: int = 0,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
) -> Path:
    """The benchmark's datalist ``<out_dir>/datalist.json``, written once and reused.

    An already split source keeps its split; otherwise a patient-grouped stratified split is made. With
    ``imbalance_ratio`` the training split is subsampled exponentially (CIFAR-LT protocol); validation and test
    stay untouched.

    Raises:
        ValueError: ``out_dir`` holds a datalist made from another source or with other settings.
    """
    out = Path(out_dir)
    path = out / "datalist.json"
    settings = {"source": str(Path(source).resolve()), "imbalance_ratio": imbalance_ratio, "min_count": min_count,
                "fractions": [float(f) for f in fractions], "seed": int(seed)}
    if path.is_file():
        doc = load_datalist_file(path)
        if doc.get("benchmark") != settings:
            raise ValueError(f"{path}: made with {doc.get('benchmark')}, not {settings}; use another --out.")
        return path
    sections, classes = read_any_source(source, min_count)
    if not set(SECTIONS) <= set(sections):
        items = [i for v in sections.values() for i in v]
        doc = prepare_split(items, classes, out / "split.json", fractions, seed)
        sections = {k: doc[k] for k in SECTIONS}
    sections = {k: sections[k] for k in SECTIONS}
    if imbalance_ratio:
        sections["training"] = long_tail_subsample(sections["training"], imbalance_ratio, seed, len(classes))
    write_datalist(path, sections, classes, benchmark=settings)
    return path
