"""Channel slices by numbers written in the code, and constants that vary over channels.

``x[:, a:b]``: the numbers stay when channels go, so the channels before the slice's end keep
their places (pinned) and those after it prune freely; a group straddling a boundary is split
there. Seen in GhostNet (``cat([x1, x2])[:, :oup]``) and ReXNet (a residual over the first
``c`` channels of a wider output). A constant that varies over channels and is no parameter the
tracer can slice (PoolFormer's scale viewed to a shape in the code, Swin's attention mask)
keeps the channels it meets whole. Each case is pruned and checked against zeroing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _helpers import assert_pruning_is_exact
from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.trace import trace_channel_groups


class Ghost(nn.Module):
    """GhostNet's module: a primary conv, a cheap depthwise conv of its output, both side by
    side, then the first ``oup`` channels."""

    def __init__(self, oup: int) -> None:
        super().__init__()
        self.oup = oup
        self.stem = nn.Conv2d(3, 8, 1)
        self.primary = nn.Conv2d(8, 5, 1)
        self.cheap = nn.Conv2d(5, 5, 3, padding=1, groups=5)
        self.head = nn.Conv2d(oup, 4, 1)

    def forward(self, x):
        x1 = self.primary(torch.relu(self.stem(x)))
        return self.head(torch.cat([x1, self.cheap(x1)], dim=1)[:, : self.oup])


def _prunable(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    return {g.name: g.size for g in trace_channel_groups(model, x).prunable}


def test_a_slice_that_reaches_the_last_channel_stays_whole_and_everything_prunes():
    model, x = Ghost(oup=10), torch.randn(2, 3, 6, 6)
    assert set(_prunable(model, x)) == {"stem", "primary"}
    arch = assert_pruning_is_exact(model, x, budget=0.6)
    assert len(arch.kept["primary"]) < 5 and model.head.in_channels == 2 * len(arch.kept["primary"])


def test_a_slice_short_of_the_last_channel_keeps_the_channels_before_its_end():
    model, x = Ghost(oup=9), torch.randn(2, 3, 6, 6)
    assert set(_prunable(model, x)) == {"stem"}  # primary (and the cheap copy of it) lie before position 9
    assert_pruning_is_exact(model, x, budget=0.8)
    assert model.head.in_channels == 9


class PartialResidual(nn.Module):
    """ReXNet's block: the shortcut is added to the first ``c`` channels of a wider output, the
    rest passes on: ``cat([y[:, 0:c] + shortcut, y[:, c:]])``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 1)
        self.expand = nn.Conv2d(6, 10, 1)
        self.head = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        shortcut = torch.relu(self.stem(x))
        y = self.expand(shortcut)
        return self.head(torch.cat([y[:, 0:6] + shortcut, y[:, 6:]], dim=1))


def test_a_slice_to_the_end_prunes_the_channels_after_its_start_splitting_their_group():
    model, x = PartialResidual(), torch.randn(2, 3, 6, 6)
    assert _prunable(model, x) == {"expand/1": 4}  # expand's output split at 6: its tail prunes
    arch = assert_pruning_is_exact(model, x, budget=0.85)
    assert model.expand.out_channels == 6 + len(arch.kept["expand/1"]) < 10


class Sliced(nn.Module):
    def __init__(self, index) -> None:
        super().__init__()
        self.index = index
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(y) + y[self.index].mean(1, keepdim=True)


@pytest.mark.parametrize(
    ("index", "why"),
    [
        ((slice(None), slice(None, None, 2)), "with a step or a tensor"),
        ((slice(None), slice(-3, None)), "counting from its end"),
        ((slice(None), slice(None, -1)), "counting from its end"),
    ],
    ids=["step", "negative start", "negative stop"],
)
def test_slices_counted_from_the_end_or_with_a_step_are_refused_naming_the_node(index, why):
    with pytest.raises(UnsupportedModelError, match=f"node 'getitem'.*slices the channel dimension {why}"):
        trace_channel_groups(Sliced(index), torch.randn(1, 3, 4, 4))


def test_a_slice_in_the_middle_pins_what_lies_before_its_end_and_frees_the_rest():
    model, x = Sliced((slice(None), slice(2, 5))), torch.randn(2, 3, 4, 4)
    assert _prunable(model, x) == {"conv/1/1": 3}  # positions 5..7: after the slice
    assert_pruning_is_exact(model, x, budget=0.9)
    assert model.conv.out_channels < 8


class ViewedScale(nn.Module):
    """PoolFormer's layer scale: a ``(C,)`` parameter viewed to ``(C, 1, 1)``, a size written in
    the code that a sliced parameter would no longer fit: the channels it scales stay."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.scale = nn.Parameter(torch.rand(8))
        self.up, self.down = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = self.stem(x)
        y = y + self.scale.view(8, 1, 1) * self.down(torch.relu(self.up(y)))
        return self.head(y)


def test_a_constant_that_varies_over_channels_keeps_them_and_the_rest_prunes():
    model, x = ViewedScale(), torch.randn(2, 3, 4, 4)
    assert set(_prunable(model, x)) == {"up"}
    assert_pruning_is_exact(model, x, budget=0.7)
    assert model.scale.shape == (8,) and model.up.out_channels < 16


class MaskedScores(nn.Module):
    """Swin's shifted-window mask: a buffer made at construction, viewed to the scores' shape
    (sizes in the code) and added to them; a buffer added as it is would be sliced instead."""

    def __init__(self, viewed: bool) -> None:
        super().__init__()
        self.viewed = viewed
        self.qk = nn.Conv2d(3, 4, 1)
        self.register_buffer("mask", torch.randn(4, 25) if viewed else torch.randn(1, 4, 5, 5))
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        mask = self.mask.view(1, 4, 5, 5) if self.viewed else self.mask
        return self.head(self.qk(x) + mask)


def test_a_constant_mask_over_the_channels_keeps_them_whole_and_a_buffer_as_it_is_is_sliced():
    x = torch.randn(2, 3, 5, 5)
    assert not trace_channel_groups(MaskedScores(viewed=True), x).prunable
    model = MaskedScores(viewed=False)
    assert set(_prunable(model, x)) == {"qk"}
    assert_pruning_is_exact(model, x, budget=0.6)
    assert model.mask.shape[1] == model.qk.out_channels < 4


class HalfRotated(nn.Module):
    """Rotary-style attention: each head's features sliced in halves by numbers in the code."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 4, 8
        self.qkv, self.proj, self.head = nn.Linear(16, 96), nn.Linear(32, 16), nn.Linear(16, 3)

    def forward(self, x):
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = torch.cat([-q[..., 4:], q[..., :4]], dim=-1)
        attention = (q @ k.transpose(-2, -1)).softmax(-1)
        y = x + self.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, -1))
        return self.head(y.mean(1))


def test_a_slice_of_each_heads_features_keeps_them_whole_when_head_dim_is_pruned():
    """Pruning head_dim would move the halves' boundary: the trace keeps head_dim whole, with a
    warning (it once failed with a KeyError, timm's Qwen3 ViT); whole heads prune exactly."""
    x = torch.randn(2, 5, 16)
    assert_pruning_is_exact(HalfRotated(), x, budget=0.7)  # whole heads
    with pytest.warns(UserWarning, match="head_dim is kept whole"):
        graph = trace_channel_groups(HalfRotated(), x, attention="head_dim")
    assert not any(g.name.endswith("/head_dim") for g in graph.groups)  # and no trace error


class FocalSplit(nn.Module):
    """FocalNet's focal modulation: ``c = h.shape[1]`` read at run time sizes a split of a
    projection of ``h``; pruning ``h`` would change ``c`` while the projection keeps its width,
    so ``h``'s channels stay and what the pieces feed prunes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.proj = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 18, 1)
        self.hidden, self.out, self.head = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        c = h.shape[1]
        q, ctx, gates = torch.split(self.proj(h), (c, c, 2), 1)
        modulated = q * ctx * gates.sum(1, keepdim=True)
        return self.head(self.out(F.relu(self.hidden(modulated))).mean((2, 3)))


def test_split_sizes_read_from_a_tensors_channels_keep_them_and_the_rest_prunes_exactly():
    torch.manual_seed(0)
    model, x = FocalSplit(), torch.randn(2, 3, 6, 6)
    graph = trace_channel_groups(model, x)
    assert graph.group("stem").pinned and not graph.group("hidden").pinned
    assert_pruning_is_exact(model, x, budget=0.7)
    assert model.stem.out_channels == 8 and model.hidden.out_channels < 16


class LastAxisUnbound(nn.Module):
    """Channels-last features cut into their channels with ``unbind(-1)`` (CSATv2's colour planes)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.planes = nn.Linear(6, 3)
        self.head = nn.Linear(5, 2)

    def forward(self, x):  # (B, 5, 4)
        y, cb, cr = self.planes(torch.relu(self.embed(x))).unbind(-1)
        return self.head(y * 0.3 + cb * 0.5 + cr * 0.2)


def test_unbinding_the_last_axis_keeps_those_channels_and_the_rest_prunes_exactly():
    model, x = LastAxisUnbound().eval(), torch.randn(3, 5, 4)
    graph = trace_channel_groups(model, x)
    assert "planes" not in {g.name for g in graph.prunable} and "embed" in {g.name for g in graph.prunable}
    assert_pruning_is_exact(model, x, budget=0.7)
