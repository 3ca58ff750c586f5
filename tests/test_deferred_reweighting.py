from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from monai_breastlt.handlers import DeferredReweighting
from monai_breastlt.losses import LDAMLoss


def _run(loss, start_epoch, epochs, enabled=True):
    seen = []
    engine = Engine(lambda e, b: seen.append((e.state.epoch, None if loss.weight is None else loss.weight.tolist())))
    DeferredReweighting(loss, [0.5, 1.5], start_epoch, enabled).attach(engine)
    engine.run([0], max_epochs=epochs)
    return seen


def test_weights_switch_on_after_start_epoch():
    seen = _run(LDAMLoss([10, 2]), start_epoch=2, epochs=4)
    assert seen == [(1, None), (2, None), (3, [0.5, 1.5]), (4, [0.5, 1.5])]
    # CrossEntropyLoss keeps the weight as a buffer: it is set there (and used)
    ce = torch.nn.CrossEntropyLoss()
    assert _run(ce, 0, 1) == [(1, [0.5, 1.5])] and "weight" in dict(ce.named_buffers())


def test_disabled_is_a_no_op_and_a_loss_without_weight_is_refused():
    assert _run(LDAMLoss([10, 2]), 0, 2, enabled=False) == [(1, None), (2, None)]
    with pytest.raises(ValueError, match="has no 'weight' attribute"):
        DeferredReweighting(torch.nn.Identity(), [1.0], 0)
