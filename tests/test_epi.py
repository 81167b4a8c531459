"""EPI maths: hand-computed values and properties (bounds, symmetry, identity, window)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pat_ray.core.epi import (
    early_bird_trigger,
    epi_curve,
    layer_distance,
    mask_similarity,
    should_trigger,
    structural_similarity,
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
