"""Reductions and (values, indices) ops: over spatial dims the channels survive, over the
channel axis they are consumed (CBAM's spatial attention), ops that need a given number or
order of channels keep their input, and the batch axis is refused. Also the everyday ops
around them: comparisons, ``where``, ``lerp``, ``flip`` / ``roll``, ``repeat``, ``grid_sample``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pat_ray
from _helpers import assert_pruning_is_exact, randomize_norms
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.trace import trace_channel_groups


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class CBAM(nn.Module):
    """Channel attention (an MLP on avg- and max-pooled features), then spatial attention: a
    7x7 conv on the channel-wise mean and max, ``torch.max(x, dim=1, keepdim=True)[0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.body = conv_bn(3, 16), conv_bn(16, 24)
        self.mlp = nn.Sequential(nn.Linear(24, 6), nn.ReLU(), nn.Linear(6, 24))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x))
        gate = self.mlp(x.mean((2, 3))) + self.mlp(F.adaptive_max_pool2d(x, 1).flatten(1))
        x = x * torch.sigmoid(gate)[:, :, None, None]
        pooled = torch.cat([x.mean(dim=1, keepdim=True), torch.max(x, dim=1, keepdim=True)[0]], dim=1)
        x = x * torch.sigmoid(self.spatial(pooled))
        return self.head(x.amax((2, 3)))


def test_cbam_prunes_its_features_and_keeps_the_spatial_attention_input():
    model, x = CBAM(), torch.randn(2, 3, 12, 12)
    graph = trace_channel_groups(model, x)
    assert not graph.group("body.0").pinned and not graph.group("stem.0").pinned
    assert graph_cost(graph) == measure_cost(model, x)
    pat_ray.prune(model, x, budget=0.5)
    assert model.body[0].out_channels < 24 and model.mlp[0].in_features == model.body[0].out_channels
    assert model.spatial.in_channels == 2  # one mean and one max, whatever the width
    assert abs(measure_cost(model, x).flops / graph_cost(graph).flops - 0.5) < 0.03
    model.train()(x).sum().backward()


class ChannelSum(nn.Module):
    """A sum over channels is exact under pruning: a removed channel added zero."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = conv_bn(3, 12), conv_bn(12, 16)
        self.head = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)).sum(1, keepdim=True)).flatten(1)


class SpatialValues(nn.Module):
    """(values, indices) along spatial dims, read with ``[0]``, ``.values`` and unpacking."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = conv_bn(3, 12), conv_bn(12, 16)
        self.head = nn.Linear(16 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        x = self.b(torch.sort(x, dim=2).values + x.max(dim=3, keepdim=True)[0])
        top, _ = torch.topk(x.flatten(2), 3, dim=2)
        return self.head(top.flatten(1)) + x.median(dim=-1).values.amax(-1).sum(1, keepdim=True)


@pytest.mark.parametrize("build", [ChannelSum, SpatialValues])
def test_reductions_prune_exactly(build):
    torch.manual_seed(0)
    model = build()
    randomize_norms(model)
    arch = assert_pruning_is_exact(model, torch.randn(2, 3, 10, 10), 0.5)
    assert len(arch.kept["a.0"]) < 12


class ChannelTopK(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op, self.a, self.b = op, conv_bn(3, 12), conv_bn(12, 16)
        self.head = nn.Conv2d(4 if op == "topk" else 12 if op == "sort" else 1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        if self.op == "topk":
            picked = x.topk(4, dim=1).values
        elif self.op == "sort":
            picked = torch.sort(x, dim=1, descending=True)[0]
        else:
            picked = torch.kthvalue(x, 3, dim=1, keepdim=True).values
        return self.head(picked).flatten(1) + self.b(x).mean((2, 3)).sum(1, keepdim=True)


@pytest.mark.parametrize("op", ["topk", "sort", "kthvalue"])
def test_ops_that_need_every_channel_in_order_keep_their_input(op):
    model, x = ChannelTopK(op), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    assert graph.group("a.0").pinned and not graph.group("b.0").pinned
    pat_ray.prune(model, x, budget=0.7)
    assert model.a[0].out_channels == 12 and model.b[0].out_channels < 16
    model(x)


class MaxOverChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = conv_bn(3, 8), nn.Linear(64, 4)

    def forward(self, x):
        values, _ = torch.max(self.stem(x), dim=1)  # (N, H, W): the channel axis is gone
        return self.head(values.flatten(1))


def test_a_reduction_that_drops_the_channel_axis_leaves_the_rest_fixed():
    model, x = MaxOverChannels(), torch.randn(2, 3, 8, 8)
    pat_ray.prune(model, x, budget=0.6)
    assert model.stem[0].out_channels < 8 and model.head.in_features == 64
    assert model(x).shape == (2, 4)


class Elementwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.max(self.a(x), self.b(x)) + self.a(x).min(self.b(x))
        return self.c(y).argmax(1), y.sum()  # a label map, and a scalar of everything


def test_max_and_min_of_two_tensors_couple_them_and_full_reductions_are_outputs():
    model, x = Elementwise(), torch.randn(2, 3, 10, 10)
    graph = trace_channel_groups(model, x)
    coupled = graph.group("a")
    assert {m.module for m in coupled.producers()} == {"a", "b"} and not coupled.pinned
    before = [tuple(t.shape) for t in model(x)]
    pat_ray.prune(model, x, budget=0.5)
    assert model.a.out_channels == model.b.out_channels == model.c.in_channels < 8
    assert [tuple(t.shape) for t in model(x)] == before


class BatchMax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x).max(dim=0).values


def test_reducing_the_batch_axis_away_is_refused_naming_the_op():
    with pytest.raises(UnsupportedModelError, match="max.*batch"):
        trace_channel_groups(BatchMax(), torch.randn(2, 3, 8, 8))


class EverydayOps(nn.Module):
    """Comparisons, where / masked_fill, lerp / addcmul, *_like, flip / roll along space, an L2
    normalization over channels written as ``x / x.norm(2, 1, True)``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = conv_bn(3, 12), conv_bn(3, 12)
        self.head = nn.Conv2d(12, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        y = torch.where(a > 0, a, b).masked_fill(b < -1, 0.0) + torch.lerp(a, b, 0.25)
        y = torch.addcmul(y, a, b) + torch.zeros_like(a) + a.flip(3) + torch.roll(b, 1, 2)
        return self.head(y / y.norm(2, 1, True).clamp_min(1e-3)).flatten(1)


def test_everyday_elementwise_ops_couple_their_operands():
    model, x = EverydayOps(), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    coupled = graph.group("a.0")
    assert {m.module for m in coupled.producers()} == {"a.0", "b.0"} and not coupled.pinned
    pat_ray.prune(model, x, budget=0.5)
    assert model.a[0].out_channels == model.b[0].out_channels == model.head.in_channels < 12


class Tiled(nn.Module):
    def __init__(self, along: str) -> None:
        super().__init__()
        self.along, self.a = along, conv_bn(3, 6)
        self.head = nn.Conv2d(12 if along == "repeat" else 6, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        y = a.repeat(1, 2, 1, 1) if self.along == "repeat" else a.flip(1)
        return self.head(y).flatten(1)


def test_repeating_channels_prunes_every_copy_and_flipping_them_keeps_them():
    torch.manual_seed(0)
    model, x = Tiled("repeat"), torch.randn(2, 3, 8, 8)
    randomize_norms(model)
    assert_pruning_is_exact(model, x, 0.5)
    assert model.head.in_channels == 2 * model.a[0].out_channels < 12
    assert trace_channel_groups(Tiled("flip"), x).group("a.0").pinned


class SpatialTransformer(nn.Module):
    """A localization net predicts an affine transform; the features are resampled with it."""

    def __init__(self) -> None:
        super().__init__()
        self.features, self.loc = conv_bn(3, 12), nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 6))
        self.head = nn.Conv2d(12, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.loc(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, [x.shape[0], 12, 8, 8], align_corners=False)
        return self.head(F.grid_sample(self.features(x), grid, align_corners=False)).flatten(1)


def test_a_spatial_transformer_resamples_features_that_still_prune():
    model, x = SpatialTransformer(), torch.randn(2, 3, 8, 8)
    pat_ray.prune(model, x, budget=0.5)
    assert model.features[0].out_channels == model.head.in_channels < 12
    assert model(x).shape == (2, 4 * 6 * 6)
