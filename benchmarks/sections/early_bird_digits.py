"""benchmarks/README.md's "Early-Bird against one-shot pruning on the built-in data"
(benchmarks/results/early_bird_digits.json, made by benchmarks/early_bird_digits.py)."""

from __future__ import annotations

from render import block, results, stale_note
from sections.common import ONE_SEED, command, early_bird_paper, percent, points, span, table, times


def report() -> dict:
    return results("early_bird_digits")


@block("early_bird_digits.table")
def digits_table() -> str:
    r = report()
    epochs = r["command"][r["command"].index("--epochs") + 1]
    rows = [[f"{row['ratio']:g}", row["eb_epoch"], f"{row['density']:.3f}", percent(row["test_accuracy"]),
             percent(row["baseline_test_accuracy"]), points(row["test_accuracy"] - row["baseline_test_accuracy"]),
             f"{row['train_macs']:.3g}", f"{row['baseline_train_macs']:.3g}", times(row["train_macs_saved"])]
            for row in r["results"]]
    return (f"{command(['lt-plugin', *r['command']])}, made on {r['provenance']['made']} "
            f"(`python benchmarks/early_bird_digits.py` writes `results/early_bird_digits.json` and "
            "`results/early_bird_digits_mask_distance.png`). " + ONE_SEED + "\n\n"
            + stale_note("early_bird_digits")
            + table(["ratio", f"emerged (epoch of {epochs})", "density", "Early-Bird test", "one-shot test",
                     "difference (points)", "training MACs", "one-shot training MACs", "MACs saved"], rows))


@block("early_bird_digits.claims")
def digits_claims() -> str:
    rows = report()["results"]
    against = [r["test_accuracy"] - r["baseline_test_accuracy"] for r in rows]
    return (f"Early-Bird trains its tickets with {span([r['train_macs_saved'] for r in rows], times)} fewer MACs "
            f"than one-shot pruning, at {span(against, points)} "
            f"points of test accuracy against it; {early_bird_paper()}. Its wall-clock saving, "
            f"{span([r['train_seconds_saved'] for r in rows], times)}, was measured on a machine shared with other "
            "jobs.\n")
