"""Checkpoint handlers for resuming a bundle run exactly: atomic files, the engine, RNG states, the best model."""

from __future__ import annotations

import contextlib
import logging
import pickle
import random
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import

from monai_breastlt.utils import atomic_torch_save, checkpoint_load_problem

idist, _ = optional_import("ignite.distributed", IgniteInfo.OPT_IMPORT_VERSION, min_version)
BaseSaveHandler, _ = optional_import("ignite.handlers.checkpoint", IgniteInfo.OPT_IMPORT_VERSION, min_version, "BaseSaveHandler", as_type="base")
Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["AtomicCheckpointSaver", "BestModelState", "RNGStates", "ResumeCheckpointLoader", "ResumeCheckpointSaver", "SafeCheckpointLoader"]

logger = logging.getLogger(__name__)


class _AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler writing through a temporary file and a rename (MONAI's saver writes in place).

    ignite removes the checkpoint being replaced *before* writing the new one; here the removal is deferred until
    the new file is complete, so a kill during a save always leaves the previous checkpoint on disk. Temporary
    files left by a killed process are removed after the next complete save. In a multi-process run only
    ``save_on_rank`` writes and removes files, as ignite's ``DiskSaver`` does (every rank holds the same weights).
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, save_on_rank: int = 0) -> None:
        self.dirname, self.filename, self.save_on_rank = Path(dirname), filename, save_on_rank
        self._to_remove: list[str] = []
        self._started = time.time()

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        name = self.filename or filename
        atomic_torch_save(checkpoint, self.dirname / name)
        for old in self._to_remove:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)
        self._to_remove.clear()
        for tmp in self.dirname.glob(".*.tmp"):  # left by a process killed while saving
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < self._started:
                    tmp.unlink()

    def remove(self, filename: str) -> None:
        if idist.get_rank() == self.save_on_rank:
            self._to_remove.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """
    MONAI's ``CheckpointSaver`` whose files are written to a temporary file, fsynced and renamed: a kill or a
    full disk during a save leaves the previous checkpoint intact instead of a truncated one (MONAI's own saver
    writes in place). Same arguments as ``CheckpointSaver``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                handler = ckpt.save_handler
                ckpt.save_handler = _AtomicDiskSaver(self.save_dir, getattr(handler, "filename", None), getattr(handler, "save_on_rank", 0))


class RNGStates:
    """The global torch (CPU and CUDA), numpy and Python random states as an object with ``state_dict`` (tensors and
    plain values only, so it loads with ``weights_only=True``)."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, py_gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.as_tensor(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss": py_gauss},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class BestModelState:
    """
    What a resumed run needs to keep the *best* model: the key-metric checkpoint's record of saved files and the
    evaluator's best metric. Without it a resumed run would overwrite a better ``model.pt`` from before the crash
    with its first (maybe worse) validation. Put it in the ``save_dict``/``load_dict`` of the resume handlers.

    Args:
        saver: the evaluator's ``CheckpointSaver`` with ``save_key_metric=True``.
        evaluator: the evaluator it is attached to.
    """

    def __init__(self, saver: CheckpointSaver, evaluator: Engine) -> None:
        if getattr(saver, "_key_metric_checkpoint", None) is None:
            raise ValueError("BestModelState needs a CheckpointSaver with save_key_metric=True.")
        self.saver, self.evaluator = saver, evaluator

    def state_dict(self) -> dict:
        s = self.evaluator.state
        return {"saved": [[float(p), str(f)] for p, f in self.saver._key_metric_checkpoint.state_dict()["_saved"]],
                "best_metric": float(getattr(s, "best_metric", -1.0)), "best_metric_epoch": int(getattr(s, "best_metric_epoch", -1))}

    def load_state_dict(self, state: Mapping) -> None:
        self.saver._key_metric_checkpoint.load_state_dict({"_saved": [tuple(x) for x in state["saved"]]})
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]


class _IncludesEngine:
    """Adds the engine a checkpoint handler is attached to, and the RNG states, into its object dict."""

    _objects_attr: str

    def __init__(self, engine_key: str = "trainer", rng_key: str | None = "rng", **kwargs) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self.engine_key, self.rng_key = engine_key, rng_key

    def attach(self, engine: Engine) -> None:
        objects = getattr(self, self._objects_attr)
        objects[self.engine_key] = engine
        if self.rng_key:
            objects[self.rng_key] = RNGStates()
        super().attach(engine)  # type: ignore[misc]


class ResumeCheckpointSaver(_IncludesEngine, AtomicCheckpointSaver):
    """
    :py:class:`AtomicCheckpointSaver` that also saves the engine it is attached to (epoch, iteration) under
    ``engine_key`` and the global RNG states under ``rng_key``. A bundle config cannot list the trainer in the
    ``save_dict`` of one of the trainer's own handlers (a circular reference); this handler adds it at ``attach``.

    After each interval checkpoint, the older interval checkpoints of the same name pattern beyond ``n_saved`` are
    removed, those of an earlier (resumed or killed) process included: ignite only counts the files its own process
    saved, so a resumed run would otherwise keep every checkpoint from before the resume.

    Args:
        engine_key: key of the engine in the checkpoint.
        rng_key: key of the RNG states (``None``: not saved).
        kwargs: passed to ``CheckpointSaver``.
    """

    _objects_attr = "save_dict"

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        ckpt = self._interval_checkpoint
        if ckpt is not None and ckpt.n_saved is not None:  # registered after the save: runs once the new file is there
            engine.add_event_handler(Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED, self._prune)

    def _prune(self, engine: Engine) -> None:
        ckpt = self._interval_checkpoint
        if not ckpt._saved:
            return
        newest = ckpt._saved[-1].filename
        # ignite's name: [<prefix>_]checkpoint_<score name>=<step>.pt; several objects are saved, so the name is "checkpoint"
        stem, _, _ = newest.rpartition("=")
        pattern = re.compile(re.escape(stem) + r"=(\d+)\.pt$")
        on_disk = sorted((int(m.group(1)), p) for p in Path(self.save_dir).iterdir() if (m := pattern.match(p.name)))
        kept = {item.filename for item in ckpt._saved}
        extra = [p for _, p in on_disk if p.name not in kept]
        for path in extra[: max(0, len(on_disk) - ckpt.n_saved)]:  # the oldest first
            with contextlib.suppress(OSError):
                path.unlink()
                logger.info("removed %s: older than the %d newest checkpoint(s) kept", path, ckpt.n_saved)


class SafeCheckpointLoader(CheckpointLoader):
    """
    MONAI's ``CheckpointLoader`` (``weights_only=True``) whose refusals are one line naming the file: a file holding
    pickled code or objects, a truncated or foreign file, or weights of another network. PyTorch's own messages span
    paragraphs (and suggest ``weights_only=False``, which would run the file's code) or list every mismatched key.
    Same arguments as ``CheckpointLoader``.
    """

    def __call__(self, engine: Engine) -> None:
        if not Path(self.load_path).is_file():
            raise FileNotFoundError(f"{self.load_path}: checkpoint not found" + (" (it is a folder)." if Path(self.load_path).is_dir() else "."))
        try:
            super().__call__(engine)
        except Exception as e:  # torch raises several types for refused globals, corrupt zips and mismatched weights
            text = str(e)
            if "Error(s) in loading state_dict" in text:
                raise ValueError(f"{self.load_path}: weights of another network, not of this {', '.join(self.load_dict)} "
                                 f"({_mismatch_summary(text)}).") from e
            if isinstance(e, (pickle.UnpicklingError, EOFError)) or "PytorchStreamReader" in text:
                raise ValueError(f"{self.load_path}: {checkpoint_load_problem(self.load_path, e)}") from e
            if isinstance(e, KeyError):
                raise ValueError(f"{self.load_path}: has no {text} entry; expected a checkpoint holding {', '.join(self.load_dict)}.") from e
            raise


def _mismatch_summary(text: str) -> str:
    """Counts and first keys of PyTorch's ``load_state_dict`` report, which lists every key."""
    parts = []
    for label, pattern in (("weights missing", r"Missing key\(s\) in state_dict: (.*)"), ("unexpected weights", r"Unexpected key\(s\) in state_dict: (.*)")):
        m = re.search(pattern, text)
        if m:
            keys = re.findall(r'"([^"]+)"', m.group(1))
            parts.append(f"{len(keys)} {label}, e.g. {', '.join(keys[:3])}")
    shapes = re.findall(r"size mismatch for ([\w.]+)", text)
    if shapes:
        parts.append(f"{len(shapes)} of other shapes, e.g. {', '.join(shapes[:3])}")
    return "; ".join(parts) or text.strip().splitlines()[0]


class ResumeCheckpointLoader(_IncludesEngine, SafeCheckpointLoader):
    """
    :py:class:`SafeCheckpointLoader` (``weights_only=True``, one-line refusals) that also restores the engine it is
    attached to and the RNG states, the counterpart of :py:class:`ResumeCheckpointSaver`. Give it
    :func:`~monai_breastlt.utils.latest_checkpoint`, which skips a truncated newest file for the newest valid one.

    Args:
        engine_key: key of the engine in the checkpoint.
        rng_key: key of the RNG states (``None``: not restored).
        kwargs: passed to ``CheckpointLoader``.
    """

    _objects_attr = "load_dict"
