"""``ShapesOnly``: under it a product returns zeros laid out exactly as its real result
(shape, strides, dtype, device), refuses the operands the real kernel refuses, and everything
else runs for real; a model whose shapes depend on values is traced and checked with real products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import pat_ray
from _helpers import flops_counted_by_torch
from pat_ray.core.cost.flops import cost_of
from pat_ray.core.cost.products import ProductCounter
from pat_ray.tracer.shapes_only import ShapesOnly
from pat_ray.tracer.trace import trace_channel_groups


def same_layout(real: torch.Tensor, fake: torch.Tensor) -> None:
    assert fake.shape == real.shape
    # a dimension of size 1 has no stride that matters (views and contiguity ignore it)
    assert [s for s, n in zip(fake.stride(), fake.shape) if n > 1] == [
        s for s, n in zip(real.stride(), real.shape) if n > 1
    ]
    assert fake.dtype == real.dtype and fake.device == real.device
    assert not fake.is_meta


@settings(max_examples=40, deadline=None)
@given(
    groups=st.integers(1, 3),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    side=st.integers(5, 9),
    channels_last=st.booleans(),
)
def test_a_convolution_is_laid_out_as_the_real_one(
    groups, per_group_in, per_group_out, kernel, stride, padding, dilation, side, channels_last
) -> None:
    x = torch.randn(2, groups * per_group_in, side, side)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(groups * per_group_out, per_group_in, kernel, kernel)
    args = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    real = F.conv2d(x, weight, None, **args)
    with ShapesOnly():
        fake = F.conv2d(x, weight, None, **args)
    same_layout(real, fake)
    computed = torch.count_nonzero(fake) > 0  # channels-last: the real kernel picks the strides
    assert computed == channels_last


@pytest.mark.parametrize(
    ("product", "on_meta"),
    [
        (lambda a, b, c: F.linear(a, b.T.contiguous()), True),
        (lambda a, b, c: F.linear(a, b.T), True),
        (lambda a, b, c: a @ b, True),
        (lambda a, b, c: torch.matmul(a.transpose(1, 2), a), True),
        (lambda a, b, c: torch.einsum("bij,jk->bik", a, b), True),
        (lambda a, b, c: torch.einsum("bij,jk->kbi", [a, b]), True),
        (lambda a, b, c: torch.bmm(a, b.expand(3, -1, -1)), True),
        (lambda a, b, c: torch.baddbmm(c, a, b.expand(3, -1, -1)), True),
        (lambda a, b, c: F.scaled_dot_product_attention(a, a, a), True),
        # attention on CPU lays its result out from the operands' strides: those run for real
        (lambda a, b, c: F.scaled_dot_product_attention(*[a.view(3, 4, 5, 1).expand(3, 4, 5, 2)] * 3), False),
        (lambda a, b, c: F.scaled_dot_product_attention(*[a.reshape(3, 2, 2, 5).transpose(1, 2)] * 3), False),
    ],
)
def test_products_are_laid_out_as_the_real_ones(product, on_meta) -> None:
    a, b, c = torch.randn(3, 4, 5), torch.randn(5, 6), torch.randn(3, 4, 6)
    real = product(a, b, c)
    with ShapesOnly():
        fake = product(a, b, c)
    same_layout(real, fake)
    assert (torch.count_nonzero(fake) == 0) == on_meta


def test_operands_the_real_kernel_refuses_are_refused() -> None:
    with ShapesOnly(), pytest.raises(RuntimeError):
        F.conv2d(torch.randn(1, 5, 8, 8), torch.randn(4, 6, 3, 3))
    with ShapesOnly(), pytest.raises(RuntimeError):
        F.linear(torch.randn(2, 5), torch.randn(3, 6))


def test_other_ops_compute_for_real() -> None:
    x = torch.randn(4, 7)
    with ShapesOnly():
        assert torch.equal(torch.relu(x) + 1, x.clamp(min=0) + 1)


def test_under_autocast_a_product_runs_for_real() -> None:
    x, w = torch.randn(2, 8), torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16), ShapesOnly():
        result = F.linear(x, w)
    assert result.dtype == torch.bfloat16
    assert torch.count_nonzero(result) > 0


def test_products_are_still_counted_under_it() -> None:
    q = torch.randn(2, 4, 16, 8)
    with ShapesOnly():
        with ProductCounter() as counter:
            F.scaled_dot_product_attention(q, q, q)
    assert counter.macs == 2 * 4 * 16 * 16 * (8 + 8)


class PicksTokens(nn.Module):
    """Keeps the tokens whose features sum above zero: how many depends on the embedding's values.
    ``branches``: another branch when none is picked, so the trace must see the real count."""

    def __init__(self, branches: bool = False) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.mlp = nn.Linear(8, 16)
        self.head = nn.Linear(16, 5)
        self.branches = branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        picked = torch.nonzero(tokens.sum(2) > 0)[:, 1]
        if self.branches and len(picked) == 0:
            return self.head(tokens.new_zeros(1, 16))
        return self.head(self.mlp(tokens.index_select(1, picked)).relu().mean(1))


def test_a_model_whose_shapes_follow_values_is_traced_with_real_products() -> None:
    torch.manual_seed(0)
    model, x = PicksTokens().eval(), torch.randn(1, 3, 16, 16)
    graph = trace_channel_groups(model, x)
    assert graph.shapes_from_values
    dense = cost_of(graph.terms, {g.name: g.size for g in graph.groups})
    assert dense.flops == flops_counted_by_torch(model, x)  # the picked tokens' MLP counted, not zero of them
    pat_ray.prune(model, x, budget=0.6)  # its check computes the products too
    assert model.mlp.in_features < 8 or model.mlp.out_features < 16


def test_a_model_whose_shapes_follow_sizes_only_is_traced_on_meta() -> None:
    assert not trace_channel_groups(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), torch.randn(1, 3, 8, 8)
    ).shapes_from_values


def test_a_branch_on_a_count_that_follows_values_is_traced_as_the_values_take_it() -> None:
    torch.manual_seed(0)
    model, x = PicksTokens(branches=True).eval(), torch.randn(1, 3, 16, 16)
    graph = trace_channel_groups(model, x)
    assert graph.shapes_from_values
    assert any(m.module == "mlp" for g in graph.groups for m in g.members)
    assert cost_of(graph.terms, {g.name: g.size for g in graph.groups}).flops == flops_counted_by_torch(model, x)
