"""Trace a model with torch.fx, then record the shape of every value on one example
(``shape_record``).

Tracing by running: the Python a forward runs on sizes stops plain ``torch.fx`` (``if
x.shape[1] != self.num_tokens:``, a loop over a size, ``len(x.shape)``, ``(*x.shape[:-1], -1, d)``
unpacked into a view, ``int(n ** 0.5)``). Here each such question is answered by the example
input: the graph built so far is run on it and the branch, loop count, length or number that
input gives is the one traced. Ops on sizes stay in the graph (a view's sizes are still known to
come from the tensor they were read from), and so do a buffer's ops (``proxy_buffer_attributes``:
BERT's token-type ids, sliced and expanded to sizes read at run time, would otherwise be a real
tensor handed traced sizes). The graph, and so the channel groups found in it, are those of inputs
of the example's size and rank: for another size a model may take a branch that was never traced
(a position embedding resampled, a window padded), and pruning follows only the branch seen.
Control flow on a tensor's values (``if x.sum() > 0``) differs from one batch to the next and is
still refused. The graph so far runs with its products on meta tensors (``ShapesOnly``), and
with real ones from the moment an op whose result shape follows values is in it.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from pat_ray.core.modes import in_mode
from pat_ray.errors import UnsupportedModelError, first_line
from pat_ray.tracer.graph import Example, first_sample
from pat_ray.tracer.layers.declared import rule_for
from pat_ray.tracer.layers.table import family_of
from pat_ray.tracer.nodes import (
    computed_from,
    reads_shape,
    reads_size,
)
from pat_ray.tracer.shape_record import Recorded, ShapeFromValues, record_shapes, shape_from_values
from pat_ray.tracer.shapes_only import products_on_meta


def trace_with_shapes(model: nn.Module, example_input: Example) -> Recorded:
    """The model's fx graph with every node's result shapes in its ``meta``, recorded on the
    example with the products on meta tensors (``ShapesOnly``) unless an op's result shape
    depends on values. Runs in eval mode without gradients; each module's mode is restored."""
    attributes = [(module, dict(vars(module)), _registered(module)) for module in model.modules()]
    try:
        with in_mode(model, training=False):
            example = first_sample(example_input)
            try:
                tracer = _Tracer(example)
                graph = tracer.trace(model, _defaults_after(model, len(example)))
            finally:
                _restore(attributes)
            return record_shapes(model, graph, example, products_on_meta=tracer.products_on_meta)
    except UnsupportedModelError:
        raise
    except Exception as err:  # fx raises many types; name the model and the cause
        raise _untraceable(model, example_input, err) from err


def _untraceable(model: nn.Module, example_input: Example, err: Exception) -> UnsupportedModelError:
    """The error to show when tracing failed: the model itself may not run on this input (a ViT
    sized for other images, data with other channels), which is the user's to fix, not fx's.
    Only then, after the failure, does the model run once for real to tell the two apart."""
    name = type(model).__name__
    example = first_sample(example_input)
    traced, node = _message(err)
    where = f" ({node})" if node else ""
    try:
        with in_mode(model, training=False), torch.no_grad():
            model(*example)
    except Exception as own:  # the model's own error, whatever its type
        shapes = ", ".join(str(tuple(t.shape)) for t in example)
        mine = _message(own)[0]
        also = where if traced == mine else f" (traced: {traced}{where})"
        return UnsupportedModelError(f"{name} does not run on an input of shape {shapes}: {mine}{also}")
    return UnsupportedModelError(f"torch.fx could not trace {name}: {traced}{where}")


def _message(err: BaseException) -> tuple[str, str | None]:
    """An error's first line, and the fx node it stopped at when torch names one below it
    (``while executing %x : ... = call_module[target=stem.0]``); the rest (an empty traceback,
    a pointer to tlparse) is left out."""
    lines = [line.strip() for line in str(err).splitlines()]
    node = next((line for line in lines[1:] if line.startswith("While executing")), None)
    return first_line(err), (node[0].lower() + node[1:]) if node else None


def _defaults_after(model: nn.Module, given: int) -> dict[str, Any] | None:
    """The defaults of the forward's arguments after the ``given`` examples (timm's Hiera
    ``forward(x, mask=None)``): passed as they are, so ``if mask is not None`` takes the branch a
    call with the example takes, not the one a traced argument would."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())[given:]
    except (TypeError, ValueError):  # no signature Python can read: every argument traced
        return None
    defaults = {
        p.name: p.default
        for p in parameters
        if p.default is not inspect.Parameter.empty
        and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return defaults or None


_REGISTRIES = ("_parameters", "_buffers", "_modules")


def _registered(module: nn.Module) -> dict[str, dict[str, Any]]:
    return {registry: dict(getattr(module, registry)) for registry in _REGISTRIES}


def _restore(attributes: list[tuple[nn.Module, dict[str, Any], dict[str, dict[str, Any]]]]) -> None:
    """Undo what the traced forward stored on its modules as traced values (transformers'
    Swin keeps the window size it computed from the input's size, timm's ConViT a buffer of
    relative positions: ``Proxy`` objects after tracing, which the next real call would meet).
    A real value it stored stays, as after any call of the model (the graph may read it)."""
    for module, held, registered in attributes:
        tables = [(vars(module), held), *((getattr(module, r), registered[r]) for r in _REGISTRIES)]
        for table, before in tables:
            for name in [name for name, value in table.items() if isinstance(value, fx.Proxy)]:
                if name in before:
                    table[name] = before[name]
                else:
                    del table[name]


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with the modules a plugin declared kept whole (a leaf) like nn.Conv2d,
    and so is a subclass of a torch.nn layer that keeps its forward (torchvision's
    ``Conv3DSimple(nn.Conv3d)``): fx would otherwise trace into it and meet a bare ``conv3d``.
    Control flow on a traced value is decided by running the graph so far on ``example``."""

    def __init__(self, example: tuple[torch.Tensor, ...]) -> None:
        super().__init__()
        self.proxy_buffer_attributes = True  # a buffer's ops are recorded, as its sizes may be traced ones
        self.example = example
        self.values: dict[fx.Node, Any] = {}
        self.runner: fx.Interpreter | None = None
        self.sizes_only: dict[fx.Node, bool] = {}  # nodes computed from sizes alone, as far as asked
        self.products_on_meta = True  # until an op whose result shape follows values is met
        self.unpatched = (nn.Module.__call__, nn.Module.__getattr__)  # read before tracing patches them

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """fx's trace, with ``int(x.shape[1] ** 0.5)`` on a traced size read on the example too
        (a Python number the code computes from sizes, as ConViT's patch grid), ``len`` of a
        traced tensor, shape or tuple (transformers' ``(*input_shape, -1, head_dim)``), and
        torch's factories given a traced size recorded (``torch.ones(B, n, device=x.device)``:
        torch's argument parser would refuse a ``Proxy`` there), and item assignment recorded."""
        patched: list[tuple[Any, str, Any]] = [
            *((fx.Proxy, name, self._on_example(convert)) for name, convert in _NUMBER_CONVERSIONS.items()),
            (fx.Proxy, "__len__", lambda proxy: len(self._value(proxy.node))),
            (fx.Proxy, "__setitem__", lambda proxy, key, value: self._assigned(proxy, key, value)),
            (fx.Proxy, "__getattr__", lambda proxy, name: self._attribute(proxy, name)),
            *((torch, name, self._recorded(getattr(torch, name))) for name in _FACTORIES),
        ]
        saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patched]
        for owner, name, replacement in patched:
            setattr(owner, name, replacement)
        try:
            return super().trace(root, concrete_args)
        finally:
            for owner, name, method in saved:
                if method is None:
                    delattr(owner, name)
                else:
                    setattr(owner, name, method)

    def _attribute(self, proxy: fx.Proxy, name: str) -> Any:
        """``x.device`` and ``x.dtype`` are the example's, no traced values: pruning never changes
        them, and code hands them where torch wants real ones (``torch.autocast(x.device.type)``,
        ``torch.finfo(x.dtype)``). A value made from sizes alone has the attributes the example's
        has: ``np.prod(x.shape[1:])`` (Perceiver) asks a size tuple for ``prod``, finds none and
        multiplies its items."""
        if name in ("device", "dtype"):
            return getattr(self._value(proxy.node), name)
        if _from_sizes(proxy.node, self.sizes_only) and not hasattr(self._value(proxy.node), name):
            raise AttributeError(f"{type(self._value(proxy.node)).__name__!r} object has no attribute {name!r}")
        return fx.proxy.Attribute(proxy, name)

    def _assigned(self, proxy: fx.Proxy, key: Any, value: Any) -> None:
        """``t[..., 2] = v`` (ConViT's relative indices filled in): recorded; the channel rule
        keeps whatever channels it writes into or from."""
        self.create_proxy("call_function", operator.setitem, (proxy, key, value), {})

    def _on_example(self, convert: Callable[[Any], Any]) -> Callable[[fx.Proxy], Any]:
        return lambda proxy: convert(self._size_value(proxy))

    def _recorded(self, factory: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            traced: list[bool] = []
            fx.node.map_aggregate((args, kwargs), lambda a: traced.append(isinstance(a, fx.Proxy)))
            return (
                self.create_proxy("call_function", factory, args, kwargs) if any(traced) else factory(*args, **kwargs)
            )

        return call

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self._size_value(obj))

    def _size_value(self, obj: fx.Proxy) -> Any:
        """The example's value of ``obj``, which must be computed from sizes only."""
        value = self._value(obj.node)
        reads = _tensor_read(obj.node, self.values)
        if reads is not None:
            raise UnsupportedModelError(
                f"{type(self.root).__name__}: its control flow depends on the values of tensor {reads.name!r}, "
                "not only on sizes; "
                "pat_ray traces a branch only where the example's shapes decide it"
            )
        return value

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        return iter(self._items(obj))

    def _items(self, obj: Any) -> list[Any]:
        """The items of a traced tuple, each as the code wrote it: a size tuple built as
        ``x.size()[:-2] + (self.all_head_size,)`` unpacks to reads of ``x``'s sizes and the
        number itself, so a view given ``*shape`` still shows which sizes are numbers in the code."""
        if not isinstance(obj, fx.Proxy):  # a tuple as written, whose traced items the graph holds as nodes
            return [self._as_proxy(item) for item in obj]
        node = obj.node
        if node.target is operator.add and len(node.args) == 2 and all(self._is_sequence(a) for a in node.args):
            return [item for part in node.args for item in self._items(self._as_proxy(part))]
        whole = node.args[0] if node.target is operator.getitem else None
        if isinstance(whole, fx.Node) and isinstance(node.args[1], slice) and reads_shape(whole):
            positions = range(*node.args[1].indices(len(self._value(whole))))
            return [fx.Proxy(whole, self)[i] for i in positions]  # type: ignore[index]
        return [obj[i] for i in range(len(self._value(node)))]  # type: ignore[index]

    def _is_sequence(self, value: Any) -> bool:
        """A tuple or list, as written or as the example makes it."""
        return isinstance(self._value(value) if isinstance(value, fx.Node) else value, tuple | list)

    def _as_proxy(self, value: Any) -> Any:
        return fx.Proxy(value, self) if isinstance(value, fx.Node) else value

    def _value(self, wanted: fx.Node) -> Any:
        """What ``wanted`` holds on the example input, the graph so far run with its products on
        meta tensors; once an op whose result shape follows values is met, with real products
        from the start (a branch on ``len(picked)`` after ``nonzero`` must see the real count)."""
        if wanted in self.values:
            return self.values[wanted]
        try:
            return self._run_until(wanted)
        except ShapeFromValues:
            self.products_on_meta = False
            self.values.clear()  # the values so far came from zeros: run the graph again
            return self._run_until(wanted)

    def _run_until(self, wanted: fx.Node) -> Any:
        """Tracing patches ``nn.Module`` so that a call or a parameter read records a node; the
        real run needs the plain ones back."""
        patched = (nn.Module.__call__, nn.Module.__getattr__)
        nn.Module.__call__, nn.Module.__getattr__ = self.unpatched  # type: ignore[method-assign]
        try:
            if self.runner is None:  # one for the whole trace: the graph only grows at its end
                self.runner = fx.Interpreter(self.root, graph=self.graph, garbage_collect_values=False)
                self.runner.env = self.values
            runner = self.runner
            inputs = iter(self.example)
            with torch.no_grad(), products_on_meta(self.products_on_meta):
                for node in self.graph.nodes:
                    if node not in self.values:
                        if self.products_on_meta and shape_from_values(node, self.values):
                            raise ShapeFromValues(node.name)
                        default = node.args[0] if node.args else None
                        is_input = node.op == "placeholder"
                        self.values[node] = next(inputs, default) if is_input else runner.run_node(node)
                    if node is wanted:
                        return self.values[node]
        finally:
            nn.Module.__call__, nn.Module.__getattr__ = patched  # type: ignore[method-assign]
        raise AssertionError(f"node {wanted.name!r} is not in the graph being traced")

    def call_module(
        self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A module made in the forward (DistilBERT's ``nn.ReLU()(x)``) is no submodule fx can
        name: a stateless one is traced as the ops it runs; one with weights is refused, since
        nothing could prune or even keep its weights. A layer handed no tensor at all (Perceiver's
        ``nn.Identity()`` given ``inputs=None``) is run: its result (``None``) is what the forward's
        next ``if inputs is not None`` must see, not a traced value."""
        try:
            self.path_of_module(m)
        except NameError:
            if any(True for _ in m.parameters()) or any(True for _ in m.buffers()):
                raise UnsupportedModelError(
                    f"{type(self.root).__name__}: its forward creates a {type(m).__name__} with weights on every call "
                    "(no submodule of the model); create it in __init__"
                ) from None
            return forward(*args, **kwargs)
        given: list[bool] = []
        fx.node.map_aggregate((args, kwargs), lambda a: given.append(isinstance(a, fx.Proxy | torch.Tensor)))
        if not any(given) and not any(True for _ in m.parameters()):
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            rule_for(m) is not None
            or super().is_leaf_module(m, module_qualified_name)
            or _inherits_torch_forward(type(m))
            or _followed_whole(m)
        )


def _followed_whole(module: nn.Module) -> bool:
    """A layer read as one by its family (nn.MultiheadAttention, Swin's window attention),
    pruned or not (a pruned one runs a forward of pat_ray's)."""
    family = family_of(module)
    return family is not None and family.whole_unless_followed


_NUMBER_CONVERSIONS = {"__int__": int, "__index__": int, "__float__": float}
_FACTORIES = ("zeros", "ones", "empty", "full", "arange", "eye", "rand", "randn", "linspace", "tensor")


def _tensor_read(condition: fx.Node, values: dict[fx.Node, Any]) -> fx.Node | None:
    """A tensor whose values (not just its size, dtype or device) ``condition`` is computed from."""
    for node in computed_from(condition, stop=reads_size):
        if not reads_size(node) and isinstance(values.get(node), torch.Tensor) and node.op != "get_attr":
            return node
    return None


def _from_sizes(node: fx.Node, known: dict[fx.Node, bool]) -> bool:
    """Computed from tensors' sizes and constants only (``x.shape[1:-1]``, ``C // heads``).
    ``known`` holds the answers for nodes asked before: each node is looked at once per trace."""
    pending = [node]
    while pending:
        n = pending[-1]
        if n in known:
            pending.pop()
            continue
        if reads_size(n) or n.op not in ("call_function", "call_method"):
            known[n] = reads_size(n)
            pending.pop()
            continue
        unknown = [i for i in n.all_input_nodes if i not in known]
        if unknown:
            pending.extend(unknown)
            continue
        known[n] = all(known[i] for i in n.all_input_nodes)
        pending.pop()
    return known[node]


def _inherits_torch_forward(kind: type[nn.Module]) -> bool:
    base: type[nn.Module] = next((c for c in kind.__mro__ if c.__module__.startswith("torch.nn.modules")), nn.Module)
    return base not in (nn.Module, nn.Sequential) and kind.forward is base.forward
