"""Put a model in train or eval mode for one call, then give every module back its own mode.

``model.train(was_training)`` afterwards is not a restore: it sets *every* submodule to the
root's flag, so a BatchNorm the user froze with ``.eval()`` inside a training model would come
back training (its running statistics updated by the next batch), and pat_ray traces the model
in the user's own loop every epoch. Recording each module's flag restores exactly; a model
already in the wanted mode is not walked twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def in_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Run the block with ``model`` (through its own ``train``) in ``training`` mode; on leaving,
    each module has the flag it had before."""
    before = [(module, module.training) for module in model.modules()]
    if any(flag != training for _, flag in before):
        model.train(training)
    try:
        yield
    finally:
        for module, flag in before:
            if module.training != flag:
                module.training = flag
