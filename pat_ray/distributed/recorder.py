"""The driver's side of a Ray run: what it does with each epoch the workers report (per-epoch
lines, the run folder's files, MLflow's per-epoch metrics) and the final result.

Train's controller (which Ray places on the driver's node) feeds it through ``ProgressCallback``;
a one-worker run feeds it from the driver's process as the task streams its epochs. Per reported
checkpoint the run folder gets one copy of it, and ``history.json`` from the epoch records the
workers reported; nothing here loads a checkpoint until the run has ended.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pat_ray.config import Config, config_to_yaml
from pat_ray.run_folder.files import CONFIG, HISTORY, LAST, PREVIOUS
from pat_ray.storage import Location
from pat_ray.tracking.live import EpochLogger, LiveTarget
from pat_ray.training.records import EpochRecord, RunResult
from pat_ray.training.reporters import PrintReporter

if TYPE_CHECKING:  # torch: Train's controller, which runs the recorder, never needs it
    from pat_ray.training.checkpoint import Checkpoint

RANKS = "ranks.jsonl"  # one line per report: what each rank saw, and where it ran
RANK_KEYS = (
    "rank",
    "node_id",
    "fingerprint",
    "triggered",
    "gossip_seconds",
    "gossip_bytes",
    "previous_report_seconds",  # Ray's own cost of that rank's previous report (checkpoint upload included)
)


class RunRecorder:
    """Prints rank 0's line per epoch, warns when ranks disagree on the architecture, logs the
    epoch to MLflow, and leaves in ``run_folder`` what a local run leaves there: each checkpoint
    as ``last.pt`` (keeping the one before as ``previous.pt``), ``history.json``, ``config.yaml``."""

    def __init__(self, run_folder: Location, config: Config, tracking: LiveTarget | None) -> None:
        self.printer = PrintReporter(lambda line: print(line, flush=True))
        self.folder = run_folder
        self.logger = EpochLogger(tracking) if tracking is not None else None
        self.history: dict[int, dict] = {}
        if (run_folder / HISTORY).is_file():  # a resumed run: the epochs before its checkpoint
            self.history = {r["epoch"]: r for r in json.loads((run_folder / HISTORY).read_text())}
        (run_folder / CONFIG).write_text(config_to_yaml(config))

    def epoch(self, metrics: list[dict[str, Any]], checkpoint: Location | bytes | None) -> None:
        """One report: every rank's metrics (rank 0 first) and rank 0's checkpoint, as a file in
        Ray's storage or as its bytes."""
        if not metrics:
            return
        record = EpochRecord.from_dict(metrics[0]).to_dict()
        if checkpoint is not None:
            last, previous = self.folder / LAST, self.folder / PREVIOUS
            if isinstance(checkpoint, bytes):
                last.write_bytes(checkpoint, backup=previous)
            else:
                last.copy_from(checkpoint, backup=previous)
            # a restarted worker group repeats the epochs after its checkpoint: each epoch once
            self.history = {e: r for e, r in self.history.items() if e < record["epoch"]}
            self.history[record["epoch"]] = record
            (self.folder / HISTORY).write_text(json.dumps(list(self.history.values()), indent=1))
        ranks = [{key: m[key] for key in RANK_KEYS} for m in metrics]
        _append(self.folder / RANKS, json.dumps({"epoch": record["epoch"], "ranks": ranks}))
        self.printer.report(dict(metrics[0]))
        if self.logger is not None:
            self.logger.log(record)
        if len({r["fingerprint"] for r in ranks}) > 1:
            print(f"warning: ranks disagree on the architecture: {ranks}", flush=True)


def _append(log: Location, line: str) -> None:
    """A line at the end of a small log (rewritten whole where a store cannot append)."""
    if log.is_local:
        log.local_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with log.local_path.open("a") as handle:
                handle.write(line + "\n")
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(log)) from None
        return
    before = log.read_text() if log.is_file() else ""
    log.write_text(before + line + "\n")


def final_result(config: Config, folder: Location, wall_seconds: float) -> RunResult:
    """The run's result from its final checkpoint in the run folder (read once, at the end)."""
    from pat_ray.core.cost.latency import LatencyTable
    from pat_ray.training.checkpoint import read_checkpoint
    from pat_ray.training.latency_budget import TABLE_FILE, write_table

    ckpt = read_checkpoint(str(folder / LAST))
    if ckpt.extra.get("latency_table"):
        table = LatencyTable.from_dict(ckpt.extra["latency_table"])
        with tempfile.TemporaryDirectory() as scratch:
            write_table(Path(scratch) / TABLE_FILE, table)
            (folder / TABLE_FILE).upload(Path(scratch) / TABLE_FILE)
    checkpoint = folder.local_path / LAST if folder.is_local else str(folder / LAST)
    return result_from_checkpoint(config, ckpt, checkpoint, wall_seconds)


def result_from_checkpoint(config: Config, ckpt: Checkpoint, path: Path | str | None, wall_seconds: float) -> RunResult:
    """The run's result from its final checkpoint (which carries the whole history)."""
    from pat_ray.training.run_state import RunState

    return RunState.from_checkpoint(ckpt).result(config, ckpt.architecture.to_dict(), path, wall_seconds)
