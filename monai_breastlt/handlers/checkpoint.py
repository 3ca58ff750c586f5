"""Checkpoint handlers for resuming a bundle run exactly: atomic files, the engine, RNG states, the best model."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import

from monai_breastlt.utils import atomic_torch_save

idist, _ = optional_import("ignite.distributed", IgniteInfo.OPT_IMPORT_VERSION, min_version)
BaseSaveHandler, _ = optional_import("ignite.handlers.checkpoint", IgniteInfo.OPT_IMPORT_VERSION, min_version, "BaseSaveHandler", as_type="base")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["AtomicCheckpointSaver", "BestModelState", "RNGStates", "ResumeCheckpointLoader", "ResumeCheckpointSaver"]


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

    Args:
        engine_key: key of the engine in the checkpoint.
        rng_key: key of the RNG states (``None``: not saved).
        kwargs: passed to ``CheckpointSaver``.
    """

    _objects_attr = "save_dict"


class ResumeCheckpointLoader(_IncludesEngine, CheckpointLoader):
    """
    MONAI's ``CheckpointLoader`` (``weights_only=True``) that also restores the engine it is attached to and the RNG
    states, the counterpart of :py:class:`ResumeCheckpointSaver`.

    Args:
        engine_key: key of the engine in the checkpoint.
        rng_key: key of the RNG states (``None``: not restored).
        kwargs: passed to ``CheckpointLoader``.
    """

    _objects_attr = "load_dict"
