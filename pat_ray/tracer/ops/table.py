"""Every op rule, registered: importing this module imports each rule module, whose
``@op_rule`` decorators fill ``registry.OPS``; ``op_family`` is how the tracer looks a node up.

A target in no kind stops the trace with an error naming it, unless torch tags it pointwise
(then it is element-wise, followed as ``binary``). Extending a kind's targets is
only safe for ops whose channel semantics are exactly the ones its rule assumes. Adding a kind:
a rule in a module of ``ops/`` (or of ``layers/`` for a layer's functional form) decorated with
``@op_rule``, and that module imported below; CONTRIBUTING.md walks through one.
"""

from __future__ import annotations

from pat_ray.tracer.layers import functional, functional_norms, layer_norm  # noqa: F401  (register their rules)
from pat_ray.tracer.ops import (  # noqa: F401
    along_dim,
    elementwise,
    interleave,
    joins,
    products,
    reductions,
    shape,
    splits,
    unpool,
    windows,
)
from pat_ray.tracer.ops.pointwise import is_pointwise
from pat_ray.tracer.ops.registry import OPS, OpFamily, OpForm

__all__ = ["OPS", "op_family"]


def op_family(op: str, target: object, form: OpForm = "tensor") -> OpFamily | None:
    """The family of a ``call_function`` / ``call_method`` node's target in ``form`` (None: no
    rule knows it). An element-wise torch op no rule names is followed by the ``binary`` rule
    (``pointwise.py``)."""
    family = OPS.family(op, target, form)
    if family is None and form == "tensor" and is_pointwise(op, target):
        return OPS["binary"]
    return family
