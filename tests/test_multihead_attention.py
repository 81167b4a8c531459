"""``nn.MultiheadAttention`` in self-attention: whole heads and the width of what flows in prune;
a pruned module computes what torch's forward computes; calls the tracer cannot read stay whole."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import pat_ray
from pat_ray.core.architecture import Architecture
from pat_ray.core.cost.flops import cost_of, graph_cost, measure_cost
from pat_ray.core.surgery import apply_architecture
from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
from pat_ray.plugins.builtin.criteria.taylor import Taylor
from pat_ray.tracer.layers.multihead import NarrowedMultiheadAttention
from pat_ray.tracer.trace import trace_channel_groups


class Encoder(nn.Module):
    """Pre-norm self-attention over the tokens of a small image, as torchvision's ViT calls it."""

    def __init__(self, batch_first: bool = True, weights: bool = False, cross: bool = False) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 1)
        self.norm = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.head = nn.Linear(16, 5)
        self.batch_first, self.weights, self.cross = batch_first, weights, cross

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x if self.batch_first else x.transpose(0, 1)
        y = self.norm(x)
        out, weights = self.attn(y, y, x if self.cross else y, need_weights=self.weights)
        x = x + out
        x = x if self.batch_first else x.transpose(0, 1)
        logits = self.head(x.mean(1))
        return logits + weights.mean() if self.weights else logits


def heads_dropped(graph, drop: set[int]) -> Architecture:
    kept = {g.name: tuple(range(g.size)) for g in graph.groups}
    kept["attn/heads"] = tuple(h for h in range(4) if h not in drop)
    return Architecture(kept, {g.name: g.size for g in graph.groups})


@pytest.mark.parametrize("batch_first", [True, False])
def test_removing_heads_equals_zeroing_their_output_columns(batch_first):
    torch.manual_seed(0)
    model, x = Encoder(batch_first).eval(), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    heads = graph.group("attn/heads")
    members = sorted((m.module, m.role, m.offset, m.repeat) for m in heads.members)
    assert not heads.pinned and members == [("attn", "out", o, 4) for o in (0, 16, 32)] + [
        ("attn.out_proj", "in", 0, 4)
    ]
    assert graph_cost(graph) == measure_cost(model, x)
    arch = heads_dropped(graph, {1, 2})
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.attn.out_proj.weight[:, 4:12] = 0  # heads 1 and 2 then add nothing
    apply_architecture(model, graph, arch)
    assert isinstance(model.attn, NarrowedMultiheadAttention) and model.attn.num_heads == 2
    assert model.attn.in_proj_weight.shape == (24, 16) and model.attn.out_proj.weight.shape == (16, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert measure_cost(model, x) == cost_of(graph.terms, {n: len(k) for n, k in arch.kept.items()})


def test_heads_and_the_width_flowing_in_prune_under_one_budget_and_train():
    torch.manual_seed(0)
    model, x = Encoder(), torch.randn(2, 3, 4, 4)
    before = measure_cost(model, x).flops
    arch = pat_ray.prune(model, x, budget=0.4)
    assert arch.count("attn/heads") < 4 and arch.count("embed") < 16
    assert model.attn.embed_dim == model.norm.normalized_shape[0] == arch.count("embed")
    assert 0.4 * 0.95 < measure_cost(model, x).flops / before <= 0.4 + pat_ray.BUDGET_TOLERANCE  # a ceiling
    model.train()(x).sum().backward()
    assert model.attn.in_proj_weight.grad is not None


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "padding", "float", "causal"])
def test_the_narrowed_forward_computes_what_torchs_computes(batch_first, masks):
    torch.manual_seed(0)
    torchs = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
    narrowed = copy.deepcopy(torchs)
    narrowed.__class__ = NarrowedMultiheadAttention
    x = torch.randn(2, 5, 12) if batch_first else torch.randn(5, 2, 12)
    kwargs: dict = {}
    if masks == "padding":
        kwargs["key_padding_mask"] = torch.tensor([[False] * 4 + [True], [False] * 5])
    elif masks == "float":
        kwargs["attn_mask"] = torch.randn(5, 5)
    elif masks == "causal":
        kwargs.update(attn_mask=nn.Transformer.generate_square_subsequent_mask(5), is_causal=True)
    for average in (True, False):
        expected, got = (
            torchs(x, x, x, average_attn_weights=average, **kwargs),
            narrowed(x, x, x, average_attn_weights=average, **kwargs),
        )
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["weights used", "cross attention"])
def test_a_call_the_tracer_cannot_read_keeps_the_attention_whole(form):
    model, x = Encoder(weights=form == "weights used", cross=form == "cross attention"), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    assert not any(g.name.endswith("/heads") for g in graph.groups)
    assert graph_cost(graph) == measure_cost(model, x)


@pytest.mark.parametrize("criterion", [Magnitude(), Taylor()])
def test_criteria_score_the_heads_from_the_packed_projection(criterion):
    torch.manual_seed(0)
    model, x = Encoder(), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    model(x).square().sum().backward()
    criterion.observe(model, graph)
    scores = criterion.scores(model, graph)["attn/heads"]
    assert scores.shape == (4,) and (scores > 0).all() and len(set(scores.tolist())) == 4


def test_a_pruned_attention_is_traced_and_pruned_again():
    """PaT prunes in steps: each step traces the model the last one left."""
    torch.manual_seed(0)
    model, x = Encoder(), torch.randn(2, 3, 4, 4)
    first = pat_ray.prune(model, x, budget=0.7)
    graph = trace_channel_groups(model, x)
    assert graph.group("attn/heads").size == first.count("attn/heads") and graph_cost(graph) == measure_cost(model, x)
    second = pat_ray.prune(model, x, budget=0.6)  # of the model the first step left
    assert second.count("attn/heads") < first.count("attn/heads") and model.attn.num_heads == second.count("attn/heads")
    assert graph_cost(trace_channel_groups(model, x)) == measure_cost(model, x)
    model.train()(x).sum().backward()


def test_a_checkpointed_vit_with_pruned_heads_is_rebuilt_from_its_architecture():
    """What loading a checkpoint does: the registered base model, pruned to the architecture."""
    from pat_ray.plugins.recipes import ModelRecipe
    from pat_ray.plugins.registry import get_registry
    from pat_ray.training.checkpoint import build_pruned_model

    torch.manual_seed(0)
    params = {"image_size": 64, "num_classes": 10}
    model, x = get_registry().create("model", "vit_b_32", **params).eval(), torch.randn(2, 3, 64, 64)
    arch = pat_ray.prune(model, x, budget=0.3)
    rebuilt = build_pruned_model(ModelRecipe("registry", "vit_b_32", params), arch, tuple(x.shape)).eval()
    rebuilt.load_state_dict(model.state_dict())
    attention = rebuilt.encoder.layers[0].self_attention
    assert isinstance(attention, NarrowedMultiheadAttention) and attention.num_heads < 12
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
