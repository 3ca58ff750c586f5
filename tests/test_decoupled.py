from __future__ import annotations

import pytest
import torch
from monai.networks.nets import ResNet

from monai_breastlt.networks import classifier_parameters


def _net():
    return ResNet("basic", [1, 1, 1, 1], [4, 4, 8, 8], spatial_dims=2, n_input_channels=1, num_classes=3)


def test_only_the_classifier_learns():
    net = _net()
    params = list(classifier_parameters(net, "fc"))
    assert {id(p) for p in params} == {id(p) for p in net.fc.parameters()}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(params, lr=0.1)
    net(torch.randn(2, 1, 16, 16)).sum().backward()
    opt.step()
    changed = {k for k, v in net.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])}
    # the fc weights change; conv weights stay (BatchNorm running stats move in train mode, as in cRT)
    assert {"fc.weight", "fc.bias"} <= changed and not any(k.startswith("conv1.") or k.endswith("conv1.weight") for k in changed)


def test_all_parameters_and_missing_head():
    net = _net()
    assert len(list(classifier_parameters(net, classifier_only=False))) == len(list(net.parameters()))
    with pytest.raises(ValueError, match="no classifier layer 'head'"):
        classifier_parameters(net, "head")
