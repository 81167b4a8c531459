"""The three worked examples of CONTRIBUTING.md, each added as one file and its registration:
``nn.RMSNorm`` (a layer family: trace, surgery, cost and timing), ``repeat_interleave`` (an op
kind) and ``nn.Bilinear`` (a layer with two inputs). All were refused or kept whole before."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _helpers import assert_architecture_is_exact, assert_pruning_is_exact, flops_counted_by_torch
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


class BilinearFusion(nn.Module):
    """Two branches of one input fused by ``nn.Bilinear`` (a weight of shape (out, in1, in2)):
    each branch's channels are one axis of that weight, so both prune, and so does its output."""

    def __init__(self, second_from_input: bool = False) -> None:
        super().__init__()
        self.second_from_input = second_from_input
        self.first = nn.Linear(6, 12)
        self.second = nn.Linear(6, 10)
        self.fuse = nn.Bilinear(12, 6 if second_from_input else 10, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        a = torch.relu(self.first(x))
        b = x if self.second_from_input else torch.tanh(self.second(x))
        return self.head(torch.relu(self.fuse(a, b)))


def test_bilinear_prunes_both_inputs_and_its_output_exactly_at_the_traced_cost():
    model, x = BilinearFusion().eval(), torch.randn(5, 6)
    graph = trace_channel_groups(model, x)
    members = {(m.module, m.role, m.axis, m.input) for g in graph.prunable for m in g.members}
    assert {("fuse", "in", 1, 0), ("fuse", "in", 2, 1), ("fuse", "out", 0, 0)} <= members
    assert graph_cost(graph) == measure_cost(model, x) and graph_cost(graph).flops == flops_counted_by_torch(model, x)
    arch = select_architecture(graph, Magnitude().scores(model, graph), Budget(0.4))
    assert all(len(arch.kept[g]) < arch.sizes[g] for g in ("first", "second", "fuse"))
    assert_architecture_is_exact(model, x, graph, arch)  # zeroing, measured cost and torch's count agree
    fuse = model.fuse
    assert fuse.weight.shape == (fuse.out_features, fuse.in1_features, fuse.in2_features)
    assert (fuse.in1_features, fuse.in2_features, fuse.out_features) == tuple(
        len(arch.kept[g]) for g in ("first", "second", "fuse")
    )


def test_bilinear_called_twice_keeps_both_inputs_coupled():
    class Twice(BilinearFusion):
        def forward(self, x):
            a, b = torch.relu(self.first(x)), torch.tanh(self.second(x))
            return self.head(self.fuse(a, b) + self.fuse(a * 2, b.flip(0)))

    model = Twice()
    arch = assert_pruning_is_exact(model, torch.randn(4, 6), budget=0.5)
    assert (model.fuse.in1_features, model.fuse.in2_features) == (len(arch.kept["first"]), len(arch.kept["second"]))


def test_the_latency_probe_times_bilinear_with_both_of_its_inputs():
    """A fixed second input (the model's own) is passed to the timed layer at its width; two
    prunable inputs would need a table over three widths, so that is refused, naming the layer."""
    table = measure_latency(BilinearFusion(second_from_input=True), torch.randn(2, 6), 4, points=2, repeats=1, rounds=1)
    assert table.layers["fuse"].in_counts == (1, 12) and all(t > 0 for row in table.layers["fuse"].seconds for t in row)
    with pytest.raises(UnsupportedModelError, match=r"cannot time layer 'fuse' \(Bilinear\): more than one"):
        measure_latency(BilinearFusion(), torch.randn(2, 6), 4, points=2, repeats=1, rounds=1)


def test_without_its_family_bilinear_is_kept_whole_and_only_torchs_count_sees_its_cost(monkeypatch):
    """The check a new family's cost is tested against: pat_ray's traced and measured costs both
    read the family table, so a layer missing from it agrees with itself there (its MACs are
    not counted at all); torch's counter, which shares nothing with pat_ray, finds them."""
    from pat_ray.tracer.layers.registry import LAYERS

    monkeypatch.delitem(LAYERS._by_class, nn.Bilinear)
    model, x = BilinearFusion(), torch.randn(2, 6)
    assert family_of(model.fuse) is None
    graph = trace_channel_groups(model, x)
    assert all(m.module != "fuse" for g in graph.prunable for m in g.members)  # kept whole
    assert graph_cost(graph) == measure_cost(model, x)
    assert flops_counted_by_torch(model, x) - measure_cost(model, x).flops == 8 * 12 * 10


def _dct(size: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix: a fixed linear map, as CSATv2 stores it (a buffer)."""
    n = torch.arange(size, dtype=torch.float32)
    basis = torch.cos(torch.pi * (n[None, :] + 0.5) * n[:, None] / size) * (2 / size) ** 0.5
    basis[0] /= 2**0.5
    return basis


class FixedLinear(nn.Module):
    """``F.linear`` with a buffer for a weight: over each patch's pixels at the stem (the input's
    channels), over the width axis of prunable channels, and optionally over the channels."""

    def __init__(self, over_channels: bool = False) -> None:
        super().__init__()
        self.over_channels = over_channels
        self.register_buffer("dct", _dct(4))
        self.register_buffer("mix", _dct(8))
        self.register_buffer("shift", torch.linspace(-1, 1, 8))
        self.stem = nn.Conv2d(3 * 16, 12, 1)
        self.conv = nn.Conv2d(12, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        b, c, h, w = x.shape
        patches = x.reshape(b, c, h // 4, 4, w // 4, 4).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, 4, 4)
        coefficients = F.linear(F.linear(patches, self.dct).transpose(-1, -2), self.dct)
        x = coefficients.reshape(b, h // 4, w // 4, c * 16).permute(0, 3, 1, 2)
        x = torch.relu(self.conv(torch.relu(self.stem(x))))  # (B, 8, 8, 8)
        if self.over_channels:
            x = F.linear(x.permute(0, 2, 3, 1), self.mix).permute(0, 3, 1, 2)
        else:
            x = F.linear(x, self.mix, self.shift)  # mixes the width axis: every channel passes
        return self.head(x.mean((2, 3)))


def test_a_linear_with_a_fixed_weight_is_a_product_whose_channels_pass_or_stay():
    """CSATv2's stem: a DCT applied with ``F.linear`` and a buffer weight. Channels on another
    axis pass through it (pruned exactly, its MACs scaling with them, as torch counts them);
    channels it sums over meet a constant and are kept."""
    model, x = FixedLinear().eval(), torch.randn(2, 3, 32, 32)
    arch = assert_pruning_is_exact(model, x, budget=0.5)
    assert len(arch.kept["conv"]) < 8 and len(arch.kept["stem"]) < 12
    summing = FixedLinear(over_channels=True).eval()
    graph = trace_channel_groups(summing, x)
    assert "conv" not in {g.name for g in graph.prunable} and "stem" in {g.name for g in graph.prunable}
    assert graph_cost(graph).flops == flops_counted_by_torch(summing, x)


def test_a_linear_whose_weight_comes_from_a_parameter_of_no_linear_layer_is_still_refused():
    class Borrowed(FixedLinear):
        def forward(self, x):
            features = torch.relu(self.stem(x.reshape(x.shape[0], 48, 2, 2))).mean((2, 3))
            return self.head(F.linear(features, self.conv.weight[:, :, 0, 0]))

    with pytest.raises(UnsupportedModelError, match="a bare linear whose weight is not made from one Linear"):
        trace_channel_groups(Borrowed().eval(), torch.randn(2, 3, 8, 8))
