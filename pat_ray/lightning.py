"""``PaTCallback``: pruning-aware training with EPI in a Lightning ``Trainer`` (``pip install
"pat-ray[lightning]"``).

The callback drives a ``pat_ray.PaT`` from Lightning's hooks: a step after each optimizer step,
the epoch's snapshot and decision after each training epoch (validation included). The module
is pruned in place; the optimizers Lightning made have their state sliced, and a DDP wrapper of
the strategy is rebuilt around the smaller module. Its state rides in Lightning's checkpoints,
and a resumed ``fit(ckpt_path=...)`` shrinks the freshly built module to the saved widths just
before Lightning loads the pruned weights into it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from pat_ray.training.pat import PaT


class PaTCallback(pl.Callback):
    """``PaTCallback(budget=0.5, start="epi")``; any other keyword is ``pat_ray.PaT``'s (criterion,
    measure, steps, interval, ...). The example input the model is traced with is
    ``example_input``, else the module's ``example_input_array``; the schedule's length is the
    trainer's ``max_epochs``."""

    def __init__(
        self,
        budget: float = 0.5,
        start: str | Mapping[str, Any] = "epi",
        *,
        example_input: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
        **options: Any,
    ) -> None:
        self.options = {"budget": budget, "start": start, **options}
        self.example_input = example_input
        self.pat: PaT | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.pat is not None:
            return
        example = self.example_input if self.example_input is not None else pl_module.example_input_array
        if not isinstance(example, torch.Tensor | tuple):
            raise ValueError("PaTCallback: pass example_input=..., or set the module's example_input_array (a tensor)")
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            raise ValueError("PaTCallback: the Trainer needs max_epochs (the schedule pruning is planned in)")
        self.pat = PaT(pl_module, example, None, epochs=trainer.max_epochs, **self.options)
        loads = pl_module.on_load_checkpoint

        def shrink_then_load(checkpoint: dict[str, Any]) -> None:  # Lightning calls it before loading the weights
            state = checkpoint.get("callbacks", {}).get(self.state_key)
            if state:
                assert self.pat is not None
                self.pat.load_state_dict(state)
            loads(checkpoint)

        pl_module.on_load_checkpoint = shrink_then_load  # type: ignore[method-assign]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pat = self._pat()
        pat.optimizer = trainer.optimizers[0] if trainer.optimizers else None
        pat.on_prune = lambda step: self._rewrap(trainer)
        pat.begin(pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:  # after an optimizer step
            self._pat().step(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pat().end_epoch(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return self.pat.state_dict() if self.pat is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing left to do: the module was shrunk to this state before its weights were loaded."""

    def _pat(self) -> PaT:
        if self.pat is None:
            raise RuntimeError("PaTCallback: the Trainer has not set it up (use it in Trainer.fit)")
        return self.pat

    @staticmethod
    def _rewrap(trainer: pl.Trainer) -> None:
        """A DDP wrapper holds the old parameters: build it again around the pruned module."""
        from torch.nn.parallel import DistributedDataParallel

        from pat_ray.training.pat import rewrapped

        if isinstance(trainer.strategy.model, DistributedDataParallel):
            trainer.strategy.model = rewrapped(trainer.strategy.model)
