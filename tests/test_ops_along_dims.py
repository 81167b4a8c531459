"""Ops a model's own code runs along one dim or per element, beyond the everyday ones: every
element-wise op torch tags pointwise (``clamp_min``, ``copysign``, ``logaddexp``...), running
sums, ``narrow``, ``index_select`` / ``gather``, ``diff``, ``rot90``, ``movedim``,
``unflatten``, ``var_mean``, bare instance norms, and sliding windows (``F.unfold`` /
``F.fold``, their layers, ``Tensor.unfold``). Along another dim than the channels' each lets
them through, and the model prunes exactly (the dense model with the removed channels zeroed);
along the channels each keeps them whole."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _helpers import assert_pruning_is_exact
from pat_ray.tracer.trace import trace_channel_groups

Op = Callable[[torch.Tensor], torch.Tensor]


class Around(nn.Module):
    """``conv -> op -> conv``: the first conv's channels prune only if the op lets them through."""

    def __init__(self, op: Op, width: int = 16, inner: int = 16) -> None:
        super().__init__()
        self.op = op
        self.first, self.second = nn.Conv2d(3, width, 3, padding=1), nn.Conv2d(inner, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.op(self.first(x))).mean((2, 3))


PASSING: dict[str, Op] = {
    # element-wise ops named by no rule (each maps 0 to 0, so zeroed channels stay zero)
    "clamp_min": lambda y: y.clamp_min(0.0),
    "copysign": lambda y: torch.copysign(y, y - 0.5),
    "sinh": lambda y: torch.sinh(y),
    "special.i1": lambda y: torch.special.i1(y),
    "frac": lambda y: (3 * y).frac(),
    "xlogy_": lambda y: y.abs().xlogy_(y.abs() + 1),
    "cumsum over width": lambda y: torch.cumsum(y, 3),
    "narrow over width": lambda y: y.narrow(3, 1, 4),
    "index_select over width": lambda y: y.index_select(3, torch.tensor([0, 2, 2, 5])),
    "gather by argsort": lambda y: torch.gather(y, 3, y.argsort(dim=3)),
    "diff over height": lambda y: torch.diff(y, dim=2),
    "rot90": lambda y: torch.rot90(y, 1, (2, 3)),
    "movedim and back": lambda y: y.movedim(1, -1).relu().movedim(-1, 1),
    "unflatten": lambda y: y.flatten(2).relu().unflatten(2, (y.shape[2], -1)),
    "var_mean": lambda y: (y - torch.var_mean(y, dim=(2, 3), keepdim=True)[1]) * 2,
    "instance_norm": lambda y: F.instance_norm(y),
    "tensor.unfold windows": lambda y: y.unfold(2, 2, 2).mean(-1),
}


@pytest.mark.parametrize("op", list(PASSING.values()), ids=list(PASSING))
def test_an_op_along_another_dim_lets_the_channels_through(op):
    torch.manual_seed(0)
    model, x = Around(op), torch.randn(2, 3, 8, 8)
    assert_pruning_is_exact(model, x, 0.5, counted_by_torch=False)
    assert model.first.out_channels == model.second.in_channels < 16


KEEPING: dict[str, tuple[Op, int]] = {
    "cumsum over channels": (lambda y: y.cumsum(1), 16),
    "index_select of channels": (lambda y: y.index_select(1, torch.arange(8)), 8),
    "gather over channels": (lambda y: torch.gather(y, 1, torch.zeros_like(y, dtype=torch.long)), 16),
    "diff over channels": (lambda y: torch.diff(y, dim=1), 15),
    "windows over channels": (lambda y: y.unfold(1, 4, 4).mean(-1), 4),
    "group_norm": (lambda y: F.group_norm(y, 4), 16),
}


@pytest.mark.parametrize("op, inner", list(KEEPING.values()), ids=list(KEEPING))
def test_an_op_along_the_channels_keeps_them(op, inner):
    graph = trace_channel_groups(Around(op, inner=inner), torch.randn(1, 3, 8, 8))
    assert "first" not in {g.name for g in graph.prunable}


def test_narrowing_the_channels_is_a_slice_written_in_the_code():
    model = Around(lambda y: y.narrow(1, 4, 8), inner=8)
    graph = trace_channel_groups(model, torch.randn(1, 3, 8, 8))
    prunable = {g.name: g.size for g in graph.prunable}
    assert sum(size for name, size in prunable.items() if name.startswith("first")) == 4  # the 4 after the slice


class PatchMixer(nn.Module):
    """MobileViT-V2's way: image -> patches (``unfold``) -> a mix over the pixels of each
    patch -> image again (``fold``); the layer forms or the functions."""

    def __init__(self, layers: bool) -> None:
        super().__init__()
        self.first, self.second = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 6, 1)
        self.mix = nn.Linear(4, 4, bias=False)  # a removed channel stays zero through it
        self.unfold = nn.Unfold(2, stride=2) if layers else None
        self.fold = nn.Fold((8, 8), 2, stride=2) if layers else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.first(x)
        b, c = y.shape[:2]
        patches = self.unfold(y) if self.unfold is not None else F.unfold(y, 2, stride=2)
        mixed = self.mix(patches.reshape(b, c, 4, -1).transpose(2, 3)).transpose(2, 3).reshape(b, c * 4, -1)
        image = self.fold(mixed) if self.fold is not None else F.fold(mixed, (8, 8), 2, stride=2)
        return self.second(image).mean((2, 3))


@pytest.mark.parametrize("layers", [False, True], ids=["functions", "layers"])
def test_unfold_and_fold_follow_each_channel_over_its_patch(layers):
    torch.manual_seed(0)
    model, x = PatchMixer(layers), torch.randn(2, 3, 8, 8)
    assert_pruning_is_exact(model, x, 0.5, counted_by_torch=False)
    assert model.first.out_channels == model.second.in_channels < 16


def test_an_unfolded_patch_embedding_prunes_the_convs_before_it():
    class Embedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.embed, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 16, 12), nn.Linear(12, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.embed(F.unfold(self.first(x), 4, stride=4).transpose(1, 2))
            return self.head(tokens.mean(1))

    torch.manual_seed(0)
    model, x = Embedding(), torch.randn(2, 3, 8, 8)
    assert_pruning_is_exact(model, x, 0.5)
    assert model.embed.in_features == 16 * model.first.out_channels < 8 * 16


def test_fixed_channels_stay_fixed_through_a_reshape_that_merges_them():
    """A channels-last input image (its dim 1, rows, is a fixed group as for any model input)
    flattened to tokens: the reshape must leave the fixed rows alone, not follow them onto the
    token axis where the Linear then refuses the model (Twins' and Swin V2's windows were so)."""

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.mlp, self.head = nn.Linear(3, 16), nn.Linear(16, 24), nn.Linear(24, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, h, w, c = x.shape
            tokens = self.embed(x.reshape(b, h * w, c))
            return self.head(F.relu(self.mlp(tokens)).mean(1))

    torch.manual_seed(0)
    model, x = Tokens(), torch.randn(2, 4, 4, 3)
    assert_pruning_is_exact(model, x, 0.6)
    assert model.embed.out_features == model.mlp.in_features < 16 or model.mlp.out_features < 24
