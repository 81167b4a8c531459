"""Names the config and the core share: what a budget measures, how attention is cut, how far a
selection may overshoot its budget.

Plain ``Literal`` types in a module without torch, so a config validates (and the command line
describes its keys) without importing the tracer."""

from __future__ import annotations

from typing import Literal, get_args

Measure = Literal["flops", "params", "channels", "latency"]
MEASURES: tuple[Measure, ...] = get_args(Measure)

AttentionCut = Literal["heads", "head_dim"]  # what a cut into attention heads makes prunable
ATTENTION_CUTS: tuple[AttentionCut, ...] = get_args(AttentionCut)

BUDGET_TOLERANCE = 0.005  # a selection keeps at most budget.fraction + this share of the reference measure
