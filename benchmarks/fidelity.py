"""Do the papers' effects show? LTH on LeNet-300-100, Lottery Pools and Early-Bird, on the full Fashion-MNIST.

Parts (each runs alone with --parts; every run is a strategy's run folder under --work, so a rerun resumes):
  lth    LTH Figures 3/4: LeNet-300-100 (recipe lth-lenet: Adam 1.2e-3, batch 60, layer-wise, 20% of each hidden
         layer and 10% of the output layer per level, rewound to init, early stopping at the lowest validation loss)
         to density ~2% in 17 levels, against random reinitialisation and random masks (9 levels of 40%: the same
         per-level rule at fewer densities): test accuracy and early-stopping iteration against density.
  pools  Lottery Pools on the lth ticket run: pooled against ticket (and ticket+BN) at every level, in distribution
         and under CIFAR-10-C style corruptions, with the paired acceptance rule (the default) and the paper's.
  small  Lottery Pools as a new user meets it: 4,000 training images with 400 held out, a LeNet-300-100 IMP run of 8
         levels; the paper's rule against the paired rule: does test accuracy fall where validation accuracy rises?
  eb     Early-Bird on cifar_resnet20 with --baseline (5,000 training images, crop-flip, 10 epochs): accuracy and
         training MACs of the Early-Bird tickets against the one-shot tickets of the same budget.
Fashion-MNIST is split as LTH splits MNIST: 55,000 training, 5,000 validation, the 10,000 test images. Every test
accuracy comes with its binomial standard error (the noise of a 10,000-image test set). Writes
benchmarks/results/fidelity.json and fidelity_*.png; needs Debian's dataset-fashion-mnist.

    python benchmarks/fidelity.py [--parts lth pools small eb] [--epochs 15] [--work runs/fidelity]
"""

import argparse
import json
import math
import platform
import time
from pathlib import Path

import lt_plugin
from lt_plugin.store import read_json

VAL_FRACTION = 5_000 / 60_000
TEST_IMAGES = 10_000
# What the papers report (shared REFERENCE.md, read off their figures where so marked).
PAPER = {
    "lth": "LeNet-300-100 on MNIST (LTH Figures 3-4, approximate): tickets beat the dense test accuracy from ~50% down "
           "to ~13% of the weights and still match it near ~3.6%; they reach their early-stopping iteration sooner "
           "than the dense network; randomly reinitialised tickets fall below dense far earlier and learn slower.",
    "pools": "Lottery Pools (AAAI 2023): pooled tickets beat the tickets at the same sparsity, up to +1.88 points on "
             "CIFAR-100 and +2.36 on CIFAR-100-C, and the pooled dense network beats dense by up to +2.22; gains "
             "shrink at the highest sparsities (ResNet-18/CIFAR-10: ticket ~94.5, pooled ~95.1).",
    "eb": "Early-Bird (ICLR 2020), VGG-16/CIFAR-100 at p = 30/50%: EB 72.17/71.28 vs one-shot 71.31/70.96, training "
          "FLOPs 243/197 vs 605 (x0.05 P), i.e. 2.5-3.1x less; the ticket is found within the first ~10-20% of "
          "training.",
}


def binomial_error(accuracy: float, n: int = TEST_IMAGES) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / n)


def run(strategy: str, out: Path, **options) -> list:
    started = time.perf_counter()
    results = lt_plugin.create_strategy(strategy, **options).run(out)
    print(f"{strategy} {out.name}: {time.perf_counter() - started:.0f}s")
    return results


def _sweeps(result: dict) -> list:
    """Each candidate's best validation accuracy and, under the paired rule, its images gained and lost and p."""
    return [{"candidate": s["candidate"], "best_val_accuracy": max((a for _, a in s["scores"]), default=None),
             **{k: s[k] for k in ("gained", "lost", "p_value") if k in s}} for s in result.get("sweeps", [])]


def lth_part(args, work: Path) -> dict:
    common = dict(model="lenet_300_100", recipe="lth-lenet", dataset="fashion-mnist", val_fraction=VAL_FRACTION,
                  epochs=args.epochs, seed=0)
    runs = {"ticket": run("imp", work / "lth_ticket", levels=17, **common),
            "random-reinit": run("imp", work / "lth_reinit", levels=8, prune_fraction=0.4, control="random-reinit",
                                 layer_prune_fractions={"fc": 0.2}, **common),
            "random-mask": run("imp", work / "lth_random_mask", levels=8, prune_fraction=0.4, control="random-mask",
                               layer_prune_fractions={"fc": 0.2}, **common)}
    curves = {name: [{"density": r["density"], "test_accuracy": r["test_accuracy"],
                      "test_error": binomial_error(r["test_accuracy"]),
                      "early_stop_step": r["early_stop_step"],
                      "early_stop_test_accuracy": r["early_stop_test_accuracy"]}
                     for r in results] for name, results in runs.items()}
    dense = curves["ticket"][0]
    tickets = curves["ticket"][1:]
    # "matching": within one standard error of the dense test accuracy at the early-stopping iteration (LTH's measure)
    matching = [t["density"] for t in tickets if t["early_stop_test_accuracy"] >= dense["early_stop_test_accuracy"]
                - binomial_error(dense["early_stop_test_accuracy"])]
    beating = [t["density"] for t in tickets if t["early_stop_test_accuracy"] > dense["early_stop_test_accuracy"]
               + binomial_error(dense["early_stop_test_accuracy"])]
    sooner = [t["density"] for t in tickets if t["early_stop_step"] < dense["early_stop_step"]]
    reinit = curves["random-reinit"][1:]
    bar = dense["early_stop_test_accuracy"] - binomial_error(dense["early_stop_test_accuracy"])
    reinit_matching = [r["density"] for r in reinit if r["early_stop_test_accuracy"] >= bar]
    return {"curves": curves, "epochs": args.epochs, "paper": PAPER["lth"],
            "findings": {"dense_early_stop_test_accuracy": dense["early_stop_test_accuracy"],
                         "dense_early_stop_step": dense["early_stop_step"],
                         "tickets_match_dense_down_to": min(matching, default=None),
                         "tickets_beat_dense_at": beating,
                         "tickets_stop_early_sooner_at": sooner,
                         "random_reinit_matches_down_to": min(reinit_matching, default=None)}}


def pools_part(args, work: Path) -> dict:
    out = {}
    for acceptance in ("paired", "paper"):
        results = run("lottery-pools", work / f"pools_{acceptance}", run_dir=str(work / "lth_ticket"),
                      acceptance=acceptance, corruptions=True, corruption_samples=2_000)
        out[acceptance] = [{k: r[k] for k in ("level", "density", "ticket_val_accuracy", "pooled_val_accuracy",
                                              "ticket_test_accuracy", "ticket_bn_test_accuracy", "pooled_test_accuracy",
                                              "ticket_corruption_accuracy", "pooled_corruption_accuracy",
                                              "ensemble_test_accuracy", "accepted")}
                           | {"sweeps": _sweeps(r)} for r in results]
    paired = out["paired"]
    gains = [r["pooled_test_accuracy"] - r["ticket_test_accuracy"] for r in paired]
    corruption_gains = [r["pooled_corruption_accuracy"] - r["ticket_corruption_accuracy"] for r in paired]
    return {"levels": out, "paper": PAPER["pools"],
            "findings": {"largest_test_gain": max(gains), "mean_test_gain": sum(gains) / len(gains),
                         "largest_corruption_gain": max(corruption_gains),
                         "levels_with_an_accepted_blend": sum(bool(r["accepted"]) for r in paired),
                         "test_error": binomial_error(paired[0]["ticket_test_accuracy"])}}


def small_part(args, work: Path) -> dict:
    common = dict(model="lenet_300_100", recipe="lth-lenet", dataset="fashion-mnist", val_fraction=400 / 60_000,
                  max_train_samples=4_000, levels=8, seed=0)
    run("imp", work / "small_imp", **common)
    out = {}
    for acceptance in ("paper", "paired"):
        results = run("lottery-pools", work / f"small_pools_{acceptance}", run_dir=str(work / "small_imp"),
                      acceptance=acceptance)
        out[acceptance] = [{"level": r["level"], "density": r["density"],
                            "val_gain": r["pooled_val_accuracy"] - r["ticket_val_accuracy"],
                            "test_gain": r["pooled_test_accuracy"] - r["ticket_test_accuracy"],
                            "accepted": r["accepted"], "sweeps": _sweeps(r)} for r in results]
    falls = {rule: [r["level"] for r in rows if r["test_gain"] < 0] for rule, rows in out.items()}
    return {"levels": out, "val_images": 400, "train_images": 4_000,
            "findings": {"levels_where_test_falls": falls,
                         "worst_test_gain": {rule: min(r["test_gain"] for r in rows) for rule, rows in out.items()}}}


def eb_part(args, work: Path) -> dict:
    results = run("early-bird", work / "eb_resnet20", model="cifar_resnet20", dataset="fashion-mnist",
                  val_fraction=VAL_FRACTION, max_train_samples=5_000, epochs=10, batch_size=128, lr=0.1,
                  sched="multistep", augment="crop-flip", ratios=[0.3, 0.5, 0.7], baseline=True, seed=0)
    rows = [{k: r.get(k) for k in ("ratio", "found", "eb_epoch", "density", "test_accuracy", "baseline_test_accuracy",
                                   "train_macs", "baseline_train_macs", "train_macs_saved", "train_seconds_saved")}
            for r in results]
    for row in rows:
        row["test_error"] = None if row["test_accuracy"] is None else binomial_error(row["test_accuracy"])
    return {"ratios": rows, "paper": PAPER["eb"],
            "findings": {"macs_saved": [r["train_macs_saved"] for r in rows],
                         "accuracy_minus_one_shot": [None if r["test_accuracy"] is None else
                                                     r["test_accuracy"] - r["baseline_test_accuracy"] for r in rows]}}


PARTS = {"lth": lth_part, "pools": pools_part, "small": small_part, "eb": eb_part}


def _density_axis(ax, label: str) -> None:
    """Log density, densest on the left, with a grid and the legend."""
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend()


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(report: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "lth" in report:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, curve in report["lth"]["curves"].items():
            d = [p["density"] for p in curve]
            left.errorbar(d, [100 * p["early_stop_test_accuracy"] for p in curve],
                          yerr=[100 * p["test_error"] for p in curve], marker="o", capsize=2, label=name)
            right.plot(d, [p["early_stop_step"] for p in curve], "o-", label=name)
        for ax, label in ((left, "test accuracy at early stopping (%)"), (right, "early-stopping iteration")):
            _density_axis(ax, "density (kept fraction of weights)")
            ax.set_ylabel(label)
        fig.suptitle("LTH on LeNet-300-100, Fashion-MNIST (cf. LTH Figures 3-4)")
        _save(fig, out / "fidelity_lth.png")
    if "pools" in report:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        rows = report["pools"]["levels"]["paired"]
        d = [r["density"] for r in rows]
        for key, label in (("ticket_test_accuracy", "ticket"), ("ticket_bn_test_accuracy", "ticket+BN"),
                           ("pooled_test_accuracy", "pooled (paired rule)")):
            left.plot(d, [100 * r[key] for r in rows], "o-", label=label)
        left.plot(d, [100 * r["pooled_test_accuracy"] for r in report["pools"]["levels"]["paper"]], "x--",
                  label="pooled (paper's rule)")
        for key, label in (("ticket_corruption_accuracy", "ticket"), ("pooled_corruption_accuracy", "pooled")):
            right.plot(d, [100 * r[key] for r in rows], "o-", label=label)
        for ax, title in ((left, "test accuracy (%)"), (right, "corrupted test accuracy (%)")):
            _density_axis(ax, "density")
            ax.set_title(title)
        fig.suptitle("Lottery Pools on the LeNet-300-100 IMP run")
        _save(fig, out / "fidelity_pools.png")
    if "small" in report:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for rule, rows in report["small"]["levels"].items():
            ax.plot([r["level"] for r in rows], [100 * r["val_gain"] for r in rows], "o--", label=f"{rule}: validation")
            ax.plot([r["level"] for r in rows], [100 * r["test_gain"] for r in rows], "s-", label=f"{rule}: test")
        ax.axhline(0, color="gray")
        ax.set_xlabel("IMP level")
        ax.set_ylabel("pooled minus ticket (points)")
        ax.set_title("Lottery Pools on 4,000 images (400 held out)")
        ax.grid(True, alpha=0.3)
        ax.legend()
        _save(fig, out / "fidelity_small.png")
    if "eb" in report:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rows = [r for r in report["eb"]["ratios"] if r["found"]]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [100 * r["test_accuracy"] for r in rows], 0.4, label="Early-Bird ticket")
        ax.bar([i + 0.2 for i in x], [100 * r["baseline_test_accuracy"] for r in rows], 0.4, label="one-shot ticket")
        ax.set_xticks(list(x), [f"ratio {r['ratio']:g}\nMACs saved x{r['train_macs_saved']:.2f}" for r in rows])
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(min(100 * min(r["test_accuracy"], r["baseline_test_accuracy"]) for r in rows) - 5, None)
        ax.set_title("Early-Bird on cifar_resnet20, Fashion-MNIST (5,000 images)")
        ax.legend()
        _save(fig, out / "fidelity_eb.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--epochs", type=int, default=15, help="epochs per IMP level in the lth part (the recipe's "
                        "55 is 50K iterations; LeNet stops early within ~15)")
    parser.add_argument("--work", default="runs/fidelity", help="the run folders (a rerun resumes them)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fidelity.json"
    report = read_json(path) if path.exists() else {}
    for name in args.parts:
        started = time.perf_counter()
        report[name] = PARTS[name](args, work)
        # This invocation's time: a part whose run folders were already finished only reads them back.
        report[name]["seconds_this_invocation"] = time.perf_counter() - started
        report["machine"] = {"python": platform.python_version(),
                             "processor": platform.processor() or platform.machine()}
        path.write_text(json.dumps(report, indent=2) + "\n")  # after each part: the others stay as they were
        print(json.dumps(report[name]["findings"] if "findings" in report[name] else {}, indent=2))
    plot(report, out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
