from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from monai.data import get_track_meta

from monai_breastlt.handlers import EpochDeterminism, MetaTrackingOff


def _draws(seed: int, epoch: int) -> torch.Tensor:
    engine = Engine(lambda e, b: None)
    engine.state.epoch = epoch
    EpochDeterminism(seed)(engine)
    return torch.rand(4)


def test_epoch_seeds_are_independent_across_seeds():
    assert torch.equal(_draws(0, 3), _draws(0, 3))
    assert not torch.equal(_draws(1, 2), _draws(0, 3))  # seed + epoch made these equal


def test_meta_tracking_is_off_during_the_run_and_restored():
    seen = []
    engine = Engine(lambda e, b: seen.append(get_track_meta()))
    MetaTrackingOff().attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert seen == [False, False] and get_track_meta()

    def fail(e, b):
        raise RuntimeError("boom")

    engine = Engine(fail)
    MetaTrackingOff().attach(engine)
    with pytest.raises(RuntimeError, match="boom"):
        engine.run([0], max_epochs=1)
    assert get_track_meta()
