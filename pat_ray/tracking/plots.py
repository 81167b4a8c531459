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
    history: list[EpochRecord], path: Path, tau: float | None = None, trigger: float | None = None
) -> Path:
    """EPI at every snapshot (x: epochs into training), the threshold tau, and where pruning started."""
    points = [(p.position, p.epi) for r in history for p in r.snapshots if p.epi is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if points:
        ax.plot(*zip(*points), marker="o", markersize=3 if len(points) > 40 else 5, label="EPI")
    if tau is not None:
        ax.axhline(tau, color="tab:red", linestyle="--", label=f"tau = {tau:g}")
    if trigger is not None:
        ax.axvline(trigger, color="tab:green", linestyle=":", label=f"pruning starts (epoch {trigger:g})")
    return finish(fig, ax, path, "epoch", "EPI (structural similarity)", "Early Pruning Indicator", "lower right")


def finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend: str = "best") -> Path:
    """Integer epochs on x, labels, a light grid and a small legend; saved as PNG and closed."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend, fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
