"""benchmarks/README.md's "fit against a bare loop, and a run's fixed cost" (benchmarks/results/fit_overhead.json)."""

from __future__ import annotations

import statistics

from render import block, results
from sections.common import count, span, table, times

NAMES = {"lenet_300_100": "LeNet-300-100", "cifar_resnet20": "cifar_resnet20"}


def report() -> dict:
    return results("fit_overhead")


@block("fit_overhead.table")
def fit_table() -> str:
    rows = []
    for r in report()["fit"]:
        per_round = [f / b for f, b in zip(r["seconds"]["fit"], r["seconds"]["bare"])]
        rows.append([NAMES.get(r["model"], r["model"]), f"{count(r['train_samples'])} images, {r['epochs']} epochs, "
                     f"batch {r['batch_size']}", count(r["steps"]), f"{r['fit_ms_per_step']:.3g} ms/step",
                     f"{r['bare_ms_per_step']:.3g} ms/step", times(r["ratio"], 3),
                     ", ".join(times(v) for v in per_round)])
    rounds = len(report()["fit"][0]["seconds"]["fit"])
    return (f"Both sides in one process, interleaved, {rounds} rounds each; the ratio is of the two medians, and each "
            f"round's own ratio shows how far one round is from the next ({report()['cpus']} CPU cores):\n\n"
            + table(["model", "training (Fashion-MNIST)", "steps", "`fit`", "bare loop", "ratio of medians",
                     "per-round ratios"], rows))


@block("fit_overhead.run_costs")
def run_costs() -> str:
    costs = report()["run_costs"]
    return (f"Such a command costs {costs['fixed_seconds_per_run']:.1f} s beyond its training (the median over "
            f"{len(costs['command_seconds'])} runs; imports, the data read and split, the model built and checked); "
            f"`--seeds 0 1 2` pays that once, not per seed: three seeds as one replicated run took "
            f"{costs['replicated_3_seeds_seconds']:.1f} s against {costs['three_single_runs_seconds']:.1f} s for "
            f"three separate runs ({times(costs['replicated_saving'])}).\n" + _against_earlier())


def _against_earlier() -> str:
    """The fixed cost and `--help` against an earlier checkout, measured in the same rounds (`--earlier`)."""
    against = report().get("against_earlier")
    if against is None:
        return ""
    fixed, helps = against["fixed_median_seconds"], against["help_seconds"]
    return (f"\nAgainst the code of commit `{against['earlier_commit'][:7]}`, interleaved with it in "
            f"{len(against['fixed_seconds']['today'])} rounds on the same machine: a run's fixed cost "
            f"{fixed['earlier']:.1f} s then, {fixed['today']:.1f} s now ({times(against['fixed_ratio'])}); "
            f"`lt-plugin --help` {statistics.median(helps['earlier']):.2f} s then, "
            f"{statistics.median(helps['today']):.2f} s now ({times(against['help_ratio'])}).\n")
