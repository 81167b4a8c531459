"""Plots of a run's history (PNG, matplotlib's non-interactive backend)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if TYPE_CHECKING:
    from pat_ray.training.records import EpochRecord


def plot_epi_curve(
    history: list[EpochRecord],
    path: Path,
    tau: float | None = None,
    trigger_epoch: int | None = None,
    best_epoch: int | None = None,
    calibrated_tau: float | None = None,
) -> Path:
    """EPI per epoch, the threshold tau, and the epoch pruning started.

    The oracle report adds the grid's best start epoch and the tau that would have hit it.
    """
    points = [(r.epoch, r.epi) for r in history if r.epi is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if points:
        ax.plot(*zip(*points), marker="o", label="EPI")
    if tau is not None:
        ax.axhline(tau, color="tab:red", linestyle="--", label=f"tau = {tau:g}")
    if calibrated_tau is not None:
        ax.axhline(calibrated_tau, color="tab:orange", linestyle="-.", label=f"calibrated tau = {calibrated_tau:.4f}")
    if trigger_epoch is not None:
        ax.axvline(trigger_epoch, color="tab:green", linestyle=":", label=f"pruning starts (epoch {trigger_epoch})")
    if best_epoch is not None:
        ax.axvline(
            best_epoch, color="tab:blue", linestyle="--", alpha=0.6, label=f"grid's best start (epoch {best_epoch})"
        )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("EPI (structural similarity)")
    ax.set_title("Early Pruning Indicator")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
