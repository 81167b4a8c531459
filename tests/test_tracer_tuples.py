"""Ops returning several tensors, broadcast parameters, and the post-surgery check.

Every model here is either pruned into a model that computes exactly what the dense model
computes with the removed channels zeroed, or refused with UnsupportedModelError: never a
model that prunes and then fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pat_ray
from _helpers import assert_pruning_is_exact, randomize_norms, zero_removed_channels
from pat_ray.core.selection import Budget, select_architecture
from pat_ray.core.surgery import apply_architecture
from pat_ray.core.verify import check_pruned, output_shapes
from pat_ray.errors import PrunedModelError, UnsupportedModelError
from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
from pat_ray.tracer.trace import trace_channel_groups


def conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SplitSizes(nn.Module):
    """``torch.split`` with sizes written in the code: pruning its input would break them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = conv_bn(3, 24), conv_bn(8, 8), conv_bn(16, 8)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        p, q = torch.split(self.stem(x), [8, 16], dim=1)
        return self.head(torch.cat([self.a(p), self.b(q)], 1).mean((2, 3)))


class ChunkMethod(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = conv_bn(3, 16), conv_bn(8, 8), conv_bn(8, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        parts = self.stem(x).chunk(2, 1)
        return self.head((self.a(parts[0]) + self.b(parts[1])).mean((2, 3)))


class CatOfTwoConvsSplitBack(nn.Module):
    """The split boundary falls between the two producers' groups."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = conv_bn(3, 8), conv_bn(3, 12)
        self.c, self.d = conv_bn(8, 8), conv_bn(12, 8)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        left, right = torch.concat([self.a(x), self.b(x)], 1).split([8, 12], 1)
        return self.head(torch.cat([self.c(left), self.d(right)], 1).mean((2, 3)))


class SpatialSplitThenCat(nn.Module):
    """Split and re-join along height: channels untouched, everything stays prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mid = conv_bn(3, 16), conv_bn(16, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        top, bottom = torch.tensor_split(self.stem(x), 2, dim=2)
        y = torch.cat(torch.chunk(self.mid(torch.cat([bottom, top], 2)), 2, 3), 3)
        return self.head(y.mean((2, 3)))


class UnbindSpatial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = conv_bn(3, 12), nn.Linear(12, 5)

    def forward(self, x):
        rows = torch.unbind(self.stem(x), dim=2)  # (N, C, W) each
        return self.head(torch.stack(rows, 2).mean((2, 3)))


class GatedChunks(nn.Module):
    """A gated unit (GLU, SwiGLU): one conv's output cut in two by ``chunk``, one half gating
    the other; then three equal chunks of unequal use. Equal pieces cut by count stay equal
    when each loses the same channels, so the convs producing them prune."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.three = conv_bn(3, 16), conv_bn(8, 12)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        value, gate = self.stem(x).chunk(2, dim=1)
        a, b, c = torch.tensor_split(self.three(value * torch.sigmoid(gate)), 3, dim=1)
        return self.head(torch.cat([a + b, c], 1).mean((2, 3)))


PRUNABLE = [SplitSizes, ChunkMethod, CatOfTwoConvsSplitBack, SpatialSplitThenCat, UnbindSpatial, GatedChunks]


@pytest.mark.parametrize("build", PRUNABLE, ids=lambda b: b.__name__)
def test_pruned_model_equals_the_dense_model_with_removed_channels_zeroed(build):
    torch.manual_seed(0)
    model, x = build(), torch.randn(3, 3, 8, 8)
    randomize_norms(model)
    arch = assert_pruning_is_exact(model, x, 0.6)
    assert not arch.is_full, "the budget must remove channels for this test to mean anything"


@pytest.mark.parametrize("build", PRUNABLE, ids=lambda b: b.__name__)
def test_prune_shrinks_the_model_as_its_architecture_says_and_trains_on(build):
    model, x = build(), torch.randn(4, 3, 8, 8)
    dense = pat_ray.measure_cost(model, x).flops
    arch = pat_ray.prune(model, x, budget=0.6)
    assert pat_ray.measure_cost(model, x).flops < dense
    sizes = {g.name: g.size for g in trace_channel_groups(model, x).groups}
    assert all(sizes[name] == len(kept) for name, kept in arch.kept.items())
    torch.nn.functional.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()


def test_equal_chunks_tie_channel_i_of_every_piece_and_unequal_ones_pin():
    graph = trace_channel_groups(GatedChunks(), torch.randn(1, 3, 8, 8))
    stem = graph.group("stem.0/0")
    assert not stem.pinned and stem.size == 8
    assert sorted((m.module, m.role, m.offset) for m in stem.members if m.module == "stem.0") == [
        ("stem.0", "out", 0),
        ("stem.0", "out", 8),
    ]
    assert not graph.group("three.0/0").pinned and graph.group("three.0/0").size == 4
    uneven = nn.Sequential(nn.Conv2d(3, 10, 1))  # chunk(3) of 10 channels: pieces of 4, 4 and 2
    graph = trace_channel_groups(_Chunked(uneven), torch.randn(1, 3, 4, 4))
    assert graph.group("inner.0").pinned


class _Chunked(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.cat([p.mean((2, 3)) for p in self.inner(x).chunk(3, dim=1)], 1)


def test_a_split_across_channels_pins_its_input_and_keeps_the_pieces_consumers_prunable():
    groups = {g.name: g for g in trace_channel_groups(SplitSizes(), torch.randn(1, 3, 8, 8)).groups}
    assert groups["stem.0"].pinned
    assert not groups["a.0"].pinned and not groups["b.0"].pinned
    assert [m.module for m in groups["b.0"].members_with_role("in")] == ["head"]


def test_a_split_on_group_boundaries_keeps_the_producers_groups():
    graph = trace_channel_groups(CatOfTwoConvsSplitBack(), torch.randn(1, 3, 8, 8))
    groups = {g.name: g for g in graph.groups}
    assert groups["a.0"].pinned and groups["b.0"].pinned
    assert [m.module for m in groups["a.0"].members_with_role("in")] == ["c.0"]
    assert [m.module for m in groups["b.0"].members_with_role("in")] == ["d.0"]


def test_splits_along_other_axes_leave_channels_prunable():
    graph = trace_channel_groups(SpatialSplitThenCat(), torch.randn(1, 3, 8, 8))
    assert {g.name for g in graph.prunable} == {"stem.0", "mid.0"}


class MinMaxOverChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = conv_bn(3, 8), nn.Linear(64, 4)

    def forward(self, x):
        values, _ = torch.aminmax(self.stem(x), dim=1)  # a tuple-returning op the tracer does not know
        return self.head(values.flatten(1))


class StackedPieces(nn.Module):
    """Stacked in front of the batch axis: the layout cannot say where the channels went."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.other, self.head = conv_bn(3, 8), conv_bn(3, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.stack([self.stem(x), self.other(x)]).mean((0, 3, 4)))


class ListInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = conv_bn(3, 8), nn.Linear(8, 4)

    def forward(self, xs):
        return self.head(self.stem(xs[0]).mean((2, 3)))


class ChannelSlice(nn.Module):
    """Slices channels with a step, which no pruning can keep in step (a split's pinned pieces
    may be sliced; slices by start and stop are tests/test_channel_slices.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.other, self.head = conv_bn(3, 8), conv_bn(3, 8), nn.Linear(2, 4)

    def forward(self, x):
        first, _ = self.stem(x).split(4, 1)
        return self.head(first[:, :2].mean((2, 3)) + self.other(x)[:, ::4].mean((2, 3)))


@pytest.mark.parametrize(
    "model, x, named",
    [
        (MinMaxOverChannels(), torch.randn(2, 3, 8, 8), "aminmax"),
        (StackedPieces(), torch.randn(2, 3, 8, 8), "stack"),
        (ListInput(), [torch.randn(2, 3, 8, 8)], "stem.0"),
        (ChannelSlice(), torch.randn(2, 3, 8, 8), "getitem"),
    ],
    ids=["tuple-op-unknown", "tuple-to-stack", "list-input", "channel-slice"],
)
def test_what_the_tracer_cannot_follow_is_refused_naming_the_op(model, x, named):
    with pytest.raises(UnsupportedModelError, match=named):
        pat_ray.prune(model, x, budget=0.5)


class NestedOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = conv_bn(3, 8), nn.Linear(8, 4)

    def forward(self, x):
        features = self.stem(x)
        return self.head(features.mean((2, 3))), {"map": features, "parts": [features[:, :, 0], x]}


def test_output_shapes_come_from_the_trace_in_the_order_the_check_reads_them():
    for model, x in [
        (ChunkMethod(), torch.randn(2, 3, 8, 8)),
        (NestedOutputs(), torch.randn(2, 3, 8, 8)),
    ]:
        assert list(trace_channel_groups(model, x).output_shapes) == output_shapes(model, x)


def test_check_pruned_names_the_layer_a_broken_surgery_left_inconsistent():
    model, x = ChunkMethod(), torch.randn(2, 3, 8, 8)
    expected = output_shapes(model, x)
    check_pruned(model, x, expected)  # the intact model passes
    conv = model.a[0]
    conv.weight = nn.Parameter(conv.weight[:5].detach())  # drop outputs, but not from the BatchNorm
    conv.out_channels = 5
    with pytest.raises(PrunedModelError, match="'a.1'"):
        check_pruned(model, x, expected)


def test_check_pruned_refuses_changed_output_shapes():
    model, x = SplitSizes(), torch.randn(2, 3, 8, 8)
    expected = output_shapes(model, x)
    model.head = nn.Linear(16, 3)
    with pytest.raises(PrunedModelError, match="shapes"):
        check_pruned(model, x, expected)


class LayerScale(nn.Module):
    """A (1, C, 1, 1) layer scale and a (C,) scale on features: parameters sliced with their group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block = conv_bn(3, 16), conv_bn(16, 16)
        self.gamma = nn.Parameter(torch.rand(1, 16, 1, 1) + 0.5)
        self.fc1, self.fc2 = nn.Linear(16, 12), nn.Linear(12, 5)
        self.feature_scale = nn.Parameter(torch.rand(12) + 0.5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x) * self.gamma
        return self.fc2(self.fc1(x.mean((2, 3))) * self.feature_scale)


def test_per_channel_parameters_are_sliced_with_their_group_and_keep_the_model_exact():
    torch.manual_seed(0)
    model, x = LayerScale(), torch.randn(3, 3, 8, 8)
    randomize_norms(model)
    model.eval()
    graph = trace_channel_groups(model, x)
    params = {m.module: (g.name, m.axis) for g in graph.groups for m in g.members_with_role("param")}
    assert params == {"gamma": ("stem.0", 1), "feature_scale": ("fc1", 0)}
    arch = select_architecture(graph, Magnitude().scores(model, graph), Budget(0.5))
    reference = copy.deepcopy(model)
    zero_removed_channels(reference, graph, arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.nn.functional.cross_entropy(model(x), torch.zeros(3, dtype=torch.long)).backward()
    optimizer.step()
    momentum = optimizer.state[model.gamma]["momentum_buffer"].clone()
    reference.load_state_dict(model.state_dict())  # the same trained weights...
    zero_removed_channels(reference, graph, arch)  # ...with the removed channels zeroed
    apply_architecture(model, graph, arch, optimizer)
    kept = torch.tensor(arch.kept["stem.0"])
    assert model.gamma.shape == (1, len(kept), 1, 1) and model.feature_scale.shape == (len(arch.kept["fc1"]),)
    torch.testing.assert_close(optimizer.state[model.gamma]["momentum_buffer"], momentum[:, kept])
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)


def test_a_parameter_applied_to_two_groups_couples_them():
    """One ``scale`` multiplies both halves: channel i of ``a`` and of ``b`` share scale[i], so
    they go together (CaiT's class token, concatenated and then added to, is the same case)."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = conv_bn(3, 8), conv_bn(3, 8)
            self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            return self.head(torch.cat([self.a(x) * self.scale, self.b(x) * self.scale], 1).mean((2, 3)))

    model, x = Twice(), torch.randn(2, 3, 8, 8)
    group = trace_channel_groups(model, x).group("a.0")
    assert {m.module for m in group.producers()} == {"a.0", "b.0"}
    assert [m.module for m in group.members_with_role("param")] == ["scale"]
    arch = assert_pruning_is_exact(model, x, 0.5)
    assert model.scale.shape == (1, len(arch.kept["a.0"]), 1, 1)


def test_a_model_with_several_inputs_and_outputs_prunes_with_a_tuple_of_examples():
    class TwoInTwoOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rgb, self.depth = conv_bn(3, 8), conv_bn(1, 8)
            self.mid, self.head = conv_bn(8, 12), nn.Linear(12, 4)

        def forward(self, image, depth):
            features = self.mid(self.rgb(image) + self.depth(depth))
            return self.head(features.mean((2, 3))), features

    model, example = TwoInTwoOut(), (torch.randn(2, 3, 8, 8), torch.randn(2, 1, 8, 8))
    arch = pat_ray.prune(model, example, budget=0.6)
    assert "rgb.0" in arch.kept and len(arch.kept["rgb.0"]) < 8  # the summed inputs' group is pruned
    logits, features = model(*example)
    assert logits.shape == (2, 4) and features.shape == (2, 12, 8, 8)  # a returned tensor keeps its channels


def test_parameters_no_forward_uses_are_left_alone():
    class Spare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.spare, self.head = conv_bn(3, 8), nn.Conv2d(8, 8, 3), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.stem(x).mean((2, 3)))

    model = Spare()
    pat_ray.prune(model, torch.randn(2, 3, 8, 8), budget=0.5)
    assert model.stem[0].out_channels < 8 and model.spare.weight.shape == (8, 8, 3, 3)


class FailsOnce(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("transient")
        return self.conv(x)


def test_check_pruned_says_so_when_a_failure_does_not_repeat_and_leaves_no_hooks_behind():
    model, x = FailsOnce(), torch.randn(1, 3, 4, 4)
    with pytest.raises(PrunedModelError, match="did not repeat"):
        check_pruned(model, x, [(1, 4, 4, 4)])
    assert not model.conv._forward_hooks and not model.conv._forward_pre_hooks
