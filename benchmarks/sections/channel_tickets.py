"""benchmarks/README.md's channel-ticket sections: training speed when exported
(benchmarks/results/channel_training_speed.json), masked against exported (export_equivalence.json) and rounded
channel counts where tickets ship (deploy_latency.json)."""

from __future__ import annotations

from render import block, results, stale_note
from sections.common import ONE_SEED, fixed, percent, span, table, times

ENGINES = (("torch", "PyTorch"), ("onnx", "ONNX Runtime"))


@block("channel_training_speed.table")
def training_speed() -> str:
    r = results("channel_training_speed")
    rows = [[f"{row['density']:.3f}", f"{row['macs_fraction']:.3f}", f"{row['masked_images_per_second']:.0f}",
             f"{row['exported_images_per_second']:.0f}", times(row["speedup_exported_over_masked"])]
            for row in r["rows"]]
    return (f"`python benchmarks/channel_training_speed.py` ({r['model']}, {r['image_size']}x{r['image_size']} inputs, "
            f"batch {r['batch_size']}, {r['torch_threads']} threads, {r['rounds']} interleaved rounds of "
            f"{r['steps']} steps, medians; the speed-up is the median of the rounds' ratios): training throughput of a "
            "channel ticket kept as a masked dense model against the same ticket exported through Torch-Pruning's "
            "dependency graph (what `lt-plugin imp --granularity channel` trains).\n\n"
            + table(["density", "MACs (of dense)", "masked dense, img/s", "exported, img/s", "exported / masked"],
                    rows)
            + f"\nThe masked model trains at {span([row['masked_images_per_second'] for row in r['rows']], fixed(0))} "
              "images/s whatever its density; the exported one speeds up as its MACs fall.\n")


def norm(row: dict) -> str:
    return "LayerNorm" if any("LayerNorm" in name for name in row["norms"]) else "BatchNorm"


@block("export_equivalence.table")
def export_equivalence() -> str:
    r = results("export_equivalence")
    rows = [[row["model"], norm(row), f"{row['density']:.3f}", f"{row['max_abs_diff']:.1e}",
             f"{row['output_scale']:.2g}", f"{row['macs_fraction']:.3f}", f"{row['params_fraction']:.3f}"]
            for row in r["rows"]]
    by_norm = {kind: [row["max_abs_diff"] for row in r["rows"] if norm(row) == kind]
               for kind in ("BatchNorm", "LayerNorm")}
    return (f"`python benchmarks/export_equivalence.py` (target density {r['target_density']:g}, "
            f"{r['image_size']}x{r['image_size']}, norm scales randomised): the output difference between a masked "
            "model and its physical export, and what the export saves.\n\n"
            + table(["model", "norm", "density", "max abs diff, masked vs exported", "max abs output",
                     "MACs (of dense)", "params (of dense)"], rows)
            + f"\nBatchNorm networks agree to {max(by_norm['BatchNorm']):.1e} at most; LayerNorm networks differ by "
              f"{span(by_norm['LayerNorm'], fixed(2))}, because LayerNorm's mean and variance still count "
              "the zeroed channels.\n")


def latency() -> dict:
    return results("deploy_latency")


@block("deploy_latency.table")
def deploy_table() -> str:
    r = latency()
    rows = [[row["model"], f"{row['target_density']:g}", row["round_to"] or "-", f"{row['density']:.3f}",
             f"{row['macs_fraction']:.3f}", times(row["macs_limit"])]
            + [times(row[f"{engine}_speedup_batch_{batch}"]) for engine, _ in ENGINES for batch in r["batches"]]
            for row in r["latency"]]
    return (f"`python benchmarks/deploy_latency.py` ({r['image_size']}x{r['image_size']} inputs, {r['torch_threads']} "
            f"threads, torch {r['torch']}, ONNX Runtime CPU; each ticket timed against the dense model in "
            f"{r['rounds']} interleaved rounds after {r['warmup']} warm-up rounds, medians): speed-up over dense of "
            "channel tickets with free channel counts and rounded (`--round-to`), in PyTorch and in ONNX Runtime (the "
            "exported `.onnx` files), next to the MACs limit (dense MACs / ticket MACs).\n\n"
            + table(["model", "target density", "round-to", "density", "MACs (of dense)", "MACs limit"]
                    + [f"{label} b{batch}" for _, label in ENGINES for batch in r["batches"]], rows))


def slower_when_rounded(r: dict) -> list:
    """The (rounded ticket, its free ticket, runtime label, batch) cases where rounding lost speed."""
    free = {(row["model"], row["target_density"]): row for row in r["latency"] if row["round_to"] is None}
    cases = [(row, free[row["model"], row["target_density"]], engine, label, batch)
             for row in r["latency"] if row["round_to"] is not None
             for engine, label in ENGINES for batch in r["batches"]]
    return [(row, base, label, batch) for row, base, engine, label, batch in cases
            if row[f"{engine}_speedup_batch_{batch}"] < base[f"{engine}_speedup_batch_{batch}"]]


@block("deploy_latency.claims")
def deploy_claims() -> str:
    r = latency()
    big = r["batches"][-1]
    onnx = lambda rows: [row[f"onnx_speedup_batch_{big}"] for row in rows]
    free = [row for row in r["latency"] if row["round_to"] is None]
    rounded = [row for row in r["latency"] if row["round_to"] is not None]
    engine_of = {label: engine for engine, label in ENGINES}
    slower = slower_when_rounded(r)
    cases = "; ".join(f"{label} {row['model']} at {row['target_density']:g} rounded to {row['round_to']}, batch "
                      f"{batch}: {times(row[f'{engine_of[label]}_speedup_batch_{batch}'])} against "
                      f"{times(base[f'{engine_of[label]}_speedup_batch_{batch}'])} free"
                      for row, base, label, batch in slower)
    return (f"In ONNX Runtime at batch {big} the tickets with free channel counts run at {span(onnx(free), times)} "
            f"of the dense model's speed and the rounded ones at {span(onnx(rounded), times)}, as one expects of CPU "
            "convolution kernels that work on blocks of channels.\n\n"
            f"Rounding does not pay everywhere: in {len(slower)} of "
            f"{len(rounded) * len(ENGINES) * len(r['batches'])} (ticket, runtime, batch) cases the rounded ticket is "
            f"slower than the free one ({cases or 'none'}). Each speed-up is against the dense model timed in the "
            "same rounds, one measurement each.\n")


@block("deploy_latency.accuracy")
def deploy_accuracy() -> str:
    rows = latency()["accuracy"]
    settings = sorted({row["round_to"] or 0 for row in rows})
    levels = sorted({row["level"] for row in rows if row["level"] > 0})
    cell = {(row["round_to"] or 0, row["level"]): row for row in rows}
    shown = lambda row: f"{row['density']:.3f}: {percent(row['test_accuracy'])}"
    table_rows = [[setting or "-"] + [shown(cell[setting, level]) for level in levels] for setting in settings]
    spread = max(max(accuracy) - min(accuracy) for accuracy in
                 ([cell[setting, level]["test_accuracy"] for setting in settings] for level in levels))
    middle = levels[len(levels) // 2]
    return ("What rounding costs in accuracy, from a short channel IMP run each (`lt-plugin imp --recipe demo "
            "--model resnet18 --dataset digits --granularity channel --target-density 0.25 [--round-to N]`; "
            "density: test accuracy per level). " + ONE_SEED + "\n\n"
            + stale_note("deploy_latency", "accuracy")
            + table(["round-to"] + [f"level {level}" for level in levels], table_rows)
            + f"\nThis run cannot tell a cost of rounding: at one level the accuracies of the three settings span "
              f"{100 * spread:.1f} points, the noise of short levels scored on a small test split. Rounding does make "
              f"the intermediate levels overshoot their density (level {middle}: "
              + ", ".join(f"{cell[s, middle]['density']:.3f} rounded to {s}" for s in settings if s)
              + f" for {cell[0, middle]['density']:.3f} free): a layer loses channels several at a time.\n")
