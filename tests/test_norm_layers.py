"""Norms and activations beyond BatchNorm + ReLU: GroupNorm (pruned in equal shares per norm
group), InstanceNorm and per-channel PReLU (pruned exactly), and layers that mix channels
without parameters (LocalResponseNorm, GLU, F.normalize), whose input is kept whole."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pat_ray
from _helpers import assert_pruning_is_exact, randomize_norms
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.trace import trace_channel_groups


class GroupNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.b, self.head = nn.Conv2d(16, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.b(F.relu(self.norm(self.a(x)))).mean((2, 3)))


def test_group_norm_channels_shrink_equally_in_every_norm_group():
    torch.manual_seed(0)
    model, x = GroupNormNet(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.a.weight[:4] *= 10  # norm group 0 would keep everything on magnitude alone
    graph = trace_channel_groups(model, x)
    assert graph.group("a").subgroups == 4 and graph_cost(graph) == measure_cost(model, x)
    arch = pat_ray.prune(model, x, budget=0.5)
    kept = torch.tensor(arch.kept["a"])
    assert torch.bincount(kept // 4, minlength=4).unique().numel() == 1  # as many kept in each norm group
    assert model.norm.num_channels == model.a.out_channels == len(kept) < 16
    assert model.norm.weight.shape == (len(kept),)
    model.train()
    model(x).sum().backward()


class GroupNormOverACat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.norm = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 16)
        self.c = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c(self.norm(torch.cat([self.a(x), self.b(x)], 1)))


def test_a_group_norm_over_channels_of_several_groups_keeps_them():
    model, x = GroupNormOverACat(), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    assert graph.group("a").pinned and graph.group("b").pinned
    assert graph_cost(graph) == measure_cost(model, x)


class InstanceNormPReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.InstanceNorm2d(12, affine=True), nn.PReLU(12))
        self.b = nn.Sequential(nn.Conv2d(12, 10, 3, padding=1), nn.InstanceNorm2d(10), nn.PReLU())
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        return self.head(self.b(self.a(x)).mean((2, 3)))


def test_instance_norm_and_per_channel_prelu_prune_exactly():
    torch.manual_seed(0)
    model, x = InstanceNormPReLU(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.a[2].weight.uniform_(0.1, 0.5)
    assert graph_cost(trace_channel_groups(model, x)) == measure_cost(model, x)
    assert_pruning_is_exact(model, x, 0.5)
    assert model.a[2].weight.shape == (model.a[0].out_channels,) and model.a[0].out_channels < 12


class ChannelMixers(nn.Module):
    """Each mixer's input must stay whole; the layers after them remain prunable (a GLU's halves
    prune alike instead: tests/test_module_forms.py)."""

    def __init__(self, mixer: str) -> None:
        super().__init__()
        self.mixer = mixer
        self.a, self.lrn = nn.Conv2d(3, 12, 3, padding=1), nn.LocalResponseNorm(3)
        self.b, self.head = nn.Conv2d(12, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x):
        y = self.a(x)
        y = self.lrn(y) if self.mixer == "lrn" else F.normalize(y, dim=1)
        return self.head(F.relu(self.b(y)).mean((2, 3)))


@pytest.mark.parametrize("mixer", ["lrn", "normalize"])
def test_channel_mixing_layers_keep_their_input(mixer):
    torch.manual_seed(0)
    model, x = ChannelMixers(mixer), torch.randn(2, 3, 8, 8)
    assert trace_channel_groups(model, x).group("a").pinned
    assert_pruning_is_exact(model, x, 0.8)
    assert model.a.out_channels == 12 and model.b.out_channels < 8


def test_sync_batch_norm_prunes_like_batch_norm():
    """A model converted for multi-GPU training (its BatchNorms now SyncBatchNorm) prunes the
    same; traced in eval mode, no process group is needed."""
    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.Flatten())
    )
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].bias.uniform_(-1, 1)
    arch = assert_pruning_is_exact(model, torch.randn(2, 3, 8, 8), 0.5)
    assert isinstance(model[1], nn.SyncBatchNorm) and model[1].num_features == len(arch.kept["0"]) < 16


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's pattern: a BatchNorm2d subclass running F.batch_norm with its own tensors, then its act."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.act = nn.ReLU()

    def forward(self, x):
        x = F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training, self.momentum, self.eps
        )
        return self.act(x)


class GroupNorm1(nn.GroupNorm):
    """PoolFormer's pattern: one group over all channels, run as F.group_norm."""

    def __init__(self, n: int) -> None:
        super().__init__(1, n)

    def forward(self, x):
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class FunctionalNorms(nn.Module):
    def __init__(self, norm: type[nn.Module]) -> None:
        super().__init__()
        self.a, self.norm = nn.Conv2d(3, 12, 3, padding=1, bias=False), norm(12)
        self.b, self.head = nn.Conv2d(12, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(F.relu(self.b(self.norm(self.a(x)))).mean((2, 3)))


def test_a_batch_norm_subclass_running_f_batch_norm_prunes_exactly():
    torch.manual_seed(0)
    model, x = FunctionalNorms(BatchNormAct2d), torch.randn(2, 3, 8, 8)
    randomize_norms(model)
    graph = trace_channel_groups(model, x)
    assert ("norm", "norm") in {(m.module, m.role) for m in graph.group("a").members}
    assert graph_cost(graph) == measure_cost(model, x)
    assert_pruning_is_exact(model, x, 0.5)
    assert model.norm.num_features == model.norm.running_mean.numel() == model.a.out_channels < 12


def test_a_group_norm_subclass_running_f_group_norm_prunes_with_its_channels():
    torch.manual_seed(0)
    model, x = FunctionalNorms(GroupNorm1), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    assert not graph.group("a").pinned and graph_cost(graph) == measure_cost(model, x)
    pat_ray.prune(model, x, budget=0.5)
    assert model.norm.num_channels == model.norm.weight.numel() == model.a.out_channels < 12
    model.train()
    model(x).sum().backward()


def test_f_batch_norm_with_another_layers_tensors_is_refused():
    class Borrowing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
            self.scale = nn.Parameter(torch.ones(8))

        def forward(self, x):
            return F.batch_norm(self.a(x), self.bn.running_mean, self.bn.running_var, self.scale, None, False)

    with pytest.raises(UnsupportedModelError, match="batch_norm whose weight, bias and statistics"):
        trace_channel_groups(Borrowing(), torch.randn(2, 3, 8, 8))


def test_the_latency_probe_times_a_batch_norm_subclass_as_its_torch_class():
    from pat_ray.core.cost.probe import measure_latency

    table = measure_latency(FunctionalNorms(BatchNormAct2d), torch.randn(2, 3, 8, 8), 2, points=3, repeats=1, rounds=1)
    assert table.layers["norm"].out_counts[-1] == 12
