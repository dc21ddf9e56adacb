"""`lt-plugin compare RUN...`: any finished run folders (any strategy or branch, one seed or replicated) side by side.

Their tickets are matched by density: the first run's densities are the reference, and every other run's ticket of
the nearest density is taken when it is within `tolerance` (relative); the largest mismatch is printed. Per density,
each run's mean accuracy with its 95% interval over seeds (one seed: the accuracy alone) and, for runs made with the
same seeds as the first (a ticket and its control, an IMP run and its Lottery Pools), the paired difference over
those seeds with its interval and p-value (lt_plugin.stats.paired_difference): the question a lottery-ticket result
asks, answered with the seeds' own spread. Every difference of one comparison (each density, each run against the
first, on the one metric compared) is one family of tests: their p-values are adjusted together (Holm by default,
lt_plugin.stats.adjust_family), and each difference's verdict and adjusted interval come from its adjusted p-value.
Runs on other data or another model are refused unless asked.

Writes compare.json, compare.png (accuracy against density with bands, the early-stopping iteration beside it
where the runs have one) and prints the table, into `--out` (default: the first run's `compare/`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .branches.base import FinishedRun
from .errors import RunFolderError, UserError
from .layout import RunLayout
from .report import format_table, plot_with_intervals
from .stats import ADJUSTMENTS, adjust_family, paired_difference, summarize
from .store import atomic_write_json, read_json

# What makes two runs comparable: the same model on the same data.
SAME = ("model", "model_kwargs", "dataset", "image_size", "max_train_samples", "val_fraction")
METRICS = ("test_accuracy", "early_stop_step", "early_stop_test_accuracy", "val_accuracy")
ADJUSTED = {"holm": "Holm-adjusted", "bonferroni": "Bonferroni-adjusted", "none": "unadjusted"}  # as the table says


class Compared:
    """One run as `compare` reads it: its rows (one per ticket, with density), the seeds of each value, its label."""

    def __init__(self, path):
        self.path = Path(path)
        run = FinishedRun(self.path)  # a folder that is not a run is refused here, in one line
        layout = RunLayout(self.path)
        if not layout.results.exists():
            raise RunFolderError(f"{self.path} has no results.json: rerun its command to finish it first")
        self.name, self.trainer = run.name, run.trainer
        self.rows = [r for r in read_json(layout.results) if r.get("density") is not None]
        self.seeds = run.replicates or [run.trainer.seed]
        self.label = str(self.path)

    def identity(self) -> dict:
        return {key: getattr(self.trainer, key, None) for key in SAME}

    def values(self, row: dict, metric: str) -> Dict[int, Optional[float]]:
        """{seed: value} of one metric of one row (a replicated run's per-seed values, else its one value)."""
        if f"{metric}_values" in row:
            return dict(zip(row["seeds"], row[f"{metric}_values"]))
        return {self.seeds[0]: row.get(metric)}


def nearest(rows: Sequence[dict], density: float) -> dict:
    return min(rows, key=lambda r: abs(r["density"] - density))


def _check_out(out: Path) -> None:
    """Refuse, before anything is written, an --out that cannot become a folder holding compare's files."""
    existing = next(path for path in (out, *out.parents) if path.exists())
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a folder; give a folder for compare.json and "
                        "compare.png")
    for target in (RunLayout(out).compare, RunLayout(out).plot("compare.png")):
        if target.exists() and not target.is_file():
            raise UserError(f"--out {out}: {target} is a folder; move it away or give another --out")


def compare(paths: Sequence, out: Optional[Path] = None, tolerance: float = 0.02, allow_different: bool = False,
            metric: str = "test_accuracy", adjustment: str = "holm", alpha: float = 0.05) -> dict:
    """Read, match, difference (on `metric`, e.g. early_stop_test_accuracy, LTH's measure), adjust the differences
    as one family (`adjustment`: holm, bonferroni or none; verdicts at `alpha`) and write; returns what
    compare.json holds."""
    if metric not in METRICS:
        raise UserError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if adjustment not in ADJUSTMENTS:
        raise UserError(f"--adjust must be one of {', '.join(ADJUSTMENTS)}, not {adjustment!r}")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be a level between 0 and 1 (exclusive), not {alpha}")
    if len(paths) < 2:
        raise UserError("compare needs two run folders or more")
    if not 0 <= tolerance < 1:
        raise UserError(f"--tolerance must be a fraction of the density in [0, 1), not {tolerance}")
    runs = [Compared(path) for path in paths]
    common = Path(os.path.commonpath([run.path.resolve() for run in runs]))
    base = common.parent if any(run.path.resolve() == common for run in runs) else common
    for run in runs:  # each run named by its path below the folder they share
        run.label = str(run.path.resolve().relative_to(base))
    reference = runs[0]
    for run in runs[1:]:
        differ = [key for key in SAME if run.identity()[key] != reference.identity()[key]]
        if differ and not allow_different:
            raise UserError(f"{run.path} differs from {reference.path} in {', '.join(differ)}; compare runs of the "
                            "same model on the same data, or add --allow-different")
    out = Path(out) if out is not None else RunLayout(reference.path).branch("compare")
    _check_out(out)
    rows, worst = [], 0.0
    for ref_row in sorted(reference.rows, key=lambda r: -r["density"]):
        density = ref_row["density"]
        matched = {reference.label: ref_row}
        for run in runs[1:]:
            if not run.rows:
                continue
            row = nearest(run.rows, density)
            mismatch = abs(row["density"] - density) / density
            if mismatch <= tolerance:
                matched[run.label] = row
                worst = max(worst, mismatch)
        entry = {"density": density, "runs": {}, "differences": {}}
        for run in runs:
            row = matched.get(run.label)
            if row is None:
                continue
            entry["runs"][run.label] = {"density": row["density"], **{
                metric: summarize(list(run.values(row, metric).values())) for metric in METRICS
                if row.get(metric) is not None}}
            if run is reference:
                continue
            a, b = run.values(row, metric), reference.values(ref_row, metric)
            shared = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
            if shared:
                entry["differences"][run.label] = {"seeds": shared, **paired_difference(
                    [a[s] for s in shared], [b[s] for s in shared])}
        rows.append(entry)
    family = [(entry["differences"], label) for entry in rows for label in entry["differences"]]
    adjusted = adjust_family([holder[label] for holder, label in family], adjustment, alpha)
    for (holder, label), difference in zip(family, adjusted):
        holder[label] = difference
    report = {"runs": [{"path": str(run.path), "strategy": run.name, "seeds": run.seeds, **run.identity()}
                       for run in runs],
              "reference": reference.label, "metric": metric, "tolerance": tolerance,
              "largest_density_mismatch": worst,
              "adjustment": {"method": adjustment, "alpha": alpha,
                             "family_size": sum(d["p_adjusted"] is not None for d in adjusted),
                             "family": f"every paired difference of this comparison on {metric} with a p-value "
                                       "(each density, each run against the first)"},
              "rows": rows}
    atomic_write_json(report, RunLayout(out).compare)
    _plot(report, runs, RunLayout(out).plot("compare.png"), metric)
    _print(report, runs, out)
    return report


def _plot(report: dict, runs: List[Compared], path: Path, metric: str) -> None:
    def points(metric):
        return {run.label: [(e["density"], e["runs"][run.label][metric]["mean"], e["runs"][run.label][metric]["ci_low"],
                             e["runs"][run.label][metric]["ci_high"]) for e in report["rows"]
                            if metric in e["runs"].get(run.label, {})] for run in runs}
    steps = points("early_stop_step")
    plot_with_intervals(points(metric), path, f"compare: {metric.replace('_', ' ')} against density",
                        steps if any(steps.values()) else None)


def _accuracy_text(summary: Optional[dict]) -> str:
    """'mean [low, high]' of an accuracy, in percent."""
    if not summary or summary.get("mean") is None:
        return "-"
    low, high = summary.get("ci_low"), summary.get("ci_high")
    return f"{summary['mean']:.2%}" + (f" [{low:.2%}, {high:.2%}]" if low is not None else "")


def _difference_text(summary: Optional[dict]) -> str:
    """'+mean [low, high] p=... p_adj=... verdict' of a paired difference in percentage points, with its adjusted
    interval; where no test was made, the mean and why."""
    if not summary or summary.get("mean") is None:
        return "-"
    mean = f"{100 * summary['mean']:+.2f}"
    if summary["p_adjusted"] is None:
        return f"{mean} ({summary['verdict']}" + (f", n={summary['n']})" if summary["n"] > 1 else ")")
    low, high = summary["ci_adjusted_low"], summary["ci_adjusted_high"]
    return (f"{mean} [{100 * low:+.2f}, {100 * high:+.2f}] p={summary['p_value']:.3g} "
            f"p_adj={summary['p_adjusted']:.3g} {summary['verdict']}")


def _interval_name(adjustment: dict) -> str:
    """What the table's intervals are: Holm's agree with its verdicts, Bonferroni's hold all at once."""
    level = f"{100 * (1 - adjustment['alpha']):g}%"
    return {"holm": "Holm-adjusted CI", "bonferroni": f"{level} simultaneous CI", "none": f"{level} CI"}[
        adjustment["method"]]


def _print(report: dict, runs: List[Compared], out: Path) -> None:
    adjustment = report["adjustment"]
    columns, table = [("density", "density", "{:.4f}")], []
    for i, run in enumerate(runs):
        columns.append((f"run{i}", f"{run.label} {report['metric'].replace('_', ' ')}", "{}"))
        if i:
            columns.append((f"diff{i}", f"minus {runs[0].label} (points, {_interval_name(adjustment)})", "{}"))
    for entry in report["rows"]:
        row = {"density": entry["density"]}
        for i, run in enumerate(runs):
            row[f"run{i}"] = _accuracy_text(entry["runs"].get(run.label, {}).get(report["metric"]))
            if i:
                row[f"diff{i}"] = _difference_text(entry["differences"].get(run.label))
        table.append(row)
    print(format_table(table, columns))
    print(f"densities matched within {report['tolerance']:.0%} of the first run's (largest mismatch "
          f"{report['largest_density_mismatch']:.2%}); differences are paired over the seeds both runs share")
    tests = adjustment["family_size"]
    family = f"the {tests} test{'s' * (tests != 1)} of this table"
    print("p: two-sided paired t test; " + (
        f"p_adj: {ADJUSTED[adjustment['method']]} over {family} (one family: every difference with a p)"
        if adjustment["method"] != "none" else f"p_adj = p, not adjusted for {family}"))
    print(f"verdict: above or below where p_adj < {adjustment['alpha']:g}, else within noise; each interval at its "
          "adjusted level, excluding 0 exactly where above or below (docs/replicates.md)")
    print(f"results: {RunLayout(out).compare}  plot: {RunLayout(out).plot('compare.png')}")
