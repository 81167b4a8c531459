"""pat_ray runs a model in eval mode to trace and check it, and in train mode to collect
gradients; afterwards every module has the mode it had, not the root's: a BatchNorm frozen
with ``.eval()`` inside a training model stays frozen."""

from __future__ import annotations

import torch
from torch import nn

import pat_ray
from pat_ray.core.modes import in_mode
from pat_ray.tracer.trace import trace_channel_groups


def frozen_bn_net() -> nn.Sequential:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    net.train()
    net[1].eval()  # frozen statistics, as in fine-tuning
    return net


def modes(net: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in net.named_modules()}


def test_in_mode_gives_each_module_its_own_flag_back() -> None:
    net = frozen_bn_net()
    before = modes(net)
    with in_mode(net, training=False):
        assert not any(modes(net).values())
    assert modes(net) == before
    net.eval()
    net[4].train()
    before = modes(net)
    with in_mode(net, training=True):
        assert all(modes(net).values())
    assert modes(net) == before


def test_in_mode_restores_after_an_error() -> None:
    net = frozen_bn_net()
    before = modes(net)
    try:
        with in_mode(net, training=False):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert modes(net) == before


def test_trace_and_prune_keep_a_frozen_batch_norm_frozen() -> None:
    net = frozen_bn_net()
    x = torch.randn(2, 3, 16, 16)
    before = modes(net)
    trace_channel_groups(net, x)
    assert modes(net) == before
    batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 4, (4,)))]
    pat_ray.prune(net, x, criterion="taylor", budget=0.5, calibration=batches)
    assert modes(net) == before
    assert net[0].out_channels < 8 or net[3].out_channels < 8  # it did prune
