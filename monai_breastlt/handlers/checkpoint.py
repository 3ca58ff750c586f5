"""Checkpoint handlers that include the engine they are attached to, for resuming a bundle run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import

if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["ResumeCheckpointSaver", "ResumeCheckpointLoader"]


class _IncludesEngine:
    """Adds the engine a checkpoint handler is attached to into its object dict (ignite's ``Checkpoint`` holds it)."""

    _objects_attr: str

    def __init__(self, engine_key: str = "trainer", **kwargs) -> None:
        super().__init__(**kwargs)  # type: ignore[call-arg]
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        getattr(self, self._objects_attr)[self.engine_key] = engine
        super().attach(engine)  # type: ignore[misc]


class ResumeCheckpointSaver(_IncludesEngine, CheckpointSaver):
    """
    MONAI's ``CheckpointSaver`` that also saves the engine it is attached to (epoch, iteration) under
    ``engine_key``. A bundle config cannot list the trainer in the ``save_dict`` of one of the trainer's own
    handlers (a circular reference); this handler adds it at ``attach``. ignite writes through a temporary file
    and renames, so a kill during a save leaves the previous checkpoint intact.

    Args:
        engine_key: key of the engine in the checkpoint.
        kwargs: passed to ``CheckpointSaver``.
    """

    _objects_attr = "save_dict"


class ResumeCheckpointLoader(_IncludesEngine, CheckpointLoader):
    """
    MONAI's ``CheckpointLoader`` (``weights_only=True``) that also restores the engine it is attached to, the
    counterpart of :py:class:`ResumeCheckpointSaver`.

    Args:
        engine_key: key of the engine in the checkpoint.
        kwargs: passed to ``CheckpointLoader``.
    """

    _objects_attr = "load_dict"
