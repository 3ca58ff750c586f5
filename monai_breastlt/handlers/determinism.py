"""``EpochDeterminism``: every epoch's randomness a function of (seed, epoch), so a resumed run repeats exactly."""

from __future__ import annotations

from typing import TYPE_CHECKING

from monai.transforms import Compose
from monai.utils import IgniteInfo, min_version, optional_import, set_determinism

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["EpochDeterminism"]


class EpochDeterminism:
    """
    At every epoch start, seed torch, numpy, Python (``monai.utils.set_determinism``) and the random transforms
    with ``seed + epoch``.

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
        seed = self.seed + int(engine.state.epoch)
        set_determinism(seed=seed)
        if self.transforms is not None:
            self.transforms.set_random_state(seed=seed)
