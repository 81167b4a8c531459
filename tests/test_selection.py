"""Global selection under a budget: properties over random chain models and scores."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pat_ray.core.cost.flops import cost_of, graph_cost
from pat_ray.core.selection import BUDGET_TOLERANCE, Budget, select_architecture
from pat_ray.errors import BudgetError
from pat_ray.tracer.trace import trace_channel_groups


def chain(widths: list[int], grouped: int = 1) -> nn.Module:
    layers, cin = [], 3
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()]
        cin = w
    if grouped > 1:
        layers += [nn.Conv2d(cin, cin, 3, padding=1, groups=grouped), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 3)]
    return nn.Sequential(*layers)


models = st.lists(st.integers(2, 12), min_size=1, max_size=4)
fractions = st.floats(0.2, 1.0)


def random_scores(graph, seed: int, ties: bool = False):
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.ones(g.size) if ties else torch.rand(g.size, generator=gen) for g in graph.prunable}


def marginal_flops(graph) -> int:
    """Upper bound on the FLOPs of one channel: removing it at full width."""
    full = {g.name: g.size for g in graph.groups}
    base = cost_of(graph.terms, full).flops
    return max(base - cost_of(graph.terms, {**full, g.name: g.size - 1}).flops for g in graph.prunable)


@settings(max_examples=40, deadline=None)
@given(models, fractions, st.integers(0, 1000))
def test_flops_budget_is_a_ceiling_met_to_within_a_channel(widths, fraction, seed):
    graph = trace_channel_groups(chain(widths), torch.randn(1, 3, 4, 4))
    try:
        arch = select_architecture(graph, random_scores(graph, seed), Budget(fraction))
    except BudgetError:
        floor = {g.name: 1 for g in graph.prunable}
        floor = {**{g.name: g.size for g in graph.groups}, **floor}
        assert cost_of(graph.terms, floor).flops > fraction * graph_cost(graph).flops
        return
    counts = {**{g.name: g.size for g in graph.groups}, **{n: len(k) for n, k in arch.kept.items()}}
    achieved = cost_of(graph.terms, counts).flops
    full = graph_cost(graph).flops
    target = fraction * full
    assert achieved <= target + BUDGET_TOLERANCE * full + 1e-6  # never above the budget's tolerance
    assert achieved >= target - marginal_flops(graph) - 1e-6  # and never a whole channel short of it
    assert all(len(k) >= 1 for k in arch.kept.values())


@settings(max_examples=40, deadline=None)
@given(models, fractions, st.integers(0, 1000))
def test_channel_budget_is_exact_and_never_empties_a_group(widths, fraction, seed):
    graph = trace_channel_groups(chain(widths), torch.randn(1, 3, 4, 4))
    total = sum(g.size for g in graph.prunable)
    target = fraction * total
    if target < len(graph.prunable):
        with pytest.raises(BudgetError):
            select_architecture(graph, random_scores(graph, seed), Budget(fraction, "channels"))
        return
    arch = select_architecture(graph, random_scores(graph, seed), Budget(fraction, "channels"))
    assert target - 1 < sum(arch.counts) <= target + BUDGET_TOLERANCE * total
    assert min(arch.counts) >= 1


@settings(max_examples=20, deadline=None)
@given(models, fractions)
def test_equal_scores_keep_the_lowest_indices_deterministically(widths, fraction):
    graph = trace_channel_groups(chain(widths), torch.randn(1, 3, 4, 4))
    scores = random_scores(graph, 0, ties=True)
    try:
        first = select_architecture(graph, scores, Budget(fraction))
    except BudgetError:
        return
    again = select_architecture(graph, scores, Budget(fraction))
    assert first.fingerprint() == again.fingerprint()
    assert all(k == tuple(range(len(k))) for k in first.kept.values())


def test_selection_keeps_the_highest_scores():
    graph = trace_channel_groups(chain([8]), torch.randn(1, 3, 4, 4))
    scores = {"0": torch.tensor([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6])}
    arch = select_architecture(graph, scores, Budget(0.5, "channels"))
    assert arch.kept["0"] == (1, 3, 5, 7)


def test_grouped_conv_groups_stay_balanced():
    graph = trace_channel_groups(chain([8, 16], grouped=4), torch.randn(1, 3, 4, 4))
    grouped = graph.group("3")
    assert grouped.subgroups == 4
    arch = select_architecture(graph, random_scores(graph, 1), Budget(0.4))
    kept = torch.tensor(arch.kept["3"])
    per_group = torch.bincount(kept // 4, minlength=4)
    assert len(set(per_group.tolist())) == 1 and per_group[0] < 4


def test_round_to_keeps_multiples():
    graph = trace_channel_groups(chain([16, 12]), torch.randn(1, 3, 4, 4))
    arch = select_architecture(graph, random_scores(graph, 2), Budget(0.5, round_to=4))
    assert all(c % 4 == 0 or c == graph.group(n).size for n, c in zip(arch.names, arch.counts))


@pytest.mark.parametrize(
    "bad",
    [
        dict(fraction=0.0),
        dict(fraction=1.5),
        dict(fraction=0.5, measure="seconds"),  # not a measure: flops, params, channels or latency
        dict(fraction=0.5, round_to=0),
    ],
)
def test_bad_budgets_are_rejected(bad):
    with pytest.raises(BudgetError):
        Budget(**bad)


@settings(max_examples=40, deadline=None)
@given(models, fractions, st.integers(0, 1000), st.booleans())
def test_the_cut_is_one_global_threshold_on_the_scores(widths, fraction, seed, coarse):
    """Every removed channel scores at most every kept one, across groups (each group's best
    channel aside: it is never removable); with coarse scores, many ties cross groups."""
    graph = trace_channel_groups(chain(widths), torch.randn(1, 3, 4, 4))
    gen = torch.Generator().manual_seed(seed)
    scores = {
        g.name: (torch.randint(0, 3, (g.size,), generator=gen).float() if coarse else torch.rand(g.size, generator=gen))
        for g in graph.prunable
    }
    try:
        arch = select_architecture(graph, scores, Budget(fraction, "channels"))
    except BudgetError:
        return
    kept_scores, removed_scores = [], []
    for g in graph.prunable:
        best = int(torch.argmax(scores[g.name]))  # the lowest index among the best: always kept
        assert best in arch.kept[g.name]
        for c in range(g.size):
            if c != best:
                (kept_scores if c in arch.kept[g.name] else removed_scores).append(float(scores[g.name][c]))
    if kept_scores and removed_scores:
        assert max(removed_scores) <= min(kept_scores)


def test_nan_scores_are_refused_naming_the_group():
    graph = trace_channel_groups(chain([8, 4]), torch.randn(1, 3, 4, 4))
    scores = random_scores(graph, 0)
    scores["3"][2] = float("nan")
    with pytest.raises(ValueError, match="'3'.*NaN"):
        select_architecture(graph, scores, Budget(0.5))


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.7])
def test_a_one_shot_prune_of_a_vision_transformer_keeps_at_most_its_budget(budget):
    """Whole heads are coarse units: the selection takes the cut above the budget only within the
    tolerance, and measures what it promised (the pruned model's own cost)."""
    from torchvision.models import VisionTransformer

    import pat_ray

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=3, hidden_dim=96, mlp_dim=192)
    x = torch.randn(1, 3, 32, 32)
    dense = pat_ray.measure_cost(model, x).flops
    pat_ray.prune(model, x, budget=budget)
    kept = pat_ray.measure_cost(model, x).flops / dense
    assert budget - 0.1 < kept <= budget + BUDGET_TOLERANCE
