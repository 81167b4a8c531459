"""Judge EPI trials of a new sweep against a committed grid: the issue-25 re-judging.

A sweep run with ``oracle.start_epochs: [g]`` and ``oracle.policies: [epi]`` (and the committed
grid's seeds) holds fresh ``fixed-g`` trials and the EPI trials under test. The fixed trials
must equal the committed grid's to the last digit (same code path, same seeds), or the grid
cannot be reused; when they do, the EPI trials are judged against the committed grid exactly
as ``pat-ray oracle`` would: reference start, seed std, target max(1 seed std, 0.3 points),
training FLOPs against the grid's. Snapshot overhead is read from the trials' own epoch records
(seconds in snapshots over seconds of the dense epochs).

    python benchmarks/rejudge.py NEW_SWEEP_FOLDER COMMITTED_ORACLE_JSON --out FOLDER
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from pat_ray.config import config_from_dict
from pat_ray.sweep.plan import OracleSummary, read_summary, summarize, write_summary
from pat_ray.sweep.report import write_report
from pat_ray.training.checkpoint import read_checkpoint


def _overhead(folder: Path, label: str) -> tuple[float, float] | None:
    """(snapshot seconds, epoch seconds) summed over the trial's epochs that took snapshots."""
    checkpoints = sorted(folder.glob(f"{label}/checkpoint_*/last.pt"))
    if not checkpoints:
        return None
    history = read_checkpoint(checkpoints[-1]).extra["history"]
    taken = [r for r in history if r.get("snapshots")]
    return sum(r["snapshot_seconds"] for r in taken), sum(r["epoch_seconds"] for r in taken)


def judge(new: OracleSummary, folder: Path, grid: OracleSummary) -> list[str]:
    lines = ["| trial | new accuracy | committed | same to the last digit |", "|---|---:|---:|---|"]
    same = True
    for trial in new.fixed:
        old = grid.trial(trial.label)
        equal = old is not None and (trial.accuracy, trial.flops_kept) == (old.accuracy, old.flops_kept)
        same &= equal
        shown = f"{old.accuracy:.4f}" if old is not None and old.accuracy is not None else "-"
        lines.append(f"| {trial.label} | {trial.accuracy:.4f} | {shown} | {'yes' if equal else 'NO'} |")
    fixed = grid.fixed_groups()
    verdict = grid.verdict()
    epi = [t for t in new.trials if t.policy == "epi" and t.ok]
    if verdict is None or not epi:
        return [*lines, "", "No grid verdict or no EPI trial."]
    accuracies = [t.accuracy for t in epi if t.accuracy is not None]
    mean, std = statistics.mean(accuracies), statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    gap = 100 * (mean - verdict.reference.mean)
    target = max(100 * verdict.noise_std, 0.3)
    cost = statistics.mean(t.train_flops or 0.0 for t in epi) / verdict.grid_train_flops
    starts = ", ".join(
        f"{round(t.start_epoch, 2):g}" for t in sorted(epi, key=lambda t: t.seed or 0) if t.start_epoch is not None
    )
    old_epi = grid.group("epi")
    spent = [o for o in (_overhead(folder, t.label) for t in epi) if o is not None]
    lines += [
        "",
        f"- Committed grid reused: {'yes (every fresh fixed trial equals it)' if same else 'NO: it did not reproduce'}.",
        f"- Reference start: {verdict.reference.group} ({verdict.reference.mean:.4f}); seed std "
        f"{100 * verdict.noise_std:.2f} points; target max(1 seed std, 0.3) = {target:.2f} points.",
        f"- EPI, snapshots within epochs: starts at {starts}; {mean:.4f} ± {std:.4f}: **{gap:+.2f} points** "
        f"({'met' if abs(gap) <= target or gap > 0 else 'missed'}); training FLOPs {cost:.3f} of the grid's "
        f"(1/N = {1 / len(fixed):.3f}: {'met' if cost <= 1 / len(fixed) else 'missed'}).",
    ]
    if old_epi is not None:
        lines.append(
            f"- EPI with one snapshot per epoch (committed): starts at {', '.join(f'{s:g}' for s in old_epi.start_epochs if s is not None)}; "
            f"{old_epi.mean:.4f} ± {old_epi.std:.4f} ({100 * (old_epi.mean - verdict.reference.mean):+.2f} points)."
        )
    if spent:
        snapshot_s, epoch_s = sum(s for s, _ in spent), sum(e for _, e in spent)
        lines.append(
            f"- Snapshot time in the dense epochs: {snapshot_s:.1f} s of {epoch_s:.1f} s ({100 * snapshot_s / epoch_s:.2f}%)."
        )
    return lines


def resummarized(folder: Path) -> OracleSummary:
    """The sweep's summary computed again by this checkout's code from its trials and curves
    (the sweep's config read from a trial's checkpoint: its oracle section is the sweep's)."""
    done = read_summary(folder)
    checkpoint = read_checkpoint(sorted(folder.glob(f"{done.trials[0].label}/checkpoint_*/last.pt"))[-1])
    config = config_from_dict(checkpoint.extra["config"])
    summary = summarize(done.name, config, done.trials, done.calibration_curves, done.calibration_source)
    summary.folder = done.folder
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("grid", type=Path)
    parser.add_argument("--out", type=Path, help="a folder for rejudge.md, oracle.json, report.md and plots")
    args = parser.parse_args()
    folder = args.sweep.resolve()
    new = resummarized(folder)
    lines = judge(new, folder, read_summary(args.grid))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "rejudge.md").write_text(text)
        write_summary(args.out, new)
        write_report(args.out, new)


if __name__ == "__main__":
    main()
