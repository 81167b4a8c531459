"""The channel tracer: which channels of a model must be removed together, and what each
costs. Pure torch (torch.fx), no pat_ray layer above it.

Where things are, by what a contributor adds (CONTRIBUTING.md walks through both):

- ``trace.py``: the entry (``trace_channel_groups``) and the walk over the fx graph.
- ``state.py``: layouts, the union-find over groups, the members and cost terms found so far.
- ``finalize.py``: the builder's state turned into the ``ModelGraph`` (attention heads included).
- ``graph.py``: what tracing returns (``ModelGraph``, ``ChannelGroup``, ``Member``, ``ComputeTerm``).
- ``nodes.py``: reading one fx node (shapes, arguments); ``fx_trace.py``: tracing and shapes.
- ``ops/``: one module per op family and ``ops/table.py``, the op kinds and their rules.
- ``layers/``: one module per layer family (its trace rule, surgery, cost and timing) and
  ``layers/table.py``, the families that the tracer, surgery, the FLOPs count and the
  latency probe all read.
"""
