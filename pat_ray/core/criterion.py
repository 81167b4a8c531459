"""The interface every importance criterion implements, and helpers they share.

A criterion may accumulate evidence during training (Taylor: after every backward), so
it has three steps: ``observe`` after a backward pass, ``scores`` when a snapshot is taken,
``reset`` after pruning (accumulated statistics describe channels that no longer exist).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from pat_ray.tracer.graph import ChannelGroup, Member, ModelGraph
from pat_ray.tracer.layers.table import family_of

Scores = dict[str, torch.Tensor]


class Criterion(ABC):
    """Per-channel importance of every prunable group; higher means keep."""

    #: whether ``observe`` must be called after each backward for ``scores`` to be valid
    needs_gradients: bool = False

    def observe(self, model: nn.Module, graph: ModelGraph) -> None:  # noqa: B027
        """Accumulate evidence from the gradients of the last backward pass."""

    @abstractmethod
    def scores(self, model: nn.Module, graph: ModelGraph) -> Scores:
        """One score tensor of shape ``(group.size,)`` per prunable group."""

    def reset(self) -> None:  # noqa: B027
        """Forget accumulated evidence (the model's channels changed)."""


def member_tensor(model: nn.Module, member: Member, name: str) -> torch.Tensor | None:
    """A parameter (``weight``, ``bias``) of the member's module, or None if it has none; a
    layer that names them otherwise says which it means (``nn.MultiheadAttention``'s
    ``in_proj_weight``)."""
    module = model.get_submodule(member.module)
    return getattr(module, parameter_attribute(module, name), None)


def parameter_attribute(module: nn.Module, name: str) -> str:
    """The attribute of ``module`` holding what criteria call its ``weight`` or ``bias``."""
    family = family_of(module)
    return family.parameter_name(name) if family is not None else name


def member_rows(tensor: torch.Tensor, member: Member, size: int) -> torch.Tensor:
    """The slices of a producer's or norm's parameter that hold the group's channels, one row
    per channel, as a (size, -1) tensor (a view when the channels are the leading dim; a
    transposed conv's weight holds them on dim 1, and a 1-D bias on dim 0). A channel that
    fills several positions (an attention head: ``head_dim`` rows of q, k or v) is one row
    holding all of them, so a score of a row is the score of the whole head's slice."""
    axis = member.axis if tensor.dim() > 1 else 0
    rows = tensor.detach().narrow(axis, member.offset, size * member.repeat).movedim(axis, 0)
    return rows.reshape(size, -1)


def filter_norms(model: nn.Module, group: ChannelGroup, p: float, per_weight: bool = False) -> torch.Tensor:
    """Sum over the group's producers of each channel's filter (weight + bias) Lp norm.

    ``per_weight``: the paper's reading, each producer's filter-weight norm divided by the
    square root of the number of weights in one filter (``||W_n||_p / sqrt(P)``), biases left out."""
    total = torch.zeros(group.size)
    for member in group.producers():
        for name in ("weight",) if per_weight else ("weight", "bias"):
            tensor = member_tensor(model, member, name)
            if tensor is not None:
                rows = member_rows(tensor, member, group.size).float()
                norms = rows.norm(p=p, dim=1).cpu()
                total += (norms / rows.shape[1] ** 0.5 if per_weight else norms) ** p
    return total ** (1.0 / p)


def normalize_per_group(scores: Scores) -> Scores:
    """Divide each group's scores by their mean so that layer scale does not decide the
    global ranking (a group of all-equal channels scores 1 everywhere)."""
    return {n: s / s.mean().clamp_min(1e-12) for n, s in scores.items()}
