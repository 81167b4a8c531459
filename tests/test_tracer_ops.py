"""Everyday ops written by hand rather than as modules: squeeze-excitation gates shaped with
``unsqueeze`` / ``None`` indexing / ``view`` / ``expand``, activations written with ``clamp``,
``pow`` and ``exp``, and selective-kernel branches combined with ``torch.stack``. Each prunes
into a model that computes what the dense one computes with the removed channels zeroed."""

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


class SqueezeExcite(nn.Module):
    def __init__(self, shape_gate: str) -> None:
        super().__init__()
        self.shape_gate = shape_gate
        self.a, self.b = conv_bn(3, 16), conv_bn(16, 16)
        self.fc1, self.fc2 = nn.Linear(16, 4), nn.Linear(4, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        y = self.b(self.a(x))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        n, c, h, w = y.shape
        if self.shape_gate == "unsqueeze":
            gate = gate.unsqueeze(-1).unsqueeze(3)
        elif self.shape_gate == "none":
            gate = gate[:, :, None, None]
        elif self.shape_gate == "view_expand":
            gate = gate.view(n, c, 1, 1).expand(-1, -1, h, w)
        else:
            gate = torch.unsqueeze(gate[..., None], -1)
        return self.head((y * gate).mean((2, 3)))


@pytest.mark.parametrize("shape_gate", ["unsqueeze", "none", "view_expand", "ellipsis"])
def test_squeeze_excitation_gates_shaped_by_hand_prune_exactly(shape_gate):
    torch.manual_seed(0)
    model, x = SqueezeExcite(shape_gate), torch.randn(2, 3, 8, 8)
    randomize_norms(model)
    graph = trace_channel_groups(model, x)
    stream = next(g for g in graph.groups if ("b.0", "out") in {(m.module, m.role) for m in g.members})
    assert ("fc2", "out") in {(m.module, m.role) for m in stream.members}  # the gate is coupled to what it scales
    arch = assert_pruning_is_exact(model, x, 0.5)
    assert len(arch.kept[stream.name]) < 16


class HandWrittenActivations(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = conv_bn(3, 12), conv_bn(12, 12), nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        y = self.a(x)
        y = y * (y + 3).clamp(0, 6) / 6  # hard-swish
        y = torch.exp(-(self.b(y) ** 2)) * torch.pow(y, 2)  # couples b's channels with a's
        return self.head(torch.sqrt(self.c(y).abs()).mean((2, 3)))  # zero stays zero: a fair reference


class SelectiveKernel(nn.Module):
    """SKNet's fuse: two branches stacked on a new axis, summed over it, then weighted."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 12)
        self.k3, self.k5 = conv_bn(12, 12), nn.Sequential(nn.Conv2d(12, 12, 5, padding=2), nn.BatchNorm2d(12))
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        y = self.stem(x)
        branches = torch.stack([self.k3(y), self.k5(y)], dim=1)  # (N, 2, C, H, W)
        attention = torch.softmax(branches.mean((3, 4)), dim=1)  # over the branches, per channel
        return self.head((branches * attention[..., None, None]).sum(1).mean((2, 3)))


@pytest.mark.parametrize("build", [HandWrittenActivations, SelectiveKernel])
def test_elementwise_and_stacked_ops_prune_exactly(build):
    torch.manual_seed(0)
    model, x = build(), torch.randn(2, 3, 8, 8)
    randomize_norms(model)
    arch = assert_pruning_is_exact(model, x, 0.6)
    assert any(len(kept) < arch.sizes[name] for name, kept in arch.kept.items())


class TensorBounds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return torch.clamp(self.a(x), max=self.b(x))


def test_an_elementwise_op_with_a_tensor_argument_is_refused():
    with pytest.raises(UnsupportedModelError, match="takes tensor"):
        trace_channel_groups(TensorBounds(), torch.randn(2, 3, 8, 8))


class GroupedWidening(nn.Module):
    """ShuffleNet V1's grouped 1x1 convs, and AlexNet's two-group 3x3: groups > 1, in != out."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 12)
        self.expand = nn.Sequential(nn.Conv2d(12, 24, 1, groups=3, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(24, 16, 3, padding=1, groups=2), nn.ReLU())
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.mix(self.expand(self.stem(x))).mean((2, 3)))


def test_a_grouped_conv_that_changes_width_keeps_its_input_and_shrinks_its_groups_equally():
    torch.manual_seed(0)
    model, x = GroupedWidening(), torch.randn(2, 3, 8, 8)
    randomize_norms(model)
    graph = trace_channel_groups(model, x)
    assert graph.group("stem.0").pinned and graph.group("expand.0").pinned  # each feeds a grouped conv
    assert graph.group("mix.0").subgroups == 2 and not graph.group("mix.0").pinned
    arch = assert_pruning_is_exact(model, x, 0.8)
    kept = torch.tensor(arch.kept["mix.0"])
    assert len(kept) < 16 and (kept < 8).sum() == (kept >= 8).sum()  # as many in each conv group
    assert model.mix[0].groups == 2 and model.mix[0].in_channels == 24


class SharedWeights(nn.Module):
    """One conv + BN applied twice (weights shared), and one ReLU module reused everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.c, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.side = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.head, self.relu = nn.Linear(24, 4), nn.ReLU()

    def forward(self, x):
        a = self.relu(self.bn(self.c(self.relu(self.stem(x)))))
        b = self.relu(self.bn(self.c(a)))
        return self.head(torch.cat([a + b, self.relu(self.side(x))], 1).mean((2, 3)))


def test_a_module_called_twice_keeps_the_same_channels_in_both_calls():
    torch.manual_seed(0)
    model, x = SharedWeights(), torch.randn(2, 3, 8, 8)
    randomize_norms(model)
    graph = trace_channel_groups(model, x)
    assert graph_cost(graph) == measure_cost(model, x)  # MACs of both calls, weights once
    c = next(g for g in graph.groups if ("c", "out") in {(m.module, m.role) for m in g.members})
    assert ("stem", "out") in {(m.module, m.role) for m in c.members}  # c's shared inputs tie stem to c
    assert graph.group("side.0").name != c.name and not graph.group("side.0").pinned  # the reused ReLU ties nothing
    assert_pruning_is_exact(model, x, 0.5)
    assert model.c.in_channels == model.c.out_channels == model.stem.out_channels < 16


class MyConv(nn.Conv2d):
    """A subclass that keeps nn.Conv2d's forward: traced as the conv it is."""


class DoubledConv(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) * 2


class ScaledStdConv(nn.Conv2d):
    """Weight standardization with a learned per-filter gain (NFNet's ScaledStdConv2d)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5) * self.gain
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class DynamicFilter(nn.Module):
    """The filter is predicted from the input: no layer of the model holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        kernel = torch.sigmoid(x[0, 0, :3, :3]).expand(8, 8, 3, 3)
        return F.conv2d(self.a(x), kernel, padding=1)


def test_a_layer_subclass_is_traced_as_its_layer_even_when_it_rewrites_forward():
    plain = nn.Sequential(MyConv(3, 8, 3), nn.ReLU(), MyConv(8, 4, 3))
    assert not trace_channel_groups(plain, torch.randn(2, 3, 8, 8)).group("0").pinned
    doubled = nn.Sequential(DoubledConv(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    assert not trace_channel_groups(doubled, torch.randn(2, 3, 8, 8)).group("0").pinned


def test_a_weight_standardized_conv_prunes_its_filters_and_their_gains():
    model = nn.Sequential(ScaledStdConv(3, 16, 3), nn.GroupNorm(4, 16), nn.ReLU(), ScaledStdConv(16, 8, 3))
    x = torch.randn(2, 3, 10, 10)
    graph = trace_channel_groups(model, x)
    assert graph_cost(graph) == measure_cost(model, x)
    pat_ray.prune(model, x, budget=0.6)
    kept = model[0].out_channels
    assert kept < 16 and kept % 4 == 0 and model[0].gain.shape == (kept, 1, 1, 1) and model[3].in_channels == kept
    model(x).sum().backward()


def test_a_filter_no_layer_holds_is_refused_naming_the_op():
    with pytest.raises(UnsupportedModelError, match="conv2d"):
        trace_channel_groups(DynamicFilter(), torch.randn(2, 3, 8, 8))


class OptionABlock(nn.Module):
    """The CIFAR ResNet block with the paper's parameter-free shortcut: subsample, then zero-pad
    the channels (``F.pad`` on dim 1), added to a conv's output that is twice as wide."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.stride, self.pad = stride, (cout - cin) // 2

    def forward(self, x):
        shortcut = x if self.stride == 1 else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(self.body(x) + shortcut)


class OptionAResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.blocks = nn.Sequential(OptionABlock(8, 8, 1), OptionABlock(8, 16, 2), OptionABlock(16, 16, 1))
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_a_zero_padded_shortcut_splits_the_wider_stream_around_the_padding():
    torch.manual_seed(0)
    model, x = OptionAResNet(), torch.randn(2, 3, 8, 8)
    randomize_norms(model)
    graph = trace_channel_groups(model, x)
    assert graph_cost(graph) == measure_cost(model, x)
    wide = {g.name: g for g in graph.groups if any(m.module == "blocks.1.body.3" for m in g.producers())}
    assert sorted((g.size, g.pinned) for g in wide.values()) == [(4, True), (4, True), (8, False)]
    middle = next(g for g in wide.values() if not g.pinned)
    assert ("stem.0", "out") in {(m.module, m.role) for m in middle.members}  # the padded input's channels
    assert_pruning_is_exact(model, x, 0.6)
    assert model.stem[0].out_channels < 8 and model.blocks[1].body[3].out_channels == model.stem[0].out_channels + 8
    names = {g.name for g in graph.groups}
    assert {g.name for g in trace_channel_groups(model, x).groups} == names  # a PaT step re-traces by name


class ReflectedChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return F.pad(self.a(x).unsqueeze(1), (0, 0, 0, 0, 1, 1), mode="replicate")


def test_padding_channels_with_anything_but_a_constant_is_refused():
    with pytest.raises(UnsupportedModelError, match="pads"):
        trace_channel_groups(ReflectedChannels(), torch.randn(2, 3, 8, 8))


def test_a_second_rule_for_a_registered_op_or_kind_is_refused_naming_the_first():
    """Two rules never compete for one op: registering a target or a kind again fails at once,
    naming what holds it, and leaves the table as it was."""
    from pat_ray.tracer.ops.registry import OPS, op_rule
    from pat_ray.tracer.ops.table import op_family

    def rule(builder, call):
        return call.first_layout()

    kinds = OPS.kinds()
    with pytest.raises(ValueError, match=r"op kind 'my_relu': torch\.relu \(kind 'pass'\) registered already"):
        op_rule("my_relu", functions={torch.relu, torch.special.expit})(rule)
    with pytest.raises(ValueError, match=r"op kind 'my_view': \.view\(\) \(kind 'reshape'\) registered already"):
        op_rule("my_view", methods={"view", "my_view"})(rule)
    with pytest.raises(ValueError, match="op kind 'interleave' is registered already"):
        op_rule("interleave", methods={"interleave_twice"})(rule)
    assert OPS.kinds() == kinds and op_family("call_method", "my_view") is None
    assert op_family("call_function", torch.relu).kind == "pass"


def test_the_layers_an_error_lists_as_supported_are_read_from_the_families():
    from pat_ray.tracer.layers.registry import LAYERS
    from pat_ray.tracer.layers.stateless import Passthrough
    from pat_ray.tracer.layers.table import supported_layers

    listed = supported_layers()
    for family in LAYERS.families():
        if not isinstance(family, Passthrough):
            assert all(kind.__name__ in listed for kind in family.types), type(family).__name__
    assert {"RMSNorm", "GroupNorm", "PReLU", "ConvTranspose2d", "Bilinear"} <= set(listed.replace(",", " ").split())


def test_a_layer_class_registered_twice_is_refused_naming_both_families():
    from pat_ray.tracer.layers.family import LayerFamily
    from pat_ray.tracer.layers.registry import LAYERS, layer_family
    from pat_ray.tracer.layers.table import family_of

    before = LAYERS.families()
    with pytest.raises(
        ValueError, match=r"layer family MyLinear: Linear \(Linear\), Bilinear \(Bilinear\) registered already"
    ):

        @layer_family(nn.Linear, nn.Bilinear)
        class MyLinear(LayerFamily):
            pass

    assert LAYERS.families() == before and type(family_of(nn.Linear(2, 2))).__name__ == "Linear"
    assert type(family_of(nn.Bilinear(2, 2, 2))).__name__ == "Bilinear"  # nothing of the refused one was kept


def test_ops_returning_or_reading_several_tensors_register_like_any_other_op():
    """``split`` (returns pieces), ``pieces[0]`` and ``cat(pieces)`` (read them) are looked up in
    the same registry as single-result ops, in their own form: ``max(a, b)`` and ``max(x, dim)``
    are two rules of one target; a second rule for a target in one form is refused."""
    import operator

    from pat_ray.tracer.ops.registry import OPS, op_rule
    from pat_ray.tracer.ops.table import op_family

    assert op_family("call_method", "split", form="pieces").kind == "split"
    assert op_family("call_function", torch.max).kind == "minmax"
    assert op_family("call_function", torch.max, form="pieces").kind == "indexed"
    assert op_family("call_function", operator.getitem, form="tuple").kind == "pick"
    assert op_family("call_function", torch.cat, form="tuple").kind == "cat_pieces"
    assert op_family("call_method", "split") is None  # no single-result rule for it
    kinds = OPS.kinds()
    with pytest.raises(ValueError, match=r"op kind 'my_chunk': \.chunk\(\) \(kind 'split'\) registered already"):
        op_rule("my_chunk", methods={"chunk"}, form="pieces")(lambda builder, call: None)
    with pytest.raises(ValueError, match="form must be one of"):
        op_rule("my_form", methods={"my_form"}, form="list")(lambda builder, call: None)  # type: ignore[arg-type]
    assert OPS.kinds() == kinds


def test_an_op_returning_several_tensors_that_no_rule_knows_is_refused_listing_the_known_ones():
    class Frexp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            mantissa, exponent = torch.frexp(self.conv(x))
            return mantissa

    with pytest.raises(
        UnsupportedModelError, match=r"returns several tensors .* supported: .*\.chunk\(\).*\.split\(\)"
    ):
        trace_channel_groups(Frexp(), torch.randn(1, 3, 4, 4))


class ReshapedAs(nn.Module):
    """LeViT's ``reshape_as``: a flattened branch put back into the shape of another tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, z = self.a(x), self.b(x)
        return self.head(y.flatten(2).reshape_as(z) * torch.sigmoid(z)).mean((2, 3))


class ViewedAsABuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.register_buffer("shape_of", torch.zeros(1, 8, 4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.a(x).flatten(2).view_as(self.shape_of)).mean((2, 3))


def test_reshape_as_couples_the_result_with_the_tensor_whose_shape_it_takes():
    torch.manual_seed(0)
    model, x = ReshapedAs(), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    assert {m.module for m in graph.group("a").producers()} == {"a", "b"}  # one group: they stay equal
    arch = assert_pruning_is_exact(model, x, 0.6)
    assert model.a.out_channels == model.b.out_channels == len(arch.kept["a"]) < 8


def test_view_as_a_fixed_tensor_keeps_the_width_it_takes_from_it():
    graph = trace_channel_groups(ViewedAsABuffer(), torch.randn(2, 3, 4, 4))
    assert not graph.prunable  # the buffer's 8 channels never change, so neither may a's
