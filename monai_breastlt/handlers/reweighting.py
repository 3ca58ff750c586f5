"""``DeferredReweighting``: switch a loss's class weights on late in training (the DRW schedule)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator")

__all__ = ["DeferredReweighting"]


class DeferredReweighting:
    """
    Deferred re-weighting (Cao et al., NeurIPS 2019): train with the loss unweighted for ``start_epoch`` epochs, then
    set its ``weight`` attribute (e.g. :func:`monai_breastlt.losses.effective_number_weights`) for the rest. Works
    with any loss that reads ``self.weight`` in ``forward`` (``LDAMLoss``, ``torch.nn.CrossEntropyLoss``).

    The decision is taken from ``engine.state.epoch`` at every epoch start, so a resumed run gets the right weights.

    Args:
        loss: the loss module (a :class:`~monai_breastlt.losses.SyntheticWeightedLoss`: the loss it wraps).
        weight: per-class weights used from epoch ``start_epoch + 1`` on.
        start_epoch: number of unweighted epochs.
        enabled: ``False`` makes :meth:`attach` a no-op (so a bundle can list the handler for every loss).
    """

    def __init__(self, loss: torch.nn.Module, weight: Sequence[float] | torch.Tensor, start_epoch: int, enabled: bool = True) -> None:
        from monai_breastlt.losses import SyntheticWeightedLoss

        if isinstance(loss, SyntheticWeightedLoss):  # re-weight the loss it wraps
            loss = loss.loss
        if enabled and not hasattr(loss, "weight"):
            raise ValueError(f"{type(loss).__name__} has no 'weight' attribute to re-weight.")
        self.loss = loss
        self.weight = torch.as_tensor(weight, dtype=torch.float32)
        self.start_epoch = int(start_epoch)
        self.enabled = enabled
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if self.enabled and not engine.has_event_handler(self, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        on = engine.state.epoch > self.start_epoch
        current = getattr(self.loss, "weight", None)
        if on and current is None:
            device = next((b.device for b in self.loss.buffers()), torch.device("cpu"))
            self._set(self.weight.to(device))
            self.logger.info(f"epoch {engine.state.epoch}: deferred re-weighting on, weights {self.weight.tolist()}")
        elif not on and current is not None:
            self._set(None)

    def _set(self, value: torch.Tensor | None) -> None:
        # CrossEntropyLoss keeps ``weight`` as a registered buffer; LDAMLoss as a plain attribute
        if "weight" in self.loss._buffers:
            self.loss._buffers["weight"] = value
        else:
            self.loss.weight = value
