"""Driver-side view of a Ray Train run: per-epoch lines and the final result."""

from __future__ import annotations

from pathlib import Path

from ray.train import UserCallback

from pat_ray.config import Config
from pat_ray.training.checkpoint import Checkpoint, atomic_write, read_checkpoint
from pat_ray.training.collective import PrintReporter
from pat_ray.training.records import RunResult, RunState


class ProgressCallback(UserCallback):
    """Prints rank 0's line per epoch, warns when ranks disagree on the architecture, and
    leaves in ``run_dir`` what a local run leaves there: each checkpoint as ``last.pt``
    (keeping the one before as previous.pt), ``history.json`` and ``config.yaml``."""

    def __init__(self, run_dir: Path, config: Config) -> None:
        self.printer = PrintReporter(lambda line: print(line, flush=True))
        self.run_dir, self.config = run_dir, config

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is not None:
            from pat_ray.training.run_state import LAST, PREVIOUS, write_run_files

            with checkpoint.as_directory() as folder:
                data = (Path(folder) / LAST).read_bytes()
            atomic_write(self.run_dir / LAST, lambda handle: handle.write(data), backup=self.run_dir / PREVIOUS)
            history = RunState.from_checkpoint(read_checkpoint(self.run_dir / LAST)).history
            write_run_files(self.run_dir, self.config, history)
        if metrics:
            fingerprints = {m["rank"]: m["fingerprint"] for m in metrics}
            line = dict(metrics[0])
            self.printer.report(line)
            if len(set(fingerprints.values())) > 1:
                print(f"warning: ranks disagree on the architecture: {fingerprints}", flush=True)


def result_from_checkpoint(config: Config, ckpt: Checkpoint, path: Path | None, wall_seconds: float) -> RunResult:
    """The run's result from its final checkpoint (which carries the whole history)."""
    return RunResult.from_state(config, RunState.from_checkpoint(ckpt), ckpt.architecture.to_dict(), path, wall_seconds)
