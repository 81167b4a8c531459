"""Whole attention heads as prunable structures: a reshape that cuts a projection's channels
into (pieces, heads, head_dim) makes one group of heads, coupled across q, k, v and the out
projection's inputs; the head count written in the code is a module attribute surgery sets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pat_ray
from _helpers import assert_architecture_is_exact, assert_pruning_is_exact, flops_counted_by_torch
from pat_ray.core.architecture import Architecture
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.core.selection import Budget, select_architecture
from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
from pat_ray.tracer.graph import AttentionCut
from pat_ray.tracer.trace import trace_channel_groups


class Heads(nn.Module):
    """Multi-head self-attention over the tokens of a small image, in the forms found in the
    wild: a fused qkv projection (``fused``), or q, k and v projected apart (``apart``); the
    products written out or as SDPA; heads merged back by ``-1`` or by a width attribute."""

    def __init__(
        self, heads: int = 4, head_dim: int = 3, qkv: str = "fused", product: str = "written", merge: str = "-1"
    ):
        super().__init__()
        width = 12
        self.num_heads, self.head_dim, self.attn_dim = heads, head_dim, heads * head_dim
        self.embed = nn.Conv2d(3, width, 1)
        if qkv == "fused":
            self.qkv = nn.Linear(width, 3 * self.attn_dim)
        else:
            self.q, self.k, self.v = (nn.Linear(width, self.attn_dim) for _ in range(3))
        self.proj = nn.Linear(self.attn_dim, width)
        self.head = nn.Linear(width, 5)
        self.form, self.product, self.merge = qkv, product, merge

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        batch, tokens, _ = x.shape
        if self.form == "fused":
            qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        else:
            q, k, v = (p(x).view(batch, tokens, self.num_heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        scale = getattr(self, "scale", None)  # Scaled's, else the default: 1 / sqrt(head_dim) from the width
        if self.product == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:
            y = (q @ k.transpose(-2, -1) * (scale or self.head_dim**-0.5)).softmax(dim=-1) @ v
        y = y.transpose(1, 2).reshape(batch, tokens, -1 if self.merge == "-1" else self.attn_dim)
        x = x + self.proj(y)
        return self.head(x.mean(1))


class Scaled(Heads):
    """``Heads`` with its scale fixed at construction, as timm's attention stores ``self.scale``
    (and passes it to SDPA): pruning head_dim then leaves every kept dot product as it was."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scale = self.head_dim**-0.5


def assert_removing_is_exact(
    model: nn.Module, x: torch.Tensor, drop: set[int], attention: AttentionCut = "heads"
) -> Architecture:
    """Every group the cut into heads makes (of heads, or of head features) loses units
    ``drop``; the rest stays whole. Removing a head or a feature of every head computes what
    zeroing its rows of q, k and v computes."""
    model.eval()
    graph = trace_channel_groups(model, x, attention=attention)
    kept = {g.name: tuple(range(g.size)) for g in graph.groups}
    for group in graph.prunable:
        if group.name.endswith(f"/{attention}"):
            kept[group.name] = tuple(i for i in range(group.size) if i not in drop)
    arch = Architecture(kept, {g.name: g.size for g in graph.groups}, attention=attention)
    assert_architecture_is_exact(model, x, graph, arch)
    return arch


FORMS = pytest.mark.parametrize(  # the attention forms every structure is tested on
    ("qkv", "product", "merge"),
    [
        ("fused", "written", "-1"),
        ("fused", "sdpa", "attribute"),
        ("apart", "written", "attribute"),
        ("apart", "sdpa", "-1"),
    ],
)


@FORMS
def test_a_head_is_its_query_key_value_and_output_slices_removed_together(qkv, product, merge):
    model, x = Heads(qkv=qkv, product=product, merge=merge), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    (heads,) = (g for g in graph.prunable if g.name.endswith("/heads"))
    members = sorted((m.module, m.role, m.offset, m.repeat) for m in heads.members)
    producers = [("qkv", "out", o, 3) for o in (0, 12, 24)] if qkv == "fused" else [(p, "out", 0, 3) for p in "kqv"]
    assert heads.size == 4 and members == sorted([("proj", "in", 0, 3), *producers])
    assert_removing_is_exact(model, x, {1, 2})
    assert model.num_heads == 2 and model.attn_dim == (6 if merge == "attribute" else 12)
    model(torch.randn(3, 3, 4, 4)).sum().backward()  # another batch size: the attribute, not the example, decides


def test_a_head_count_written_as_a_number_keeps_the_heads_whole():
    class Literal(Heads):
        def __init__(self) -> None:
            super().__init__()
            del self.num_heads, self.head_dim, self.attn_dim  # the numbers are only in the code

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            q, k, v = self.qkv(x).reshape(-1, 16, 3, 4, 3).permute(2, 0, 3, 1, 4).unbind(0)
            y = ((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v).transpose(1, 2).reshape(-1, 16, 12)
            return self.head((x + self.proj(y)).mean(1))

    model, x = Literal(), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    assert all(g.pinned for g in graph.groups if g.name.endswith("/heads"))
    assert not graph.group("embed").pinned
    assert_pruning_is_exact(model, x, 0.6)


def test_heads_an_op_cannot_follow_are_kept_whole_instead_of_refusing_the_model():
    """Merged heads multiplied by a weight written out (``y @ self.w``): a product over heads'
    head_dim positions is not followed, so the model is traced with heads whole, as before."""

    class IntoMatmul(Heads):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(12, 12))

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            q, k, v = self.qkv(x).reshape(-1, 16, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            y = ((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
            return self.head((x + y @ self.w).mean(1))

    graph = trace_channel_groups(IntoMatmul(), torch.randn(2, 3, 4, 4))
    assert not any(g.name.endswith("/heads") for g in graph.groups) and graph.group("qkv").pinned


def test_a_heads_score_aggregates_its_slices_and_the_ranking_mixes_heads_with_channels():
    torch.manual_seed(0)
    model, x = Heads(), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    scores = Magnitude(p=2, normalize="none").scores(model, graph)
    w, b = model.qkv.weight.detach(), model.qkv.bias.detach()
    head_1 = [
        rows for piece in range(3) for rows in (w[piece * 12 + 3 : piece * 12 + 6], b[piece * 12 + 3 : piece * 12 + 6])
    ]
    expected = torch.sqrt(sum(t.pow(2).sum() for t in head_1))
    torch.testing.assert_close(scores["qkv/heads"][1], expected)
    arch = pat_ray.prune(model, x, budget=0.55, criterion="magnitude")
    assert arch.count("qkv/heads") < 4 and arch.count("embed") < 12  # one budget over both kinds
    assert model.num_heads == arch.count("qkv/heads")


@settings(max_examples=16, deadline=None)
@given(
    attention=st.sampled_from(["heads", "head_dim"]),
    heads=st.integers(2, 4),
    head_dim=st.integers(2, 4),  # a head_dim of 1 reads as (3, heads) + a size-1 axis
    form=st.sampled_from(["fused", "apart"]),
    drop=st.sets(st.integers(0, 3), min_size=1, max_size=3),
)
def test_removing_any_heads_or_head_features_equals_zeroing_them(attention, heads, head_dim, form, drop):
    units = heads if attention == "heads" else head_dim
    drop = {h for h in drop if h < units}
    if len(drop) in (0, units):
        return
    torch.manual_seed(0)
    model, x = Scaled(heads, head_dim, qkv=form), torch.randn(2, 3, 4, 4)
    arch = assert_removing_is_exact(model, x, drop, attention)
    assert any(len(kept) < units for kept in arch.kept.values())
    assert graph_cost(trace_channel_groups(model, x, attention=attention)) == measure_cost(model, x)


def test_a_heads_taylor_score_sums_its_slices_estimates():
    from pat_ray.plugins.builtin.criteria.taylor import Taylor

    model, x = Heads(), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    model(x).square().sum().backward()
    taylor = Taylor()
    taylor.observe(model, graph)
    w, b = model.qkv.weight, model.qkv.bias
    rows = [slice(piece * 12 + 6, piece * 12 + 9) for piece in range(3)]  # head 2 of q, k and v
    expected = sum(((w * w.grad)[r].sum() + (b * b.grad)[r].sum()).square() for r in rows)
    torch.testing.assert_close(taylor.scores(model, graph)["qkv/heads"][2], expected.detach())


def test_round_to_counts_a_heads_width_not_its_count():
    """round_to: 4 keeps layer widths multiples of 4: any number of 4-wide heads, but pairs of 2-wide ones."""
    from pat_ray.core.selection import rank_group

    for head_dim, step in ((4, 1), (2, 2)):
        graph = trace_channel_groups(Heads(head_dim=head_dim), torch.randn(2, 3, 4, 4))
        ranking = rank_group(graph.group("qkv/heads"), torch.arange(4.0), round_to=4)
        assert ranking.unit_ends.tolist() == list(range(step, 5, step))


def test_a_size_computed_from_the_head_count_or_a_width_keeps_what_it_depends_on():
    """VOLO's ``v.reshape(B, N, self.num_heads, C // self.num_heads)`` with C the input's width:
    neither the heads nor the input's channels may change under it."""

    class Derived(Heads):
        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2)
            batch, tokens, width = x.shape
            q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads).unbind(2)
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            y = ((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v).transpose(1, 2).flatten(2)
            return self.head((x + self.proj(y)).mean(1))

    model, x = Derived(head_dim=3), torch.randn(2, 3, 4, 4)  # width 12 = 4 heads x 3
    graph = trace_channel_groups(model, x)
    assert graph.group("embed").pinned and all(g.pinned for g in graph.groups if g.name.endswith("/heads"))
    assert not graph.prunable and graph_cost(graph) == measure_cost(model, x)


class BeitLike(Heads):
    """BEiT's attention: the qkv bias concatenated from q and v parameters around a zero k
    buffer at run time, and a relative position bias gathered from a (positions, heads) table."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(12, 36, bias=False)
        self.q_bias, self.v_bias = nn.Parameter(torch.randn(12)), nn.Parameter(torch.randn(12))
        self.register_buffer("k_bias", torch.zeros(12))
        self.table = nn.Parameter(torch.randn(7, 4))
        self.register_buffer("index", torch.randint(0, 7, (16 * 16,)))

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        q, k, v = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        relative = self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        y = ((q @ k.transpose(-2, -1) + relative).softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.head((x + self.proj(y)).mean(1))


def test_a_bias_concatenated_at_run_time_and_a_gathered_position_bias_go_with_their_heads():
    torch.manual_seed(0)
    model, x = BeitLike(), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    params = {(m.module, m.offset, m.axis) for m in graph.group("qkv/heads").members if m.role == "param"}
    assert params == {("q_bias", 0, 0), ("k_bias", 0, 0), ("v_bias", 0, 0), ("table", 0, 1)}
    assert_removing_is_exact(model, x, {0, 2})
    assert model.q_bias.shape == model.k_bias.shape == (6,) and model.table.shape == (7, 2)


class SelectiveKernel(nn.Module):
    """SKNet's attention over kernel paths: the selector's channels are viewed as (paths, C) and
    softmaxed across the paths, which weigh the paths against each other."""

    def __init__(self) -> None:
        super().__init__()
        self.num_paths = 2
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.paths = nn.ModuleList([nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 5, padding=2)])
        self.reduce = nn.Conv2d(8, 4, 1)
        self.select = nn.Conv2d(4, 16, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        paths = torch.stack([torch.relu(path(x)) for path in self.paths], dim=1)  # (B, paths, C, H, W)
        weights = self.select(torch.relu(self.reduce(paths.sum(1).mean((2, 3), keepdim=True))))
        b, c, h, w = weights.shape
        weights = weights.view(b, self.num_paths, c // self.num_paths, h, w).softmax(1)
        return self.head((paths * weights).sum(1).mean((2, 3)))


@pytest.mark.parametrize("attention", ["heads", "head_dim"])
def test_a_softmax_across_the_cut_prunes_channel_c_of_every_path_under_either_setting(attention):
    """No path can go alone (the softmax weighs each against the others): under ``heads`` too
    the cut is read as head_dim, channel ``c`` of every path (it kept the whole model before)."""
    model, x = SelectiveKernel().eval(), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x, attention=attention)
    assert {"stem", "reduce", "paths.0"} <= {g.name for g in graph.prunable}  # paths.0: with paths.1 and select
    assert graph_cost(graph).flops == flops_counted_by_torch(model, x)
    arch = select_architecture(graph, Magnitude().scores(model, graph), Budget(0.5))
    assert_architecture_is_exact(model, x, graph, arch)
    kept = model.paths[0].out_channels
    assert model.num_paths == 2 and kept == model.paths[1].out_channels < 8 and model.select.out_channels == 2 * kept
