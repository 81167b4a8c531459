"""Text models: token ids through embeddings whose columns prune, and a BERT-style classifier
written as transformers writes it (sizes unpacked, id buffers sliced and expanded to them,
``len()`` of shapes) pruning its width, heads and MLP."""

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


@pytest.mark.parametrize("batch", [1, 5])
def test_the_pruned_bert_runs_any_batch_size_and_sequence_length_up_to_its_table(batch):
    torch.manual_seed(0)
    model = TinyBert()
    pat_ray.prune(model, torch.randint(0, 30, (2, 9)), budget=0.5)
    assert model(torch.randint(0, 30, (batch, 12))).shape == (batch, 3)
