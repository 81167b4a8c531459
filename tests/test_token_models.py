"""Vision-transformer idioms the tracer follows: a class token concatenated on the token axis,
position embeddings and layer scales read through views, softmax over tokens, scaled
dot-product attention (its products counted in the cost), padding of non-channel axes,
control flow decided by sizes, and sizes read from another tensor's channels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pat_ray
from _helpers import assert_pruning_is_exact
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.trace import trace_channel_groups


class TokenNet(nn.Module):
    """Patches to tokens, class and distillation tokens, a position embedding, and residual MLP
    blocks with layer scales written through views: the embedding width is one channel group."""

    def __init__(self, width: int = 16, tokens: int = 16, scale_view: bool = True) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, width, 2, stride=2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, width))
        self.dist_token = nn.Parameter(torch.randn(1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 2, width))
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.gamma = nn.Parameter(torch.rand(width))
        self.scale_view = scale_view
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        dist = self.dist_token.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, dist, x), dim=1) + self.pos_embed
        gamma = self.gamma.view(1, 1, -1) if self.scale_view else self.gamma
        x = x + gamma * self.fc2(F.gelu(self.fc1(x)))
        return self.head(x[:, 0])


def test_class_tokens_and_position_embeddings_are_sliced_with_the_embedding_width():
    model, x = TokenNet(), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    embedding = graph.group("patch")
    params = {m.module: m.axis for m in embedding.members if m.role == "param"}
    assert params == {"cls_token": 2, "dist_token": 1, "pos_embed": 2, "gamma": 0}
    assert not embedding.pinned
    arch = assert_pruning_is_exact(model, x, 0.5)
    kept = len(arch.kept["patch"])
    assert kept < 16
    assert model.cls_token.shape == (1, 1, kept) and model.pos_embed.shape == (1, 18, kept)
    assert model.dist_token.shape == (1, kept) and model.gamma.shape == (kept,)


def test_a_parameter_viewed_with_its_width_written_in_the_code_is_not_sliced():
    class Written(TokenNet):
        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat((self.cls_token.expand(x.shape[0], 1, 16), x), dim=1)
            return self.head(x[:, 0])

    with pytest.raises(UnsupportedModelError, match="node 'cat'.*unknown channels"):
        trace_channel_groups(Written(), torch.randn(2, 3, 8, 8))


class Attention(nn.Module):
    """Single-head attention over tokens, as SDPA or written out; the softmax runs over tokens."""

    def __init__(self, width: int = 16, form: str = "sdpa", scale: float | None = None) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.form, self.scale = form, scale
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = x.flatten(2).transpose(1, 2)
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.form == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        else:
            y = (q @ k.transpose(-2, -1) * 0.25).softmax(dim=-1) @ v
        return self.head(self.out(y).mean(1))


@pytest.mark.parametrize("form", ["sdpa", "written"])
def test_attention_couples_query_with_key_and_value_with_the_output_projection(form):
    model, x = Attention(form=form, scale=0.25), torch.randn(2, 16, 4, 4)
    graph = trace_channel_groups(model, x)
    roles = {g.name: sorted((m.module, m.role) for m in g.members) for g in graph.prunable}
    assert roles["q"] == [("k", "out"), ("q", "out")]
    assert roles["v"] == [("out", "in"), ("v", "out")]
    assert_pruning_is_exact(model, x, 0.5)


def test_attention_with_the_default_scale_keeps_query_and_key_features():
    """SDPA's default scale is 1/sqrt(features): pruning q and k would change it."""
    graph = trace_channel_groups(Attention(form="sdpa"), torch.randn(2, 16, 4, 4))
    assert graph.group("q").pinned and not graph.group("v").pinned


def test_softmax_over_the_channels_keeps_them():
    class ChannelSoftmax(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.head(self.conv(x).softmax(1))

    assert trace_channel_groups(ChannelSoftmax(), torch.randn(1, 3, 4, 4)).group("conv").pinned


class Windowed(nn.Module):
    """Pads the spatial axes up to a multiple of a window, by amounts computed at run time, and
    takes a branch chosen by the input's size (plain torch.fx cannot trace either)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Linear(8, 2)

    def forward(self, x):
        x = self.conv(x)
        height, width = ((4 - size % 4) % 4 for size in x.shape[2:])  # a loop over sizes
        x = F.pad(x, (0, width, 0, height))
        if x.shape[-1] > 4:
            x = self.mix(x)
        return self.head(x.mean((2, 3)))


def test_padding_other_axes_and_size_decided_branches_are_followed():
    model, x = Windowed(), torch.randn(2, 3, 7, 7)
    graph = trace_channel_groups(model, x)
    assert {g.name for g in graph.prunable} == {"conv", "mix"}
    assert_pruning_is_exact(model, x, 0.5)


def test_a_branch_not_taken_on_the_example_is_not_traced():
    """The example's size decides: at 5x5 the padded map is 8 wide, the mixing conv runs; at 3x3
    it is 4 wide and skipped, so only the first conv is left to prune."""
    assert {g.name for g in trace_channel_groups(Windowed(), torch.randn(1, 3, 3, 3)).prunable} == {"conv"}


def test_a_token_model_prunes_to_its_flops_budget_and_trains():
    model, x = TokenNet(scale_view=False), torch.randn(2, 3, 8, 8)
    before = pat_ray.measure_cost(model, x).flops
    pat_ray.prune(model, x, budget=0.5)
    kept = pat_ray.measure_cost(model, x).flops / before
    assert 0.5 * 0.9 < kept <= 0.5 + pat_ray.BUDGET_TOLERANCE  # a ceiling; a few channels of 11 and 20 are coarse
    model.train()(x).sum().backward()
    assert model.pos_embed.grad is not None


class WidthFromInput(nn.Module):
    """Attention that restores its output's shape from its input's (``B, N, C = x.shape``, then
    ``out.reshape(B, N, C)``, as torchvision's MaxViT does) while heads and head size are
    constants: the input's width must not change, or that reshape fails after pruning."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.qkv = nn.Linear(8, 16), nn.Linear(16, 48)
        self.proj, self.head = nn.Linear(16, 16), nn.Linear(16, 3)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        x = self.embed(x)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
        out = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(out)
        return self.head((x + self.fc2(F.relu(self.fc1(x)))).mean(1))


def test_a_size_read_from_another_tensors_channels_keeps_them_as_wide():
    model, x = WidthFromInput(), torch.randn(2, 5, 8)
    assert trace_channel_groups(model, x).group("embed").pinned
    pat_ray.prune(model, x, budget=0.8)  # raised PrunedModelError while the embedding width was pruned
    model(x).sum().backward()


@pytest.mark.parametrize("form", ["sdpa", "written"])
def test_attention_products_count_in_the_traced_and_the_measured_cost(form):
    model, x = Attention(form=form, scale=0.25), torch.randn(1, 16, 4, 4)
    layers = 4 * 16 * 16 * 16 + 16 * 3  # q, k, v and out on 16 tokens, the head on their mean
    products = 16 * 16 * (16 + 16)  # q @ k^T and attn @ v: tokens^2 x features
    assert measure_cost(model, x).flops == graph_cost(trace_channel_groups(model, x)).flops == layers + products
    if form == "written":  # torch's own counter agrees (it does not see SDPA's fused CPU kernel)
        counter = FlopCounterMode(display=False)
        with torch.enable_grad(), counter:
            model(x)
        assert counter.get_total_flops() == 2 * (layers + products)


def test_a_flops_budget_is_a_share_of_the_whole_model_attention_included():
    model, x = Attention(form="written", width=32), torch.randn(2, 32, 6, 6)
    before = measure_cost(model, x).flops
    pat_ray.prune(model, x, budget=0.5)
    assert abs(measure_cost(model, x).flops / (0.5 * before) - 1) < 0.03
    assert model.q.out_features < 32 and model.v.out_features < 32


def test_multihead_attention_kept_whole_costs_its_projections_and_products():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.attn, self.head = (
                nn.Linear(8, 16),
                nn.MultiheadAttention(16, 2, batch_first=True),
                nn.Linear(16, 3),
            )

        def forward(self, x):
            x = self.embed(x)
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))

    model, x = Block(), torch.randn(2, 5, 8)
    layers = 5 * 8 * 16 + 16 * 3
    attention = 3 * 5 * 16 * 16 + 2 * 5 * 5 * 16 + 5 * 16 * 16  # q, k, v projections, two products, output
    assert measure_cost(model, x).flops == graph_cost(trace_channel_groups(model, x)).flops == layers + attention


def test_the_built_in_small_vit_prunes_its_embedding_heads_and_mlps_to_a_flops_budget():
    from pat_ray.plugins.registry import get_registry

    model = get_registry().create("model", "vit_small_images", num_classes=10, in_channels=1, image_size=28, width=32)
    x = torch.randn(2, 1, 28, 28)
    graph = trace_channel_groups(model, x)
    blocks = [(f"blocks.{i}.mlp.0", f"blocks.{i}.attn.qkv/heads") for i in range(6)]
    assert {g.name for g in graph.prunable} == {"patch_embed", *(name for block in blocks for name in block)}
    before = measure_cost(model, x).flops
    arch = pat_ray.prune(model, x, budget=0.5)
    assert abs(measure_cost(model, x).flops / (0.5 * before) - 1) < 0.03
    assert model.cls_token.shape[-1] == model.pos_embed.shape[-1] == model.patch_embed.out_channels < 32
    assert [block.attn.heads for block in model.blocks] == [arch.count(heads) for _, heads in blocks]
    model.train()(x).sum().backward()


def test_a_python_number_computed_from_sizes_is_read_on_the_example():
    """Tokens back to a grid with ``int(tokens ** 0.5)``, as PVT-style models do."""

    class TokensToGrid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.conv, self.head = nn.Linear(3, 8), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 2)

        def forward(self, x):
            x = self.embed(x)
            side = int(x.shape[1] ** 0.5)
            x = self.conv(x.transpose(1, 2).reshape(x.shape[0], -1, side, side))
            return self.head(x.mean((2, 3)))

    model, x = TokensToGrid(), torch.randn(2, 16, 3)
    assert {g.name for g in trace_channel_groups(model, x).prunable} == {"embed", "conv"}
    assert_pruning_is_exact(model, x, 0.5)


def test_windows_folded_into_the_batch_dim_count_once_each():
    """Swin-style window partitions run a layer on (samples * windows, ...): the example is one
    sample, so every entry of dim 0 is a window, and each one's MACs count (torch's counter agrees)."""

    class Windows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.conv = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
            self.mlp, self.head = nn.Linear(8, 16), nn.Linear(16, 2)

        def forward(self, x):
            b = x.shape[0]
            x = self.embed(x)  # (b, 8, 8, 8) -> four 4x4 windows as samples
            windows = x.view(b, 8, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(b * 4, 8, 4, 4)
            tokens = self.conv(windows).flatten(2).transpose(1, 2)  # (b * 4, 16, 8)
            return self.head(self.mlp(tokens).mean(1)).view(b, 4, 2).mean(1)

    model, x = Windows(), torch.randn(2, 3, 8, 8)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x[:1])
    graph = trace_channel_groups(model, x)
    assert graph_cost(graph).flops == measure_cost(model, x).flops == counter.get_total_flops() // 2
