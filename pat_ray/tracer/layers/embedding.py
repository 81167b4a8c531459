"""``nn.Embedding``: a table of one row per token id; its columns are output channels.

Removing a column removes that channel from every id's vector, so the embedding is pruned with
the channels it feeds (a text model's hidden width) and its input, integer ids, has no channels
to follow. One with ``max_norm`` rescales each looked-up row by its norm over all columns, which
pruning would change: its columns are kept.
"""

from __future__ import annotations

from collections.abc import Hashable

from torch import nn

from pat_ray.tracer.layers.family import Cut, LayerCall, LayerFamily, Rewrite, kept_indices, select
from pat_ray.tracer.layers.registry import layer_family
from pat_ray.tracer.layout import Layout, Term


@layer_family(nn.Embedding)
class Embedding(LayerFamily):
    timed = True
    reads_indices = True

    def trace(self, call: LayerCall) -> Layout:
        module = call.module
        assert isinstance(module, nn.Embedding)
        builder, name = call.builder, call.name
        pinned = name in builder.excluded or module.max_norm is not None
        out = builder.new_group(module.embedding_dim, name, pinned=pinned, axis=len(call.out_shape) - 1)
        builder.add_member(name, "out", out, 1)
        builder.add_term(Term(module=name, out=out, params_per_out=module.num_embeddings))
        return out

    def shrink(self, module: nn.Module, cut: Cut, rewrite: Rewrite) -> None:
        assert isinstance(module, nn.Embedding)
        keep = kept_indices(module.embedding_dim, cut.drop_out)
        rewrite(module, "weight", select(1, keep))
        module.embedding_dim = len(keep)

    def rebuilt(self, module: nn.Module, n_in: int, n_out: int) -> nn.Module:
        assert isinstance(module, nn.Embedding)
        return nn.Embedding(module.num_embeddings, n_out, padding_idx=module.padding_idx)

    def timing_key(self, module: nn.Module, n_in: int, n_out: int) -> tuple[Hashable, ...]:
        assert isinstance(module, nn.Embedding)
        return ("Embedding", module.num_embeddings, n_out)
