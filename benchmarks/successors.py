"""The successors of Lottery Pools against IMP, at the same densities, over seeds, every difference paired over the
seeds, with what each costs to train.

LeNet-300-100 on Fashion-MNIST with the `lth-lenet` recipe (Adam 1.2e-3, batch 60, layer-wise, the output layer at a
lower rate, rewound to init), 20,000 training images, 8 epochs per training, 4 levels of 64% of each hidden layer
(36% of the output layer): densities 36%, 13%, 4.7%, 1.7%, as benchmarks/baselines.py. The methods, each a run
folder of --seeds replicates:

  imp           IMP, one training per level;
  sms           Sparse Model Soups, 3 copies per level retrained from the previous soup and averaged (greedy soup);
  swamp         SWAMP, 4 particles per level from the rewound ticket, SWA over the last quarter of each training
                (an update every eighth of it), averaged;
  instant-soup  Instant Soup Pruning, each density in one pass: rounds of 5 denoisers x 50 look-ahead steps on 10%
                subsets, 40% of the remaining weights per round, one every 1/32 of the training;
  pools         Lottery Pools of the IMP run (its default acceptance rule), no training.

Per density: each method's test accuracy (mean and 95% interval over the seeds) and its paired difference to IMP
(benchmarks/render.py adjusts the part's differences together, Holm); for SWAMP also its average minus its best particle and minus the
particles' mean (what averaging particles adds); the training each method spends to reach the density, in epochs
and measured seconds, and SWAMP's level time over IMP's (the particles' count, if a particle costs an IMP level).
Writes benchmarks/results/successors.json and successors.png; needs Debian's dataset-fashion-mnist. Every run is a
run folder under --work: a rerun resumes.

    python benchmarks/successors.py [--seeds 0 1 2 3 4] [--work runs/successors]
    python benchmarks/successors.py --smoke --work /tmp/successors --out /tmp/successors   # a check in minutes
"""

import argparse
import json
import platform
import time
from pathlib import Path

import lt_plugin
from lt_plugin.layout import RunLayout
from lt_plugin.stats import paired_difference, summarize
from lt_plugin.store import read_json
from provenance import provenance

VAL_FRACTION = 5_000 / 60_000
# eval_every=0: every method validates at epoch ends only, so that training times compare (the recipe's
# validation every 100 steps is for the early-stopping iteration, which is not compared here)
SETUP = dict(model="lenet_300_100", recipe="lth-lenet", dataset="fashion-mnist", val_fraction=VAL_FRACTION,
             max_train_samples=20_000, epochs=8, levels=4, prune_fraction=0.64, layer_prune_fractions={"fc": 0.36},
             eval_every=0)
SMOKE = dict(max_train_samples=600, epochs=1, levels=2)  # a few hundred images, 1 epoch, 2 levels
INGREDIENTS, PARTICLES = 3, 4
METHODS = ("imp", "sms", "swamp", "instant-soup", "pools")
PAPERS = {
    "sms": "Zimmer et al. 2024: the soups of each cycle beat their ingredients and IMP at the same sparsity.",
    "swamp": "Choi et al. 2024: SWAMP matches an ensemble of two IMP models and beats IMP at every sparsity; both SWA "
             "and the particles' average matter.",
    "instant-soup": "Jaiswal et al. 2023: one pass gives tickets of IMP's quality at a fraction of its cost (CLIP, "
                    "CIFAR-10, 80% sparsity: 91.20 against LTH-rewind's 87.28).",
    "pools": "Yin, Liu et al. 2023: pooled tickets beat the tickets at the same sparsity, least at the highest.",
}


def log(text: str, started: float) -> None:
    print(f"{text}: {time.perf_counter() - started:.0f}s", flush=True)


def rows_by_level(run: Path) -> dict:
    return {r["level"]: r for r in read_json(RunLayout(run).results)}


def values(row: dict, metric: str) -> dict:
    """{seed: value} of one metric of an aggregated row."""
    return dict(zip(row["seeds"], row[f"{metric}_values"]))


def paired(a: dict, b: dict, metric_a: str = "test_accuracy", metric_b: str = "test_accuracy") -> dict:
    """a - b over the seeds both rows have."""
    va, vb = values(a, metric_a), values(b, metric_b)
    shared = [s for s in va if s in vb and va[s] is not None and vb[s] is not None]
    return paired_difference([va[s] for s in shared], [vb[s] for s in shared])


def run_methods(setup: dict, seeds: list, work: Path) -> dict:
    runs = {method: work / method for method in METHODS if method != "pools"}
    epochs = setup["epochs"]
    options = {
        "imp": ("imp", {}),
        "sms": ("sparse-model-soups", dict(ingredients=INGREDIENTS)),
        "swamp": ("swamp", dict(particles=PARTICLES, swa_start="0.75", swa_every="0.125")),
        "instant-soup": ("instant-soup", dict(round_fraction=0.4, round_every=epochs / 32)),
    }
    for method, (strategy, own) in options.items():
        started = time.perf_counter()
        lt_plugin.create_strategy(strategy, seeds=seeds, **setup, **own).run(runs[method])
        log(method, started)
    started = time.perf_counter()
    lt_plugin.create_branch("lottery-pools", run_dir=str(runs["imp"])).run()
    runs["pools"] = RunLayout(runs["imp"]).branch("lottery-pools")
    log("pools", started)
    return runs


def training_cost(method: str, rows: dict, level: int, epochs: int, imp_rows: dict) -> dict:
    """Epochs of training and measured seconds a method spends to reach `level` (summed over the levels it needs)."""
    def seconds(row_set, levels):
        return summarize([sum(v) for v in zip(*(row_set[lv]["train_seconds_values"] for lv in levels))])
    upto = range(level + 1)
    if method in ("imp", "pools"):  # Lottery Pools pools every level of the IMP run: the whole run's training
        levels = range(max(imp_rows) + 1) if method == "pools" else upto
        return {"epochs": epochs * len(levels), "seconds": seconds(imp_rows, levels)}
    if method == "sms":
        return {"epochs": epochs * (1 + INGREDIENTS * level), "seconds": seconds(rows, upto)}
    if method == "swamp":
        return {"epochs": sum(rows[lv]["cost_epochs"] for lv in upto), "seconds": seconds(rows, upto)}
    return {"epochs": rows[level]["cost_epochs"], "seconds": seconds(rows, [level])}  # instant-soup: its own pass


def report_of(setup: dict, seeds: list, runs: dict) -> dict:
    rows = {method: rows_by_level(path) for method, path in runs.items()}
    imp = rows["imp"]
    levels = sorted(level for level in imp if level > 0)
    densities = []
    for level in levels:
        entry = {"level": level, "density": imp[level]["density"], "methods": {}}
        for method in METHODS:
            row = rows[method][level]
            entry["methods"][method] = {
                "density": row["density"], "test_accuracy": summarize(row["test_accuracy_values"]),
                "minus_imp": paired(row, imp[level]) if method != "imp" else None,
                "cost": training_cost(method, rows[method], level, setup["epochs"], imp)}
        swamp = rows["swamp"][level]
        entry["swamp_average_minus_best_particle"] = paired(swamp, swamp, "test_accuracy",
                                                            "best_particle_test_accuracy")
        entry["swamp_average_minus_particles_mean"] = paired(swamp, swamp, "test_accuracy",
                                                             "particles_mean_test_accuracy")
        entry["swamp_level_time_over_imp"] = summarize(
            [s / i for s, i in zip(swamp["train_seconds_values"], imp[level]["train_seconds_values"])])
        densities.append(entry)
    return {"setup": setup, "seeds": seeds, "ingredients": INGREDIENTS, "particles": PARTICLES,
            "densities": densities, "provenance": provenance()}


def plot(report: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (accuracy, cost) = plt.subplots(1, 2, figsize=(13, 4.8))
    densities = report["densities"]
    for method in METHODS:
        x = [e["methods"][method]["density"] for e in densities]
        s = [e["methods"][method]["test_accuracy"] for e in densities]
        line, = accuracy.plot(x, [100 * v["mean"] for v in s], "o-", label=method)
        low = [100 * (v["ci_low"] if v["ci_low"] is not None else v["mean"]) for v in s]
        high = [100 * (v["ci_high"] if v["ci_high"] is not None else v["mean"]) for v in s]
        accuracy.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        cost.plot(x, [e["methods"][method]["cost"]["epochs"] for e in densities], "o-", label=method)
    for ax, label in ((accuracy, "test accuracy (%)"), (cost, "training to reach it (epochs)")):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("density (kept fraction of weights)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    cost.set_yscale("log")
    accuracy.set_title(f"{report['setup']['model']}, Fashion-MNIST, {len(report['seeds'])} seeds (95% intervals)")
    fig.tight_layout()
    fig.savefig(out / "successors.png", dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--smoke", action="store_true", help="a check of the script in minutes: 600 training "
                                                             "images, 1 epoch, 2 levels (pass 2 seeds)")
    parser.add_argument("--work", default="runs/successors", help="the run folders (a rerun resumes them)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    setup = {**SETUP, **(SMOKE if args.smoke else {})}
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    report = report_of(setup, args.seeds, run_methods(setup, args.seeds, work))
    report.update({"benchmark": "successors", "lt_plugin": lt_plugin.__version__, "machine": platform.machine(),
                   "smoke": args.smoke, "papers": PAPERS})
    (out / "successors.json").write_text(json.dumps(report, indent=1))
    plot(report, out)
    print(f"wrote {out / 'successors.json'}; `python benchmarks/render.py` renders the pages from it")


if __name__ == "__main__":
    main()
