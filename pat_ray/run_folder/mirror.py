"""A run staged on the local disk, copied into its run folder in a store as it trains."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pat_ray.config import Config, config_to_yaml
from pat_ray.run_folder.files import CONFIG, HISTORY, LAST, PREVIOUS
from pat_ray.storage import Location
from pat_ray.training.reporters import WrappingReporter

if TYPE_CHECKING:
    from pat_ray.training.reporters import Reporter


class StoreMirror(WrappingReporter):
    """A reporter that copies a run's files from its local stage to its run folder in a store
    after every epoch, the checkpoint first (``history.json`` never names an epoch the
    folder's checkpoint lacks), then hands the epoch on to the reporter it wraps."""

    def __init__(self, inner: Reporter, stage: Path, folder: Location, config: Config) -> None:
        super().__init__(inner)
        self.stage, self.folder = stage, folder
        (folder / CONFIG).write_text(config_to_yaml(config))  # the config as given, store URI and all

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        if checkpoint is not None:
            (self.folder / LAST).upload(checkpoint, backup=self.folder / PREVIOUS)
            (self.folder / HISTORY).upload(self.stage / HISTORY)
        self.inner.report(metrics, checkpoint)
