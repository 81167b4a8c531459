"""Where a run's latency table comes from, when its budget is measured in time.

Every snapshot and pruning step of a run, on every rank and after a resume, must price
sub-networks with the same table: timing again would move the cut with the noise and break
the agreement between workers. So a run's table is, in this order: the one its checkpoint
carries (resume), the file ``pruning.budget.latency_table`` names, or one that rank 0
measures at the start and shares with every rank. Rank 0 writes it to
``<run>/latency_table.json``, which ``pruning.budget.latency_table`` can name in later runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pat_ray.config import Config
from pat_ray.core.cost.latency import LatencyTable
from pat_ray.core.cost.probe import measure_latency
from pat_ray.training.checkpoint import atomic_write_text
from pat_ray.training.collective import Collective
from pat_ray.training.setup import AUTOCAST_DTYPES, build_run

TABLE_FILE = "latency_table.json"


def run_latency_table(
    config: Config,
    model: nn.Module,
    example: torch.Tensor,
    collective: Collective,
    run_dir: Path,
    saved: dict | None = None,
    given: LatencyTable | None = None,
    note: Callable[[str], None] | None = None,
) -> LatencyTable | None:
    """The table for ``config``'s latency budget (None for other measures): a resumed
    checkpoint's (``saved``), else one the caller measured (``given``), else the configured
    file's, else timed now. ``model`` must be on the training device, in its layout."""
    budget = config.pruning.budget
    if budget.measure != "latency":
        return None
    if saved is not None:
        return LatencyTable.from_dict(saved)
    if given is not None:
        table = given
        _check_fits(table, "given to the run", example.device, config.data.batch_size)
    elif budget.latency_table is not None:
        table = LatencyTable.from_dict(json.loads(Path(budget.latency_table).read_text()))
        source = f"pruning.budget.latency_table {budget.latency_table}"
        _check_fits(table, source, example.device, config.data.batch_size)
    else:
        measured = _measure(config, model, example, note).to_dict() if collective.rank == 0 else None
        table = LatencyTable.from_dict(collective.share(measured))
    if collective.rank == 0:
        write_table(run_dir / TABLE_FILE, table)
    return table


def write_table(path: Path, table: LatencyTable) -> None:
    atomic_write_text(path, json.dumps(table.to_dict(), indent=1))


def measure_for_config(config: Config) -> dict:
    """``config``'s table, timed outside a run on this process's device, as ``to_dict()``."""
    setup = build_run(config)
    return _measure(config, setup.model, setup.example, None).to_dict()


def _measure(config: Config, model, example, note) -> LatencyTable:
    """Time the layers as the run will train them: its batch, layout, precision and rounding."""
    budget = config.pruning.budget
    return measure_latency(
        model,
        example,
        config.data.batch_size,
        round_to=budget.round_to,
        points=budget.latency_grid,
        channels_last=config.training.channels_last,
        autocast_dtype=AUTOCAST_DTYPES[config.training.precision],
        exclude=config.pruning.exclude,
        attention=config.pruning.attention,
        echo=note,
    )


def _check_fits(table: LatencyTable, source: str, device: torch.device, batch_size: int) -> None:
    """A table timed elsewhere prices the wrong kernels: refuse it with the way out."""
    if table.device_type != device.type:
        raise ValueError(
            f"the latency table {source} was measured on {table.device_type} ({table.device_name}); "
            f"this run trains on {device.type}: remove latency_table to measure here"
        )
    if table.batch_size != batch_size:
        raise ValueError(
            f"the latency table {source} was measured at batch {table.batch_size}; this run trains at "
            f"data.batch_size {batch_size}: remove latency_table to measure at this batch"
        )
