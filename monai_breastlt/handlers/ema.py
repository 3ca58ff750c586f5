"""``ExponentialMovingAverage``: train with the raw weights, keep (and finally use) their moving average."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """
    Exponential moving average of the trained parameters of a network, updated after every iteration; when the
    engine completes, the averaged weights are copied into the network, so a checkpoint saver attached *after* this
    handler (e.g. ``AtomicCheckpointSaver(save_final=True)``) writes the averaged model.

    Diffusion models are sampled from such an average (DDPM, latent diffusion): the raw weights at the end of a
    run carry the noise of the last minibatches, which shows in the samples; the average does not.

    The tracked parameters are those with ``requires_grad`` at the first update, so the same handler serves a stage
    that trains only part of a model (the ControlNet with a frozen UNet). The decay warms up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so early weights do not linger. The handler has
    ``state_dict``/``load_state_dict``: list it in a resume checkpoint's ``save_dict`` and ``load_dict``.

    Args:
        network: the model being trained.
        decay: weight of the average at each update (0: the average is the raw weights, i.e. disabled).
        apply_on_completion: copy the average into ``network`` at ``Events.COMPLETED``.
    """

    def __init__(self, network: nn.Module, decay: float = 0.999, apply_on_completion: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}.")
        self.network, self.decay, self.apply_on_completion = network, float(decay), apply_on_completion
        self.shadow: dict[str, torch.Tensor] = {}
        self.num_updates = 0

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.update, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)
        if self.apply_on_completion and not engine.has_event_handler(self.apply, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.apply)

    def current_decay(self) -> float:
        """The decay of the next update (warm-up included)."""
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, engine: Engine | None = None) -> None:
        """Fold the network's current parameters into the average."""
        params = dict(self.network.named_parameters())
        if not self.shadow:  # first update: track what this stage trains
            self.shadow = {k: p.detach().clone() for k, p in params.items() if p.requires_grad}
            if not self.shadow:
                raise ValueError("ExponentialMovingAverage: the network has no parameter with requires_grad.")
        else:
            d = self.current_decay()
            for k, s in self.shadow.items():
                s.lerp_(params[k].detach().to(s.dtype), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def apply(self, engine: Engine | None = None) -> None:
        """Copy the averaged weights into the network (no-op before the first update)."""
        params = dict(self.network.named_parameters())
        for k, s in self.shadow.items():
            params[k].copy_(s)

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        params = dict(self.network.named_parameters())
        unknown = [k for k in state["shadow"] if k not in params]
        if unknown:
            raise KeyError(f"ExponentialMovingAverage: the checkpoint averages parameters the network lacks: {unknown[:3]}.")
        self.shadow = {k: v.detach().clone().to(params[k].device, params[k].dtype) for k, v in state["shadow"].items()}
        self.num_updates = int(state["num_updates"])
