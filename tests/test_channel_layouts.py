"""Channels that leave dim 1: permutes to channels-last (ConvNeXt's LayerNorm / Linear / layer
scale over the last axis), reshapes that keep or split the channel axis, channel shuffles.

Each model is pruned for real and checked against the dense model with the removed channels
zeroed, or (where a LayerNorm over the channels makes pruning change the function) checked
for budget, cost bookkeeping and a working forward / backward; the rest must be refused.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.convnext import LayerNorm2d

import pat_ray
from _helpers import assert_pruning_is_exact, randomize_norms, zero_removed_channels
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.core.selection import Budget, select_architecture
from pat_ray.core.surgery import apply_architecture
from pat_ray.errors import UnsupportedModelError
from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
from pat_ray.tracer.trace import trace_channel_groups


class ConvNeXtLike(nn.Module):
    """Two ConvNeXt blocks: depthwise conv -> permute -> LayerNorm -> Linear -> GELU -> Linear
    -> layer scale (a (C,) parameter on the last axis) -> permute back -> residual; a
    LayerNorm2d (torchvision's, calling F.layer_norm between two permutes) after the stem."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stem_norm = LayerNorm2d(width)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(2))
        self.head_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        x = self.stem_norm(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.head(self.head_norm(x.mean((2, 3))))


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(width, width, 7, padding=3, groups=width)
        self.norm = nn.LayerNorm(width)
        self.up, self.down = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.gamma = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.gamma * self.down(nn.functional.gelu(self.up(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


def _randomize_layer_norms(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


def test_convnext_pattern_prunes_to_budget_with_every_tensor_resized():
    torch.manual_seed(0)
    model, x = ConvNeXtLike(), torch.randn(2, 3, 16, 16)
    graph = trace_channel_groups(model, x)
    assert graph_cost(graph) == measure_cost(model, x)  # channels-last Linear MACs and the layer scales counted
    stream = next(g for g in graph.groups if ("stem", "out") in {(m.module, m.role) for m in g.members})
    roles = {(m.module, m.role) for m in stream.members}
    assert {("stem_norm", "norm"), ("blocks.0.norm", "norm"), ("blocks.1.down", "out")} <= roles
    assert {("blocks.0.gamma", "param"), ("head_norm", "norm"), ("head", "in")} <= roles
    hidden = [g for g in graph.prunable if g.size == 64]
    assert len(hidden) == 2 and all({m.role for m in g.members} == {"out", "in"} for g in hidden)

    before = measure_cost(model, x)
    pat_ray.prune(model, x, budget=0.5)
    after = measure_cost(model, x)
    assert abs(after.flops / (0.5 * before.flops) - 1) < 0.03
    width = model.stem.out_channels
    assert width < 16  # the residual stream itself was pruned, through every LayerNorm
    for norm in (model.stem_norm, model.blocks[0].norm, model.head_norm):
        assert norm.normalized_shape == (width,) == tuple(norm.weight.shape)
    assert model.blocks[1].gamma.shape == (width,)
    assert graph_cost(trace_channel_groups(model, x)) == after
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_channels_last_mlp_prunes_exactly_when_the_layer_norm_keeps_its_channels():
    """The hidden MLP channels never meet a LayerNorm, so pruning them alone is exact."""
    torch.manual_seed(0)
    model, x = ConvNeXtLike().eval(), torch.randn(2, 3, 16, 16)
    _randomize_layer_norms(model)
    graph = trace_channel_groups(model, x, exclude=["stem"])
    arch = select_architecture(graph, Magnitude().scores(model, graph), Budget(0.6))
    assert {name for name, kept in arch.kept.items() if len(kept) < arch.sizes[name]} == {
        "blocks.0.up",
        "blocks.1.up",
    }
    reference = copy.deepcopy(model)
    zero_removed_channels(reference, graph, arch)
    apply_architecture(model, graph, arch)
    assert model.blocks[0].up.out_features < 64
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


class TransposedLinear(nn.Module):
    """conv -> BN -> transpose(1, 3) -> Linear over channels -> swapaxes back -> conv: exact."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.mix = nn.Linear(12, 10)
        self.b = nn.Sequential(nn.Conv2d(10, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x):
        y = self.mix(self.a(x).transpose(1, 3))
        return self.b(torch.swapaxes(torch.relu(y), 3, 1)).mean((2, 3))


class KeptAxisReshape(nn.Module):
    """(N, C, H, W) -> (N, C, H*W) keeps the channel axis; mean over the last axis; Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        y = self.a(x)
        return self.head(y.reshape(y.shape[0], y.shape[1], -1).mean(-1))


class SpatialLayerNorm(nn.Module):
    """A LayerNorm over (H, W) normalizes each channel on its own: channels stay prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.norm = nn.LayerNorm([8, 8])
        self.b = nn.Conv2d(12, 6, 3, padding=1)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x)))).mean((2, 3))


@pytest.mark.parametrize("build", [TransposedLinear, KeptAxisReshape, SpatialLayerNorm])
def test_followed_layouts_prune_exactly(build):
    torch.manual_seed(0)
    model, x = build(), torch.randn(2, 3, 8, 8)
    randomize_norms(model)
    arch = assert_pruning_is_exact(model, x, 0.5)
    assert any(len(k) < arch.sizes[g] for g, k in arch.kept.items())


class LayerNormOverChannelsAndSpace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm, self.b = nn.Conv2d(3, 12, 3, padding=1), nn.LayerNorm([12, 8, 8]), nn.Conv2d(12, 6, 1)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.b(self.norm(self.a(x))).mean((2, 3)))


def test_a_layer_norm_over_channels_and_space_keeps_its_channels():
    model, x = LayerNormOverChannelsAndSpace(), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    assert [g.name for g in graph.groups if g.pinned and g.name == "a"] == ["a"]
    pat_ray.prune(model, x, budget=0.9)
    assert model.a.out_channels == 12 and model.norm.normalized_shape == (12, 8, 8)
    assert model.b.out_channels < 6


class ShuffleBlock(nn.Module):
    """ShuffleNet V2's stride-1 unit: chunk, a branch on one half, cat, channel shuffle."""

    def __init__(self, width: int) -> None:
        super().__init__()
        half = width // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(),
        )

    def forward(self, x):
        keep, work = x.chunk(2, dim=1)
        out = torch.cat((keep, self.branch(work)), dim=1)
        n, c, h, w = out.size()
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(ShuffleBlock(16), ShuffleBlock(16), nn.ChannelShuffle(4))
        self.head = nn.Sequential(nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.head(self.blocks(self.stem(x))).mean((2, 3)))


def test_channel_shuffle_keeps_the_shuffled_stream_and_prunes_the_branches_exactly():
    torch.manual_seed(0)
    model, x = ShuffleNetLike(), torch.randn(2, 3, 8, 8)
    randomize_norms(model)
    graph = trace_channel_groups(model, x)
    prunable = {g.name for g in graph.prunable}
    assert prunable == {"blocks.0.branch.0", "blocks.1.branch.0", "head.0"}  # the branches' inner channels
    assert graph_cost(graph) == measure_cost(model, x)
    assert_pruning_is_exact(model, x, 0.6)
    assert model.blocks[0].branch[0].out_channels < 8 and model.blocks[0].branch[5].out_channels == 8


class ChannelsLastSlice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Conv2d(3, 12, 3), nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.a(x).permute(0, 2, 3, 1)[..., ::2].mean((1, 2)))


class LinearOverWidth(nn.Module):
    """A Linear along the width: it runs once per channel and row, and leaves the channels be."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.a, self.mix = nn.Conv2d(3, 12, 3, padding=1, bias=False), nn.Linear(8, 5, bias=bias)
        self.head = nn.Conv2d(12, 4, 3)

    def forward(self, x):
        return self.head(self.mix(self.a(x))).flatten(1)


@pytest.mark.parametrize("bias", [False, True])
def test_a_linear_across_another_axis_keeps_its_weights_and_lets_the_channels_through(bias):
    torch.manual_seed(0)
    model, x = LinearOverWidth(bias), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    assert graph_cost(graph) == measure_cost(model, x)
    if bias:  # a removed channel's row gets the bias, not zero: not comparable with zeroing
        pat_ray.prune(model, x, budget=0.5)
    else:
        assert_pruning_is_exact(model, x, 0.5)
    assert model.a.out_channels == model.head.in_channels < 12 and model.mix.weight.shape == (5, 8)
    assert abs(measure_cost(model, x).flops / graph_cost(graph).flops - 0.5) < 0.03


def test_a_linear_on_sequences_from_the_input_prunes_its_hidden_features():
    model, x = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(2, 5, 12)
    graph = trace_channel_groups(model, x)
    assert graph_cost(graph) == measure_cost(model, x)
    pat_ray.prune(model, x, budget=0.5)
    assert model[0].out_features == model[2].in_features < 16 and model(x).shape == (2, 5, 4)


class ChannelsToBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)

    def forward(self, x):
        return self.a(x).transpose(0, 1)


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (ChannelsLastSlice, "slices the channel dimension"),
        (ChannelsToBatch, "moves the channels to dim 0"),
    ],
)
def test_ops_that_cut_or_misplace_channels_are_refused(build, says):
    with pytest.raises(UnsupportedModelError, match=says):
        trace_channel_groups(build(), torch.randn(2, 3, 8, 8))
