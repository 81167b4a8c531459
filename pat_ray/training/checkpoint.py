"""Checkpoint format: enough to rebuild a pruned model from its base model's name.

A checkpoint holds the base model's registry name and build parameters, the input shape
used for tracing, the architecture relative to the *base* model, the state dict, and any
extra training state (optimizer, epoch, EPI history). Loading rebuilds the base model,
applies the architecture with native surgery and loads the weights.

Everything in a checkpoint is tensors and plain Python data, so it is read with
``torch.load(weights_only=True)``: a file crafted to run code is refused, not executed.
Every way a file can be wrong surfaces as one ``CheckpointError`` naming the file. Writes
go to a temp file in the same directory, then ``os.replace``: a crash never leaves a
half-written file.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pat_ray.core.architecture import Architecture
from pat_ray.core.surgery import apply_architecture
from pat_ray.errors import CheckpointError, TargetError
from pat_ray.plugins.recipes import ModelRecipe, Source
from pat_ray.plugins.user_code import trusting
from pat_ray.storage import Location, atomic_write, has_scheme
from pat_ray.tracer.trace import trace_channel_groups

FORMAT_VERSION = 1
_FIELDS = {
    "model_name": str,
    "model_params": dict,
    "input_shape": list,
    "architecture": dict,
    "state_dict": dict,
    "extra": dict,
}


@dataclass
class Checkpoint:
    model_name: str  # a registry name, an import path, or what a model handed over in Python was
    model_params: dict[str, Any]
    input_shape: tuple[int, ...]
    architecture: Architecture
    state_dict: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)
    source: Path | str | None = None  # the file (or URI) it was read from
    model_source: Source = "registry"  # how model_name makes the model (ModelRecipe.source)

    @property
    def recipe(self) -> ModelRecipe:
        return ModelRecipe(self.model_source, self.model_name, dict(self.model_params))


def atomic_torch_save(obj: Any, path: str | os.PathLike, backup: str | os.PathLike | None = None) -> None:
    atomic_write(path, lambda handle: torch.save(obj, handle), backup)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    made_by: str | ModelRecipe | Callable[..., nn.Module],
    architecture: Architecture,
    input_shape: tuple[int, ...],
    model_params: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    backup: str | os.PathLike | None = None,
) -> None:
    """Save ``model`` (pruned to ``architecture``, relative to the base model) atomically.

    ``made_by`` says how the base model is built again: a registered model's name, an import
    path (``"my_pkg.nets:SmallCNN"``), the class or factory itself (recorded by its import path
    when it has one), or a ``ModelRecipe``; ``model_params`` are its keyword arguments.
    ``extra`` must hold tensors and plain data only (what ``weights_only`` loading reads);
    ``backup``: keep the file this replaces under that name."""
    recipe = recipe_of(made_by, model_params)
    atomic_torch_save(
        {
            "format_version": FORMAT_VERSION,
            "pat_ray_version": _own_version(),
            "model_name": recipe.name,
            "model_source": recipe.source,
            "model_params": dict(recipe.params),
            "input_shape": list(input_shape),
            "architecture": architecture.to_dict(),
            "state_dict": model.state_dict(),
            "extra": dict(extra or {}),
        },
        path,
        backup,
    )


def recipe_of(made_by: str | ModelRecipe | Callable[..., nn.Module], params: dict[str, Any] | None) -> ModelRecipe:
    if isinstance(made_by, ModelRecipe):
        return made_by if params is None else ModelRecipe(made_by.source, made_by.name, dict(params))
    if isinstance(made_by, str):
        return ModelRecipe("import" if ":" in made_by else "registry", made_by, dict(params or {}))
    return ModelRecipe.of(None, None, dict(params or {}), given=made_by)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """The contents of a pat_ray checkpoint (a local file or a URI); never runs code stored in the file."""
    if has_scheme(path):
        return _read_remote(str(path), map_location)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "is a folder, not a file" if path.is_dir() else "does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "is empty (a write was interrupted?)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Weights only" in str(err):
            raise CheckpointError(
                path,
                "holds Python objects other than tensors and plain data; refused, since loading them could run code",
            ) from None
        raise CheckpointError(path, f"is damaged ({_first_line(err)})") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, zip errors... for broken files
        raise CheckpointError(path, f"is damaged or not a PyTorch file ({_first_line(err)})") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version > FORMAT_VERSION:
        writer = data.get("pat_ray_version")
        by = f"pat_ray {writer}" if isinstance(writer, str) else "a newer pat_ray"
        raise CheckpointError(
            path,
            f"was written by {by} (checkpoint format {version}); this pat_ray {_own_version()} reads format "
            f"{FORMAT_VERSION}: upgrade pat_ray{f' to {writer} or newer' if isinstance(writer, str) else ''}",
        )
    if not isinstance(data, dict) or version != FORMAT_VERSION:
        plain = isinstance(data, dict) and data and all(torch.is_tensor(v) for v in data.values())
        if plain and sidecar(path).is_file():  # `pat-ray export --format state_dict`: weights + FILE.json
            data = {**_described(path), "state_dict": data, "extra": {}}
        else:
            what = "a plain state dict" if plain else f"a {type(data).__name__}"
            raise CheckpointError(path, f"is not a pat_ray checkpoint (format {FORMAT_VERSION}); it holds {what}")
    for name, kind in _FIELDS.items():
        if not isinstance(data.get(name), kind):
            raise CheckpointError(path, f"field {name!r} is missing or not a {kind.__name__}")
    try:
        architecture = Architecture.from_dict(data["architecture"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(path, f"its architecture is invalid ({err})") from None
    source = data.get("model_source", "registry")
    if source not in ("registry", "import", "object"):
        raise CheckpointError(path, f"field 'model_source' is {source!r}, not registry, import or object")
    return Checkpoint(
        model_name=data["model_name"],
        model_source=source,
        model_params=data["model_params"],
        input_shape=tuple(data["input_shape"]),
        architecture=architecture,
        state_dict=data["state_dict"],
        extra=data["extra"],
        source=path,
    )


def sidecar(path: Path) -> Path:
    """The JSON beside an exported state dict (``model.pt`` -> ``model.pt.json``): how its module is built."""
    return path.with_name(path.name + ".json")


def _described(path: Path) -> dict[str, Any]:
    """An exported state dict's sidecar, as the fields of a checkpoint."""
    try:
        described = json.loads(sidecar(path).read_text())
        fields = {name: described[name] for name in ("model_name", "model_params", "input_shape", "architecture")}
        return {**fields, "model_source": described.get("model_source", "registry")}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(sidecar(path), f"does not describe the exported model ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def build_pruned_model(
    recipe: ModelRecipe,
    architecture: Architecture,
    input_shape: tuple[int, ...],
    given: Callable[..., nn.Module] | None = None,
    what: str = "checkpoint",
) -> nn.Module:
    """The base model ``recipe`` makes (``given``: its class or factory, for a model handed
    over in Python), physically pruned to ``architecture``."""
    factory = recipe.factory(what, given)
    model = factory(**recipe.params)
    graph = trace_channel_groups(model, torch.zeros(1, *input_shape[1:]), attention=architecture.attention)
    apply_architecture(model, graph, architecture)
    return model


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pat-ray")
    except PackageNotFoundError:
        return "(not installed)"


def _read_remote(uri: str, map_location: str | torch.device) -> Checkpoint:
    with tempfile.TemporaryDirectory(prefix="pat_ray_ckpt_") as folder:
        try:
            local = Location.of(uri).download(Path(folder) / "checkpoint.pt")
        except FileNotFoundError:
            raise CheckpointError(uri, "does not exist") from None
        try:
            ckpt = read_checkpoint(local, map_location)
        except CheckpointError as err:
            raise CheckpointError(uri, err.problem) from None
    ckpt.source = uri
    return ckpt


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device = "cpu",
    *,
    model: Callable[..., nn.Module] | None = None,
    trust: Iterable[str] = (),
) -> tuple[nn.Module, Checkpoint]:
    """Rebuild the pruned model saved at ``path``; returns it with the checkpoint's contents.

    A model made from an import path is imported only from a module the user trusts
    (``trust=["my_pkg"]``, ``pat_ray.trust``, ``PAT_RAY_TRUST``) or when its class or factory is
    passed as ``model``: reading a file never runs code by itself."""
    from pat_ray.errors import PluginError

    ckpt = read_checkpoint(path, map_location)
    what = f"checkpoint {str(path)!r}"
    try:
        with trusting(trust):
            built = build_pruned_model(ckpt.recipe, ckpt.architecture, ckpt.input_shape, model, what)
    except (PluginError, TargetError) as err:
        raise CheckpointError(path, f"its model cannot be built here: {str(err).removeprefix(what + ': ')}") from None
    except KeyError:
        raise CheckpointError(
            path,
            f"was written for model {ckpt.model_name!r}, which is not registered here (`pat-ray plugins --kind model` "
            "lists what is; a plugin's model needs its distribution installed)",
        ) from None
    except (ValueError, TypeError) as err:
        raise CheckpointError(path, f"its architecture does not fit model {ckpt.model_name!r} ({err})") from None
    try:
        built.load_state_dict(ckpt.state_dict)
    except RuntimeError as err:
        raise CheckpointError(path, f"its weights do not fit model {ckpt.model_name!r} ({_first_line(err)})") from None
    return built.to(map_location), ckpt
