"""Ray Train's hook into the driver's side of a run: Train's controller (which Ray places on
the driver's node) hands each report to a ``RunRecorder`` (the run folder's files, MLflow,
the per-epoch lines), naming the checkpoint Ray persisted in its storage (a server-side copy
when Ray's storage and the run folder are in one object store).
"""

from __future__ import annotations

from ray.train import UserCallback

from pat_ray.config import Config
from pat_ray.distributed.failures import is_fatal
from pat_ray.distributed.recorder import RunRecorder
from pat_ray.run_folder.files import LAST
from pat_ray.storage import Location
from pat_ray.tracking.live import LiveTarget


class ProgressCallback(UserCallback):
    """Train's hook into the driver's side: each report goes to a ``RunRecorder``; a worker error
    that a restart cannot mend ends the run at once."""

    def __init__(self, run_folder: Location, storage: Location, config: Config, tracking: LiveTarget | None) -> None:
        self.recorder = RunRecorder(run_folder, config, tracking)
        self.storage, self.storage_path = storage, storage.filesystem()[1]

    def after_report(self, run_context, metrics, checkpoint) -> None:
        source = None
        if checkpoint is not None:
            source = self.storage / checkpoint.path.removeprefix(self.storage_path).strip("/") / LAST
        self.recorder.epoch(metrics, source)

    def after_exception(self, run_context, worker_exceptions) -> None:
        """Raising here ends the run at once (Train does not retry its controller's errors)."""
        fatal = _fatal(worker_exceptions.values())
        if fatal is not None:
            raise fatal


def _fatal(errors) -> BaseException | None:
    """A worker error that a restart cannot mend (data missing on a node, a model or labels that
    do not fit what the user gave), if any: retrying would fail the same way ``max_failures`` times."""
    return next((err for err in errors if is_fatal(err)), None)
