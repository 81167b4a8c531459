"""The two worked examples of CONTRIBUTING.md, each a family added in one file and one table
entry: ``nn.RMSNorm`` (a layer family: trace, surgery, cost and timing) and
``repeat_interleave`` (an op kind). Both were refused or kept whole before."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _helpers import assert_pruning_is_exact
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.core.cost.probe import measure_latency
from pat_ray.core.selection import Budget, select_architecture
from pat_ray.core.surgery import apply_architecture
from pat_ray.errors import UnsupportedModelError
from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
from pat_ray.tracer.layers.table import family_of
from pat_ray.tracer.trace import trace_channel_groups


class RMSBlock(nn.Module):
    """A ConvNeXt-style block with RMSNorm: channels-last norm, an MLP, a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.RMSNorm(16, eps=1e-6)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = self.stem(x).permute(0, 2, 3, 1)
        y = y + self.down(F.gelu(self.up(self.norm(y))))
        return self.head(y.mean((1, 2)))


def _by_hand(dense: RMSBlock, x: torch.Tensor, kept: list[int], hidden: list[int]) -> torch.Tensor:
    """What the pruned block must compute: the dense weights sliced to the kept channels."""
    c, h = torch.tensor(kept), torch.tensor(hidden)
    y = F.conv2d(x, dense.stem.weight[c], dense.stem.bias[c], padding=1).permute(0, 2, 3, 1)
    z = F.rms_norm(y, (len(kept),), dense.norm.weight[c], dense.norm.eps)
    z = F.gelu(F.linear(z, dense.up.weight[h][:, c], dense.up.bias[h]))
    y = y + F.linear(z, dense.down.weight[c][:, h], dense.down.bias[c])
    return F.linear(y.mean((1, 2)), dense.head.weight[:, c], dense.head.bias)


def test_rms_norm_prunes_with_its_channels_and_computes_the_sliced_block():
    torch.manual_seed(0)
    model, x = RMSBlock().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
    graph = trace_channel_groups(model, x)
    stream = graph.group("stem")
    assert {(m.module, m.role) for m in stream.members} >= {("norm", "norm"), ("down", "out"), ("up", "in")}
    assert graph_cost(graph) == measure_cost(model, x)
    arch = select_architecture(graph, Magnitude().scores(model, graph), Budget(0.5))
    dense = copy.deepcopy(model)
    apply_architecture(model, graph, arch)
    kept, hidden = list(arch.kept["stem"]), list(arch.kept["up"])
    assert model.norm.normalized_shape == (len(kept),) and model.norm.weight.shape == (len(kept),) and len(kept) < 16
    with torch.no_grad():
        torch.testing.assert_close(model(x), _by_hand(dense, x, kept, hidden))
    assert graph_cost(trace_channel_groups(model, x)) == measure_cost(model, x)
    model.train()
    model(x).sum().backward()


def test_rms_norm_over_channels_and_space_keeps_the_channels():
    class OverAll(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.norm, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.RMSNorm([8, 6, 6]), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.b(self.norm(self.a(x)))

    model, x = OverAll(), torch.randn(2, 3, 6, 6)
    graph = trace_channel_groups(model, x)
    assert graph.group("a").pinned  # normalized together with the spatial axes: the count must stay
    assert graph_cost(graph) == measure_cost(model, x)


def test_the_latency_probe_times_rms_norm_at_its_widths():
    model, x = RMSBlock(), torch.randn(2, 3, 8, 8)
    table = measure_latency(model, x, batch_size=2, points=3, repeats=1, rounds=1)
    assert table.layers["norm"].out_counts[-1] == 16 and len(table.layers["norm"].out_counts) == 3
    assert type(family_of(model.norm)).__name__ == "RMSNorm"


class Interleaved(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.b = nn.Conv2d(8, 6, 3, padding=1) if dim != 1 else nn.Identity()
        self.head = nn.Linear(16 if dim == 1 else 6, 4)

    def forward(self, x):
        y = self.a(x)
        if self.dim == 1:  # each channel twice in place: the head reads 2 features per channel
            return self.head(y.mean((2, 3)).repeat_interleave(2, dim=1))
        y = torch.repeat_interleave(y, 2, dim=self.dim)  # nearest up-sampling along one axis
        return self.head(F.relu(self.b(y)).mean((2, 3)))


@pytest.mark.parametrize("dim", [1, 2, -1])
def test_repeat_interleave_follows_the_channels_along_any_axis(dim):
    torch.manual_seed(0)
    model, x = Interleaved(dim), torch.randn(2, 3, 6, 6)
    graph = trace_channel_groups(model, x)
    assert not graph.group("a.0").pinned
    assert graph_cost(graph) == measure_cost(model, x)
    assert_pruning_is_exact(model, x, 0.5)
    assert model.a[0].out_channels < 8
    if dim == 1:
        assert model.head.in_features == 2 * model.a[0].out_channels


@pytest.mark.parametrize(
    "interleave",
    [
        lambda y: y.repeat_interleave(2),  # no dim: flattens first
        lambda y: y.repeat_interleave(torch.tensor([1, 2] * 4), dim=1),  # a count per channel
    ],
    ids=["no-dim", "tensor-repeats"],
)
def test_repeat_interleave_that_scrambles_the_channels_is_refused(interleave):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return interleave(self.a(x))

    with pytest.raises(UnsupportedModelError, match="repeat_interleave"):
        trace_channel_groups(Net(), torch.randn(2, 3, 6, 6))
