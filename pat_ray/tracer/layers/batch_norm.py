"""Per-channel norms (BatchNorm, SyncBatchNorm, InstanceNorm): channel i's statistics and
affine are its own, so the norm follows its input's group and loses the same channels."""

from __future__ import annotations

from collections.abc import Hashable

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Rewrite, kept_indices, select
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout

NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,  # what a model converted for multi-GPU training holds
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


@layer_family(*NORM_TYPES)
class ChannelNorm(LayerFamily):
    timed = True

    def trace(self, call: LayerCall) -> Layout:
        assert isinstance(call.module, _NormBase)
        layout = call.on_dim1()
        call.builder.add_norm(call.name, layout, 2 if call.module.affine else 0)
        return layout

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, _NormBase)
        keep = kept_indices(module.num_features, cut.drop_out)
        for name in ("weight", "bias", "running_mean", "running_var"):
            rewrite(module, name, select(0, keep))
        module.num_features = len(keep)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        """Timed with the ReLU that follows most norms: element-wise activations scale with the
        same channels and would otherwise be missing from the sum."""
        assert isinstance(module, _NormBase)
        base = next(c for c in type(module).__mro__ if c in NORM_TYPES)  # a subclass may take other arguments
        return nn.Sequential(base(n_out, affine=module.affine), nn.ReLU())

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, _NormBase)
        return (type(module).__name__, module.affine, n_out)

    def input_follows_output(self, module: nn.Module) -> bool:
        return True
