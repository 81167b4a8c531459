"""torch.nn layers pat_ray has no rule for (LSTM, MultiheadAttention, Embedding) are kept
whole: their inputs and outputs keep their width, so the convs around them still prune, and
ops that only see such fixed tensors (an LSTM's hidden state indexed on its first axis, a
model input's channels sliced) are followed as fixed too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pat_ray
from _helpers import flops_counted_by_torch
from pat_ray.core.cost.flops import cost_of, graph_cost, measure_cost
from pat_ray.tracer.trace import trace_channel_groups


class CRNN(nn.Module):
    """Text-recognition style: convs, columns as a sequence, a bidirectional LSTM."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.lstm = nn.LSTM(32 * 4, 24, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c2(F.relu(self.bn(self.c1(x)))))
        n, c, h, w = y.shape
        out, (hidden, _) = self.lstm(y.permute(0, 3, 1, 2).reshape(n, w, c * h))
        return self.fc(out[:, -1] + torch.cat([hidden[0], hidden[1]], 1))


class BottleneckAttention(nn.Module):
    """Self-attention over positions with a residual and a LayerNorm (BoTNet-like)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 1)
        self.attention, self.norm = nn.MultiheadAttention(32, 4, batch_first=True), nn.LayerNorm(32)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.c2(F.relu(self.c1(x))).flatten(2).transpose(1, 2)
        attended, _ = self.attention(tokens, tokens, tokens)
        return self.fc(self.norm(tokens + attended).mean(1))


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


def test_an_lstm_is_kept_whole_and_the_convs_before_it_prune():
    model, x = CRNN(), torch.randn(2, 3, 4, 12)
    graph = trace_channel_groups(model, x)
    assert graph_cost(graph) == measure_cost(model, x)
    with torch.backends.mkldnn.flags(enabled=False):
        assert graph_cost(graph).flops == flops_counted_by_torch(model, x)  # the LSTM's MACs included
    lstm_before = shapes(model.lstm)
    pat_ray.prune(model, x, budget=0.75)  # the LSTM's own MACs are most of the rest: 0.617 is the least
    assert model.c1.out_channels < 16 and model.c2.out_channels == 32  # c2's channels merge into the sequence
    assert shapes(model.lstm) == lstm_before
    kept = measure_cost(model, x).flops / graph_cost(graph).flops
    assert 0.75 - 0.05 < kept <= 0.75 + pat_ray.BUDGET_TOLERANCE  # a ceiling, met with c1's channels alone
    model.train()(x).sum().backward()


def test_multihead_attention_prunes_its_heads_with_its_residual():
    """No longer kept whole in self-attention (its cross-attention form still is:
    test_multihead_attention.py): the residual's width and whole heads prune through it."""
    torch.manual_seed(0)
    model, x = BottleneckAttention(), torch.randn(2, 3, 6, 6)
    graph = trace_channel_groups(model, x)
    assert not graph.group("c2").pinned and not graph.group("attention/heads").pinned
    assert graph_cost(graph) == measure_cost(model, x)
    arch = pat_ray.prune(model, x, budget=0.5)
    assert model.c2.out_channels == model.attention.embed_dim < 32
    counts = {g.name: g.size for g in graph.groups} | {n: len(k) for n, k in arch.kept.items()}
    assert measure_cost(model, x) == cost_of(graph.terms, counts)
    # one of its 4 heads is an eighth of these FLOPs: the cut closest to the budget is that coarse
    assert abs(measure_cost(model, x).flops / (0.5 * graph_cost(graph).flops) - 1) < 0.15
    assert model(x).shape == (2, 5)


class FourChannelInput(nn.Module):
    """An RGBA input: colour through convs, alpha as a mask; the input's channels are sliced."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(F.relu(self.c1(x[:, :3]))) * x[:, 3:, 2:-2, 2:-2]


def test_slicing_the_input_channels_is_followed():
    model, x = FourChannelInput(), torch.randn(2, 4, 8, 8)
    pat_ray.prune(model, x, budget=0.6)
    assert model.c1.in_channels == 3 and model.c1.out_channels < 16
    assert model(x).shape == (2, 4, 4, 4)


class LSTMInTheMiddle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.lstm, self.c2 = nn.Conv1d(4, 16, 3), nn.LSTM(10, 10, batch_first=True), nn.Conv1d(16, 8, 3)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)  # (n, 16, 10): the LSTM reads 16 steps of 10 features
        return self.fc(self.c2(self.lstm(y)[0]).mean(-1))


def test_the_channels_a_kept_whole_layer_reads_and_returns_stay():
    model, x = LSTMInTheMiddle(), torch.randn(2, 4, 12)
    graph = trace_channel_groups(model, x)
    assert graph.group("c1").pinned and not graph.group("c2").pinned
    pat_ray.prune(model, x, budget=0.9)  # the LSTM's MACs are fixed: 0.848 is the least
    assert model.c1.out_channels == model.c2.in_channels == 16 and model.c2.out_channels < 8


def test_layers_whose_weight_is_computed_at_call_time_are_kept_whole():
    """spectral_norm keeps power-iteration vectors sized by the weight; the old weight_norm
    recomputes ``weight`` in a pre-hook from ``weight_g`` / ``weight_v``: neither is sliced by
    surgery, so those layers keep their channels and the plain convs around them prune."""
    from torch.nn.utils import parametrizations

    for wrap in (parametrizations.spectral_norm, parametrizations.weight_norm, nn.utils.weight_norm):
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3), nn.ReLU(), wrap(nn.Conv2d(16, 16, 3)), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.ReLU(),
            nn.Flatten(), nn.Linear(8 * 2 * 2, 3),
        )  # fmt: skip
        x = torch.randn(2, 3, 8, 8)
        graph = trace_channel_groups(model, x)
        assert graph.group("0").pinned and graph.group("2").pinned and not graph.group("4").pinned
        pat_ray.prune(model, x, budget=0.95)
        assert model[4].out_channels < 8 and model(x).shape == (2, 3)


class Recurrent(nn.Module):
    """A recurrent layer over a conv's columns; ``lengths`` given: its input is packed."""

    def __init__(self, rnn: nn.RNNBase, lengths: list[int] | None = None) -> None:
        super().__init__()
        self.conv, self.rnn, self.lengths = nn.Conv1d(3, 8, 3, padding=1), rnn, lengths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.conv(x).transpose(1, 2)  # (n, steps, 8)
        if self.lengths is None:
            return self.rnn(steps)[0].mean(1)
        packed = nn.utils.rnn.pack_padded_sequence(steps, self.lengths, batch_first=True)
        return nn.utils.rnn.pad_packed_sequence(self.rnn(packed)[0], batch_first=True)[0].mean(1)


@pytest.mark.parametrize(
    "rnn",
    [
        nn.LSTM(8, 6, batch_first=True),
        nn.LSTM(8, 6, num_layers=2, bidirectional=True, batch_first=True),
        nn.LSTM(8, 6, proj_size=4, batch_first=True),
        nn.GRU(8, 6, num_layers=2, batch_first=True),
        nn.RNN(8, 6, nonlinearity="relu", batch_first=True),
    ],
    ids=["lstm", "lstm-2-layers-bidirectional", "lstm-projection", "gru-2-layers", "rnn-relu"],
)
def test_a_recurrent_layer_costs_what_torch_counts(rnn):
    """Its one fused call was 0 MACs: a FLOPs budget on a CNN-LSTM was a share of the convs alone.
    torch's counter sees the matmuls of the unfused kernel (oneDNN's fused LSTM it cannot see)."""
    model, x = Recurrent(rnn), torch.randn(2, 3, 7)
    graph = trace_channel_groups(model, x)
    with torch.backends.mkldnn.flags(enabled=False):
        counted = flops_counted_by_torch(model, x)
    assert graph_cost(graph).flops == measure_cost(model, x).flops == counted
    assert counted > flops_counted_by_torch(model.conv, x)  # the recurrent layer is in it


def test_a_packed_sequence_costs_its_real_steps():
    rnn = nn.GRU(8, 6, batch_first=True)
    model, x = Recurrent(rnn, lengths=[7]), torch.randn(1, 3, 7)
    short = Recurrent(rnn, lengths=[4])
    short.conv = model.conv
    weights = sum(p.numel() for p in rnn.parameters() if p.dim() == 2)
    assert measure_cost(model, x).flops - measure_cost(short, x).flops == 3 * weights
