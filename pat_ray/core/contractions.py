"""How the tracer follows matrix products (``a @ b``, ``torch.matmul``, ``bmm``, ``mm``).

A product contracts ``a``'s last axis with ``b``'s second to last, and carries the other
axes into the result. Channels on a contracted axis pair up term by term (a non-local
block's ``q^T @ k``, a hand-written Linear's ``x @ self.weight``): removing channel ``i``
drops one term of every dot product, so both sides must lose the same channels. Two traced
tensors are coupled; a model parameter on the other side is sliced with the channels; a
constant there cannot be sliced and is refused. Channels on an axis that is not contracted
(``v @ attention``) pass into the result. A result that carries no channels any more gets a
new pinned group on dim 1, so that the layers it feeds stay fixed rather than untraced.
"""

from __future__ import annotations

import torch.fx as fx

from pat_ray.core.graph import UnsupportedModelError
from pat_ray.core.layout import GroupBuilder, Layout, Traced
from pat_ray.core.tensor_ops import is_parameter, known_shape


def matmul_layout(
    b: GroupBuilder, node: fx.Node, shape: tuple[int, ...], layouts: dict[fx.Node, Traced], where: str
) -> Layout | None:
    """The layout of ``a @ b``, coupling or slicing what it contracts."""
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
            b.unify(Layout(lay.groups), Layout(partner.groups), where)  # on different axes: compare as on dim 1
        else:
            _slice_partner(b, (left, right)[other], contracted[other], lay, where)
    for n, lay in zip((left, right), sides):
        if lay is None and is_parameter(b, n) and str(n.target) not in b.params:
            b.count_fixed(str(n.target))  # a weight facing no channels keeps its size
    return _carried(b, node, shape, sides, shapes, contracted, where)


def _carried(
    b: GroupBuilder,
    node: fx.Node,
    shape: tuple[int, ...],
    sides: list[Layout | None],
    shapes: tuple[tuple[int, ...], ...],
    contracted: tuple[int, int],
    where: str,
) -> Layout | None:
    """The channels that reach the result on an axis that is not contracted. Both factors'
    batch axes meet element-wise (coupled); a pinned group may be left untracked, as fixed as a
    spatial axis."""
    passing = [
        Layout(lay.groups, 1, lay.axis + len(shape) - len(s))
        for lay, s, c in zip(sides, shapes, contracted)
        if lay is not None and lay.axis != c
    ]
    if len(passing) == 2 and passing[0].axis == passing[1].axis:
        return b.unify(passing[0], passing[1], where)
    kept = [lay for lay in passing if not b.is_pinned(lay)] or passing[:1]
    if len(kept) > 1:
        raise UnsupportedModelError(f"{where}: both factors carry prunable channels into the result, on different axes")
    if kept:
        return kept[0]
    return b.new_group(shape[1], f"<{node.name}>", pinned=True) if len(shape) >= 2 else None


def _slice_partner(b: GroupBuilder, partner: fx.Node, axis: int, layout: Layout, where: str) -> None:
    """The untraced factor facing contracted channels: a parameter is sliced with them."""
    if is_parameter(b, partner):
        b.add_param(str(partner.target), axis, layout, where)
        b.count_param(str(partner.target), layout)
        return
    raise UnsupportedModelError(
        f"{where}: contracts channels with {partner.name!r}, which is neither traced "
        "nor a parameter of the model, so pat_ray cannot remove the matching rows"
    )
