"""The oracle sweep's report: tables (mean +- std over seeds), the verdict, three PNG plots.

Rendered from an ``OracleSummary`` alone, so ``pat-ray report RUN`` can redraw it from the
sweep folder at any time without Ray or the checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from pat_ray.sweep.plan import OracleSummary, TrialOutcome
from pat_ray.sweep.stats import GroupStats, Verdict
from pat_ray.tracking.plots import finish, plt
from pat_ray.training.checkpoint import atomic_write_text

REPORT_FILE = "report.md"
PLOTS = {
    "accuracy": "accuracy_vs_start.png",
    "cost": "cost_vs_start.png",
    "epi": "epi_curve.png",
}
POLICY_NAMES: dict[str, str] = {
    "fixed": "PaT, fixed start",
    "epi": "PaT + EPI",
    "early_bird": "PaT + Early-Bird",
    "never": "dense (no pruning)",
    "after_training": "train-prune-fine-tune",
}
MARKERS: dict[str, tuple[str, str]] = {"epi": ("*", "tab:red"), "early_bird": ("D", "tab:purple")}
ORDER: list[str] = ["fixed", "epi", "early_bird", "never", "after_training"]  # then plugins' policies


def _at(position: float) -> str:
    """Epochs into training as a reader wants them: ``2``, ``2.25``, ``2.26`` (not ``2.25532``)."""
    return f"{round(position, 2):g}"


def _rank(policy: str) -> int:
    return ORDER.index(policy) if policy in ORDER else len(ORDER)


def _name(policy: str) -> str:
    return POLICY_NAMES.get(policy, f"start policy `{policy}` (plugin)")


def _starts(g: GroupStats) -> str:
    return ", ".join("-" if s is None else _at(s) for s in g.start_epochs)


def _group_row(g: GroupStats) -> str:
    return (
        f"| {g.group} | {_name(g.policy)} | {_starts(g)} | {g.mean:.4f} ± {g.std:.4f} | {g.n} | "
        f"{g.flops_kept:.3f} | {g.train_flops_ratio:.3f}x | {g.wall_seconds:.1f} |"
    )


def _trial_row(t: TrialOutcome) -> str:
    start = "-" if t.start_epoch is None else _at(t.start_epoch)
    seed = "-" if t.seed is None else str(t.seed)
    if not t.ok:
        first_line = (t.error or "no error recorded").splitlines()[0][:80]
        return f"| {t.label} | {seed} | {start} | failed: {first_line} | | |"
    return f"| {t.label} | {seed} | {start} | {t.accuracy:.4f} | {t.flops_kept:.3f} | {t.train_flops_ratio:.3f}x |"


def verdict_lines(summary: OracleSummary) -> list[str]:
    v = summary.verdict()
    if v is None:
        epi = summary.group("epi")
        return [f"No verdict: the sweep has no finished {'EPI trial' if epi is None else 'fixed-start trial'}."]
    gap_std = "" if v.gap_in_std is None else f" = {v.gap_in_std:+.2f} seed std"
    seeds = "" if None in v.epi.seeds else f" (seeds {', '.join(str(s) for s in v.epi.seeds)})"
    return [
        f"- EPI started pruning after epoch{'s' if v.epi.n > 1 else ''} **{_starts(v.epi)}**{seeds}.",
        f"- The grid's best mean is start epoch {_epoch(v.best)} ({v.best.mean:.4f}); the reference, the earliest "
        f"start within one standard error of it, is **epoch {_epoch(v.reference)}** ({v.reference.mean:.4f}).",
        f"- EPI's mean accuracy {v.epi.mean:.4f} is **{v.gap_points:+.2f} points**{gap_std} against the reference "
        f"(seed-to-seed std {100 * v.noise_std:.2f} points, {v.epi.n} seed{'s' if v.epi.n > 1 else ''}).",
        f"- EPI's training cost is **{v.cost_share:.3f}** of the whole grid's ({v.grid_size} start epochs; "
        f"1/N = {1 / v.grid_size:.3f}), i.e. the grid costs {1 / v.cost_share:.1f}x one EPI run.",
        f"- Targets: accuracy within max(1 seed std, 0.3) = {v.tolerance_points:.2f} points of the reference: "
        f"**{'met' if v.accuracy_met else 'not met'}**; cost <= 1/N of the grid: "
        f"**{'met' if v.cost_met else 'not met'}**.",
        *_baseline_lines(v, summary),
        *_same_run_lines(summary),
    ]


def _epoch(g: GroupStats) -> str:
    return "-" if g.mean_start is None else _at(g.mean_start)


def _baseline_lines(v: Verdict, summary: OracleSummary) -> list[str]:
    lines = []
    if v.dense is not None:
        lines.append(
            f"- Against dense training ({v.dense.mean:.4f}): PaT + EPI is {100 * (v.epi.mean - v.dense.mean):+.2f} "
            f"points at {v.epi.flops_kept:.3f} of the FLOPs, for {v.epi.train_flops_ratio:.3f}x dense training FLOPs."
        )
    if v.finetune is not None:
        lines.append(
            f"- Against train-prune-fine-tune ({v.finetune.mean:.4f}, {v.finetune.train_flops_ratio:.3f}x dense): "
            f"PaT + EPI costs {v.epi.mean_train_flops / v.finetune.mean_train_flops:.3f}x its training FLOPs."
        )
    bird = summary.group("early_bird")
    if bird is not None:
        lines.append(
            f"- Early-Bird started after epochs {_starts(bird)}: {bird.mean:.4f} ± {bird.std:.4f} "
            f"({100 * (bird.mean - v.reference.mean):+.2f} points against the reference)."
        )
    at_init = next((g for g in summary.fixed_groups() if g.mean_start == 0), None)
    if at_init is not None:
        lines.append(
            f"- Pruning at initialization (start epoch 0): {at_init.mean:.4f} ± {at_init.std:.4f} "
            f"({100 * (at_init.mean - v.reference.mean):+.2f} points against the reference)."
        )
    return lines


def calibration_lines(summary: OracleSummary) -> list[str]:
    cal, reference = summary.calibrated, summary.group(summary.reference)
    if cal is None or reference is None:
        return ["No calibrated tau: the EPI curves are too short for the window, or there is no grid."]
    interval = f"({cal['low']:.4f}, {cal['high']:.4f}]" if cal["low"] is not None else f"[0, {cal['high']:.4f}]"
    curves = len(summary.calibration_curves)
    whose = "seeds'" if curves > 1 else "seed's"
    return [
        f"Calibrated tau = **{cal['tau']:.4f}**: any tau in {interval} fires, on average over the {curves} "
        f"{whose} curves (from the `{summary.calibration_source}` trials), at epoch "
        f"{cal['epoch']}, the nearest the EPI rule gets to the reference start epoch {_epoch(reference)} "
        f"(configured tau = {summary.tau:g}). Calibrate on a cheap proxy run like this one, then put it in "
        "`start.tau` for the expensive run."
    ]


def held_out_lines(summary: OracleSummary) -> list[str]:
    rows = summary.held_out_calibration()
    reference = summary.group(summary.reference)
    if not rows or reference is None:
        return ["Needs 2+ seeds with EPI curves and a grid."]
    lines = [
        "Per seed, tau calibrated on the *other* seeds' curves (towards the reference start epoch), then "
        "applied to this seed's curve. Pruning after epoch t is the run the grid's fixed-t trial of the same "
        "seed already made, so its accuracy is read off the grid (nearest grid epoch when t is not on it).",
        "",
        "| seed | tau (from the other seeds) | fires after epoch | grid trial read | accuracy |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fires = "never" if r.trigger_epoch is None else _at(r.trigger_epoch)
        read = "dense" if r.trigger_epoch is None else f"fixed-{r.grid_epoch:g}"
        lines.append(f"| {r.seed} | {r.tau:.4f} | {fires} | {read} | {_fmt(r.accuracy)} |")
    found = [r.accuracy for r in rows if r.accuracy is not None]
    if found:
        mean = sum(found) / len(found)
        lines += ["", f"Mean {mean:.4f}: **{100 * (mean - reference.mean):+.2f} points** against the reference."]
    return lines


def _same_run_lines(summary: OracleSummary) -> list[str]:
    """An EPI trial that fired on a grid epoch repeats that grid trial: equal accuracies show
    the runs are deterministic, which the held-out reading above relies on."""
    pairs = []
    for epi in (t for t in summary.trials if t.policy == "epi" and t.ok and t.start_epoch is not None):
        twin = next((f for f in summary.fixed if f.seed == epi.seed and f.start_epoch == epi.start_epoch), None)
        if twin is not None:
            pairs.append(f"{epi.label} {epi.accuracy:.4f} = {twin.label} {twin.accuracy:.4f}")
    return [f"- EPI trials that fired on a grid epoch, against that grid trial: {'; '.join(pairs)}."] if pairs else []


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def markdown(summary: OracleSummary) -> str:
    groups = sorted(summary.groups(), key=lambda g: (_rank(g.policy), g.mean_start or 0.0))
    lines = [
        f"# Oracle sweep `{summary.name}`",
        "",
        f"Seeds: {', '.join(str(s) for s in summary.seeds)}. Accuracy: mean ± sample std over seeds.",
        "",
        "| trial | policy | start epoch per seed | final accuracy | seeds | FLOPs kept | training FLOPs (x dense) "
        "| wall time per run (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *(_group_row(g) for g in groups),
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
        "## EPI with a calibrated tau, judged on held-out seeds",
        "",
        *held_out_lines(summary),
        "",
        f"![accuracy vs start epoch]({PLOTS['accuracy']})",
        f"![training cost vs start epoch]({PLOTS['cost']})",
        f"![EPI curve]({PLOTS['epi']})",
        "",
        "## Every trial",
        "",
        "| trial | seed | start epoch | final accuracy | FLOPs kept | training FLOPs (x dense) |",
        "|---|---:|---:|---:|---:|---:|",
        *(_trial_row(t) for t in sorted(summary.trials, key=_order)),
        "",
    ]
    return "\n".join(lines)


def _order(t: TrialOutcome) -> tuple:
    return (_rank(t.policy), t.start_epoch if t.start_epoch is not None else -1, t.seed or 0)


def _plot_against_start(summary: OracleSummary, path: Path, value, ylabel: str, title: str) -> Path:
    """Mean +- std over seeds of one metric against the start epoch, the chosen epochs marked."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    fixed = summary.fixed_groups()
    if fixed:
        ax.errorbar(
            [g.mean_start or 0.0 for g in fixed],
            [value(g)[0] for g in fixed],
            yerr=[value(g)[1] for g in fixed],
            marker="o",
            capsize=3,
            color="tab:blue",
            label="fixed start (grid)",
        )
    for policy, (marker, color) in MARKERS.items():
        g = summary.group(policy)
        if g is not None and g.mean_start is not None:
            starts = [s for s in g.start_epochs if s is not None]
            ax.errorbar(
                [g.mean_start],
                [value(g)[0]],
                xerr=[[g.mean_start - min(starts)], [max(starts) - g.mean_start]],
                yerr=[value(g)[1]],
                marker=marker,
                markersize=13,
                linestyle="none",
                capsize=3,
                color=color,
                label=f"{_name(policy)} (epochs {_starts(g)})",
            )
    for policy, style in (("never", "--"), ("after_training", ":")):
        g = summary.group(policy)
        if g is not None:
            ax.axhline(value(g)[0], color="gray", linestyle=style, label=_name(policy))
    return finish(fig, ax, path, "start epoch (dense epochs before pruning)", ylabel, title)


def _plot_curves(summary: OracleSummary, path: Path) -> Path:
    """Every seed's EPI curve, the configured and calibrated tau, EPI's and the reference's epochs."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for seed, curve in zip(summary.seeds, summary.calibration_curves):
        points = [(i + 1, v) for i, v in enumerate(curve) if v is not None]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, alpha=0.8, label=f"EPI, seed {seed}")
    if summary.tau is not None:
        ax.axhline(summary.tau, color="tab:red", linestyle="--", label=f"tau = {summary.tau:g}")
    if summary.calibrated:
        ax.axhline(summary.calibrated["tau"], color="tab:orange", linestyle="-.", label="calibrated tau")
    reference = summary.group(summary.reference)
    if reference is not None and reference.mean_start is not None:
        ax.axvline(reference.mean_start, color="tab:blue", linestyle="--", alpha=0.6, label="reference start")
    return finish(
        fig, ax, path, "epoch", "EPI (structural similarity)", "Early Pruning Indicator per seed", "lower right"
    )


def write_report(folder: Path, summary: OracleSummary) -> Path:
    """Write ``report.md`` and its three plots into ``folder``; returns the Markdown file."""
    folder = Path(folder)
    _plot_against_start(
        summary,
        folder / PLOTS["accuracy"],
        lambda g: (g.mean, g.std),
        "final accuracy (mean ± std over seeds)",
        "Final accuracy vs pruning start epoch",
    )
    _plot_against_start(
        summary,
        folder / PLOTS["cost"],
        lambda g: (g.train_flops_ratio, 0.0),
        "training FLOPs (x dense training)",
        "Training cost vs pruning start epoch",
    )
    _plot_curves(summary, folder / PLOTS["epi"])
    path = folder / REPORT_FILE
    atomic_write_text(path, markdown(summary))
    return path
