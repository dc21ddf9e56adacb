"""The accuracy suite: all three strategies on real data (Fashion-MNIST), one model and one schedule for every row.

Model: timm resnet18 at 32x32 (Fashion-MNIST's 28x28 resized), 10,000 of the 60,000 training images (6,000 others held
out for validation, the 10,000 test images for testing). Schedule of every training: 4 epochs, batch 128, SGD lr 0.1
momentum 0.9 cosine, weight decay 1e-4, no augmentation. That is what fits 90 minutes of 2 CPU cores: one epoch of
10,000 images is ~17 s, and the suite trains about 135 epochs (Lottery Pools scoring is the rest).

1. IMP, weight tickets: 6 levels to density 0.01 (x0.46 per level), late rewinding to iteration 16 (5% of training);
   the random-reinit and random-mask controls on the same levels (`--control`).
2. Lottery Pools on every level of that run (fast protocol), with the corruptions on 1,000 test images.
3. Early-Bird at ratios 0.3 and 0.5 (a mask every 20 steps) with the one-shot baseline, and again with the 8-bit search.
4. IMP, channel tickets: 4 levels to density 0.25, channel counts rounded to 8 (see deploy_latency.py); each level
   exported and timed against the dense model (batch 1 and 64, PyTorch and ONNX Runtime).

Every stage runs into a run folder under --work; a rerun skips what is finished (the folders resume). Writes
benchmarks/results/accuracy.json and accuracy_*.png, and prints the README's tables.

    make bench-accuracy        # = python benchmarks/accuracy.py, with the data offline
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import lt_plugin
from lt_plugin.cli import main as cli_main
from lt_plugin.data import FASHION_MNIST_DEFAULT_DIR, FASHION_MNIST_DIR_ENV, FASHION_MNIST_FILES
from lt_plugin.report import plot_accuracy_curves
from lt_plugin.branches.export import export_run_ticket
from provenance import provenance

DATA = ["--model", "resnet18", "--dataset", "fashion-mnist", "--image-size", "32", "--max-train-samples", "10000"]
SCHEDULE = ["--epochs", "4", "--batch-size", "128", "--opt", "momentum", "--lr", "0.1", "--momentum", "0.9",
            "--weight-decay", "1e-4", "--sched", "cosine", "--warmup-epochs", "0", "--augment", "none", "--seed", "0"]
IMP_WEIGHT = ["--levels", "6", "--target-density", "0.01", "--rewind", "16it"]
IMP_CHANNEL = ["--granularity", "channel", "--levels", "4", "--target-density", "0.25", "--round-to", "8",
               "--rewind", "16it"]
EARLY_BIRD = ["--ratios", "0.3", "0.5", "--check-every", "20"]
POOLS = ["--corruptions", "--corruption-samples", "1000"]
CONTROLS = ("random-reinit", "random-mask")


def check_data():
    directory = Path(os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DEFAULT_DIR)
    missing = [name for name in FASHION_MNIST_FILES.values() if not (directory / name).is_file()]
    if missing:
        sys.exit(f"error: Fashion-MNIST is not in {directory} (missing {', '.join(missing)}): install it with "
                 f"`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or point {FASHION_MNIST_DIR_ENV} at "
                 "a folder with the four IDX files")


def run(stage: str, argv: list, seconds: dict) -> None:
    """One lt-plugin command; its wall time (of this invocation: 0 s when the folder was finished) in `seconds`."""
    print(f"\n== {stage}: lt-plugin {' '.join(argv)}", flush=True)
    started = time.perf_counter()
    code = cli_main(argv)
    if code != 0:
        sys.exit(f"error: stage {stage} failed (exit {code})")
    seconds[stage] = time.perf_counter() - started


def read(path: Path):
    return json.loads(path.read_text())


def channel_latency(run_dir: Path, levels) -> list:
    """Each exported channel level timed against the dense model (PyTorch and ONNX Runtime, batch 1 and 64)."""
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for level in levels:
            _, details = export_run_ticket(run_dir, str(level), Path(scratch) / f"level_{level}.onnx", fmt="onnx",
                                           benchmark=True)
            rows.append({"level": level, **details["latency"]})
    return rows


def tables(report: dict) -> str:
    """The README's tables, from the report."""
    out = []
    imp = {r["level"]: r for r in report["imp_weight"]}
    controls = {c: {r["level"]: r for r in report[f"imp_weight_{c.replace('-', '_')}"]} for c in CONTROLS}
    pools = {r["level"]: r for r in report["lottery_pools"]}
    out.append("| level | density | ticket | random reinit | random mask | pooled | ticket + BN | SWA | EMA |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for level, r in imp.items():
        p = pools[level]
        out.append(f"| {level} | {r['density']:.3f} | {r['test_accuracy']:.2%} | "
                   f"{controls['random-reinit'][level]['test_accuracy']:.2%} | "
                   f"{controls['random-mask'][level]['test_accuracy']:.2%} | {p['pooled_test_accuracy']:.2%} | "
                   f"{p['ticket_bn_test_accuracy']:.2%} | {p['swa_test_accuracy']:.2%} | "
                   f"{p['ema_test_accuracy']:.2%} |")
    ensemble = report["lottery_pools"][0]
    out.append(f"\nEnsemble of all {len(imp)} tickets (x{len(imp)} inference MACs): "
               f"{ensemble['ensemble_test_accuracy']:.2%} test, {ensemble['ensemble_corruption_accuracy']:.2%} "
               "under corruptions.\n")
    out.append("| level | density | ticket, corrupted | pooled, corrupted | ticket + BN, corrupted | SWA, corrupted | "
               "EMA, corrupted | accepted (level@alpha) |")
    out.append("|---|---|---|---|---|---|---|---|")
    for level, p in pools.items():
        accepted = ", ".join(f"{lv}@{a:g}" for lv, a in p["accepted"]) or "-"
        out.append(f"| {level} | {p['density']:.3f} | {p['ticket_corruption_accuracy']:.2%} | "
                   f"{p['pooled_corruption_accuracy']:.2%} | {p['ticket_bn_corruption_accuracy']:.2%} | "
                   f"{p['swa_corruption_accuracy']:.2%} | {p['ema_corruption_accuracy']:.2%} | {accepted} |")
    out.append("\n| Early-Bird | ratio | emerged (epoch of 4) | density | test | one-shot test | training MACs | "
               "one-shot training MACs | MACs saved | seconds | one-shot seconds | seconds saved |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    baseline = {r["ratio"]: r for r in report["early_bird"]}
    for name, rows in (("fp32 search", report["early_bird"]), ("8-bit search", report["early_bird_int8"])):
        for r in rows:
            b = baseline[r["ratio"]]
            emerged = f"{r['eb_step'] / report['steps_per_epoch']:.1f}" if r["found"] else "not found"
            out.append(f"| {name} | {r['ratio']:g} | {emerged} | {r['density']:.3f} | {r['test_accuracy']:.2%} | "
                       f"{b['baseline_test_accuracy']:.2%} | {r['train_macs']:.3g} | {b['baseline_train_macs']:.3g} | "
                       f"x{b['baseline_train_macs'] / r['train_macs']:.2f} | {r['train_seconds']:.0f} | "
                       f"{b['baseline_train_seconds']:.0f} | "
                       f"x{b['baseline_train_seconds'] / r['train_seconds']:.2f} |")
    out.append("\n| channel level | density | test | params | MACs | PyTorch b1 ms | PyTorch b64 ms | "
               "ONNX Runtime b1 ms | ONNX Runtime b64 ms | training seconds |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for r, lat in zip(report["imp_channel"], report["imp_channel_latency"]):
        out.append(f"| {r['level']} | {r['density']:.3f} | {r['test_accuracy']:.2%} | {r['params'] / 1e6:.2f}M | "
                   f"{r['macs'] / 1e6:.1f}M | {lat['torch_ticket_seconds_batch_1'] * 1e3:.2f} | "
                   f"{lat['torch_ticket_seconds_batch_64'] * 1e3:.1f} | "
                   f"{lat['onnx_ticket_seconds_batch_1'] * 1e3:.2f} | "
                   f"{lat['onnx_ticket_seconds_batch_64'] * 1e3:.1f} | {r['train_seconds']:.0f} |")
    return "\n".join(out)


def plots(report: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = report["imp_weight"][0]["test_accuracy"]
    curves = {"IMP ticket (rewind to it. 16)": [(r["density"], r["test_accuracy"]) for r in report["imp_weight"]]}
    for control in CONTROLS:
        curves[control] = [(r["density"], r["test_accuracy"])
                           for r in report[f"imp_weight_{control.replace('-', '_')}"]]
    curves["Lottery Pools (pooled ticket)"] = [(r["density"], r["pooled_test_accuracy"])
                                               for r in report["lottery_pools"]]
    plot_accuracy_curves(curves, out / "accuracy_imp_weight.png", dense,
                         title="Fashion-MNIST, resnet18: weight tickets against density")
    corrupted = {name: [(r["density"], r[f"{key}_corruption_accuracy"]) for r in report["lottery_pools"]]
                 for name, key in (("ticket", "ticket"), ("pooled", "pooled"), ("ticket + BN", "ticket_bn"),
                                   ("SWA", "swa"), ("EMA", "ema"))}
    plot_accuracy_curves(corrupted, out / "accuracy_pools_corruptions.png",
                         report["lottery_pools"][0]["ensemble_corruption_accuracy"],
                         title="Under corruptions (mean of 6 x 5 severities); line: ensemble")

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), dpi=120)
    baseline = {r["ratio"]: r for r in report["early_bird"]}
    labels, accuracy, macs, seconds = [], [], [], []
    for name, rows in (("EB fp32", report["early_bird"]), ("EB int8", report["early_bird_int8"])):
        for r in rows:
            labels.append(f"{name}\nratio {r['ratio']:g}")
            accuracy.append(r["test_accuracy"] * 100)
            macs.append(r["train_macs"] / 1e12)
            seconds.append(r["train_seconds"])
    for ratio, b in baseline.items():
        labels.append(f"one-shot\nratio {ratio:g}")
        accuracy.append(b["baseline_test_accuracy"] * 100)
        macs.append(b["baseline_train_macs"] / 1e12)
        seconds.append(b["baseline_train_seconds"])
    for ax, values, title in zip(axes, (accuracy, macs, seconds),
                                 ("test accuracy, %", "training MACs (1e12)", "training seconds")):
        ax.bar(range(len(labels)), values, color=["C0"] * (len(labels) - len(baseline)) + ["C1"] * len(baseline))
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylim(bottom=min(accuracy) - 3)
    fig.suptitle("Early-Bird against one-shot pruning (Fashion-MNIST, resnet18, 4 epochs)")
    fig.tight_layout()
    fig.savefig(out / "accuracy_early_bird.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    rows, latency = report["imp_channel"], report["imp_channel_latency"]
    ax.plot([r["macs"] / 1e6 for r in rows], [r["test_accuracy"] * 100 for r in rows], "o-")
    for r, lat in zip(rows, latency):
        ax.annotate(f"L{r['level']}: {lat['torch_ticket_seconds_batch_64'] * 1e3:.0f} ms/64 (torch), "
                    f"{lat['onnx_ticket_seconds_batch_64'] * 1e3:.0f} (ORT)",
                    (r["macs"] / 1e6, r["test_accuracy"] * 100), fontsize=7, textcoords="offset points",
                    xytext=(4, 4))
    ax.set_xlabel("MACs per image (M)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Channel tickets: accuracy, MACs and latency per level")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "accuracy_imp_channel.png")
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench-accuracy", help="run folders (kept: a rerun resumes)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    check_data()
    work, out = Path(args.work), Path(args.out)
    seconds = {}
    started = time.perf_counter()
    common = [*DATA, *SCHEDULE]
    run("imp_weight", ["imp", *common, *IMP_WEIGHT, "--out", str(work / "imp_weight")], seconds)
    for control in CONTROLS:
        run(f"imp_weight_{control}", ["imp", "--control", control, "--run", str(work / "imp_weight"),
                                      "--out", str(work / f"imp_weight_{control}")], seconds)
    run("lottery_pools", ["lottery-pools", "--run", str(work / "imp_weight"), *POOLS], seconds)
    run("early_bird", ["early-bird", *common, *EARLY_BIRD, "--baseline", "--out", str(work / "early_bird")], seconds)
    run("early_bird_int8", ["early-bird", *common, *EARLY_BIRD, "--search-precision", "int8",
                            "--out", str(work / "early_bird_int8")], seconds)
    run("imp_channel", ["imp", *common, *IMP_CHANNEL, "--out", str(work / "imp_channel")], seconds)
    channel = read(work / "imp_channel" / "results.json")
    latency_started = time.perf_counter()
    latency = channel_latency(work / "imp_channel", [r["level"] for r in channel])
    seconds["imp_channel_latency"] = time.perf_counter() - latency_started

    imp = read(work / "imp_weight" / "results.json")
    report = {
        "benchmark": "accuracy", "lt_plugin": lt_plugin.__version__, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "processor": platform.processor(), "commands": {
            "common": common, "imp_weight": IMP_WEIGHT, "controls": list(CONTROLS), "lottery_pools": POOLS,
            "early_bird": EARLY_BIRD, "imp_channel": IMP_CHANNEL},
        "steps_per_epoch": imp[0]["steps"] // int(SCHEDULE[SCHEDULE.index("--epochs") + 1]),
        "imp_weight": imp,
        **{f"imp_weight_{c.replace('-', '_')}": read(work / f"imp_weight_{c}" / "results.json") for c in CONTROLS},
        "lottery_pools": read(work / "imp_weight" / "pools" / "results.json"),
        "early_bird": read(work / "early_bird" / "results.json"),
        "early_bird_int8": read(work / "early_bird_int8" / "results.json"),
        "imp_channel": channel, "imp_channel_latency": latency,
        "stage_seconds": seconds, "wall_seconds": time.perf_counter() - started, "provenance": provenance(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    plots(report, out)
    print("\n" + tables(report))
    print(f"\nwrote {out / 'accuracy.json'} and {out}/accuracy_*.png in {report['wall_seconds'] / 60:.1f} min "
          "(stages resumed from finished run folders count 0 s)")


if __name__ == "__main__":
    main()
