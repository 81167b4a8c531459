"""Everything a plugin author imports, from one module: the stable surface for plugins.

A plugin distribution imports from ``pat_ray.sdk`` only (``tests/test_sdk.py`` checks the two
under ``plugins/``): what is here keeps its name and meaning across releases, while the modules
it comes from (``pat_ray.core``, ``pat_ray.plugins``) may be reorganized. The hooks themselves
are documented in ``pat_ray.plugins.hookspecs``.

Names are imported on first use, as in ``pat_ray`` itself: a plugin's hook module that imports
``hookimpl`` from here loads neither torch nor the tracer, so listing plugins stays instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pat_ray.lazy import lazy_names
from pat_ray.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from pat_ray.config.start import Watched
    from pat_ray.config.start import WatchingStartPolicy as StartPolicy
    from pat_ray.core.architecture import Architecture
    from pat_ray.core.contracts import SimilarityMetric, SurgeryBackend
    from pat_ray.core.criterion import Criterion, Scores, filter_norms, member_rows, member_tensor, normalize_per_group
    from pat_ray.core.data import DataBundle
    from pat_ray.core.surgery import channels_to_drop, set_size_attributes
    from pat_ray.plugins.registry import register_plugin, unregister_plugins
    from pat_ray.tracer.graph import ChannelGroup, Member, ModelGraph
    from pat_ray.tracer.layers.declared import LayerRule
    from pat_ray.tracer.layers.family import kept_indices

_LAZY = {  # public name -> (module, name there)
    "Watched": ("pat_ray.config.start", "Watched"),
    "StartPolicy": ("pat_ray.config.start", "WatchingStartPolicy"),
    "Architecture": ("pat_ray.core.architecture", "Architecture"),
    "SimilarityMetric": ("pat_ray.core.contracts", "SimilarityMetric"),
    "SurgeryBackend": ("pat_ray.core.contracts", "SurgeryBackend"),
    "Criterion": ("pat_ray.core.criterion", "Criterion"),
    "Scores": ("pat_ray.core.criterion", "Scores"),
    "filter_norms": ("pat_ray.core.criterion", "filter_norms"),
    "member_rows": ("pat_ray.core.criterion", "member_rows"),
    "member_tensor": ("pat_ray.core.criterion", "member_tensor"),
    "normalize_per_group": ("pat_ray.core.criterion", "normalize_per_group"),
    "DataBundle": ("pat_ray.core.data", "DataBundle"),
    "channels_to_drop": ("pat_ray.core.surgery", "channels_to_drop"),
    "set_size_attributes": ("pat_ray.core.surgery", "set_size_attributes"),
    "register_plugin": ("pat_ray.plugins.registry", "register_plugin"),
    "unregister_plugins": ("pat_ray.plugins.registry", "unregister_plugins"),
    "ChannelGroup": ("pat_ray.tracer.graph", "ChannelGroup"),
    "Member": ("pat_ray.tracer.graph", "Member"),
    "ModelGraph": ("pat_ray.tracer.graph", "ModelGraph"),
    "LayerRule": ("pat_ray.tracer.layers.declared", "LayerRule"),
    "kept_indices": ("pat_ray.tracer.layers.family", "kept_indices"),
}

__all__ = [
    # the hook marker, and registering a plugin object in-process (notebooks, tests), or forgetting them
    "hookimpl",
    "register_plugin",
    "unregister_plugins",
    # criteria: one score per channel of every prunable group
    "Criterion",
    "Scores",
    "member_tensor",
    "member_rows",
    "filter_norms",
    "normalize_per_group",
    # the traced model: channel groups and the layers in them
    "ModelGraph",
    "ChannelGroup",
    "Member",
    "Architecture",
    # similarity metrics and surgery backends (protocols: the right shape is enough)
    "SimilarityMetric",
    "SurgeryBackend",
    "channels_to_drop",
    "set_size_attributes",
    "kept_indices",
    # datasets and custom layers
    "DataBundle",
    "LayerRule",
    # start policies: a pydantic model with `kind: Literal[...]` and decide(position, train_epochs, watched)
    "StartPolicy",
    "Watched",
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, __all__)
