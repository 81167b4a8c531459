"""The pruned model as a file that loads without pat_ray: for deployment and serving.

A checkpoint needs pat_ray to load (it rebuilds the base model from the registry and applies
the architecture); the pruned model itself is plain ``torch.nn`` modules, which every PyTorch
serialization format holds. Each export is checked before it is kept: the written file is
loaded back and must give the checkpoint's outputs (within ``TOLERANCE``) on a random batch
of another size than the one traced, so a format that cannot hold the model (control flow
that depends on the data, a batch size baked into a trace) is an ``ExportError``, never a
broken file.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

from pat_ray.errors import ExportError, first_line
from pat_ray.export_formats import FORMATS, SUFFIXES
from pat_ray.storage import Location, has_scheme
from pat_ray.training.checkpoint import Checkpoint, load_checkpoint, sidecar

# an exported output may differ from the checkpoint's by ATOL + RTOL x |output|: another runtime
# sums in another order (float32), while a shape or value baked into the graph differs by far more
ATOL, RTOL = 1e-5, 1e-4
TRACE_BATCH, CHECK_BATCH = 2, 3  # traced with one batch size, checked with another


def export_model(
    checkpoint: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike | None = None,
    *,
    model: Callable[..., nn.Module] | None = None,
    trust: Iterable[str] = (),
) -> Path:
    """Write the pruned model of ``checkpoint`` as ``fmt`` (one of ``FORMATS``) to ``out``
    (default: beside the checkpoint, ``last.<fmt suffix>``); returns the path written.

    ``state_dict`` also writes ``<out>.json`` (``model.pt`` -> ``model.pt.json``): the base
    model's name and parameters, the input shape and the architecture, which rebuilding the
    pruned module needs: ``pat_ray.load_checkpoint(out)`` reads both."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    pruned, ckpt = load_checkpoint(checkpoint, model=model, trust=trust)  # as load_checkpoint takes them
    pruned.eval()
    target = Path(out) if out is not None else _beside(checkpoint, fmt)
    if target.is_dir():
        raise ExportError(f"{target} is a folder; --out takes a file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    write, load = WRITERS[fmt]
    example = _batch(ckpt, TRACE_BATCH)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export_") as scratch:
        staged = Path(scratch) / target.name
        with torch.no_grad():
            write(pruned, example, staged, ckpt)
        exported = load(staged, ckpt) if fmt != "state_dict" else _weights_into(pruned, staged)
        _check_outputs(pruned, exported, _batch(ckpt, CHECK_BATCH), fmt)
        if fmt == "state_dict":
            os.replace(sidecar(staged), sidecar(target))
        os.replace(staged, target)
    return target


def _beside(checkpoint: str | os.PathLike, fmt: str) -> Path:
    """The default file: beside a local checkpoint; for one in a store, in the current folder."""
    if has_scheme(checkpoint):
        return Path(Location.of(checkpoint).name).with_suffix(SUFFIXES[fmt]).absolute()
    return Path(checkpoint).with_suffix(SUFFIXES[fmt])


def _batch(ckpt: Checkpoint, size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn((size, *ckpt.input_shape[1:]), generator=generator)


def _check_outputs(model: nn.Module, exported: Callable[[torch.Tensor], torch.Tensor], batch, fmt: str) -> None:
    with torch.no_grad():
        expected = model(batch)
        try:
            got = exported(batch)
        except Exception as err:  # the format's own runtime refuses the batch: a shape baked in
            failure = first_line(err)
            raise ExportError(f"{fmt}: the exported model fails on a batch of {len(batch)}: {failure}") from None
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=ATOL, rtol=RTOL):
        worst = (got - expected).abs().max().item() if got.shape == expected.shape else float("inf")
        raise ExportError(
            f"{fmt} cannot hold this model: its outputs differ from the checkpoint's by up to {worst:.3g} "
            f"(allowed {ATOL:g} + {RTOL:g} x |output|); the model's forward probably depends on its input's "
            "values or size"
        )


# --- one writer and one loader per format -------------------------------------------------------


def _write_state_dict(model: nn.Module, example: torch.Tensor, path: Path, ckpt: Checkpoint) -> None:
    torch.save(model.state_dict(), path)
    description = {
        "model_name": ckpt.model_name,
        "model_source": ckpt.model_source,
        "model_params": ckpt.model_params,
        "input_shape": list(ckpt.input_shape),
        "architecture": ckpt.architecture.to_dict(),
    }
    sidecar(path).write_text(json.dumps(description, indent=1))


def _weights_into(model: nn.Module, path: Path) -> nn.Module:
    """The written weights loaded into a copy of the pruned module (``load_checkpoint(FILE)`` builds
    the same module from ``FILE.json``)."""
    copy = deepcopy(model)
    copy.load_state_dict(torch.load(path, weights_only=True))
    return copy.eval()


def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path, ckpt: Checkpoint) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation: the user chose the format
        warnings.simplefilter("error", torch.jit.TracerWarning)  # a trace that would not generalize
        try:
            traced = torch.jit.trace(model, example)
        except torch.jit.TracerWarning as warning:
            raise ExportError(f"torchscript cannot hold this model: tracing says {first_line(warning)}") from None
        except Exception as err:
            raise ExportError(f"torchscript: tracing fails on this model: {first_line(err)}") from None
        torch.jit.save(traced, str(path))


def _load_torchscript(path: Path, ckpt: Checkpoint):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def _write_pt2(model: nn.Module, example: torch.Tensor, path: Path, ckpt: Checkpoint) -> None:
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    except Exception as err:
        raise ExportError(f"pt2: torch.export cannot capture this model: {first_line(err)}") from None
    torch.export.save(program, str(path))


def _load_pt2(path: Path, ckpt: Checkpoint):
    return torch.export.load(str(path)).module()


def _require_onnx() -> None:
    missing = []
    for name in ("onnxscript", "onnxruntime"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f'onnx needs {" and ".join(missing)}, which pip install "pat-ray[onnx]" adds')


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path, ckpt: Checkpoint) -> None:
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.onnx.export(
            model, (example,), input_names=["input"], dynamic_shapes=({0: batch},), dynamo=True, verbose=False
        )
        if program is None:
            raise RuntimeError("the exporter returned no program")
        program.save(str(path))
    except Exception as err:
        raise ExportError(f"onnx: the exporter cannot convert this model: {first_line(err)}") from None


def _load_onnx(path: Path, ckpt: Checkpoint):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: torch.from_numpy(session.run(None, {name: batch.numpy()})[0])


WRITERS: dict[str, tuple[Callable, Callable]] = {
    "state_dict": (_write_state_dict, lambda path, ckpt: None),  # checked against the pruned module itself
    "torchscript": (_write_torchscript, _load_torchscript),
    "pt2": (_write_pt2, _load_pt2),
    "onnx": (_write_onnx, _load_onnx),
}
