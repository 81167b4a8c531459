"""A resume continues the same run or says why not.

The checkpoint records the config that made it. ``--resume`` with a config that would change
what the run means (model, data, budget, criterion, start policy, seed, schedule...) is refused,
naming each changed field with its old and new value; what only changes where or how fast it
runs (workers, output paths, tracking, loaders, checkpoint cadence, device) is allowed and
listed. A run that already ran its last epoch is not resumed at all.
"""

from __future__ import annotations

from typing import Any

from pat_ray.config import Config
from pat_ray.config.fields import dotted
from pat_ray.errors import ResumeChangesRunError, RunFinishedError

SAFE_TO_CHANGE = (  # dotted prefixes of fields that do not change what the run computes
    "name",
    "output_dir",
    "scaling",
    "tracking",
    "oracle",
    "data.num_workers",
    "data.eval_batch_size",
    "training.checkpoint_every",
    "training.device",
)


def planned_epochs(config: Config) -> int:
    """Every epoch the run trains: the schedule, plus fine-tuning for train-prune-fine-tune."""
    start = config.start
    return config.training.epochs + start.extra_epochs(config.training.epochs)


def check_resume(recorded: dict[str, Any] | None, config: Config, last_epoch: int, where: str) -> list[str]:
    """The allowed changes, one line each; raises when the resume would change or repeat the run."""
    if last_epoch >= planned_epochs(config):
        raise RunFinishedError(
            f"the run in {where} already finished (epoch {last_epoch} of {planned_epochs(config)}); nothing was "
            "changed. Its results are there; a run without --resume trains again, in a new folder"
        )
    if recorded is None:  # a checkpoint from before configs were recorded: nothing to compare
        return []
    before, after = dotted(recorded), dotted(config.model_dump(mode="json"))
    changed = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    refused = [key for key in changed if not key.startswith(SAFE_TO_CHANGE)]
    if refused:
        lines = "; ".join(f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in refused)
        raise ResumeChangesRunError(
            f"--resume would change the run in {where}: {lines}. Resume with the config it started with "
            f"({where}/config.yaml), or start a new run under another name"
        )
    quiet = ("output_dir", "training.device")  # a Ray worker records its own temp folder and device: not news
    return [f"{key}: {before.get(key)!r} -> {after.get(key)!r}" for key in changed if key not in quiet]
