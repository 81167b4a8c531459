"""Latency tables: interpolation maths, the probe that measures them, and selection by time."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pat_ray
from pat_ray.core.cost.latency import LatencyTable, LayerTimes, monotone
from pat_ray.core.cost.probe import count_grid, measure_latency
from pat_ray.core.selection import Budget, budget_measure, select_architecture
from pat_ray.errors import BudgetError
from pat_ray.plugins.registry import get_registry
from pat_ray.tracer.trace import trace_channel_groups

counts_axis = st.lists(st.integers(1, 512), min_size=1, max_size=5, unique=True).map(lambda xs: tuple(sorted(xs)))
raw_seconds = st.floats(0, 1, allow_nan=False)


@st.composite
def layer_times(draw, two_d: bool | None = None) -> LayerTimes:
    in_counts = draw(counts_axis) if (draw(st.booleans()) if two_d is None else two_d) else ()
    out_counts = draw(counts_axis)
    rows = max(1, len(in_counts))
    table = draw(st.lists(st.lists(raw_seconds, min_size=len(out_counts), max_size=len(out_counts)), min_size=rows))
    return LayerTimes(in_counts, out_counts, monotone(table[:rows]))


@given(st.lists(st.lists(raw_seconds, min_size=3, max_size=3), min_size=1, max_size=4))
def test_monotone_is_the_least_non_decreasing_table_above_the_measurements(table):
    fixed = monotone(table)
    for i, row in enumerate(fixed):
        assert all(a <= b for a, b in zip(row, row[1:]))
        assert all(f >= t for f, t in zip(row, table[i]))
        if i:
            assert all(a <= b for a, b in zip(fixed[i - 1], row))
    assert monotone(fixed) == fixed
    # every raised value equals some measurement it had to reach
    flat = {v for row in table for v in row}
    assert all(v in flat for row in fixed for v in row)


@given(layer_times())
def test_interpolation_hits_the_grid_points_exactly(times):
    for i, n_in in enumerate(times.in_counts or (1,)):
        for j, n_out in enumerate(times.out_counts):
            assert times.at(n_in, n_out) == pytest.approx(times.seconds[i][j])


@given(layer_times(), st.floats(0, 600), st.floats(0, 600), st.floats(0, 100), st.floats(0, 100))
def test_interpolated_time_never_falls_as_channels_grow(times, n_in, n_out, more_in, more_out):
    assert times.at(n_in + more_in, n_out + more_out) >= times.at(n_in, n_out) - 1e-12
    corners = [s for row in times.seconds for s in row]
    assert min(corners) - 1e-12 <= times.at(n_in, n_out) <= max(corners) + 1e-12


@given(st.dictionaries(st.sampled_from(["a", "b.conv", "c.bn"]), layer_times(), min_size=1), st.integers(1, 512))
@settings(max_examples=30)
def test_a_table_survives_json(layers, batch):
    table = LatencyTable(layers, batch, "cpu", "test CPU")
    data = table.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain JSON types: a checkpoint's copy equals the file's
    assert LatencyTable.from_dict(data) == table


def test_malformed_tables_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="fall as channels grow"):
        LayerTimes((), (16, 32), ((2.0, 1.0),))
    with pytest.raises(ValueError, match="strictly increasing"):
        LayerTimes((), (32, 16), ((1.0, 2.0),))
    with pytest.raises(ValueError, match="2 x 2"):
        LayerTimes((8, 16), (16, 32), ((1.0, 2.0),))
    good = LatencyTable({"conv": LayerTimes((), (16,), ((1.0,),))}, 8, "cpu").to_dict()
    good["layers"]["conv"]["seconds"] = [[-1.0]]
    with pytest.raises(ValueError, match="layer 'conv'.*>= 0"):
        LatencyTable.from_dict(good)
    with pytest.raises(ValueError, match="not a latency table"):
        LatencyTable.from_dict({"layers": {}})


@given(st.integers(1, 2048), st.sampled_from([1, 8, 16, 32]), st.integers(2, 10))
def test_count_grid_spans_the_legal_widths(full, step, points):
    grid = count_grid(full, step, points)
    assert list(grid) == sorted(set(grid)) and grid[-1] == full
    assert len(grid) <= points
    assert all(c % step == 0 for c in grid[:-1])
    assert grid[0] == (step if full > step else full)


# --- the probe on real (tiny) models: structure only, never wall-clock values ---------------


def small_resnet() -> nn.Module:
    torch.manual_seed(0)
    return get_registry().create("model", "cifar_resnet20", num_classes=10, in_channels=1)


def test_the_probe_times_every_layer_at_legal_widths():
    model = small_resnet()
    example = torch.zeros(1, 1, 8, 8)
    table = measure_latency(model, example, batch_size=4, round_to=8, points=3, repeats=1, rounds=1)
    graph = trace_channel_groups(model, example)
    assert set(table.layers) == {t.module for t in graph.terms}
    assert (table.batch_size, table.device_type) == (4, "cpu")
    size = {g.name: g.size for g in graph.groups}
    for term in graph.terms:
        times = table.layers[term.module]
        module = model.get_submodule(term.module)
        assert times.out_counts[-1] == sum(size[g] for g in term.out_groups)
        assert all(c % 8 == 0 for c in times.out_counts[:-1]) and len(times.out_counts) <= 3
        if isinstance(module, nn.BatchNorm2d) or term.module == "conv1":  # output-only / fixed input (the image)
            assert times.in_counts == ()
        elif isinstance(module, nn.Conv2d):
            assert times.in_counts[-1] == module.in_channels
    # the whole dense model is predicted as the sum of its layers at full width
    full = table.predict(graph.terms, size)
    assert full == pytest.approx(sum(t.seconds[-1][-1] for t in table.layers.values()))


class DepthwiseAndGrouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.grouped(self.dw(self.stem(x))), 1))


def test_the_probe_builds_depthwise_grouped_and_flattened_layers():
    model = DepthwiseAndGrouped()
    table = measure_latency(model, torch.zeros(1, 3, 4, 4), batch_size=2, round_to=2, points=4, repeats=1, rounds=1)
    assert table.layers["dw"].in_counts == ()  # a depthwise conv's input follows its output
    assert all(c % 4 == 0 for c in table.layers["grouped"].out_counts)  # conv groups stay, each narrowed
    assert table.layers["head"].in_counts[-1] == 32 * 16  # flattened features, counted per channel x 16
    assert all(c % 16 == 0 for c in table.layers["head"].in_counts)


def test_measuring_does_not_move_the_random_stream():
    torch.manual_seed(3)
    expected = torch.rand(4)
    model = small_resnet()
    torch.manual_seed(3)
    measure_latency(model, torch.zeros(1, 1, 8, 8), batch_size=2, points=2, repeats=1, rounds=2)
    assert torch.equal(torch.rand(4), expected)


# --- selection under a latency budget (synthetic tables: exact, no timing) -------------------


def synthetic_table(graph, per_channel=lambda term: 1.0, fixed=lambda term: 0.0) -> LatencyTable:
    """Each layer: a fixed time plus one linear in its output width (times its input width)."""
    size = {g.name: g.size for g in graph.groups}
    layers = {}
    for term in graph.terms:
        out = sum(size[g] for g in term.out_groups)
        ins = sum(size[g] for g in term.in_groups) * term.in_repeat if term.in_groups else 0
        in_counts = (1, ins) if ins > 1 else ()
        outs = (1, out) if out > 1 else (out,)
        rate, base = per_channel(term), fixed(term)
        rows = [[base + rate * o * (i if in_counts else 1) for o in outs] for i in (in_counts or (1,))]
        layers[term.module] = LayerTimes(in_counts, outs, monotone(rows))
    return LatencyTable(layers, 8, "cpu")


@pytest.fixture(scope="module")
def traced():
    model = small_resnet()
    return model, trace_channel_groups(model, torch.zeros(1, 1, 8, 8))


@given(st.floats(0.3, 1.0), st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_a_latency_budget_cuts_the_same_ranking_only_elsewhere(traced, fraction, seed):
    """The measure decides where the ranking is cut, never the ranking: for the same scores a
    latency-budget architecture and a FLOPs-budget one are nested in every group."""
    _, graph = traced
    gen = torch.Generator().manual_seed(seed)
    scores = {g.name: torch.rand(g.size, generator=gen) for g in graph.prunable}
    table = synthetic_table(graph, per_channel=lambda t: 5.0 if t.module.startswith("layer3") else 1.0)
    by_time = select_architecture(graph, scores, Budget(fraction, "latency"), latency=table)
    for flops_fraction in (0.3, 0.5, 0.8):
        by_flops = select_architecture(graph, scores, Budget(flops_fraction, "flops"))
        time_inside = all(set(by_time.kept[n]) <= set(by_flops.kept[n]) for n in by_time.kept)
        flops_inside = all(set(by_flops.kept[n]) <= set(by_time.kept[n]) for n in by_time.kept)
        assert time_inside or flops_inside


def test_the_cut_is_the_one_closest_to_the_time_target(traced):
    _, graph = traced
    scores = {g.name: torch.arange(g.size, dtype=torch.float) for g in graph.prunable}
    table = synthetic_table(graph)
    seconds = budget_measure(graph, "latency", table)
    full = seconds({g.name: g.size for g in graph.groups})
    arch = select_architecture(graph, scores, Budget(0.6, "latency"), latency=table)
    kept = {g.name: g.size for g in graph.groups} | {n: len(k) for n, k in arch.kept.items()}
    assert seconds(kept) / full == pytest.approx(0.6, abs=0.02)


def test_a_latency_budget_without_a_table_or_out_of_reach_says_so(traced):
    _, graph = traced
    scores = {g.name: torch.ones(g.size) for g in graph.prunable}
    with pytest.raises(BudgetError, match="needs the model's latency table"):
        select_architecture(graph, scores, Budget(0.5, "latency"))
    # a cost no pruning removes (e.g. per-op overhead) takes over 90% of this model's time
    table = synthetic_table(graph, fixed=lambda t: 1e6 if t.module == "conv1" else 0.0)
    with pytest.raises(BudgetError, match=r"smallest legal sub-network keeps 9\d\.\d%; raise the fraction$"):
        select_architecture(graph, scores, Budget(0.5, "latency"), latency=table)


def test_one_shot_prune_by_time_needs_and_uses_a_table():
    model = small_resnet()
    example = torch.zeros(1, 1, 8, 8)
    graph = trace_channel_groups(model, example)
    table = synthetic_table(graph)
    with pytest.raises(BudgetError, match="latency table"):
        pat_ray.prune(small_resnet(), example, budget=0.5, measure="latency")
    pat_ray.prune(model, example, budget=0.5, measure="latency", latency=table)
    pruned = trace_channel_groups(model, example)
    seconds = table.predict(pruned.terms, {g.name: g.size for g in pruned.groups})
    assert seconds / table.predict(graph.terms, {g.name: g.size for g in graph.groups}) == pytest.approx(0.5, abs=0.03)


def test_channels_last_linears_and_layer_norms_are_timed_at_their_widths():
    """ConvNeXt's per-pixel Linear and LayerNorm (plain, channels-last; LayerNorm2d, NCHW)."""
    from test_channel_layouts import ConvNeXtLike

    model, x = ConvNeXtLike(), torch.randn(1, 3, 8, 8)
    table = measure_latency(model, x, batch_size=2, points=2, repeats=1, rounds=1)
    for layer in ("stem_norm", "blocks.0.norm", "blocks.0.up", "blocks.0.down", "head_norm"):
        assert layer in table.layers
    assert table.layers["blocks.0.up"].out_counts == (1, 64)  # the hidden MLP width varies
    graph = trace_channel_groups(model, x)
    full = {g.name: g.size for g in graph.groups}
    narrow = full | {name: 1 for name in ("blocks.0.up", "blocks.1.up")}  # the hidden MLP widths
    # one timing per width on a shared CPU: noise may make the narrow time equal the full one
    # (monotone() clamps it), never larger; a strict "<" flaked in CI
    assert table.predict(graph.terms, narrow) <= table.predict(graph.terms, full)


def test_a_layer_the_probe_cannot_time_is_named_before_any_timing(plugins):
    """A plugin-declared layer has no timing model: a clear refusal, not a crash."""
    from test_custom_layers import Declarations, Net

    from pat_ray.errors import UnsupportedModelError

    plugins(Declarations(), name="declarations")
    with pytest.raises(UnsupportedModelError, match=r"cannot time layer 'custom' \(ScaledConv\).*measure: flops"):
        measure_latency(Net(), torch.randn(1, 3, 8, 8), batch_size=2)


@pytest.mark.parametrize("product", ["written", "sdpa"])
def test_attention_products_are_timed_with_the_heads_they_keep(product):
    """q @ k^T and weights @ v have no layer: the probe times two factors of their traced shapes
    at each head count, so a latency budget sees what removing a head saves there."""
    from test_attention_heads import Heads

    model, x = Heads(product=product), torch.randn(1, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    products = [t for t in graph.terms if t.product is not None]
    assert len(products) == 2 and all(t.out_groups == ("qkv/heads",) for t in products)
    scores = next(t for t in products if t.product.shapes[1][-1] == 16)  # (.., head_dim, tokens): k^T
    assert scores.product.at(0, 2, 4) == ((4, 2, 16, 3), (4, 2, 3, 16))
    table = measure_latency(model, x, batch_size=4, points=4, repeats=1, rounds=1)
    assert set(table.layers) == {t.module for t in graph.terms if t.timed}
    for term in products:
        assert table.layers[term.module].out_counts == (1, 2, 3, 4)
    full = {g.name: g.size for g in graph.groups}
    assert table.predict(graph.terms, full | {"qkv/heads": 1}) <= table.predict(graph.terms, full)


def test_multihead_attention_is_timed_by_its_projections_and_products():
    from test_multihead_attention import Encoder

    model, x = Encoder(), torch.randn(1, 3, 4, 4)
    table = measure_latency(model, x, batch_size=2, points=2, repeats=1, rounds=1)
    assert {"attn.out_proj", "<attn:scores>", "<attn:mix>"} <= set(table.layers)
