"""How the tracer follows matrix products (``a @ b``, ``torch.matmul``, ``bmm``, ``mm``, ``einsum``).

A product contracts ``a``'s last axis with ``b``'s second to last, and carries the other
axes into the result. Channels on a contracted axis pair up term by term (a non-local
block's ``q^T @ k``, a hand-written Linear's ``x @ self.weight``): removing channel ``i``
drops one term of every dot product, so both sides must lose the same channels. Two traced
tensors are coupled; a model parameter on the other side is sliced with the channels; a
constant there cannot be sliced, so the channels are kept. Channels on an axis that is not contracted
(``v @ attention``) pass into the result. A result that carries no channels any more gets a
new pinned group on dim 1, so that the layers it feeds stay fixed rather than untraced.
"""

from __future__ import annotations

import operator
import warnings

import torch
import torch.fx as fx
import torch.nn.functional as F

from pat_ray.core.cost.products import attention_macs, einsum_macs, matmul_macs
from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.graph import ProductShape
from pat_ray.tracer.layout import Layout, Term
from pat_ray.tracer.nodes import arg, is_parameter, known_shape
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.state import GroupBuilder

# Matrix products.
MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm, torch.mm}
MATMUL_METHODS = {"matmul", "bmm", "mm"}

EINSUM_FUNCTIONS = {torch.einsum}

ATTENTION_FUNCTIONS = {F.scaled_dot_product_attention}

_DEFAULT_SCALE_KEEPS_HEAD_DIM = (
    "scaled_dot_product_attention without scale=: its default 1/sqrt(head_dim) would change with the pruned "
    "width, so the query and key features stay whole there (timm's attention: create the model with "
    "TIMM_FUSED_ATTN=0 set, or set each attention module's fused_attn = False, to prune them)"
)


@op_rule("matmul", functions=MATMUL_FUNCTIONS, methods=MATMUL_METHODS)
def matmul_rule(builder: GroupBuilder, call: OpCall) -> Layout | None:
    """The layout of ``a @ b``, coupling or slicing what it contracts."""
    node, shape, layouts, where = call.node, call.shape, call.layouts, call.where
    if len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
        raise UnsupportedModelError(f"{where}: a matrix product pat_ray cannot read (arguments {node.args})")
    left, right = (a for a in node.args if isinstance(a, fx.Node))
    shapes = known_shape(left, where), known_shape(right, where)
    if min(len(s) for s in shapes) < 2:
        raise UnsupportedModelError(f"{where}: a matrix product with a vector; pat_ray follows only matrices")
    traced = [layouts.get(n) for n in (left, right)]
    sides = [lay if isinstance(lay, Layout) else None for lay in traced]
    if any(lay is not None and lay.repeat != 1 for lay in sides):
        raise UnsupportedModelError(f"{where}: multiplies flattened features by a matrix")
    contracted = (len(shapes[0]) - 1, len(shapes[1]) - 2)
    for side, other in ((0, 1), (1, 0)):
        lay = sides[side]
        if lay is None or lay.axis != contracted[side]:
            continue
        partner = sides[other]
        if partner is not None and partner.axis == contracted[other]:
            builder.unify(Layout(lay.groups), Layout(partner.groups), where)  # on different axes: compare as on dim 1
        else:
            _slice_partner(builder, (left, right)[other], contracted[other], lay, where)
    for n, lay in zip((left, right), sides):
        if lay is None and is_parameter(builder.model, n) and str(n.target) not in builder.params:
            builder.count_fixed(str(n.target))  # a weight facing no channels keeps its size
    result = _carried(builder, node, shape, sides, shapes, contracted, where)
    summed = next((lay for lay, c in zip(sides, contracted) if lay is not None and lay.axis == c), None)
    carrying = [_carries(builder, lay, c, result) for lay, c in zip(sides, contracted)]
    timing = ProductShape(
        (shapes[0], shapes[1]),
        (carrying[0], carrying[1]),
        (contracted[0], contracted[1]) if summed is not None else (None, None),
        (
            sides[0] is not None or not is_parameter(builder.model, left),
            sides[1] is not None or not is_parameter(builder.model, right),
        ),
    )
    count_product(builder, node, result, summed, matmul_macs(shapes[0], shapes[1], shape), timing)
    return result


def fixed_linear(builder: GroupBuilder, call: OpCall, weight: fx.Node) -> Layout | None:
    """``F.linear(x, w)`` with a fixed ``w`` (a buffer, no layer's parameter: CSATv2's DCT over
    each patch's pixels) is the product ``x @ w.T``: channels on ``x``'s last axis meet a constant
    and are kept, channels on another axis pass into the result; its MACs scale with them."""
    node, shape, where = call.node, call.shape, call.where
    first = call.first_layout()
    if first.repeat != 1:
        raise UnsupportedModelError(f"{where}: multiplies flattened features by a fixed matrix")
    x_shape = known_shape(node.args[0], where)
    w_shape = tuple(reversed(known_shape(weight, where)))  # w.T: (in, out)
    contracted = len(x_shape) - 1
    summed = first if first.axis == contracted else None
    if summed is not None:
        builder.pin(summed)  # a constant cannot be sliced
    result = _one_carried(builder, node, shape, [] if summed is not None else [first], where)
    timing = ProductShape(
        (x_shape, w_shape),
        (_carries(builder, first, contracted, result), None),
        (contracted, 0) if summed is not None else (None, None),
        (True, False),
    )
    count_product(builder, node, result, summed, matmul_macs(x_shape, w_shape, shape), timing)
    return result


def _carries(builder: GroupBuilder, side: Layout | None, contracted: int, result: Layout | None) -> int | None:
    """The dim of a factor that holds the channels its product's result carries (None: none)."""
    if side is None or result is None or side.axis == contracted:
        return None
    return (
        side.axis
        if builder.leaves(Layout(side.groups)).groups == builder.leaves(Layout(result.groups)).groups
        else None
    )


def count_product(
    builder: GroupBuilder,
    node: fx.Node,
    result: Layout | None,
    summed: Layout | None,
    macs: int,
    timing: ProductShape | None = None,
    label: str = "",
) -> None:
    """A product's MACs (for the example's one sample) as a cost term: they scale with the
    channels its result carries and with the channels it sums over. ``timing``: how the
    latency probe rebuilds it (a product of two factors)."""
    per_pair = macs
    for layout in (result, summed):
        if layout is not None:
            per_pair //= builder.width(layout)
    name = f"<{node.name}{label}>"
    builder.add_term(
        Term(module=name, out=result or Layout(()), inp=summed, macs_per_pair=per_pair, is_layer=False, product=timing)
    )


def _carried(
    builder: GroupBuilder,
    node: fx.Node,
    shape: tuple[int, ...],
    sides: list[Layout | None],
    shapes: tuple[tuple[int, ...], ...],
    contracted: tuple[int, int],
    where: str,
) -> Layout | None:
    """The channels that reach the result on an axis that is not contracted."""
    passing = [
        Layout(lay.groups, 1, lay.axis + len(shape) - len(s))
        for lay, s, c in zip(sides, shapes, contracted)
        if lay is not None and lay.axis != c
    ]
    return _one_carried(builder, node, shape, passing, where)


def _one_carried(
    builder: GroupBuilder, node: fx.Node, shape: tuple[int, ...], carried: list[Layout], where: str
) -> Layout | None:
    """The one layout a product's result holds. Layouts on the same axis meet element-wise
    (coupled); on different axes, pinned ones give way to a prunable one (their width never
    changes, like a spatial axis); none at all: new fixed channels on dim 1."""
    if len({lay.axis for lay in carried}) > 1:
        carried = [lay for lay in carried if not builder.is_pinned(lay)] or carried[:1]
    if len({lay.axis for lay in carried}) > 1:
        raise UnsupportedModelError(f"{where}: both factors carry prunable channels into the result, on different axes")
    if not carried:
        return builder.fixed_channels(f"<{node.name}>", shape)
    return builder.unify_all(carried, where)


def _slice_partner(builder: GroupBuilder, partner: fx.Node, axis: int, layout: Layout, where: str) -> None:
    """The untraced factor facing contracted channels: a parameter is sliced with them; a
    constant cannot be, so the channels stay."""
    if is_parameter(builder.model, partner):
        builder.slice_param(str(partner.target), axis, layout, where)
    else:
        builder.pin(layout)


@op_rule("einsum", functions=EINSUM_FUNCTIONS)
def einsum_rule(builder: GroupBuilder, call: OpCall) -> Layout | None:
    """``torch.einsum``: every operand holding a traced tensor's channel letter is coupled with it
    (a traced tensor with the same letter on its channels) or sliced with it (a model parameter);
    the channels reach the result wherever their letter appears in the output."""
    node, shape, layouts, where = call.node, call.shape, call.layouts, call.where
    equation, operands = _einsum_arguments(node, where)
    inputs, _, output = equation.replace(" ", "").partition("->")
    subscripts = inputs.split(",")
    if "." in equation or len(subscripts) != len(operands) or not output and "->" not in equation:
        raise UnsupportedModelError(f"{where}: einsum {equation!r}: pat_ray reads only explicit '->' without '...'")
    traced = [layouts.get(n) for n in operands]
    carried: list[Layout] = []
    for lay, letters in zip(traced, subscripts):
        if not isinstance(lay, Layout):
            continue
        if lay.repeat != 1:
            raise UnsupportedModelError(f"{where}: einsum over flattened features")
        letter = letters[lay.axis]
        for other, other_letters, other_lay in zip(operands, subscripts, traced):
            if letter not in other_letters or other_lay is lay:
                continue
            if isinstance(other_lay, Layout) and other_letters[other_lay.axis] == letter:
                builder.unify(Layout(lay.groups), Layout(other_lay.groups), where)
            elif other_lay is None and str(other.target) not in builder.params:
                _slice_partner(builder, other, other_letters.index(letter), lay, where)
            else:  # another traced tensor's untracked axis pairs with the channels: they stay
                builder.pin(lay)
        if letter in output:
            carried.append(Layout(lay.groups, 1, output.index(letter)))
    result = _one_carried(builder, node, shape, carried, where)
    summed = next(
        (lay for lay, ks in zip(traced, subscripts) if isinstance(lay, Layout) and ks[lay.axis] not in output), None
    )
    count_product(builder, node, result, summed, einsum_macs(equation, [known_shape(n, where) for n in operands]))
    return result


def _einsum_arguments(node: fx.Node, where: str) -> tuple[str, list[fx.Node]]:
    equation, *rest = node.args
    operands = list(rest[0]) if len(rest) == 1 and isinstance(rest[0], list | tuple) else rest
    if not isinstance(equation, str) or not all(isinstance(n, fx.Node) for n in operands):
        raise UnsupportedModelError(f"{where}: an einsum pat_ray cannot read")
    return equation, [n for n in operands if isinstance(n, fx.Node)]


@op_rule("attention", functions=ATTENTION_FUNCTIONS)
def attention_rule(builder: GroupBuilder, call: OpCall) -> Layout | None:
    """``F.scaled_dot_product_attention(q, k, v)``: ``softmax(q @ k^T) @ v`` over (..., tokens,
    features). q and k meet on their last axis (coupled, like a product's contracted channels);
    the result carries v's last axis; channels on a leading axis (heads) are the same in all
    three. Channels on the token axis would change which tokens attend to which: refused. q and
    k keep their features unless the call gives ``scale``: the default, 1/sqrt(features), would
    change with them."""
    node, shape, where = call.node, call.shape, call.where
    factors = [arg(node, i, name) for i, name in enumerate(("query", "key", "value"))]
    traced = [call.layouts.get(f) if isinstance(f, fx.Node) else None for f in factors]
    mask = arg(node, 3, "attn_mask")
    mask_layout = call.layouts.get(mask) if isinstance(mask, fx.Node) else None
    if isinstance(mask_layout, Layout) and not builder.is_pinned(mask_layout):
        raise UnsupportedModelError(f"{where}: its attention mask carries prunable channels")
    if not all(isinstance(lay, Layout) and lay.repeat == 1 for lay in traced):
        raise UnsupportedModelError(f"{where}: its query, key or value is a tensor of unknown channels")
    q, k, v = (lay for lay in traced if isinstance(lay, Layout))
    last = len(shape) - 1
    if any(lay.axis == last - 1 and not builder.is_pinned(lay) for lay in (q, k, v)):
        raise UnsupportedModelError(f"{where}: carries prunable channels on the token axis")
    if q.axis == last or k.axis == last:
        if q.axis == k.axis and arg(node, 6, "scale") is not None:
            builder.unify(q, k, where)
        else:  # one side's features only, or the default scale 1/sqrt(features) that pruning would change
            if builder.head_dim and q.axis == k.axis and not builder.is_pinned(q):
                warnings.warn(_DEFAULT_SCALE_KEEPS_HEAD_DIM, stacklevel=2)
            builder.pin(q if q.axis == last else k)
            builder.pin(k if k.axis == last else q)
    leading = [lay for lay in (q, k, v) if lay.axis < last - 1]
    heads = builder.unify_all(leading, where) if leading else None  # the same heads in q, k and v
    carried = [v] if v.axis == last else leading
    result = _one_carried(builder, node, shape, [Layout(lay.groups, 1, lay.axis) for lay in carried], where)
    shapes = [known_shape(f, where) for f in factors]
    scores_macs = attention_macs(shapes[0], shapes[1], (*shapes[2][:-1], 0))  # q @ k^T
    features = q if q.axis == last else None
    scores, mix = attention_products(
        shapes[0], shapes[1], shapes[2], heads.axis if heads else None, features is not None
    )
    count_product(builder, node, heads, features, scores_macs, scores, ":scores")
    mix = mix if result is None or result.axis != last else ProductShape(mix.shapes, (None, last))
    count_product(
        builder, node, result, None, attention_macs(shapes[0], shapes[1], shapes[2]) - scores_macs, mix, ":mix"
    )
    return result


def attention_products(
    query: tuple[int, ...], key: tuple[int, ...], value: tuple[int, ...], heads: int | None, features: bool
) -> tuple[ProductShape, ProductShape]:
    """Attention's two products as the latency probe times them: ``q @ k^T`` (summing the
    features when they are channels) and ``weights @ v``, the heads on dim ``heads``."""
    last = len(query) - 1
    key_t = (*key[:-2], key[-1], key[-2])
    weights = (*query[:-1], key[-2])
    scores = ProductShape((query, key_t), (heads, heads), (last, last - 1) if features else (None, None))
    return scores, ProductShape((weights, value), (heads, heads))
