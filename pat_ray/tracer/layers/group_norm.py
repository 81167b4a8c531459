"""``nn.GroupNorm`` normalizes each of its ``num_groups`` runs of channels together: the
channels shrink by the same count in every run (like a grouped conv's), so each stays in its
own norm group. Its statistics change with the channels, as a LayerNorm's do. Fed by channels
of several groups (a concatenation) or by a differently grouped conv, it keeps them whole."""

from __future__ import annotations

from collections.abc import Hashable

from torch import nn

from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Rewrite, kept_indices, select
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout


@layer_family(nn.GroupNorm)
class GroupNorm(LayerFamily):
    timed = True

    def trace(self, call: LayerCall) -> Layout:
        builder, name, module = call.builder, call.name, call.module
        assert isinstance(module, nn.GroupNorm)
        layout = call.on_dim1()
        parts = builder.leaves(layout).groups
        root = parts[0] if len(parts) == 1 else None
        if root is None or builder.subgroups_of(root) not in (None, module.num_groups):
            builder.pin(layout)
            for param in ("weight", "bias") if module.affine else ():
                builder.count_fixed(f"{name}.{param}")
            return layout
        builder.set_subgroups(root, module.num_groups)
        builder.add_norm(name, layout, 2 if module.affine else 0)
        return layout

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, nn.GroupNorm)
        keep = kept_indices(module.num_channels, cut.drop_out)
        for name in ("weight", "bias"):
            rewrite(module, name, select(0, keep))
        module.num_channels = len(keep)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, nn.GroupNorm)
        return nn.Sequential(nn.GroupNorm(module.num_groups, n_out, affine=module.affine), nn.ReLU())

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, nn.GroupNorm)
        return ("GroupNorm", module.affine, n_out)

    def input_follows_output(self, module: nn.Module) -> bool:
        return True

    def width_step(self, module: nn.Module) -> int:
        assert isinstance(module, nn.GroupNorm)
        return module.num_groups
