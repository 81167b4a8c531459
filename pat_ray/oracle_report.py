"""The oracle sweep's report: a Markdown table, the verdict in numbers, and three PNG plots.

Rendered from an ``OracleSummary`` alone, so ``pat-ray report RUN`` can redraw it from the
sweep folder at any time without Ray or the checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from pat_ray.checkpoint import atomic_write_text
from pat_ray.oracle import OracleSummary, TrialOutcome
from pat_ray.report import MaxNLocator, plot_epi_curve, plt

REPORT_FILE = "report.md"
PLOTS = {
    "accuracy": "accuracy_vs_start.png",
    "cost": "cost_vs_start.png",
    "epi": "epi_curve.png",
}
POLICY_NAMES = {
    "fixed": "PaT, fixed start",
    "epi": "PaT + EPI",
    "early_bird": "PaT + Early-Bird",
    "never": "dense (no pruning)",
    "after_training": "train-prune-fine-tune",
}
MARKERS = {"epi": ("*", "tab:red"), "early_bird": ("D", "tab:purple")}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _row(t: TrialOutcome) -> str:
    start = "-" if t.start_epoch is None else str(t.start_epoch)
    if not t.ok:
        return f"| {t.label} | {POLICY_NAMES[t.policy]} | {start} | failed: {t.error.splitlines()[0][:80]} | | | |"
    return (
        f"| {t.label} | {POLICY_NAMES[t.policy]} | {start} | {t.accuracy:.4f} | {t.flops_kept:.3f} | "
        f"{t.train_flops:.3e} ({t.train_flops_ratio:.3f}x) | {t.wall_seconds:.1f} |"
    )


def verdict_lines(summary: OracleSummary) -> list[str]:
    v = summary.verdict()
    if not v:
        epi = summary.trial("epi")
        missing = "EPI trial" if epi is None or not epi.ok else "fixed-start trial"
        return [f"No verdict: the sweep has no finished {missing}."]
    n = len(summary.fixed)
    gap, share = v["accuracy_gap_points"], v["epi_cost_share_of_grid"]
    met = gap >= -0.5 and share <= 1 / n
    return [
        f"- EPI started pruning after epoch **{v['epi_start_epoch']}**; the grid's best start epoch is "
        f"**{v['best_fixed_epoch']}** (accuracy {v['best_fixed_accuracy']:.4f}).",
        f"- EPI's accuracy {v['epi_accuracy']:.4f} is **{gap:+.2f} points** against the grid's best.",
        f"- EPI's training cost is **{share:.3f}** of the whole grid's ({n} trials; 1/N = {1 / n:.3f}), "
        f"i.e. the grid costs {1 / share:.1f}x one EPI run.",
        f"- Target (within 0.5 points of the best, at <= 1/N of the grid's cost): **{'met' if met else 'not met'}**.",
    ]


def calibration_lines(summary: OracleSummary) -> list[str]:
    cal = summary.calibrated
    if cal is None or summary.best_fixed is None:
        return ["No calibrated tau: the EPI curve is too short for the window, or there is no grid."]
    best = summary.trial(summary.best_fixed).start_epoch
    interval = f"({cal['low']:.4f}, {cal['high']:.4f}]" if cal["low"] is not None else f"[0, {cal['high']:.4f}]"
    where = (
        f"lands exactly on the best start epoch {best}"
        if cal["epoch"] == best
        else f"lands on epoch {cal['epoch']}, the closest the EPI rule can get to the best start epoch {best}"
    )
    return [
        f"Calibrated tau = **{cal['tau']:.4f}** (any tau in {interval} {where}; "
        f"curve from the `{summary.calibration_source}` trial, configured tau = {summary.tau:g}). "
        "Calibrate on a cheap proxy run like this one, then put it in `start.tau` for the expensive run."
    ]


def markdown(summary: OracleSummary) -> str:
    lines = [
        f"# Oracle sweep `{summary.name}`",
        "",
        "| trial | policy | start epoch | final accuracy | FLOPs kept | training FLOPs (x dense) | wall time (s) |",
        "|---|---|---:|---:|---:|---:|---:|",
        *(_row(t) for t in sorted(summary.trials, key=_order)),
        "",
        "Start epoch = dense epochs trained before pruning began (epi / early_bird: the epoch they chose). "
        "Training FLOPs = 3 x forward FLOPs per sample of the model as it was at every step; wall time = sum "
        "of epoch times (training, evaluation, snapshots) while trials shared the machine.",
        "",
        "## Verdict",
        "",
        *verdict_lines(summary),
        "",
        "## Calibrated tau",
        "",
        *calibration_lines(summary),
        "",
        f"![accuracy vs start epoch]({PLOTS['accuracy']})",
        f"![training cost vs start epoch]({PLOTS['cost']})",
        f"![EPI curve]({PLOTS['epi']})",
        "",
    ]
    return "\n".join(lines)


def _order(t: TrialOutcome) -> tuple:
    policies = ["fixed", "epi", "early_bird", "never", "after_training"]
    return (policies.index(t.policy), t.start_epoch if t.start_epoch is not None else -1)


def _plot_against_start(summary: OracleSummary, path: Path, value, ylabel: str, title: str) -> Path:
    """One metric of the fixed grid against the start epoch, with the chosen epochs marked."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    fixed = summary.fixed
    if fixed:
        ax.plot(
            [t.start_epoch for t in fixed],
            [value(t) for t in fixed],
            marker="o",
            color="tab:blue",
            label="fixed start (grid)",
        )
    for policy, (marker, color) in MARKERS.items():
        t = summary.trial(policy)
        if t is not None and t.ok and t.start_epoch is not None:
            ax.plot(
                [t.start_epoch],
                [value(t)],
                marker=marker,
                markersize=13,
                linestyle="none",
                color=color,
                label=f"{POLICY_NAMES[policy]} (epoch {t.start_epoch})",
            )
    for policy, style in (("never", "--"), ("after_training", ":")):
        t = summary.trial(policy)
        if t is not None and t.ok:
            ax.axhline(value(t), color="gray", linestyle=style, label=POLICY_NAMES[policy])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("start epoch (dense epochs before pruning)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(folder: Path, summary: OracleSummary) -> Path:
    """Write ``report.md`` and its three plots into ``folder``; returns the Markdown file."""
    folder = Path(folder)
    _plot_against_start(
        summary,
        folder / PLOTS["accuracy"],
        lambda t: t.accuracy,
        "final accuracy",
        "Final accuracy vs pruning start epoch",
    )
    _plot_against_start(
        summary,
        folder / PLOTS["cost"],
        lambda t: t.train_flops_ratio,
        "training FLOPs (x dense training)",
        "Training cost vs pruning start epoch",
    )
    epi = summary.trial("epi")
    plot_epi_curve(
        [{"epoch": i + 1, "epi": v} for i, v in enumerate(summary.calibration_curve)],
        folder / PLOTS["epi"],
        summary.tau,
        epi.start_epoch if epi is not None and epi.ok else None,
        best_epoch=summary.trial(summary.best_fixed).start_epoch if summary.best_fixed else None,
        calibrated_tau=summary.calibrated["tau"] if summary.calibrated else None,
    )
    path = folder / REPORT_FILE
    atomic_write_text(path, markdown(summary))
    return path
