"""EPI maths: hand-computed values and properties (bounds, symmetry, identity, window)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pat_ray.core.epi import (
    calibrate_tau_curves,
    early_bird_trigger,
    epi_curve,
    layer_distance,
    mask_similarity,
    should_trigger,
    structural_similarity,
    trigger_epoch,
)

counts = st.lists(st.integers(1, 64), min_size=1, max_size=12)


def test_hand_computed_values():
    assert layer_distance(3, 1) == pytest.approx(0.5)
    assert layer_distance(0, 5) == 1.0
    # d = (0, 1/3, 1) -> Psi = 1 - (4/3)/3 = 5/9
    assert structural_similarity([4, 2, 7], [4, 4, 0]) == pytest.approx(5 / 9)
    curve = epi_curve([[4], [2], [2], [4]], window=2)
    # t=1: Psi(A1, A0) = 1 - 2/6; t=2: mean(1, 2/3); t=3: mean(Psi([4],[2]) x2) = 2/3
    assert curve == [None, pytest.approx(2 / 3), pytest.approx(5 / 6), pytest.approx(2 / 3)]
    assert mask_similarity([frozenset({0, 1})], [frozenset({1, 2})], [4]) == pytest.approx(0.5)


@given(counts, st.data())
def test_similarity_bounds_symmetry_identity(a, data):
    b = data.draw(st.lists(st.integers(0, 64), min_size=len(a), max_size=len(a)))
    s = structural_similarity(a, b)
    assert 0.0 <= s <= 1.0
    assert s == pytest.approx(structural_similarity(b, a))
    assert structural_similarity(a, a) == 1.0


@given(st.lists(counts, min_size=1, max_size=12), st.integers(1, 6), st.integers(0, 6), st.floats(0, 1))
def test_trigger_never_fires_before_the_window_is_full(snapshots, window, patience, tau):
    width = len(snapshots[0])
    snapshots = [(s * width)[:width] for s in snapshots]
    curve = epi_curve(snapshots, window)
    for t in range(len(curve)):
        fired = should_trigger(curve[: t + 1], window, patience, tau)
        if t < window:
            assert not fired
        if fired:
            assert curve[t] >= tau
            past = [v for v in curve[max(0, t - patience) : t] if v is not None]
            assert curve[t] == 1.0 or all(curve[t] > v for v in past)


def test_identical_snapshots_give_one_and_a_stable_curve_triggers():
    curve = epi_curve([[8, 4]] * 8, window=2)
    assert curve[1:] == [1.0] * 7
    assert not should_trigger(curve[:2], window=2, patience=2, tau=0.9)  # window not full
    assert should_trigger(curve[:3], window=2, patience=2, tau=0.9)
    # below 1, a plateau does not trigger: the value must beat its recent past
    assert not should_trigger([None, 0.95, 0.95, 0.95], window=2, patience=2, tau=0.9)
    assert should_trigger([None, 0.5, 0.8, 0.99], window=2, patience=2, tau=0.9)


def test_early_bird_rule():
    assert not early_bird_trigger([0.01, 0.02], window=3, epsilon=0.1)
    assert early_bird_trigger([0.01, 0.02, 0.05], window=3, epsilon=0.1)
    assert not early_bird_trigger([0.01, 0.2, 0.05], window=3, epsilon=0.1)


def test_calibrated_tau_on_a_hand_made_curve():
    # window 2, patience 1: epochs 3.. can fire, each must beat the value before it
    curve = [None, 0.5, 0.6, 0.7, 0.65, 0.9, 0.95]
    assert trigger_epoch(curve, 2, 1, 0.7) == 4
    cal = calibrate_tau_curves([curve], 2, 1, target_epoch=6)
    # 0.65 is not a record; tau in (0.7, 0.9] fires at 6, tau <= 0.7 fires earlier
    assert (cal.epoch, cal.low, cal.high, cal.tau) == (6, 0.7, 0.9, 0.8)
    assert trigger_epoch(curve, 2, 1, cal.tau) == 6
    unreachable = calibrate_tau_curves([curve], 2, 1, target_epoch=5)  # 0.65 at epoch 5 never fires
    assert unreachable.epoch in (4, 6)
    assert unreachable.epoch == 4  # ties go to the earlier, cheaper epoch
    assert calibrate_tau_curves([[None, 0.9]], window=3, patience=1, target_epoch=2) is None


curves = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=25).map(lambda v: [None, *v])


@given(curves, st.integers(1, 5), st.integers(0, 5), st.integers(1, 26))
def test_calibrated_tau_fires_where_it_says_and_hits_any_reachable_target(curve, window, patience, target):
    cal = calibrate_tau_curves([curve], window, patience, target)
    reachable = {trigger_epoch(curve, window, patience, v) for v in curve if v is not None} - {None}
    if cal is None:
        assert not reachable
        return
    assert (cal.low is None or cal.low < cal.tau) and cal.tau <= cal.high
    for tau in (cal.tau, cal.high):
        assert trigger_epoch(curve, window, patience, tau) == cal.epoch
    if target in reachable:
        assert cal.epoch == target
    else:
        assert all(abs(cal.epoch - target) <= abs(e - target) for e in reachable)


def test_calibrating_on_several_curves_lands_nearest_on_average():
    from pat_ray.core.epi import calibrate_tau_curves, trigger_epoch

    early = [None, 0.90, 0.95, 0.99, 0.995]  # window 1, patience 1: fires at 2 for tau <= 0.90
    late = [None, 0.50, 0.60, 0.70, 0.96]
    cal = calibrate_tau_curves([early, late], window=1, patience=1, target_epoch=3)
    landings = [trigger_epoch(c, 1, 1, cal.tau) for c in (early, late)]
    assert cal.low is None or cal.low < cal.tau <= cal.high
    best = min(
        sum(abs((trigger_epoch(c, 1, 1, t) or len(c) + 1) - 3) for c in (early, late))
        for t in [0.5, 0.6, 0.7, 0.9, 0.95, 0.96, 0.99, 0.995]
    )
    assert sum(abs(e - 3) for e in landings) == best
    assert cal.epoch == round(sum(landings) / 2)


@given(st.data())
def test_per_layer_similarity_counts_a_group_once_per_layer_it_sets(data):
    from pat_ray.core.epi import weighted_structural_similarity

    a = data.draw(counts)
    b = data.draw(st.lists(st.integers(1, 64), min_size=len(a), max_size=len(a)))
    weights = data.draw(st.lists(st.integers(1, 4), min_size=len(a), max_size=len(a)))
    repeated_a = [x for x, w in zip(a, weights) for _ in range(w)]
    repeated_b = [y for y, w in zip(b, weights) for _ in range(w)]
    assert weighted_structural_similarity(a, b, weights) == pytest.approx(structural_similarity(repeated_a, repeated_b))
    assert weighted_structural_similarity(a, b, [1] * len(a)) == pytest.approx(structural_similarity(a, b))


def test_snapshots_carry_layer_counts_for_the_per_layer_metric():
    import torch

    from pat_ray.core.architecture import Architecture
    from pat_ray.core.selection import Budget
    from pat_ray.models.cifar_resnet import CifarResNet
    from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
    from pat_ray.plugins.builtin.similarity import structural, structural_layers
    from pat_ray.plugins.builtin.surgery_native import NativeSurgery
    from pat_ray.training.collective import LocalCollective
    from pat_ray.training.pruner import Pruner

    model = CifarResNet(20, num_classes=4)
    pruner = Pruner(model, torch.zeros(1, 3, 16, 16), Magnitude(), NativeSurgery(), Budget(0.5), 1, 1, [],
                    LocalCollective())  # fmt: skip
    snapshot, _ = pruner.snapshot(model)
    assert snapshot.layers["conv1"] == 4  # the stem and the three blocks' second convs set stage 1's width
    assert snapshot.layers["layer1.0.conv1"] == 1
    assert Architecture.from_dict(snapshot.to_dict()) == snapshot
    full = pruner.architecture
    assert structural_layers(snapshot, full) != pytest.approx(structural(snapshot, full))
    from test_attention_heads import Scaled

    attention = Pruner(Scaled(), torch.zeros(1, 3, 4, 4), Magnitude(), NativeSurgery(), Budget(0.5), 1, 1, [],
                       LocalCollective(), attention="head_dim")  # fmt: skip
    assert attention.architecture.layers == {"embed": 2, "qkv/head_dim": 1}  # q, k and v of every head: one layer
