"""Decoupled classifier re-training (cRT, Kang et al., ICLR 2020): only the last layer learns in stage 2."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

__all__ = ["classifier_parameters"]


def classifier_parameters(network: nn.Module, head: str = "fc", classifier_only: bool = True) -> Iterator[nn.Parameter]:
    """The parameters an optimizer should update: with ``classifier_only``, freeze everything but ``network.<head>``.

    Args:
        network: e.g. a MONAI ``ResNet`` (its classifier is ``fc``) or ``DenseNet`` (``class_layers``).
        head: attribute name of the classifier layer.
        classifier_only: ``False`` returns all parameters unchanged (stage 1 / ordinary training).
    """
    if not classifier_only:
        return network.parameters()
    if not isinstance(getattr(network, head, None), nn.Module):
        raise ValueError(f"{type(network).__name__} has no classifier layer '{head}' (set classifier_head).")
    for p in network.parameters():
        p.requires_grad_(False)
    params = list(getattr(network, head).parameters())
    for p in params:
        p.requires_grad_(True)
    return iter(params)
