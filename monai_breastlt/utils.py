"""Small helpers shared by every sub-package: atomic writes and seeding."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "atomic_open", "atomic_write_json", "atomic_torch_save", "clip_ratios", "latest_checkpoint", "rank_and_world_size", "read_json", "root_cause",
    "torch_load_safe",
]

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path`` and rename it over ``path`` on success.

    A crash (or a full disk) while writing never leaves a truncated ``path``: either the old file or the
    complete new one is there. The temporary file lives in the same folder so the rename is atomic.

    Args:
        path: final destination.
        mode: ``"w"`` or ``"wb"``.
        kwargs: passed to :func:`open` (e.g. ``encoding``).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}; is the output folder writable?") from e
    os.close(fd)
    try:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the final file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise OSError(e.errno, f"disk full while writing {path}; the previous version (if any) is intact: free space "
                          "and run again, finished work is kept") from e
        raise


def atomic_write_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a parse error names the file and the position."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (expected a JSON file).")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from e


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file so that a kill during the save never corrupts ``path``."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def torch_load_safe(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt zips and disallowed globals
        raise ValueError(
            f"{path}: cannot be loaded as a weights-only checkpoint ({type(e).__name__}: {e}). "
            "It may be truncated, or contain pickled objects that are not allowed for safety."
        ) from e


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the number of processes of its ``torch.distributed`` group; ``(0, 1)`` outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain: MONAI's ``Compose`` wraps the informative one in ``applying transform``."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "checkpoint*.pt") -> str | None:
    """The most recent complete checkpoint in ``folder`` (temporary files of an interrupted save are ignored)."""
    files = [p for p in Path(folder).glob(pattern) if p.is_file() and not p.name.startswith(".")]
    return str(max(files, key=lambda p: p.stat().st_mtime_ns)) if files else None


def clip_ratios(ratios: float | Sequence[float], num_classes: int, max_ratio: float) -> np.ndarray:
    """Per-class synthetic ratios from one value or one per class, clipped to ``[0, max_ratio]``.

    Raises:
        ValueError: wrong number of values, or a NaN/Inf.
    """
    r = np.asarray(ratios, dtype=float)
    r = np.full(num_classes, float(r)) if r.ndim == 0 else r
    if r.shape != (num_classes,):
        raise ValueError(f"ratios must be one value or {num_classes} values, got shape {r.shape}.")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"ratios must be finite, got {r.tolist()}.")
    return np.clip(r, 0.0, max_ratio)
