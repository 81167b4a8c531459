"""How a run's model and data are made, from a registered name, an import path or objects the
user hands over, and how a checkpoint records it so that it can be made again.

A ``ModelRecipe`` is what a checkpoint keeps: the source (``registry``, ``import`` or
``object``), its name there and the complete keyword arguments (``num_classes`` and
``in_channels`` included once the data supplied them), so ``load_checkpoint``, ``pat-ray
export`` and ``--resume`` rebuild the same module in another process. A dataset factory may
return a ``DataBundle`` or a ``(train, val)`` pair of datasets; what the pair does not say (the
number of classes, one sample's shape) is read from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from torch import nn
from torch.utils.data import Dataset

from pat_ray.core.data import DataBundle
from pat_ray.errors import TargetError
from pat_ray.plugins.registry import get_registry
from pat_ray.plugins.signatures import accepted
from pat_ray.plugins.user_code import resolve, target_of, trust

Source = Literal["registry", "import", "object"]
LABEL_SCAN_LIMIT = 200_000  # beyond this many samples, give data.num_classes instead of a scan


@dataclass(frozen=True)
class ModelRecipe:
    """``source``: a registered model (``name`` is its registry name), an import path (``name``
    is it), or an object handed over in Python (``name`` says what it was; building it again
    needs the object, e.g. ``load_checkpoint(path, model=SmallCNN)``)."""

    source: Source
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str | None, target: str | None, params: dict[str, Any], given: Any = None) -> ModelRecipe:
        """The recipe of a config's ``model`` section, or of the factory handed over (``given``)."""
        if given is not None:
            path = target_of(given)
            if path is not None:
                trust(path.split(":")[0])  # handing pat_ray the class is opting in for its module
                return cls("import", path, dict(params))
            return cls("object", f"{getattr(given, '__module__', '?')}:{getattr(given, '__qualname__', given)}", params)
        if target is not None:
            return cls("import", target, dict(params))
        assert name is not None
        return cls("registry", name, dict(params))

    def factory(self, what: str, given: Callable[..., Any] | None = None) -> Callable[..., Any]:
        if given is not None:
            return given
        if self.source == "registry":
            return get_registry().get("model", self.name).factory
        if self.source == "import":
            return resolve(self.name, what)
        raise TargetError(
            f"{what}: its model was handed over in Python ({self.name}); give it again: "
            "load_checkpoint(path, model=TheClass) or pat_ray.run(config, model=TheClass)"
        )

    def build(
        self, what: str, given: Callable[..., Any] | None = None, **supplied: Any
    ) -> tuple[nn.Module, ModelRecipe]:
        """The model, and the recipe with what ``supplied`` gave it (``offered_by(data)``: each
        only when the factory takes it and the params do not set it)."""
        factory = self.factory(what, given)
        offered = accepted(factory, {key: value for key, value in supplied.items() if key not in self.params})
        params = {**self.params, **offered}
        try:
            model = factory(**params)
        except Exception as err:
            if self.source != "import":  # a registered model's plugin answers for itself; Python callers see theirs
                raise
            raise TargetError(f"{what}: {self.name!r} raised {type(err).__name__}: {err}") from err
        if not isinstance(model, nn.Module):
            raise TypeError(f"{what}: {self.name} made a {type(model).__name__}, not a torch.nn.Module")
        return model, ModelRecipe(self.source, self.name, params)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "name": self.name, "params": dict(self.params)}


def offered_by(data: DataBundle) -> dict[str, int]:
    """What the data tells a model's factory (``ModelRecipe.build`` offers each only where the
    factory names it and the params leave it out): ``num_classes``, ``in_channels`` and, for
    square images, ``image_size``, by which a ViT sizes its position table."""
    offered = {"num_classes": data.num_classes, "in_channels": data.input_shape[0]}
    if len(data.input_shape) == 3 and data.input_shape[1] == data.input_shape[2]:
        offered["image_size"] = data.input_shape[1]
    return offered


def make_data(
    name: str | None,
    target: str | None,
    params: dict[str, Any],
    given: Any = None,
    num_classes: int | None = None,
    input_shape: Iterable[int] | None = None,
) -> DataBundle:
    """The data of a config's ``data`` section, or what was handed over (a ``DataBundle`` or a
    ``(train, val)`` pair), as a ``DataBundle``."""
    if given is not None:
        return as_bundle(given, num_classes, input_shape, "the data given")
    if target is not None:
        factory = resolve(target, "data.target")
        try:
            made = factory(**params)
        except Exception as err:  # the user's code: its failure is theirs to read, not an internal error
            raise TargetError(f"data.target {target!r} raised {type(err).__name__}: {err}") from err
    else:
        assert name is not None
        made = get_registry().create("dataset", name, **params)
    try:
        return as_bundle(made, num_classes, input_shape, target or name or "the data given")
    except TypeError as err:  # a config's factory returned the wrong thing: the config's to fix
        raise TargetError(str(err)) from None


def as_bundle(made: Any, num_classes: int | None, input_shape: Iterable[int] | None, what: str) -> DataBundle:
    if isinstance(made, DataBundle):
        if num_classes is None and input_shape is None:
            return made
        shape = tuple(input_shape) if input_shape is not None else made.input_shape
        return DataBundle(made.train, made.val, num_classes or made.num_classes, shape)
    if not (isinstance(made, tuple | list) and len(made) == 2 and all(isinstance(d, Dataset) for d in made)):
        raise TypeError(
            f"{what}: a dataset factory returns a pat_ray.sdk.DataBundle or (train, val) datasets, "
            f"not {type(made).__name__}"
        )
    train, val = made
    shape = tuple(input_shape) if input_shape is not None else tuple(first_training_sample(train, what)[0].shape)
    return DataBundle(train, val, num_classes or classes_of(train, what), shape)


def first_training_sample(dataset: Dataset[Any], what: str) -> Any:
    """The first sample of a training set, or ValueError naming ``what`` and why it cannot be read."""
    try:
        return dataset[0]
    except Exception as err:
        raise ValueError(
            f"{what}: its training set's first sample cannot be read ({type(err).__name__}: {err})"
        ) from None


def classes_of(dataset: Dataset[Any], what: str) -> int:
    """How many classes a dataset has: its ``classes`` (torchvision's folders and sets), its
    ``targets``, or the labels of its samples (up to ``LABEL_SCAN_LIMIT`` of them)."""
    inner = getattr(dataset, "dataset", None)
    for source in (dataset, inner):
        classes = getattr(source, "classes", None)
        if classes is not None and len(classes) > 1:
            return len(classes)
    targets = getattr(dataset, "targets", None)
    if targets is None and hasattr(dataset, "tensors") and len(dataset.tensors) > 1:
        targets = dataset.tensors[-1]  # a TensorDataset: (inputs, labels)
    if targets is None:
        size = len(cast(Sized, dataset))
        if size > LABEL_SCAN_LIMIT:
            raise ValueError(f"{what}: cannot tell its number of classes; set data.num_classes")
        targets = [dataset[i][1] for i in range(size)]
    labels = [int(label) for label in (targets.tolist() if hasattr(targets, "tolist") else targets)]
    if not labels or min(labels) < 0:
        raise ValueError(f"{what}: its labels are not class indices 0..n-1; set data.num_classes")
    return max(labels) + 1
