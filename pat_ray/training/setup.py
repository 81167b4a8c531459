"""What a run builds from its config before it trains: data, the model on its device and in
its memory layout, an example input, and the precision it trains in.

The engine starts every run here; so does anything that must see the model exactly as the
run will, such as the oracle, which times the model's layers once for all its trials.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pat_ray.config import Config
from pat_ray.core.data import DataBundle
from pat_ray.core.modes import in_mode
from pat_ray.errors import first_line
from pat_ray.plugins.recipes import ModelRecipe, first_training_sample, make_data, offered_by

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # training.precision


@dataclass
class RunSetup:
    data: DataBundle
    model: nn.Module  # on ``device``, in ``layout``
    recipe: ModelRecipe  # how the model was made, with what the data supplied: checkpoints record it
    device: torch.device
    layout: torch.memory_format
    example: torch.Tensor  # one zero input, for tracing


@dataclass(frozen=True)
class Given:
    """What a caller handed over in Python instead of the config's names: a model class or
    factory, and data (a ``DataBundle`` or a ``(train, val)`` pair of datasets)."""

    model: Callable[..., nn.Module] | None = None
    data: Any = None


def build_run(config: Config, given: Given | None = None) -> RunSetup:
    """Seed, then build the dataset and the model (its initial weights follow the seed)."""
    given = given or Given()
    torch.manual_seed(config.training.seed)
    device = training_device(config.training.device)
    section = config.data
    data = make_data(section.name, section.target, section.params, given.data, section.num_classes, section.input_shape)
    recipe = ModelRecipe.of(config.model.name, config.model.target, config.model.params, given.model)
    model, recipe = recipe.build("model", given.model, **offered_by(data))
    check_input_channels(model, data, recipe)
    layout = torch.channels_last if config.training.channels_last else torch.contiguous_format
    model = model.to(device).to(memory_format=layout)
    example = torch.zeros(1, *data.input_shape, device=device)
    check_classifier(model, data, recipe, example)
    return RunSetup(data, model, recipe, device, layout, example)


def check_input_channels(model: nn.Module, data: DataBundle, recipe: ModelRecipe) -> None:
    """A model whose first layer reads another number of channels than the data has fails here,
    naming both, not at the first trace."""
    first = next((m for m in model.modules() if isinstance(getattr(m, "in_channels", None), int)), None)
    if first is None or len(data.input_shape) < 3 or first.in_channels == data.input_shape[0]:
        return
    raise ValueError(
        f"model {recipe.name!r} reads {first.in_channels} input channels (its first layer, "
        f"{type(first).__name__}({first.in_channels}, ...)), but the data gives {data.input_shape[0]} "
        f"(samples of shape {tuple(data.input_shape)}): set model.params.in_channels, or change the data"
    )


def check_classifier(model: nn.Module, data: DataBundle, recipe: ModelRecipe, example: torch.Tensor) -> None:
    """pat_ray's loop trains a classifier with cross-entropy: the data's labels are class
    indices (or one score per class) and the model returns one tensor of logits, (batch,
    classes). Anything else fails here, naming what was found, not as a TypeError in the loss
    after the first dense epoch. Costs one forward of one zero sample."""
    label = torch.as_tensor(_first_label(data))
    soft = label.is_floating_point() and tuple(label.shape) == (data.num_classes,)
    if not soft and (label.dim() != 0 or label.is_floating_point() or label.is_complex()):
        raise ValueError(
            f"the data's labels are {_described(label)}; pat_ray trains classifiers: give each sample an integer "
            "class index, or one score per class"
        )
    try:
        with in_mode(model, training=False), torch.no_grad():
            out = model(example)
    except Exception as err:
        shape = tuple(example.shape)
        raise ValueError(
            f"model {recipe.name!r} does not run on one sample of the data {shape}: {first_line(err)}"
        ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, data.num_classes):
        raise ValueError(
            f"model {recipe.name!r} returns {_described(out)} for one sample; pat_ray's loop needs one tensor "
            f"of logits of shape (batch, {data.num_classes}) for the data's {data.num_classes} classes (in your "
            "own loop, pat_ray.PaT takes any model)"
        )


def _first_label(data: DataBundle) -> Any:
    sample = first_training_sample(data.train, "the data")
    if not isinstance(sample, tuple | list) or len(sample) != 2:
        raise ValueError(f"the training set's samples are {_described(sample)}, not (input, label) pairs")
    return sample[1]


def _described(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(_described(v) for v in value)})"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def training_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise RuntimeError("training.precision fp16 needs a CUDA device; use bf16 on CPU")
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def to_device(images: torch.Tensor, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
    """Images to the device, NHWC when asked (only 4-D batches have a channels-last layout)."""
    if images.dim() == 4:
        return images.to(device, memory_format=layout, non_blocking=True)
    return images.to(device, non_blocking=True)


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    opt = config.training.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=opt.lr,
            momentum=opt.momentum,
            weight_decay=opt.weight_decay,
            nesterov=opt.nesterov,
        )
    return torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
