"""The Python a forward runs on traced values, answered by running the model on the example
input (tracing by running) where plain torch.fx refuses: ``len()`` of shapes and tensors, size
tuples unpacked into views, buffers expanded to traced sizes, factories given traced sizes, item
assignment, modules made or attributes stored by the forward, arguments left at their defaults."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pat_ray
from _helpers import assert_pruning_is_exact
from pat_ray.tracer.trace import trace_channel_groups


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


class OptionalMask(nn.Module):
    """``forward(x, mask=None)`` (timm's Hiera, every transformers model): called with the example
    alone, the mask is None and its branch is not taken."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: float = 1.0) -> torch.Tensor:
        y = F.relu(self.c1(x))
        if mask is not None:
            y = y * mask.view(*mask.shape, 1, 1)
        return self.c2(y).mean((2, 3)) * scale


def test_arguments_left_at_their_defaults_take_the_branch_a_call_with_the_example_takes():
    torch.manual_seed(0)
    model = OptionalMask()
    assert_pruning_is_exact(model, torch.randn(2, 3, 8, 8), budget=0.5)
    assert model.c1.out_channels < 16


class RelativePositions(nn.Module):
    """ConViT's positional attention: a table of relative patch positions built in the forward
    from the input's size (``torch.zeros`` given traced sizes, filled by item assignment), cached
    in a buffer, and projected by a Linear whose outputs prune: a coordinate encoding is fixed
    channels feeding a prunable projection."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 2, stride=2)
        self.pos_proj, self.out = nn.Linear(3, width), nn.Linear(width, 4)
        self.register_buffer("rel_indices", torch.zeros(1, 1, 1, 3), persistent=False)

    def positions(self, side: int) -> torch.Tensor:
        table = torch.zeros(1, side * side, side * side, 3)
        coords = torch.arange(side)
        ind = (coords.view(1, -1) - coords.view(-1, 1)).repeat(side, side)
        table[:, :, :, 0] = ind.unsqueeze(0)
        table[:, :, :, 1] = ind.t().unsqueeze(0)
        table[:, :, :, 2] = (ind**2).unsqueeze(0)
        return table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        if self.rel_indices.shape[1] != tokens.shape[1]:
            self.rel_indices = self.positions(int(tokens.shape[1] ** 0.5))
        weights = self.pos_proj(self.rel_indices.expand(tokens.shape[0], -1, -1, -1)).sum(-1).softmax(-1)
        return self.out(F.relu(weights @ tokens).mean(1))


def test_a_coordinate_table_built_from_the_input_size_feeds_a_projection_that_prunes():
    torch.manual_seed(0)
    model, x = RelativePositions(), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    assert model.rel_indices.shape == (1, 16, 16, 3)  # the table the forward cached, a real tensor
    assert not graph.group("pos_proj").pinned and not graph.group("embed").pinned
    assert_pruning_is_exact(model, x, budget=0.5)
    assert model.pos_proj.in_features == 3 and model.pos_proj.out_features < 16


class WritesIntoActivations(nn.Module):
    """``y[:, 0] = 0``: item assignment into a tensor that carries channels, at a position the
    code names: those channels must keep their places."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c1(x))
        z = self.c2(y)
        z[:, 0] = 0.0
        return self.c3(z)


def test_item_assignment_into_channels_keeps_them_and_everything_else_prunes():
    model, x = WritesIntoActivations(), torch.randn(2, 3, 4, 4)
    graph = trace_channel_groups(model, x)
    assert graph.group("c2").pinned and not graph.group("c1").pinned
    torch.manual_seed(0)
    assert_pruning_is_exact(model, x, budget=0.6)
    assert model.c2.out_channels == 8 and model.c1.out_channels < 8


class FourierPositions(nn.Module):
    """XCiT's and EdgeNeXt's positional encoding: a grid of coordinates made from the input's
    size (``torch.arange`` of traced sizes), expanded into sines, repeated to the batch size
    read at run time, projected by a 1x1 conv and added: its outputs prune with the stream. The
    block runs its attention in float32 under ``torch.autocast(x.device.type)``, as EfficientViT."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, width, 2, stride=2)
        self.token_projection = nn.Conv2d(8, width, 1)
        self.mix, self.head = nn.Conv2d(width, width, 1), nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embed(x)
        b, _, h, w = y.shape
        rows = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(1, 1, h, w)
        cols = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w).expand(1, 1, h, w)
        frequencies = torch.arange(1, 3, dtype=torch.float32).view(1, 2, 1, 1)
        grid = torch.cat(
            [
                (rows * frequencies).sin(),
                (rows * frequencies).cos(),
                (cols * frequencies).sin(),
                (cols * frequencies).cos(),
            ],
            dim=1,
        )
        y = y + self.token_projection(grid.repeat(b, 1, 1, 1))
        with torch.autocast(device_type=y.device.type, enabled=False):
            y = F.relu(self.mix(y.float()))
        return self.head(y.mean((2, 3)))


def test_a_coordinate_encoding_repeated_to_the_batch_prunes_its_projection_with_the_stream():
    torch.manual_seed(0)
    model, x = FourierPositions(), torch.randn(2, 3, 8, 8)
    graph = trace_channel_groups(model, x)
    assert not graph.group("embed").pinned and not graph.group("mix").pinned
    assert_pruning_is_exact(model, x, budget=0.5)
    assert (
        model.token_projection.in_channels == 8 and model.token_projection.out_channels == model.embed.out_channels < 16
    )


class PerceiverStyle(nn.Module):
    """What transformers' Perceiver asks of traced values: ``np.prod`` of a traced shape (numpy
    asks the size tuple for ``prod``, finds none, multiplies its items), ``torch.finfo(x.dtype)``,
    a size tuple whose last item is a traced number, and a layer handed ``None`` (an
    ``nn.Identity`` for a missing second input) whose result the next ``if`` reads."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 12, 1)
        self.kv_norm = nn.Identity()
        self.q, self.k = nn.Linear(12, 8), nn.Linear(12, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        import numpy as np

        x = self.embed(x).permute(0, 2, 3, 1)  # channels last
        x = torch.reshape(x, [x.shape[0], int(np.prod(x.shape[1:-1])), x.shape[-1]])
        inputs = self.kv_norm(inputs)
        source = x if inputs is None else inputs
        q = self.q(x)
        scores = q @ self.k(source).transpose(1, 2) + torch.finfo(x.dtype).min * 0
        mixed = scores.softmax(-1) @ q
        shape = mixed.size()[:-1] + (q.shape[-1],)
        return self.head(mixed.view(*shape).mean(1))


def test_numpy_sizes_dtype_questions_and_a_layer_handed_none_are_answered_on_the_example():
    torch.manual_seed(0)
    arch = assert_pruning_is_exact(PerceiverStyle().eval(), torch.randn(2, 3, 4, 4), budget=0.5)
    assert len(arch.kept["embed"]) < 12


class LatentsReadTwice(nn.Module):
    """Perceiver's latents: a parameter expanded to the batch, normalized as a layer's input (read
    as fixed channels) and then added to the stream the attention writes: the stream must keep
    them too, or surgery slices the latents but not the norm that read them whole."""

    def __init__(self) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(4, 8))
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(x.shape[0], -1, -1)
        stream = self.out(self.norm(latents)) * x.mean() + latents
        return self.head((stream + self.mlp(stream)).mean(1))


def test_a_parameter_a_layer_read_as_fixed_channels_is_not_sliced_by_a_later_sum():
    model, x = LatentsReadTwice().eval(), torch.randn(2, 5)
    graph = trace_channel_groups(model, x)
    assert {g.name for g in graph.prunable} == {"mlp.0"}  # the stream stays; the MLP's hidden width prunes
    assert_pruning_is_exact(model, x, budget=0.8)


class ClassTokenReadTwice(nn.Module):
    """A class token a layer reads whole (a gate from its normalized value) and that is also
    concatenated with the tokens: the concatenation must keep the stream's channels too."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.embed = nn.Linear(4, 8)
        self.gate = nn.Linear(8, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = self.cls.expand(x.shape[0], -1, -1)
        gate = torch.sigmoid(self.gate(cls)).mean(1)
        seq = torch.cat([cls, self.embed(x)], dim=1)
        return self.head((seq + self.mlp(seq)).mean(1) * gate)


def test_a_parameter_a_layer_read_as_fixed_channels_is_not_sliced_by_a_later_concatenation():
    model, x = ClassTokenReadTwice().eval(), torch.randn(2, 5, 4)
    graph = trace_channel_groups(model, x)
    assert {g.name for g in graph.prunable} == {"mlp.0"}
    assert_pruning_is_exact(model, x, budget=0.8)
