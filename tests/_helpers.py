"""Shared test utilities: emulate a prune by zeroing, and make BatchNorm non-trivial."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from pat_ray.config import Config
from pat_ray.core.architecture import Architecture
from pat_ray.tracer.graph import ModelGraph


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so that a test
    comparing outputs actually exercises how the BN slices were moved."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def zero_removed_channels(model: nn.Module, graph: ModelGraph, arch: Architecture) -> None:
    """Force the outputs of the channels ``arch`` drops to exactly zero in the unpruned model:
    zero the producers' filters and biases, the BatchNorms' scale and shift, and the parameters
    applied per channel (a position embedding added to them would make them non-zero again)."""
    with torch.no_grad():
        for group in graph.groups:
            if group.name not in arch.kept:
                continue
            mask = torch.ones(group.size, dtype=torch.bool)
            mask[list(arch.kept[group.name])] = False
            drop = mask.nonzero().flatten()
            for member in group.members:
                if member.role == "param":
                    owner, _, name = member.module.rpartition(".")
                    getattr(model.get_submodule(owner), name).index_fill_(member.axis, member.positions(drop), 0.0)
                if member.role in ("in", "param"):
                    continue
                module = model.get_submodule(member.module)
                for name in ("weight", "bias"):
                    tensor = getattr(module, name, None)
                    if tensor is not None:
                        axis = member.axis if tensor.dim() > 1 else 0  # a transposed conv's outputs: dim 1
                        tensor.index_fill_(axis, member.positions(drop), 0.0)


def configured(base: Config | None = None, **overrides) -> Config:
    """``base`` (default: the embedded pipeline) with ``overrides`` merged in section by section,
    then validated as a YAML file would be: tests never build a config validation did not see.
    A pydantic section given as an override (``start=FixedStart(epoch=1)``) replaces that section,
    and so do a ``start`` dict and a plugin's ``params`` dict."""
    from pydantic import BaseModel

    from pat_ray.config import config_from_dict

    data = (base or Config()).model_dump(mode="json")
    for key, value in overrides.items():
        if isinstance(value, BaseModel):
            data[key] = value.model_dump(mode="json")
        elif isinstance(value, dict) and isinstance(data.get(key), dict) and key != "start":
            data[key] = _merged(data[key], value)  # a start section is one policy's: replaced whole
        else:
            data[key] = str(value) if hasattr(value, "__fspath__") else value
    return config_from_dict(data, source="test config")


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("start", "params")
        out[key] = _merged(out[key], value) if nested else value
    return out


def assert_pruning_is_exact(
    model: nn.Module, x: torch.Tensor, budget: float = 0.5, counted_by_torch: bool = True
) -> Architecture:
    """Prune ``model`` (eval mode, magnitude scores) and check it computes what the dense model
    computes with the removed channels zeroed, and that its measured cost is what torch
    counts (``counted_by_torch=False`` where torch computes a product in fewer MACs than
    pat_ray's cost model counts for it); returns the architecture applied."""
    import copy

    from pat_ray.core.cost.flops import measure_cost
    from pat_ray.core.selection import Budget, select_architecture
    from pat_ray.core.surgery import apply_architecture
    from pat_ray.plugins.builtin.criteria.magnitude import Magnitude
    from pat_ray.tracer.trace import trace_channel_groups

    model.eval()
    graph = trace_channel_groups(model, x)
    arch = select_architecture(graph, Magnitude().scores(model, graph), Budget(budget))
    reference = copy.deepcopy(model)
    zero_removed_channels(reference, graph, arch)
    apply_architecture(model, graph, arch)
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    if counted_by_torch:
        assert flops_counted_by_torch(model, x) == measure_cost(model, x).flops
    return arch


def flops_counted_by_torch(model: nn.Module, x: torch.Tensor) -> int:
    """One sample's multiply-accumulates as torch's ``FlopCounterMode`` counts them (half its
    FLOPs): the check of pat_ray's cost model that shares nothing with it. ``measure_cost`` and
    the traced cost both read pat_ray's layer families, so a family that is missing or counts
    wrong agrees with itself there; here every conv, matmul and attention product torch runs is
    counted. Gradients on and SDPA's math kernel, so attention runs as the matmuls the counter
    knows (no-grad multi-head attention and the CPU flash kernel are fused ops it skips). The
    counter has no formula for ``aten._trilinear`` (``nn.Bilinear``): it gets one here, from the
    op's shapes alone."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from pat_ray.core.modes import in_mode

    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten._trilinear: _trilinear_flops})
    with counter, torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), in_mode(model, training=False):
        model(x[:1])
    return counter.get_total_flops() // 2


def _trilinear_flops(first, second, third, expand1, expand2, expand3, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``_trilinear``: each operand gets size-1 axes at its ``expand`` positions, and
    one multiply-add per point of the broadcast index space (2 FLOPs, as the counter counts)."""

    def expanded(shape, axes) -> list[int]:
        dims = list(shape)
        for axis in sorted(axes):
            dims.insert(axis, 1)
        return dims

    shapes = [expanded(first, expand1), expanded(second, expand2), expanded(third, expand3)]
    return 2 * math.prod(max(dims[i] for dims in shapes) for i in range(len(shapes[0])))


def assert_architecture_is_exact(model: nn.Module, x: torch.Tensor, graph: ModelGraph, arch: Architecture) -> None:
    """Apply ``arch`` to ``model``: it computes what the dense model computes with the removed
    channels zeroed, and its measured cost is the one ``graph`` predicted."""
    import copy

    from pat_ray.core.cost.flops import cost_of, measure_cost
    from pat_ray.core.surgery import apply_architecture

    reference = copy.deepcopy(model)
    zero_removed_channels(reference, graph, arch)
    predicted = cost_of(graph.terms, {g.name: g.size for g in graph.groups} | {n: len(k) for n, k in arch.kept.items()})
    apply_architecture(model, graph, arch)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-4)
    assert measure_cost(model, x) == predicted
    assert flops_counted_by_torch(model, x) == predicted.flops  # and by a counter that shares no table with it


def fail_once_after(epoch: int, marker) -> object:
    """An observer plugin that raises once, in whichever process first finishes ``epoch``
    (a Ray worker or a Tune trial: the class is local, so Ray ships it by value), and
    creates ``marker`` to say it did. How tests exercise recovery without a switch in the
    public API."""
    import os

    import pat_ray

    class FailOnce:
        @pat_ray.hookimpl
        def pat_ray_on_epoch_end(self, epoch: int, metrics: dict) -> None:
            if epoch != self.epoch:
                return
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            raise RuntimeError(f"injected fault after epoch {epoch} in run with fingerprint {metrics['fingerprint']}")

    plugin = FailOnce()
    plugin.epoch, plugin.marker = epoch, str(marker)
    return plugin


def start_cli(*args: str, env: dict | None = None, cwd=None):
    """``pat-ray ARGS`` in a process of its own, its output (stdout and stderr) readable by line."""
    import os
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "pat_ray.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def stop_after_epoch(process, epoch: int, signum: int) -> str:
    """Send ``signum`` to a ``pat-ray run`` once it printed ``epoch``'s line; all it printed."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(f"epoch {epoch:>3}"):
            process.send_signal(signum)
            break
    return "".join(seen) + process.communicate(timeout=120)[0]


def without_pat_ray(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """``script`` in a Python whose path holds the installed packages but not pat_ray: no site
    hooks (so no editable install) and a working directory away from the repository."""
    import sysconfig

    site_packages = sysconfig.get_paths()["purelib"]
    guard = "import importlib.util, sys\nassert importlib.util.find_spec('pat_ray') is None, sys.path\n"
    return subprocess.run(
        [sys.executable, "-S", "-c", guard + script],
        cwd=cwd,
        env={"PYTHONPATH": site_packages, "PATH": "/usr/bin:/bin", "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=300,
    )
