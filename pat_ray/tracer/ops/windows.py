"""Sliding windows: ``F.unfold`` / ``nn.Unfold`` (im2col: every ``k x k`` patch as a column),
``F.fold`` / ``nn.Fold`` (the columns summed back into an image) and ``Tensor.unfold`` (windows
along one dim, as a new last dim).

``F.unfold`` of ``(N, C, H, W)`` is ``(N, C * k * k, L)`` with channel ``c`` filling the ``k * k``
consecutive rows ``c * k * k ...``: the channels are followed as flattened features (``repeat``
``k * k``), so a reshape back to ``(N, C, k * k, L)``, a linear layer over the patches, or
``F.fold`` (which undoes that layout) keeps them prunable. HaloNet's and MobileViT-V2's patch
attention and unfold-based patch embeddings are written this way.
"""

from __future__ import annotations

import torch.fx as fx
import torch.nn.functional as F

from pat_ray.errors import UnsupportedModelError
from pat_ray.tracer.layout import Layout
from pat_ray.tracer.nodes import arg, int_arg, known_shape
from pat_ray.tracer.ops.call import OpCall
from pat_ray.tracer.ops.registry import op_rule
from pat_ray.tracer.ops.shape import keep_channels_there
from pat_ray.tracer.state import GroupBuilder


def unfolded(builder: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """im2col's columns: channel ``c`` repeated over its ``k * k`` patch positions."""
    in_shape, out_shape = known_shape(node.args[0], where), known_shape(node, where)
    if len(in_shape) != 4:
        raise UnsupportedModelError(f"{where}: unfolds a tensor of shape {in_shape}, not a batch of images")
    if layout.axis != 1 or layout.repeat != 1 or out_shape[1] % in_shape[1]:
        return keep_channels_there(builder, node, layout, 1, where)
    return Layout(layout.groups, out_shape[1] // in_shape[1], 1)


def folded(builder: GroupBuilder, node: fx.Node, layout: Layout, where: str) -> Layout:
    """col2im: the columns of each channel's patch positions summed back into its image."""
    in_shape, out_shape = known_shape(node.args[0], where), known_shape(node, where)
    if len(in_shape) != 3 or len(out_shape) != 4 or in_shape[1] % out_shape[1]:
        raise UnsupportedModelError(f"{where}: folds a tensor of shape {in_shape} pat_ray cannot read")
    if layout.axis == 1 and layout.repeat == in_shape[1] // out_shape[1]:
        return Layout(layout.groups, 1, 1)
    return keep_channels_there(builder, node, layout, 1, where)


@op_rule("im2col", functions={F.unfold})
def unfold_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return unfolded(builder, call.node, call.first_layout(), call.where)


@op_rule("col2im", functions={F.fold})
def fold_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    return folded(builder, call.node, call.first_layout(), call.where)


@op_rule("windows", methods={"unfold"})
def windows_rule(builder: GroupBuilder, call: OpCall) -> Layout:
    """``x.unfold(dim, size, step)``: windows along ``dim``, their positions on a new last dim.
    Along another dim the channels pass; along theirs each result channel is a window."""
    node, layout, where = call.node, call.first_layout(), call.where
    axis = int_arg(arg(node, 1, "dimension"), where) % len(known_shape(node.args[0], where))
    if axis == layout.axis or layout.repeat != 1:
        return keep_channels_there(builder, node, layout, layout.axis, where)
    return layout
