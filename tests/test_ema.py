from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from monai_breastlt.handlers import ExponentialMovingAverage


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    net[0].requires_grad_(False)  # a frozen part, as the UNet in the ControlNet stage
    return net


def _step(net: nn.Module):
    """An ignite process function; it keeps its own optimizer and data generator, so two engines can share it."""
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    gen = torch.Generator().manual_seed(1)

    def step(engine, _):
        x = torch.randn(8, 3, generator=gen)
        opt.zero_grad()
        loss = net(x).pow(2).mean() + (net[1].weight - 1).pow(2).sum()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _trainer(net: nn.Module) -> Engine:
    return Engine(_step(net))


def test_average_follows_the_formula_and_replaces_the_weights_at_completion():
    net = _net()
    frozen = net[0].weight.clone()
    ema = ExponentialMovingAverage(net, decay=0.9)
    trainer = _trainer(net)
    ema.attach(trainer)
    expected, n, raw = None, 0, None

    @trainer.on(Events.ITERATION_COMPLETED)
    def _track(engine):  # registered after the handler: the parameters it just averaged
        nonlocal expected, n, raw
        w = net[1].weight.detach().clone()
        if expected is None:
            expected = w
        else:
            d = min(0.9, (1 + n) / (10 + n))
            expected = d * expected + (1 - d) * w
        n += 1
        raw = w

    trainer.run(range(12), max_epochs=1)
    assert set(ema.shadow) == {"1.weight", "1.bias"}  # the frozen layer is not tracked
    assert ema.num_updates == 12
    torch.testing.assert_close(net[1].weight, expected)  # the average is in the network now
    assert not torch.allclose(net[1].weight, raw)
    torch.testing.assert_close(net[0].weight, frozen)


def test_resumed_average_equals_the_uninterrupted_one():
    net_a = _net()
    ema_a = ExponentialMovingAverage(net_a, decay=0.8)
    tr = _trainer(net_a)
    ema_a.attach(tr)
    tr.run(range(6), max_epochs=1)

    net_b = _net()
    ema_b = ExponentialMovingAverage(net_b, decay=0.8, apply_on_completion=False)
    step_b = _step(net_b)
    tr_b = Engine(step_b)
    ema_b.attach(tr_b)
    tr_b.run(range(3), max_epochs=1)
    state = ema_b.state_dict()
    resumed = ExponentialMovingAverage(net_b, decay=0.8)
    resumed.load_state_dict(state)
    tr_c = Engine(step_b)  # the resumed run continues the same data stream and optimizer
    resumed.attach(tr_c)
    tr_c.run(range(3), max_epochs=1)
    assert resumed.num_updates == 6
    torch.testing.assert_close(net_b[1].weight, net_a[1].weight)


def test_zero_decay_keeps_the_last_weights_and_bad_input_is_refused():
    net = _net()
    ema = ExponentialMovingAverage(net, decay=0.0)
    trainer = _trainer(net)
    ema.attach(trainer)
    last = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: last.update(w=net[1].weight.detach().clone()))
    trainer.run(range(4), max_epochs=1)
    torch.testing.assert_close(net[1].weight, last["w"])
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(net, decay=1.0)
    with pytest.raises(KeyError, match="lacks"):
        ExponentialMovingAverage(nn.Linear(2, 2)).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="requires_grad"):
        ExponentialMovingAverage(nn.Linear(2, 2).requires_grad_(False)).update()
