"""Matrix products (non-local attention, hand-written linear layers) and sizes written in the
model's code (``x.view(-1, 16 * 5 * 5)``): followed where pruning keeps them valid, kept
whole where the code fixes a channel count, refused where nothing can be sliced."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pat_ray
from _helpers import assert_pruning_is_exact, randomize_norms
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.core.selection import Budget, select_architecture
from pat_ray.errors import BudgetError, UnsupportedModelError
from pat_ray.tracer.trace import trace_channel_groups


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class NonLocal(nn.Module):
    """Self-attention over positions (Wang et al.'s non-local block), then a hand-written
    linear head: ``pooled @ self.weight``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.q, self.k, self.v = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1), nn.Conv2d(16, 12, 1)
        self.out = conv_bn(12, 16)
        self.weight = nn.Parameter(torch.randn(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        n, _, h, w = x.shape
        q, k, v = self.q(x).flatten(2), self.k(x).flatten(2), self.v(x).flatten(2)
        attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (n, hw, hw): q and k contracted
        y = torch.bmm(v, attention.transpose(1, 2)).view(n, -1, h, w)  # v's channels pass through
        return self.out(y).mean((2, 3)) @ self.weight


def test_a_non_local_block_prunes_exactly():
    torch.manual_seed(0)
    model, x = NonLocal(), torch.randn(2, 3, 6, 6)
    randomize_norms(model)
    graph = trace_channel_groups(model, x)
    assert {m.module for m in graph.group("q").producers()} == {"q", "k"}  # coupled by the contraction
    assert graph_cost(graph) == measure_cost(model, x)
    arch = assert_pruning_is_exact(model, x, 0.5)
    assert model.q.out_channels == model.k.out_channels < 8 and model.v.out_channels < 12
    assert model.weight.shape == (len(arch.kept["out.0"]), 5) and model.weight.shape[0] < 16


class ConstantMatrix(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x).mean((2, 3)) @ torch.ones(8, 2)


def test_contracting_channels_with_a_constant_keeps_them():
    assert trace_channel_groups(ConstantMatrix(), torch.randn(2, 3, 4, 4)).group("a").pinned


class LeNet(nn.Module):
    """The classic: the flatten's size is a number in the code."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.f1, self.f2 = nn.Linear(16 * 5 * 5, 120), nn.Linear(120, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = x.view(-1, 16 * 5 * 5)
        return self.f2(F.relu(self.f1(x)))


def test_lenet_keeps_the_channels_its_code_counts_and_prunes_the_rest_exactly():
    torch.manual_seed(0)
    model, x = LeNet(), torch.randn(2, 1, 32, 32)
    graph = trace_channel_groups(model, x)
    assert graph.group("c2").pinned and not graph.group("c1").pinned and not graph.group("f1").pinned
    assert_pruning_is_exact(model, x, 0.6)
    assert model.c2.out_channels == 16 and model.c1.out_channels < 6 and model.f1.out_features < 120


class Gate(nn.Module):
    """A squeeze-excitation gate shaped with sizes from the code or from the tensor."""

    def __init__(self, shaping: str) -> None:
        super().__init__()
        self.shaping, self.a, self.fc, self.b = shaping, conv_bn(3, 8), nn.Linear(8, 8), nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        g = torch.sigmoid(self.fc(y.mean((2, 3))))
        n, c, h, w = y.shape
        shaped = {
            "view-literal": lambda: g.view(-1, 8, 1, 1),
            "view-read": lambda: g.view(n, c, 1, 1),
            "view-inferred": lambda: g.reshape(n, -1, 1, 1),
            "expand-literal": lambda: g[:, :, None, None].expand(n, 8, h, w),
            "expand-inferred": lambda: g[:, :, None, None].expand(-1, -1, h, w),
        }[self.shaping]()
        return self.b(y * shaped).flatten(1)


@pytest.mark.parametrize(
    "shaping, written", [("view-literal", True), ("view-read", False), ("view-inferred", False),
                         ("expand-literal", True), ("expand-inferred", False)]
)  # fmt: skip
def test_a_channel_count_written_in_the_code_keeps_those_channels(shaping, written):
    model, x = Gate(shaping), torch.randn(2, 3, 6, 6)
    graph = trace_channel_groups(model, x)
    assert graph.group("a.0").pinned == written
    if not written:
        assert_pruning_is_exact(model, x, 0.5)
        assert model.a[0].out_channels < 8


def test_a_model_with_nothing_to_prune_selects_everything():
    graph = trace_channel_groups(nn.Sequential(nn.Conv2d(3, 4, 1)), torch.randn(1, 3, 2, 2))
    assert not graph.prunable
    assert select_architecture(graph, {}, Budget(1.0)).kept == {}


def test_pruning_a_model_whose_code_fixes_every_width_says_the_budget_is_out_of_reach():
    with pytest.raises(BudgetError, match="nothing in this model can be pruned"):
        pat_ray.prune(Gate("view-literal"), torch.randn(2, 3, 6, 6), budget=0.5)


class EinsumAttention(nn.Module):
    """The non-local block written with einsum, and an einsum head over a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.q, self.k, self.v = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1), nn.Conv2d(16, 12, 1)
        self.weight = nn.Parameter(torch.randn(12, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        q, k, v = self.q(x).flatten(2), self.k(x).flatten(2), self.v(x).flatten(2)
        attention = torch.softmax(torch.einsum("ncx,ncy->nxy", q, k), dim=-1)
        y = torch.einsum("ncy,nxy->ncx", v, attention)
        return torch.einsum("ncx,cd->nd", y, self.weight)


def test_einsum_contractions_couple_slice_and_carry_channels_exactly():
    torch.manual_seed(0)
    model, x = EinsumAttention(), torch.randn(2, 3, 5, 5)
    randomize_norms(model)
    graph = trace_channel_groups(model, x)
    assert {m.module for m in graph.group("q").producers()} == {"q", "k"}
    # torch runs "ncx,cd->nd" as a sum over x, then a (c, d) product: fewer MACs than the
    # contraction pat_ray counts (c x d x positions), so its counter is not the reference here
    arch = assert_pruning_is_exact(model, x, 0.5, counted_by_torch=False)
    assert model.q.out_channels == model.k.out_channels < 8
    assert model.weight.shape == (len(arch.kept["v"]), 5) and model.v.out_channels < 12


class Ellipsis_(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nc...->n...", self.a(x))


def test_an_einsum_with_an_ellipsis_is_refused_naming_it():
    with pytest.raises(UnsupportedModelError, match="einsum"):
        trace_channel_groups(Ellipsis_(), torch.randn(2, 3, 4, 4))


class PaddedWithZeros(nn.Module):
    """Extra channels made in the forward: written widths are fixed, read ones unknown."""

    def __init__(self, written: bool) -> None:
        super().__init__()
        self.written, self.a, self.head = written, conv_bn(3, 8), nn.Conv2d(12, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.a(x)
        n, c, h, w = a.shape
        extra = a.new_zeros(n, 4, h, w) if self.written else a.new_zeros(n, c // 2, h, w)
        return self.head(torch.cat([a, extra], 1)).flatten(1)


def test_tensors_made_in_the_forward_are_fixed_channels_when_their_width_is_written():
    x = torch.randn(2, 3, 6, 6)
    model = PaddedWithZeros(written=True)
    pat_ray.prune(model, x, budget=0.6)
    assert model.a[0].out_channels + 4 == model.head.in_channels < 12
    with pytest.raises(UnsupportedModelError, match="cat"):
        trace_channel_groups(PaddedWithZeros(written=False), x)
