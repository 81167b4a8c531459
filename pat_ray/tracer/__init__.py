"""The channel tracer: which channels of a model must be removed together, and what each
costs. Pure torch (torch.fx), no pat_ray layer above it.

Where things are, by what a contributor adds (CONTRIBUTING.md walks through three examples):

- ``trace.py``: the entry (``trace_channel_groups``) and the walk over the fx graph.
- ``state.py``: layouts, the union-find over groups, the members and cost terms found so far.
- ``finalize.py``: the builder's state turned into the ``ModelGraph`` (attention heads included).
- ``graph.py``: what tracing returns (``ModelGraph``, ``ChannelGroup``, ``Member``, ``ComputeTerm``).
- ``nodes.py``: reading one fx node (shapes, arguments); ``fx_trace.py``: tracing and shapes.
- ``ops/``: one module per op family, each rule registered with ``@op_rule`` in
  ``ops/registry.py`` (by function or method name, and form: one result, several, or reading
  several); ``ops/table.py`` imports them all.
- ``layers/``: one module per layer family (its trace rule, surgery, cost and timing), each
  registered with ``@layer_family`` in ``layers/registry.py`` (by module class);
  ``layers/table.py`` imports them all and is where the tracer, surgery, the FLOPs count and
  the latency probe look a module's family up.
- ``on_import.py``: rules for a library's own layers and functions (torchvision's Swin,
  ``ops/torchvision_functions.py``), registered when that library is imported, not before.
"""
