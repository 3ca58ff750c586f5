"""Small helpers shared by every sub-package: atomic writes and seeding."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import numbers
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

__all__ = [
    "SETTING_RANGES",
    "atomic_open",
    "atomic_write_json",
    "atomic_torch_save",
    "bad_input_message",
    "check_range",
    "checkpoint_load_problem",
    "check_writable_dir",
    "clip_ratios",
    "latest_checkpoint",
    "rank_and_world_size",
    "load_weights",
    "read_json",
    "root_cause",
    "torch_load_safe",
]

logger = logging.getLogger(__name__)

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
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark (Windows editors write one) is skipped
            return json.load(f)
    except json.JSONDecodeError as e:
        hint = " (a comma before a closing bracket?)" if e.msg.startswith("Illegal trailing comma") or _after_comma(e) else ""
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}{hint}).") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); expected a JSON file.") from e
    except IsADirectoryError as e:
        raise ValueError(f"{path}: is a folder; expected a JSON file.") from e


def _after_comma(e: json.JSONDecodeError) -> bool:
    """Whether a parse error sits right after a comma (JSON allows no trailing comma before ``]`` or ``}``)."""
    before = e.doc[: e.pos].rstrip()
    return before.endswith(",") and e.doc[e.pos : e.pos + 1] in ("]", "}")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file so that a kill during the save never corrupts ``path``."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def torch_load_safe(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found" + (" (it is a folder)." if path.is_dir() else "."))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt zips and disallowed globals
        raise ValueError(f"{path}: {checkpoint_load_problem(path, e)}") from e


def checkpoint_load_problem(path: str | os.PathLike, error: BaseException) -> str:
    """One line saying why ``torch.load(path, weights_only=True)`` failed with ``error`` (torch's own text spans
    paragraphs and suggests ``weights_only=False``, which would run the file's code)."""
    text = str(error)
    refused = re.search(r"GLOBAL [\w.]+", text)
    if refused:
        return (f"refused: it holds pickled code or objects ({refused.group(0)}), not only weights; only tensors and plain containers are "
                "loaded, so nothing in the file was run.")
    if not zipfile.is_zipfile(path):
        return "not a PyTorch checkpoint, or a truncated one (no complete zip archive); save it again or pick another file."
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"cannot be read as a weights-only checkpoint ({type(error).__name__}: {first})"


def load_weights(module: torch.nn.Module, path: str | os.PathLike, enabled: bool = True, part: str | None = None) -> torch.nn.Module | None:
    """Load a weights-only checkpoint (a state dict) into ``module``; a checkpoint of another network is refused in one
    line naming the file, not with PyTorch's list of every missing and unexpected key. Bundle configs instantiate it.

    Args:
        module: the network to fill.
        path: a state dict saved from that network.
        enabled: ``False`` loads nothing and returns ``None`` (an optional network of a config).
        part: return this attribute of the loaded module instead (e.g. ``"autoencoder"`` of an LDM).

    Raises:
        ValueError: the file cannot be loaded safely, or its weights do not fit ``module``.
    """
    if not enabled:
        return None
    state = torch_load_safe(path)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, expected the weights (state dict) of a {type(module).__name__}.")
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as e:
        expected = module.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        shapes = [k for k in expected if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)]
        what = "; ".join(
            f"{len(keys)} {label}, e.g. {', '.join(keys[:3])}"
            for label, keys in (("weights missing", missing), ("unexpected weights", unexpected), ("of other shapes", shapes)) if keys
        ) or str(e).strip().splitlines()[0]
        raise ValueError(f"{path}: weights of another network, not of this {type(module).__name__} ({what}).") from e
    return getattr(module, part) if part else module


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


# errors that mean "the input is wrong" (a file, a setting): reported as one line, not as a traceback
BAD_INPUT_ERRORS = (ValueError, KeyError, OSError)


def bad_input_message(exc: BaseException) -> str | None:
    """The one-line message of the outermost bad-input error in ``exc``'s chain of causes (past the ``RuntimeError`` that
    MONAI wraps errors in), or ``None`` when there is none. The outermost one is the package's own message when it
    re-raises a library's error with the file named.

    The command line prints it as its ``error:`` line; a bundle run prints it before and after the traceback.
    """
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, BAD_INPUT_ERRORS):  # MONAI's wrappers are RuntimeErrors
        cause = cause.__cause__
    if cause is None:
        return None
    text = cause.args[0] if isinstance(cause, KeyError) and len(cause.args) == 1 else str(cause)
    return " ".join(str(text).split()) or type(cause).__name__


_warned: set[str] = set()


def latest_checkpoint(folder: str | os.PathLike, pattern: str = "checkpoint*.pt") -> str | None:
    """The most recent complete checkpoint in ``folder``.

    Temporary files of an interrupted save are ignored. A newest file that is not a complete checkpoint (truncated by a
    full disk or a copy, for example) is named in a warning and skipped for the next newest valid one; the check reads
    the zip archive's records and checksums, it does not unpickle anything.
    """
    files = [p for p in Path(folder).glob(pattern) if p.is_file() and not p.name.startswith(".")]
    for p in sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        problem = _zip_problem(p)
        if problem is None:
            return str(p)
        if str(p) not in _warned:  # configs ask twice (to enable the loader, then for its path): warn once
            _warned.add(str(p))
            logger.warning("%s: %s; resuming from the newest complete checkpoint before it, if any.", p, problem)
    return None


def _zip_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete ``torch.save`` zip archive, or ``None``."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"truncated or not a checkpoint ({e})"
    return f"corrupt checkpoint (bad checksum of {bad})" if bad else None


# the range of each numeric setting of the bundles, the commands and the pool generator (keyword arguments of
# check_range); a setting's name is its bundle config key
SETTING_RANGES: dict[str, dict[str, Any]] = {
    "image_size": {"low": 1, "integer": True},
    "batch_size": {"low": 1, "integer": True},
    "max_epochs": {"low": 1, "integer": True},
    "num_workers": {"low": 0, "integer": True},
    "val_interval": {"low": 1, "integer": True},
    "checkpoint_interval": {"low": 1, "integer": True},
    "seed": {"low": 0, "high": 2**32 - 1, "integer": True},
    "learning_rate": {"low": 0, "low_open": True},
    "cache_rate": {"low": 0, "high": 1},
    "initial_ratio": {"low": 0, "high": 1},
    "max_ratio": {"low": 0, "high": 1},
    "ratio_step": {"low": 0, "high": 1, "low_open": True},
    "head_ratio": {"low": 0, "high": 1, "low_open": True},
    "tail_ratio": {"low": 0, "high": 1},
    "class_balance": {"low": 0, "high": 1},
    "num_inference_steps": {"low": 1, "integer": True},
    "guidance_scale": {"low": 0},
    "conditioning_scale": {"low": 0},
    "perturb": {"low": 0, "high": 1},
    "target_n": {"low": 0, "integer": True},
    "min_class_prob": {"low": 0, "high": 1},
}


def check_range(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    integer: bool = False,
    low_open: bool = False,
) -> Any:
    """Refuse a numeric setting outside ``[low, high]`` (``(low, high]`` with ``low_open``), NaN, Inf, a bool, or
    a non-integer where an integer is expected; the message names the setting and its range.

    Returns:
        ``value`` itself.

    Raises:
        ValueError: ``"{name} must be an integer >= 1, got 0."``
    """
    kind = "an integer" if integer else "a finite number"
    bounds = [f"> {low}" if low_open else f">= {low}"] if low is not None else []
    bounds += [f"<= {high}"] if high is not None else []
    wanted = f"{name} must be {kind}" + (" " + " and ".join(bounds) if bounds else "")
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        raise ValueError(f"{wanted}, got {value!r}.")
    if low is not None and (value <= low if low_open else value < low) or high is not None and value > high:
        raise ValueError(f"{wanted}, got {value!r}.")
    return value


def check_writable_dir(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before any work, an output folder that cannot be created or written (a file in its path, no
    permission, a read-only disk); nothing is created: the nearest existing ancestor is probed with a temporary file.

    Raises:
        OSError: naming the folder and the reason.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        if probe.is_symlink():
            raise NotADirectoryError(f"{folder}: cannot create the {what}: {probe} is a broken symbolic link.")
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"{folder}: cannot create the {what}: {probe} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise PermissionError(f"{folder}: cannot write the {what} ({probe}: {e.strerror}).") from e
    return folder


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
