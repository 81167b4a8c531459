"""Custom modules declared by a plugin (pat_ray_register_layers): refused until declared, then
traced, pruned exactly, sliced in the optimizer and costed like built-in layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pat_ray
from _helpers import assert_pruning_is_exact, flops_counted_by_torch, randomize_norms
from pat_ray.core.cost.flops import graph_cost
from pat_ray.errors import PluginError, UnsupportedModelError
from pat_ray.tracer.trace import trace_channel_groups


class ScaledConv(nn.Module):
    """A conv with its own per-output scale, written from scratch (not an nn.Conv2d)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.scale = nn.Parameter(torch.rand(cout) + 0.5)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, padding=1) * self.scale[:, None, None]


class ChannelGain(nn.Module):
    """Output channel i = input channel i times a learned gain (no bias: zero stays zero)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gain = nn.Parameter(torch.rand(channels) + 0.5)
        self.register_buffer("calls", torch.zeros(channels))

    def forward(self, x):
        return x * self.gain[:, None, None]


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.custom, self.gain = ScaledConv(16, 12), ChannelGain(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        return self.head(F.relu(self.gain(self.custom(self.stem(x)))).mean((2, 3)))


def conv_macs(module, in_shape, out_shape):  # per (input, output) channel pair, one sample
    return 9 * out_shape[2] * out_shape[3]


class Declarations:
    def __init__(self, macs=conv_macs) -> None:
        self.macs = macs

    @pat_ray.hookimpl
    def pat_ray_register_layers(self, register):
        register(
            "scaled_conv",
            pat_ray.LayerRule(
                ScaledConv,
                maps="produces",
                params={"weight": {"out": 0, "in": 1}, "bias": {"out": 0}, "scale": {"out": 0}},
                counts={"out_channels": ("weight", 0), "in_channels": ("weight", 1)},
                macs=self.macs,
            ),
        )
        register(
            "channel_gain",
            pat_ray.LayerRule(
                ChannelGain,
                maps="follows",
                params={"gain": {"out": 0}, "calls": {"out": 0}},
                counts={"channels": ("gain", 0)},
            ),
        )


def test_an_undeclared_custom_module_is_traced_through_and_refused_at_the_op_it_hides(fresh_registry):
    with pytest.raises(UnsupportedModelError, match=r"node 'conv2d'"):  # F.conv2d inside ScaledConv
        trace_channel_groups(Net(), torch.randn(1, 3, 8, 8))


def test_declared_modules_prune_exactly_and_keep_their_counts(plugins):
    plugins(Declarations(), name="declarations")
    torch.manual_seed(0)
    model, x = Net(), torch.randn(3, 3, 8, 8)
    randomize_norms(model)
    arch = assert_pruning_is_exact(model, x, 0.5)
    kept_in, kept_out = len(arch.kept["stem.0"]), len(arch.kept["custom"])
    assert kept_in < 16 and kept_out < 12
    assert model.custom.weight.shape == (kept_out, kept_in, 3, 3) and model.custom.scale.shape == (kept_out,)
    assert (model.custom.in_channels, model.custom.out_channels, model.gain.channels) == (kept_in, kept_out, kept_out)
    assert model.gain.gain.shape == model.gain.calls.shape == (kept_out,)


def test_declared_modules_are_costed_and_their_optimizer_state_is_sliced(plugins):
    plugins(Declarations(), name="declarations")
    torch.manual_seed(0)
    model, x = Net(), torch.randn(4, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    assert graph_cost(graph).flops == pat_ray.measure_cost(model, x).flops
    assert graph_cost(graph).params == sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    optimizer.step()
    momentum = optimizer.state[model.custom.scale]["momentum_buffer"].clone()
    before = copy.deepcopy(model)
    arch = pat_ray.prune(model, x, budget=0.5, optimizer=optimizer)
    kept = torch.tensor(arch.kept["custom"])
    torch.testing.assert_close(optimizer.state[model.custom.scale]["momentum_buffer"], momentum[kept])
    assert pat_ray.measure_cost(model, x).flops / pat_ray.measure_cost(before, x).flops == pytest.approx(0.5, abs=0.03)
    F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    optimizer.step()


def test_a_rule_that_does_not_fit_its_module_is_named(plugins):
    class Wrong:
        @pat_ray.hookimpl
        def pat_ray_register_layers(self, register):
            register("gain", pat_ray.LayerRule(ChannelGain, maps="follows", params={"weight": {"out": 0}}))

    plugins(Wrong(), name="wrong")
    model = nn.Sequential(nn.Conv2d(3, 8, 1), ChannelGain(8), nn.Flatten())
    with pytest.raises(UnsupportedModelError, match=r"ChannelGain.*declares \['weight'\]"):
        trace_channel_groups(model, torch.randn(1, 3, 4, 4))


def test_a_module_declared_twice_names_both_plugins(plugins):
    plugins(Declarations(), name="first")

    class Again:
        @pat_ray.hookimpl
        def pat_ray_register_layers(self, register):
            register("gain_again", pat_ray.LayerRule(ChannelGain, maps="follows", params={"gain": {"out": 0}}))

    with pytest.raises(PluginError, match="ChannelGain is declared twice.*'first'.*'again'"):
        plugins(Again(), name="again")


def test_a_module_with_a_built_in_family_cannot_be_declared_again(plugins):
    """One class, one rule: a plugin declaring ``nn.Linear`` would silently change how every
    model's Linears prune; it is refused naming the layer and the plugin, and nothing changes."""

    class Overrides:
        @pat_ray.hookimpl
        def pat_ray_register_layers(self, register):
            register("my_linear", pat_ray.LayerRule(nn.Linear, maps="produces", params={"weight": {"out": 0, "in": 1}}))

    with pytest.raises(
        PluginError, match=r"layer 'my_linear' from plugin 'overrides' declares Linear, which has a built-in"
    ):
        plugins(Overrides(), name="overrides")
    graph = trace_channel_groups(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), torch.randn(2, 4))
    assert {m.module for g in graph.prunable for m in g.members} == {"0", "2"}


def test_a_follows_rule_with_input_channels_is_rejected_when_made():
    with pytest.raises(ValueError, match="'follows' layer has 'out' channels only"):
        pat_ray.LayerRule(ChannelGain, maps="follows", params={"gain": {"in": 0}})


def test_a_declaration_that_leaves_out_its_macs_is_caught_by_torchs_own_count(plugins):
    """The traced and the measured cost both read the declaration, so a LayerRule without
    ``macs`` agrees with itself; torch's counter, which shares no table with pat_ray, finds
    exactly the custom conv's multiply-accumulates missing."""
    plugins(Declarations(macs=None), name="declarations")
    model, x = Net(), torch.randn(2, 3, 8, 8)
    measured = pat_ray.measure_cost(model, x).flops
    assert graph_cost(trace_channel_groups(model, x)).flops == measured
    assert flops_counted_by_torch(model, x) - measured == 12 * 16 * 9 * 8 * 8  # ScaledConv: 16 -> 12, 3x3, 8x8


def test_a_declaration_with_its_macs_counts_what_torch_counts(plugins):
    plugins(Declarations(), name="declarations")
    model, x = Net(), torch.randn(2, 3, 8, 8)
    assert flops_counted_by_torch(model, x) == pat_ray.measure_cost(model, x).flops
