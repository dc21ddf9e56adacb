"""benchmarks/README.md's "Lottery Pools: fast against reference" (benchmarks/results/lottery_pools_protocols.json)."""

from __future__ import annotations

from render import block, results, stale_note
from sections.common import ONE_SEED, count, points, span, table, times


def report() -> dict:
    return results("lottery_pools_protocols")


def data(run: dict) -> str:
    limit = run["max_train_samples"]
    return f"{run['dataset']}, " + (f"{count(limit)} training images" if limit else "its whole training split")


@block("lottery_pools_protocols.table")
def protocols_table() -> str:
    rows = []
    for run in report()["runs"]:
        levels = [r["level"] for r in run["rows"]]
        passes = lambda protocol: span([r[f"val_passes_{protocol}"] for r in run["rows"]], str).replace(" to ", "-")
        rows.append([f"{run['model']}, {data(run)}", ", ".join(map(str, levels)),
                     f"{run['search_seconds']['fast']:.1f}", f"{run['search_seconds']['reference']:.1f}",
                     times(run["speedup"], 1), f"{passes('fast')} vs {passes('reference')}",
                     ", ".join(points(r["pooled_test_accuracy_fast"] - r["pooled_test_accuracy_reference"])
                               for r in run["rows"]) + " points"])
    return (stale_note("lottery_pools_protocols")
            + table(["IMP run", "targets", "search s, fast", "search s, reference", "faster",
                     "val passes per target", "pooled test, fast - reference"], rows)
            + f"\n{ONE_SEED}\n")
