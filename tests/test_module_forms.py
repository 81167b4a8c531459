"""Layers that run a functional op are followed as that op: ``nn.GLU`` as ``F.glu`` (two halves
of the channels, gated pairwise) and ``nn.Softmax(dim)`` as ``softmax(dim)`` (over another dim
the channels pass; over the channels they stay). A model written with either form prunes the
same way, exactly: what the dense model computes with the removed channels zeroed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _helpers import assert_pruning_is_exact
from pat_ray.tracer.trace import trace_channel_groups


class GatedConvs(nn.Module):
    """A gated conv block (``conv -> glu(dim=1) -> conv``), as in gated CNNs for audio or text."""

    def __init__(self, gate: str) -> None:
        super().__init__()
        self.gate = gate
        self.glu = nn.GLU(dim=1)
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.mid = nn.Conv2d(16, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = self.glu(y) if self.gate == "module" else F.glu(y, dim=1)
        return self.head(self.mid(y).mean((2, 3)))


class GatedMLP(nn.Module):
    """Tokens with a GLU feed-forward over their features (the last dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(12, 48)
        self.down = nn.Linear(24, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((x + self.down(F.glu(self.up(x), dim=-1))).mean(1))


@pytest.mark.parametrize("gate", ["module", "function"])
def test_a_glu_across_the_channels_prunes_both_halves_alike(gate):
    torch.manual_seed(0)
    model, x = GatedConvs(gate), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    stem = [g.size for g in graph.prunable if g.name.split("/")[0] == "stem"]
    assert stem == [16]  # channel i of each half, together
    assert_pruning_is_exact(model, x, 0.5)
    assert model.stem.out_channels == 2 * model.mid.in_channels < 32


def test_a_glu_over_the_features_of_tokens_prunes_its_hidden_width():
    torch.manual_seed(0)
    model, x = GatedMLP(), torch.randn(2, 5, 12)
    assert_pruning_is_exact(model, x, 0.6)
    assert model.up.out_features == 2 * model.down.in_features < 48


def test_a_glu_over_another_dim_passes_the_channels():
    class GateOverWidth(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.mid = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mid(F.glu(self.stem(x), dim=3))

    torch.manual_seed(0)
    model, x = GateOverWidth(), torch.randn(2, 3, 8, 8)
    assert_pruning_is_exact(model, x, 0.6)
    assert model.stem.out_channels == model.mid.in_channels < 16


class Attention(nn.Module):
    def __init__(self, softmax: nn.Module | None, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.softmax = heads, softmax
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, 8).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-2, -1) * 8**-0.5
        weights = scores.softmax(-1) if self.softmax is None else self.softmax(scores)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, -1))


class Encoder(nn.Module):
    def __init__(self, softmax: nn.Module | None) -> None:
        super().__init__()
        self.embed, self.attention, self.head = nn.Linear(8, 32), Attention(softmax), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        return self.head((x + self.attention(x)).mean(1))


@pytest.mark.parametrize(
    "softmax", [None, nn.Softmax(dim=-1), nn.LogSoftmax(dim=3)], ids=["method", "Softmax", "LogSoftmax"]
)
def test_a_softmax_layer_over_the_tokens_leaves_the_heads_prunable(softmax):
    torch.manual_seed(0)
    model, x = Encoder(softmax), torch.randn(2, 6, 8)
    assert "attention.qkv/heads" in {g.name for g in trace_channel_groups(model, x).prunable}
    assert_pruning_is_exact(model, x, 0.5)


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
@pytest.mark.parametrize("softmax", [nn.Softmax(dim=1), nn.Softmax(dim=None), nn.Softmax2d()], ids=str)
def test_a_softmax_layer_across_the_channels_keeps_them(softmax):
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.mixing, self.mid = nn.Conv2d(3, 16, 3), softmax, nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mid(self.mixing(self.stem(x)))

    graph = trace_channel_groups(Mixed(), torch.randn(1, 3, 8, 8))
    assert "stem" not in {g.name for g in graph.prunable}


class SegNetBlock(nn.Module):
    """An encoder conv pooled with its indices, a decoder unpooling by them (SegNet)."""

    def __init__(self, layers: bool) -> None:
        super().__init__()
        self.encode, self.decode = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2, return_indices=True) if layers else None
        self.unpool = nn.MaxUnpool2d(2) if layers else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.encode(x))
        if self.pool is not None and self.unpool is not None:
            pooled, where = self.pool(y)
            return self.decode(self.unpool(pooled, where))
        pooled, where = F.max_pool2d(y, 2, return_indices=True)
        return self.decode(F.max_unpool2d(pooled, where, 2))


@pytest.mark.parametrize("layers", [True, False], ids=["layers", "functions"])
def test_max_pooling_with_indices_and_unpooling_by_them_prune_the_encoder(layers):
    torch.manual_seed(0)
    model, x = SegNetBlock(layers), torch.randn(2, 3, 8, 8)
    assert_pruning_is_exact(model, x, 0.5, counted_by_torch=False)
    assert model.encode.out_channels == model.decode.in_channels < 16


def test_unpooling_by_indices_the_code_made_keeps_the_channels():
    class Unpool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode, self.decode = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.max_pool2d(self.encode(x), 2)
            where = torch.zeros(y.shape, dtype=torch.long)  # every value back to its window's corner
            return self.decode(F.max_unpool2d(y, where, 2))

    graph = trace_channel_groups(Unpool(), torch.randn(1, 3, 8, 8))
    assert "encode" not in {g.name for g in graph.prunable}
