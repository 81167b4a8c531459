"""head_dim as the prunable structure of attention (``attention="head_dim"``): feature ``d`` of
every head goes as one channel, q's and k's together (their product sums over them), v's with
the out projection's columns; the head width written in the code is set by surgery."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from test_attention_heads import FORMS, Heads, Scaled, assert_removing_is_exact
from torch import nn

import pat_ray
from pat_ray.core.architecture import Architecture
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
from pat_ray.tracer.trace import trace_channel_groups


def trace(model: nn.Module, x: torch.Tensor):
    return trace_channel_groups(model, x, attention="head_dim")


def feature_groups(graph):
    return [g for g in graph.prunable if g.name.endswith("/head_dim")]


@FORMS
def test_a_feature_of_every_head_is_removed_from_query_and_key_together_and_from_value_with_the_output(
    qkv, product, merge
):
    model, x = Scaled(heads=4, head_dim=5, qkv=qkv, product=product, merge=merge), torch.randn(2, 3, 4, 4)
    graph = trace(model, x)
    rows = lambda module, piece: [(module, "out", piece * 20 + h * 5) for h in range(4)]  # noqa: E731
    columns = [("proj", "in", h * 5) for h in range(4)]
    members = {g.name: sorted((m.module, m.role, m.offset) for m in g.members) for g in feature_groups(graph)}
    if qkv == "fused":  # one reshape cuts q, k and v alike: one width for all three
        assert members == {"qkv/head_dim": sorted(rows("qkv", 0) + rows("qkv", 1) + rows("qkv", 2) + columns)}
    else:
        assert members == {
            "q/head_dim": sorted(rows("q", 0) + rows("k", 0)),
            "v/head_dim": sorted(rows("v", 0) + columns),
        }
    assert not any(g.name.endswith("/heads") for g in graph.groups)
    assert_removing_is_exact(model, x, {1, 3}, "head_dim")
    assert model.num_heads == 4
    assert model.attn_dim == (12 if merge == "attribute" else 20)
    if qkv == "fused":
        assert model.head_dim == 3
    model(torch.randn(3, 3, 4, 4)).sum().backward()  # another batch size: the attributes, not the example, decide


def test_a_features_score_aggregates_its_slices_in_every_head():
    torch.manual_seed(0)
    model, x = Scaled(heads=4, head_dim=3), torch.randn(2, 3, 4, 4)
    graph = trace(model, x)
    scores = Magnitude(p=2, normalize="none").scores(model, graph)
    w, b, proj = model.qkv.weight.detach(), model.qkv.bias.detach(), model.proj.weight.detach()
    rows = [piece * 12 + h * 3 + 1 for piece in range(3) for h in range(4)]  # feature 1 of every head of q, k, v
    expected = torch.sqrt(w[rows].pow(2).sum() + b[rows].pow(2).sum())
    torch.testing.assert_close(scores["qkv/head_dim"][1], expected)
    columns = [h * 3 + 1 for h in range(4)]
    assert proj[:, columns].abs().sum() > 0  # the out projection's columns are in the group, not scored
    arch = pat_ray.prune(model, x, budget=0.4, criterion="magnitude", attention="head_dim")
    assert arch.attention == "head_dim" and arch.count("qkv/head_dim") < 3 and arch.count("embed") < 12
    assert model.head_dim == arch.count("qkv/head_dim") and model.qkv.out_features == 3 * 4 * model.head_dim


def test_a_scale_computed_from_the_width_in_the_forward_keeps_head_dim_with_a_warning():
    """``Heads`` multiplies by ``self.head_dim ** -0.5`` in its forward: the scale would follow
    the pruned width and change every kept dot product, so head_dim stays whole (the rest prunes)."""
    model, x = Heads(), torch.randn(2, 3, 4, 4)
    with pytest.warns(UserWarning, match=r"head_dim is kept whole: node 'mul'.*root of 3"):
        graph = trace(model, x)
    assert not feature_groups(graph) and not any(g.name.endswith("/heads") for g in graph.prunable)
    assert not graph.group("embed").pinned


def test_sdpas_default_scale_keeps_query_and_key_features_but_not_values():
    class DefaultScale(Scaled):
        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            b, n, _ = x.shape
            q, k, v = (p(x).view(b, n, self.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
            return self.head((x + self.proj(y)).mean(1))

    model, x = DefaultScale(qkv="apart"), torch.randn(2, 3, 4, 4)
    with pytest.warns(UserWarning, match="without scale="):
        graph = trace(model, x)
    assert graph.group("q/head_dim").pinned and not graph.group("v/head_dim").pinned
    with pytest.warns(UserWarning, match="without scale="):
        assert_removing_is_exact(model, x, {0}, "head_dim")


def test_head_dim_keeps_torch_multihead_attention_whole():
    class Torch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.attn, self.head = (
                nn.Linear(4, 8),
                nn.MultiheadAttention(8, 2, batch_first=True),
                nn.Linear(8, 3),
            )

        def forward(self, x):
            x = self.embed(x)
            return self.head(x + self.attn(x, x, x, need_weights=False)[0])

    model, x = Torch().eval(), torch.randn(2, 5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        graph = trace(model, x)
    assert not any("/head" in g.name for g in graph.groups) and graph.group("embed").pinned
    assert graph_cost(graph) == measure_cost(model, x)


def test_the_vit_prunes_head_dim_under_one_budget_and_its_checkpoint_rebuilds(tmp_path):
    from pat_ray.models.vit import VisionTransformer
    from pat_ray.training.checkpoint import load_checkpoint, save_checkpoint

    params = {"num_classes": 5, "in_channels": 1, "image_size": 8, "patch_size": 4, "width": 16, "depth": 2, "heads": 2}
    torch.manual_seed(0)
    model, x = VisionTransformer(**params), torch.randn(2, 1, 8, 8)
    dense = measure_cost(model.eval(), x[:1]).flops
    arch = pat_ray.prune(model, x[:1], budget=0.5, attention="head_dim")
    features = {n: c for n, c in zip(arch.names, arch.counts) if n.endswith("/head_dim")}
    assert len(features) == 2 and any(c < 8 for c in features.values())
    for i, block in enumerate(model.blocks):
        assert block.attn.head_width == features[f"blocks.{i}.attn.qkv/head_dim"] and block.attn.heads == 2
    assert abs(measure_cost(model, x[:1]).flops / dense - 0.5) < 0.03
    model.train()
    model(x).sum().backward()
    path = tmp_path / "vit.pt"
    save_checkpoint(path, model.eval(), "vit_small_images", arch, (1, 1, 8, 8), model_params=params)
    rebuilt, ckpt = load_checkpoint(path)
    assert ckpt.architecture.attention == "head_dim"
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_an_architecture_says_how_attention_was_cut_and_old_files_read_as_heads():
    arch = Architecture({"a": (0, 2)}, {"a": 3}, attention="head_dim")
    assert Architecture.from_dict(arch.to_dict()) == arch
    old = {"sizes": {"a": 3}, "kept": {"a": [0, 2]}}
    assert Architecture({"a": (0, 2)}, {"a": 3}).to_dict() == old
    assert Architecture.from_dict(old).attention == "heads"
    with pytest.raises(ValueError, match="attention must be one of heads, head_dim; got 'rows'"):
        Architecture.from_dict({**old, "attention": "rows"})
    with pytest.raises(ValueError, match="attention must be one of heads, head_dim"):
        trace_channel_groups(nn.Linear(2, 2), torch.zeros(1, 2), attention="rows")  # type: ignore[arg-type]


def test_a_head_width_computed_from_windows_whose_channels_are_not_followed_stays():
    """DaViT's window attention: ``reshape(B, N, 3, self.num_heads, C // self.num_heads)`` with C
    read from windows cut out of the feature map (a reshape that folds windows into the batch,
    whose channels the trace does not follow): C never changes, so neither may head_dim."""

    class Windows(Scaled):
        def forward(self, x):
            x = self.embed(x)  # (B, 12, 4, 4) -> four 2x2 windows of 4 tokens
            b = x.shape[0]
            w = x.view(b, 12, 2, 2, 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(-1, 4, 12)
            batch, tokens, width = w.shape
            qkv = self.qkv(w).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            y = ((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, -1)
            return self.head(self.proj(y).reshape(b, 16, 12).mean(1))

    model, x = Windows(heads=4, head_dim=3), torch.randn(2, 3, 4, 4)
    graph = trace(model, x)
    assert [g.pinned for g in graph.groups if g.name.endswith("/head_dim")] == [True]
    assert graph_cost(graph) == measure_cost(model, x)


def test_maxvits_attention_prunes_head_dim_through_its_chunked_qkv_and_the_width_it_merges_to():
    """torchvision's MaxViT cuts q, k and v with ``chunk`` before the heads reshape and merges the
    heads back to the input's width read at run time (``reshape(B, G, P, D)``): the input's
    channel ``h * head_dim + d`` is then feature ``d`` of head ``h``, so the block's width prunes
    with the features. Exact against zeroing (the scale is fixed at construction)."""
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.out = nn.Linear(4, 32), nn.Linear(32, 3)
            self.attn = RelativePositionalMultiHeadAttention(32, 8, 16)

        def forward(self, x):
            x = self.inp(x)
            return self.out(x + self.attn(x))

    torch.manual_seed(0)
    model, x = Block().eval(), torch.randn(2, 2, 16, 4)
    nn.init.normal_(model.attn.relative_position_bias_table)
    arch = assert_removing_is_exact(model, x, {2, 5}, "head_dim")
    assert [n for n in arch.names if arch.count(n) < arch.sizes[n]] == ["attn.to_qkv/0/head_dim"]
    assert model.attn.head_dim == 6
    assert model.inp.out_features == 4 * 6 and model.attn.to_qkv.out_features == 3 * 4 * 6
    model(torch.randn(3, 2, 16, 4)).sum().backward()
