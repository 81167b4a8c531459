"""Channel-group tracing on small hand-built models whose coupling is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.trace import trace_channel_groups


def conv_bn(cin, cout, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(cout))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = conv_bn(3, 8), conv_bn(8, 8), conv_bn(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.stem(x).relu()
        y = self.b(self.a(x).relu())
        return self.head((x + y).mean((2, 3)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv_bn(3, 4), conv_bn(3, 6)
        self.norm = nn.BatchNorm2d(10)
        self.head = nn.Linear(10 * 4, 2)

    def forward(self, x):
        x = self.norm(torch.cat([self.a(x), self.b(x)], 1))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 2), 1))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.dw = conv_bn(8, 8, groups=8)
        self.fc1, self.fc2 = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.dw(self.stem(x))
        gate = torch.sigmoid(self.fc2(self.fc1(x.mean((2, 3), keepdim=True)).relu()))
        return self.head((x * gate).mean((2, 3)))


def names_of(graph):
    return {g.name: g for g in graph.groups}


def test_residual_sum_is_one_group_and_classifier_is_pinned():
    graph = trace_channel_groups(Residual(), torch.randn(1, 3, 8, 8))
    groups = names_of(graph)
    residual = groups["stem.0"]
    assert {m.module for m in residual.members} == {"stem.0", "stem.1", "a.0", "b.0", "b.1", "head"}
    assert groups["a.0"].size == 8 and not groups["a.0"].pinned
    assert groups["head"].pinned and groups["<input x>"].pinned


def test_concat_offsets_and_flatten_repeat():
    graph = trace_channel_groups(Concat(), torch.randn(1, 3, 8, 8))
    b_group = names_of(graph)["b.0"]
    members = {(m.module, m.role): m for m in b_group.members}
    assert members[("norm", "norm")].offset == 4
    head = members[("head", "in")]
    assert (head.offset, head.repeat) == (16, 4)  # 4 channels of a first, 2x2 features each
    assert head.positions(torch.tensor([1])).tolist() == [20, 21, 22, 23]


def test_depthwise_and_squeeze_excitation_couple_with_their_input():
    graph = trace_channel_groups(SqueezeExcite(), torch.randn(1, 3, 8, 8))
    groups = names_of(graph)
    main = groups["stem.0"]
    roles = {(m.module, m.role) for m in main.members}
    assert {("dw.0", "depthwise"), ("fc2", "out"), ("fc1", "in"), ("head", "in")} <= roles
    assert groups["fc1"].size == 2 and not groups["fc1"].pinned


def test_exclude_pins_the_module_output_and_rejects_unknown_names():
    graph = trace_channel_groups(Residual(), torch.randn(1, 3, 8, 8), exclude=["a.0"])
    assert names_of(graph)["a.0"].pinned
    with pytest.raises(ValueError, match="nope"):
        trace_channel_groups(Residual(), torch.randn(1, 3, 8, 8), exclude=["nope"])


class ChannelSlice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.conv(x)[:, ::2]  # a step: slices by start and stop are tests/test_channel_slices.py


class ComputedDim(nn.Module):
    """Reduces over a dim computed in the forward: the tracer sees a node, not a number."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        return y.mean(dim=y.dim() - 1)


class CatOfComputed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([y, y], dim=y.dim() - 3)


@pytest.mark.parametrize(
    "model, message",
    [
        (ChannelSlice(), "node 'getitem'.*slices the channel"),
        (ComputedDim(), "node 'mean'.*is not a constant int"),
        (CatOfComputed(), "node 'cat'.*is not a constant int"),
    ],
)
def test_unsupported_ops_are_named(model, message):
    with pytest.raises(UnsupportedModelError, match=message):
        trace_channel_groups(model, torch.randn(1, 3, 8, 8))


def test_untraceable_model_names_the_model():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedModelError, match="DataDependent"):
        trace_channel_groups(DataDependent(), torch.randn(1, 3, 4, 4))
