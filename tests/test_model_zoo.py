"""Pruning the torchvision model zoo and the CIFAR ResNets to 50% FLOPs, for real."""

from __future__ import annotations

import pytest
import torch
import torchvision

import pat_ray
from _helpers import assert_pruning_is_exact, randomize_norms
from pat_ray.core.cost import graph_cost, measure_cost
from pat_ray.core.groups import trace_channel_groups
from pat_ray.models.cifar_resnet import CifarResNet

TORCHVISION = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "mobilenet_v2",
    "vgg11_bn",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "regnet_x_400mf",
]


def build(name: str):
    torch.manual_seed(0)
    if name.startswith("cifar_resnet"):
        return CifarResNet(int(name.removeprefix("cifar_resnet"))), torch.randn(2, 3, 32, 32)
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    return model, torch.randn(2, 3, 96, 96)


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION + ["cifar_resnet20", "cifar_resnet56"])
def test_half_flops_prune_runs_and_hits_budget(name):
    model, x = build(name)
    before = measure_cost(model, x)
    assert graph_cost(trace_channel_groups(model, x)) == before  # cost model == hooks
    pat_ray.prune(model, x, criterion="magnitude", budget=0.5)
    after = measure_cost(model, x)
    assert abs(after.flops / (0.5 * before.flops) - 1) < 0.03
    assert after.params < before.params
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION + ["cifar_resnet20"])
def test_surgery_equals_zeroing_the_removed_channels(name):
    model, x = build(name)
    randomize_norms(model)
    assert_pruning_is_exact(model, x, 0.5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "cifar_resnet20"])
def test_full_budget_changes_nothing(name):
    model, x = build(name)
    randomize_norms(model)
    model.eval()
    with torch.no_grad():
        before = model(x)
    arch = pat_ray.prune(model, x, budget=1.0)
    assert arch.is_full
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
