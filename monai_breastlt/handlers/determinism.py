"""``EpochDeterminism``: every epoch's randomness a function of (seed, epoch), so a resumed run repeats exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from monai.transforms import Compose
from monai.utils import IgniteInfo, min_version, optional_import, set_determinism

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["EpochDeterminism", "MetaTrackingOff"]


class EpochDeterminism:
    """
    At every epoch start, seed torch, numpy, Python (``monai.utils.set_determinism``) and the random transforms
    with a seed derived from ``(seed, epoch)`` by ``numpy.random.SeedSequence`` (``seed + epoch`` would make seed 1
    repeat seed 0 one epoch later).

    ``set_determinism`` at start-up makes a whole run repeatable, but a run resumed from a checkpoint starts its
    random transforms and global generators afresh, so it diverges from the uninterrupted run. Re-seeding per epoch
    makes epoch ``e`` draw the same augmentations, dropout masks and PPO minibatches whether or not the process was
    restarted before it.

    Args:
        seed: base seed.
        transforms: the training transforms (their own random states are re-seeded too).
        enabled: ``False`` makes :meth:`attach` a no-op.
    """

    def __init__(self, seed: int, transforms: Compose | None = None, enabled: bool = True) -> None:
        self.seed, self.transforms, self.enabled = int(seed), transforms, enabled

    def attach(self, engine: Engine) -> None:
        if self.enabled and not engine.has_event_handler(self, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        seed = int(np.random.SeedSequence([self.seed, int(engine.state.epoch)]).generate_state(1)[0])
        set_determinism(seed=seed)
        if self.transforms is not None:
            self.transforms.set_random_state(seed=seed)


class MetaTrackingOff:
    """
    While the engine runs, MONAI transforms return plain tensors rather than ``MetaTensor`` objects
    (``monai.data.set_track_meta(False)``); the previous setting comes back when the run ends or fails.

    A classifier's random augmentations need no metadata once the loading and resizing are cached, and the metadata
    bookkeeping is most of their cost: 6.6 against 2.7 ms per 64 px image for this bundle's augmentations on one CPU
    thread (the fast-training recipe of MONAI's tutorials does the same after caching).

    Args:
        enabled: ``False`` makes :meth:`attach` a no-op.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._previous: bool | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled or engine.has_event_handler(self.started, Events.STARTED):
            return
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.restore)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)

    def started(self, engine: Engine) -> None:
        from monai.data import get_track_meta, set_track_meta

        self._previous = get_track_meta()
        set_track_meta(False)

    def restore(self, engine: Engine) -> None:
        from monai.data import set_track_meta

        if self._previous is not None:
            set_track_meta(self._previous)
            self._previous = None

    def failed(self, engine: Engine, e: Exception) -> None:
        self.restore(engine)
        raise e  # ignite re-raises only when no handler is registered for the exception
