"""Text models and the Python that transformers writes in its forwards: token ids through
embeddings whose columns prune, ``len()`` of shapes and tensors, sizes unpacked into new
shapes, and buffers sliced and expanded to sizes read at run time. The tracer runs such code
on the example input (tracing by running) instead of refusing it as plain torch.fx does."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pat_ray
from _helpers import assert_pruning_is_exact, flops_counted_by_torch
from pat_ray.core.cost.flops import graph_cost, measure_cost
from pat_ray.tracer.trace import trace_channel_groups


def test_an_embeddings_columns_prune_with_the_layer_it_feeds_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 12), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    tokens = torch.randint(0, 50, (2, 7))
    graph = trace_channel_groups(model, tokens)
    assert graph_cost(graph) == measure_cost(model, tokens)  # 50 parameters per kept column
    assert_pruning_is_exact(model, tokens, budget=0.5)
    assert model[0].embedding_dim == model[0].weight.shape[1] == model[1].in_features < 12
    assert model[0].weight.shape[0] == 50  # every token keeps its row


def test_an_embedding_with_max_norm_keeps_its_columns():
    """Rows are renormalized over all their columns: removing one would rescale the others."""
    model = nn.Sequential(nn.Embedding(50, 12, max_norm=1.0), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 3))
    tokens = torch.randint(0, 50, (2, 7))
    graph = trace_channel_groups(model, tokens)
    assert graph.group("0").pinned and not graph.group("1").pinned
    pat_ray.prune(model, tokens, budget=0.7)
    assert model[0].embedding_dim == 12 and model[1].out_features < 32


class TinyBert(nn.Module):
    """A BERT-style classifier written as transformers writes it: the ids' sizes unpacked, the
    position and token-type id buffers sliced and expanded to them, word + position + type
    embeddings summed, heads split by a view built from ``(*x.shape[:-1], -1, head_dim)``,
    an MLP, and a pooler on the first token."""

    def __init__(self, vocab: int = 30, width: int = 16, heads: int = 4, hidden: int = 32, max_len: int = 12) -> None:
        super().__init__()
        self.word, self.position = nn.Embedding(vocab, width), nn.Embedding(max_len, width)
        self.token_type = nn.Embedding(2, width)
        self.register_buffer("position_ids", torch.arange(max_len).expand(1, -1), persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(1, max_len, dtype=torch.long), persistent=False)
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))
        self.head_dim = width // heads
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.pooler, self.classifier = nn.Linear(width, width), nn.Linear(width, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, length = ids.size()
        positions = self.position_ids[:, :length]
        types = self.token_type_ids[:, :length].expand(batch, length)
        x = self.norm1(self.word(ids) + self.position(positions) + self.token_type(types))
        input_shape = x.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q, k, v = (layer(x).view(hidden_shape).transpose(1, 2) for layer in (self.query, self.key, self.value))
        weights = (q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)).softmax(-1)
        context = (weights @ v).transpose(1, 2).reshape(*input_shape, -1)
        x = self.norm2(x + self.out(context))
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def test_a_bert_style_classifier_prunes_its_width_heads_and_mlp():
    torch.manual_seed(0)
    model, ids = TinyBert(), torch.randint(0, 30, (2, 9))
    graph = trace_channel_groups(model, ids)
    assert graph_cost(graph) == measure_cost(model, ids)
    arch = pat_ray.prune(model, ids, budget=0.5)
    assert "query/heads" in arch.kept or any(name.endswith("/heads") for name in arch.kept)
    assert model.fc1.out_features < 32 and model.word.embedding_dim == model.fc2.out_features
    kept = measure_cost(model, ids).flops / graph_cost(graph).flops
    assert kept <= 0.5 + pat_ray.BUDGET_TOLERANCE
    assert flops_counted_by_torch(model, ids) == measure_cost(model, ids).flops
    model.train()(torch.randint(0, 30, (3, 9))).sum().backward()  # another batch size: sizes are read at run time


class ReadsLengths(nn.Module):
    """``len`` of a shape and of a tensor, and sizes unpacked into a shape: Python that plain
    torch.fx refuses ("'len' is not supported in symbolic tracing")."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c1(x))
        if len(y.shape) == 4 and len(y) == x.shape[0]:
            y = y.reshape(*y.shape[:2], -1).reshape(*y.shape)
        return self.fc(self.c2(y).mean((2, 3)))


def test_len_and_unpacked_sizes_are_read_on_the_example_and_the_prune_is_exact():
    torch.manual_seed(0)
    assert_pruning_is_exact(ReadsLengths(), torch.randn(2, 3, 8, 8), budget=0.5)


class BufferExpandedToTracedSizes(nn.Module):
    """A per-channel buffer expanded to the batch size read at run time, then added."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)
        self.register_buffer("offset", torch.randn(1, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x) + self.offset.expand(x.shape[0], -1)))


def test_a_buffer_expanded_to_a_traced_size_is_sliced_with_the_channels_it_meets():
    torch.manual_seed(0)
    model, x = BufferExpandedToTracedSizes(), torch.randn(4, 6)
    assert_pruning_is_exact(model, x, budget=0.5)
    assert model.offset.shape == (1, model.fc1.out_features) and model.fc1.out_features < 16


@pytest.mark.parametrize("batch", [1, 5])
def test_the_pruned_bert_runs_any_batch_size_and_sequence_length_up_to_its_table(batch):
    torch.manual_seed(0)
    model = TinyBert()
    pat_ray.prune(model, torch.randint(0, 30, (2, 9)), budget=0.5)
    assert model(torch.randint(0, 30, (batch, 12))).shape == (batch, 3)


class MergesHeadsByAttribute(nn.Module):
    """Heads merged back by ``x.size()[:-2] + (self.all_head_size,)`` unpacked into a view, as
    BEiT, Data2Vec and MobileViT in transformers write it: the merged width is an attribute
    (surgery sets it) and the leading sizes are read from the tensor."""

    def __init__(self, width: int = 24, heads: int = 4) -> None:
        super().__init__()
        self.head_dim, self.all_head_size = width // heads, width
        self.embed = nn.Linear(6, width)
        self.query, self.key, self.value, self.out = (nn.Linear(width, width) for _ in range(4))
        self.head = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        hidden_shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (layer(x).view(hidden_shape).transpose(1, 2) for layer in (self.query, self.key, self.value))
        context = (q @ k.transpose(-1, -2) * self.head_dim**-0.5).softmax(-1) @ v
        context = context.permute(0, 2, 1, 3).contiguous()
        merged = context.size()[:-2] + (self.all_head_size,)
        return self.head(self.out(context.view(*merged)).mean(1))


def test_heads_merged_by_an_unpacked_size_tuple_prune_exactly_and_set_the_attribute():
    torch.manual_seed(0)
    model, x = MergesHeadsByAttribute(), torch.randn(2, 5, 6)
    arch = assert_pruning_is_exact(model, x, budget=0.4)
    assert any(name.endswith("/heads") for name in arch.kept) and model.all_head_size == model.query.out_features < 24


class StoresWhatItComputes(nn.Module):
    """A forward that keeps a size it computed on the module (transformers' Swin clamps its
    window to the input's resolution so): tracing must not leave a traced value there."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1)
        self.window = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) <= self.window:
            self.window = min(x.shape[-2:])
        return F.avg_pool2d(self.c2(F.relu(self.c1(x))), self.window).flatten(1)


def test_a_forward_that_stores_a_size_on_its_module_keeps_a_plain_number_there():
    model, x = StoresWhatItComputes(), torch.randn(2, 3, 6, 6)
    trace_channel_groups(model, x)
    assert model.window == 8 and type(model.window) is int  # as before the trace, not a traced value
    pat_ray.prune(model, x, budget=0.5)
    assert model.c1.out_channels < 16 and model(x).shape == (2, 4)


class MakesModulesInItsForward(nn.Module):
    """DistilBERT's ``nn.ReLU()(pooled)``: a module built on every call, no submodule of the model."""

    def __init__(self, with_weights: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(16, 3)
        self.with_weights = with_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = nn.ReLU()(self.fc1(x))
        if self.with_weights:
            hidden = nn.LayerNorm(16)(hidden)
        return self.fc2(hidden)


def test_a_stateless_module_made_in_the_forward_is_traced_as_its_ops():
    torch.manual_seed(0)
    model = MakesModulesInItsForward()
    assert_pruning_is_exact(model, torch.randn(4, 6), budget=0.5)
    assert model.fc1.out_features < 16


def test_a_module_with_weights_made_in_the_forward_is_refused_naming_it():
    from pat_ray.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="creates a LayerNorm with weights on every call"):
        trace_channel_groups(MakesModulesInItsForward(with_weights=True), torch.randn(4, 6))
