"""torchvision's Swin window attention: a pruned module computes what torchvision's computes,
and removing heads equals zeroing them."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from pat_ray.core.architecture import Architecture
from pat_ray.core.cost.flops import cost_of, graph_cost, measure_cost
from pat_ray.core.surgery import apply_architecture
from pat_ray.tracer.layers.swin import NarrowedSwinAttention, NarrowedSwinAttentionV2
from pat_ray.tracer.trace import trace_channel_groups

VERSIONS = {
    "v1": (ShiftedWindowAttention, NarrowedSwinAttention),
    "v2": (ShiftedWindowAttentionV2, NarrowedSwinAttentionV2),
}


@pytest.mark.parametrize("version", sorted(VERSIONS))
@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("size", [8, 6])  # 6: padded up to whole 4x4 windows
def test_the_narrowed_forward_computes_what_torchvisions_computes(version, shift, size):
    torch.manual_seed(0)
    original = VERSIONS[version][0](16, [4, 4], [shift, shift], 4).eval()
    narrowed = copy.deepcopy(original)
    narrowed.__class__ = VERSIONS[version][1]
    x = torch.randn(2, size, size, 16)
    with torch.no_grad():
        torch.testing.assert_close(narrowed(x), original(x), rtol=1e-5, atol=1e-5)


class Block(nn.Module):
    """A pre-norm Swin block's attention half on a 3-channel image."""

    def __init__(self, version: str) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 1)
        self.norm = nn.LayerNorm(16)
        self.attn = VERSIONS[version][0](16, [4, 4], [2, 2], 4)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        x = x + self.attn(self.norm(x))
        return self.head(x.mean((1, 2)))


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_removing_heads_equals_zeroing_their_output_columns(version):
    torch.manual_seed(0)
    model, x = Block(version).eval(), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    heads = graph.group("attn/heads")
    members = {(m.module, m.role) for m in heads.members}
    bias = {("attn.relative_position_bias_table", "param")} if version == "v1" else {
        ("attn.logit_scale", "param"), ("attn.cpb_mlp.2", "out")}  # fmt: skip
    assert members == {("attn.qkv", "out"), ("attn.proj", "in")} | bias and not graph.group("embed").pinned
    assert graph_cost(graph) == measure_cost(model, x)
    kept = {g.name: tuple(range(g.size)) for g in graph.groups} | {"attn/heads": (0, 3)}
    arch = Architecture(kept, {g.name: g.size for g in graph.groups})
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.attn.proj.weight[:, 4:12] = 0  # heads 1 and 2 add nothing
    apply_architecture(model, graph, arch)
    assert isinstance(model.attn, VERSIONS[version][1]) and model.attn.num_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert measure_cost(model, x) == cost_of(graph.terms, {n: len(k) for n, k in arch.kept.items()})
    model.train()(x).sum().backward()
