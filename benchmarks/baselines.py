"""IMP's tickets against the baselines they are judged by, on Fashion-MNIST, every difference paired
over 5 seeds (the renderer adjusts each part's differences together, Holm).

For each network: IMP (rewound to init, at twice the levels, so its even levels are the others' densities), pruning
at initialisation by SNIP, GraSP, SynFlow, magnitude and random, ranked globally as their papers rank (so each
method chooses its own per-layer densities), and gradual magnitude pruning (GMP, every layer to the same sparsity
as Zhu & Gupta), all at the same 4 densities, each with the same recipe and epochs per training. IMP and every
pruning-at-init method get their layer-shuffle control (`random-mask`, Frankle et al. 2021: the run's exact
per-layer counts at random positions); GMP has none (its tickets were pruned while training, so a shuffle would
change its training too). GMP is also run once at equal training cost to IMP's last level (IMP trains levels + 1
times to reach it; GMP trains as long, once).

  lenet   LeNet-300-100, recipe lth-lenet (Adam 1.2e-3, batch 60, the output layer at a lower rate), 20,000 training
          images, 8 epochs per training; IMP layer-wise as LTH prunes it, pruning at init global; densities 36%,
          13%, 4.7%, 1.7% (IMP's 40% per level, two levels at a time).
  resnet  cifar_resnet20 (scaled down for 2 CPU cores: 2,000 training images at 32x32, 4 epochs of SGD 0.1 with
          plain momentum, weight decay on every parameter, x0.1 at 50% and 75%, crop-flip), global scope;
          densities 64%, 41%, 26%, 17%.

The papers' orderings it tests: SynFlow >= SNIP at extreme sparsity (Tanaka et al. 2020); PaI is unchanged by
shuffling its layers (Frankle et al. 2021); IMP with rewinding >= PaI at moderate sparsity (Frankle et al. 2021);
GMP >= IMP at equal training cost (Gale et al. 2019). Writes benchmarks/results/baselines.json and baselines.png;
needs Debian's dataset-fashion-mnist. Every run is a run folder under --work: a rerun resumes.

    python benchmarks/baselines.py [--parts lenet resnet] [--work runs/baselines]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import lt_plugin
from lt_plugin.layout import RunLayout
from lt_plugin.masks import Mask
from lt_plugin.pai import CRITERIA
from lt_plugin.stats import paired_difference, summarize
from lt_plugin.store import read_json
from provenance import provenance

SEEDS = [0, 1, 2, 3, 4]
VAL_FRACTION = 5_000 / 60_000
SETUPS = {
    "lenet": dict(model="lenet_300_100", recipe="lth-lenet", dataset="fashion-mnist", val_fraction=VAL_FRACTION,
                  max_train_samples=20_000, epochs=8, levels=4, prune_fraction=0.64,
                  layer_prune_fractions={"fc": 0.36}),
    "resnet": dict(model="cifar_resnet20", dataset="fashion-mnist", image_size=32, val_fraction=2_000 / 60_000,
                   max_train_samples=2_000, epochs=4, batch_size=128, opt="momentum", lr=0.1, momentum=0.9,
                   weight_decay=1e-4, wd_norm_bias=True, sched="multistep", decay_milestones=(0.5, 0.75),
                   augment="crop-flip", levels=4, prune_fraction=0.36, scope="global"),
}
# IMP at its papers' finer steps (LTH: 20% of LeNet's hidden layers per level, here 40%; open_lth: 20% globally),
# twice the levels: its even levels are the baselines' densities.
IMP = {"lenet": dict(levels=8, prune_fraction=0.4, layer_prune_fractions={"fc": 0.2}),
       "resnet": dict(levels=8, prune_fraction=0.2)}
# Pruning at initialisation ranks as its papers rank: one global ranking, each method choosing its per-layer densities.
PAI = {"lenet": dict(scope="global"), "resnet": dict(scope="global")}
GMP_FREQUENCY = {"lenet": 50, "resnet": 3}  # optimizer steps between two prunings: ~25 prunings either way
SHUFFLED = ("imp", *CRITERIA)  # the methods with a layer-shuffle control
PAPERS = {
    "synflow_vs_snip": "Tanaka et al. 2020: SynFlow matches or beats SNIP and GraSP, most clearly at extreme "
                       "sparsity, where the data-dependent criteria collapse layers",
    "shuffle": "Frankle et al. 2021 (Missing the Mark): shuffling each layer's PaI mask, or reinitialising, leaves "
               "accuracy unchanged: PaI finds per-layer densities, not tickets; IMP's tickets lose accuracy",
    "imp_vs_pai": "Frankle et al. 2021: IMP with rewinding beats every PaI method at moderate sparsity",
    "gmp_vs_imp": "Gale et al. 2019 (The State of Sparsity): gradual magnitude pruning matches or beats IMP-style "
                  "retraining for the same training budget",
}


def log(text: str, started: float) -> None:
    print(f"{text}: {time.perf_counter() - started:.0f}s", flush=True)


def rows_of(run: Path) -> list:
    return [r for r in read_json(RunLayout(run).results) if r["level"] > 0]


def nearest(rows: list, density: float) -> dict:
    return min(rows, key=lambda r: abs(r["density"] - density))


def paired(a: dict, b: dict, metric: str = "test_accuracy") -> dict:
    """a - b over the seeds both aggregated rows have."""
    va, vb = dict(zip(a["seeds"], a[f"{metric}_values"])), dict(zip(b["seeds"], b[f"{metric}_values"]))
    shared = [s for s in va if s in vb and va[s] is not None and vb[s] is not None]
    return paired_difference([va[s] for s in shared], [vb[s] for s in shared])


def layer_densities(run: Path, level: int) -> dict:
    """{weight: its kept fraction, the mean over the seeds} of a level's masks: what a layer-shuffle keeps."""
    layout = RunLayout(run)
    masks = [Mask.load(layout.seed(seed).level(level).mask) for seed in SEEDS]
    return {name: sum(m.layer_densities()[name] for m in masks) / len(masks) for name in masks[0].prunable}


def run_setup(name: str, work: Path) -> dict:
    setup, root = SETUPS[name], work / name
    runs = {}
    started = time.perf_counter()
    runs["imp"] = root / "imp"
    imp_setup = {**setup, **IMP[name]}
    lt_plugin.create_strategy("imp", rewind="init", seeds=SEEDS, **imp_setup).run(runs["imp"])
    log(f"{name} imp", started)
    for criterion in CRITERIA:
        started = time.perf_counter()
        runs[criterion] = root / criterion
        lt_plugin.create_strategy("prune-at-init", criterion=criterion, seeds=SEEDS,
                                  **{**setup, **PAI[name]}).run(runs[criterion])
        log(f"{name} {criterion}", started)
    started = time.perf_counter()
    runs["gmp"] = root / "gmp"
    lt_plugin.create_strategy("gradual", frequency=GMP_FREQUENCY[name], seeds=SEEDS, **setup).run(runs["gmp"])
    log(f"{name} gmp", started)
    # GMP at IMP's cost for its last level: IMP trained (levels + 1) times to reach it; GMP trains as many epochs
    # once, to that density (its own dense level 0 comes with the run).
    started = time.perf_counter()
    trainings = IMP[name]["levels"] + 1
    final = rows_of(runs["imp"])[-1]["density"]
    equal = dict(setup, epochs=setup["epochs"] * trainings, levels=1, target_density=final,
                 layer_prune_fractions={})
    runs["gmp_equal_cost"] = root / "gmp_equal_cost"
    lt_plugin.create_strategy("gradual", frequency=GMP_FREQUENCY[name] * trainings, seeds=SEEDS,
                              **equal).run(runs["gmp_equal_cost"])
    log(f"{name} gmp at equal cost", started)
    shuffled = {}
    imp_levels = [r["level"] for r in rows_of(runs["imp"])][1::2]  # the baselines' densities
    for method in SHUFFLED:
        started = time.perf_counter()
        targets = imp_levels if method == "imp" else ["pruned"]
        lt_plugin.create_branch("random-mask", run_dir=str(runs[method]), targets=targets).run()
        shuffled[method] = RunLayout(runs[method]).branch("random-mask")
        log(f"{name} {method} shuffled", started)

    rows = {method: rows_of(path) for method, path in runs.items()}
    rows.update({f"{method}_shuffled": rows_of(path) for method, path in shuffled.items()})
    imp = [nearest(rows["imp"], r["density"]) for r in rows["snip"]]
    densities = []
    for i, imp_row in enumerate(imp):
        entry = {"density": imp_row["density"], "methods": {}}
        for method in ["imp", *CRITERIA, "gmp"]:
            row = imp_row if method == "imp" else rows[method][i]
            entry["methods"][method] = {
                "density": row["density"], "test_accuracy": summarize(row["test_accuracy_values"]),
                "layer_densities": layer_densities(runs[method], row["level"]),
                "method_minus_imp": paired(row, imp_row) if method != "imp" else None}
            if method in SHUFFLED:
                shuffled_row = nearest(rows[f"{method}_shuffled"], row["density"])
                entry["methods"][method].update(
                    shuffled_test_accuracy=summarize(shuffled_row["test_accuracy_values"]),
                    shuffled_minus_method=paired(shuffled_row, row))
        entry["synflow_minus_snip"] = paired(rows["synflow"][i], rows["snip"][i])
        densities.append(entry)
    equal_row = rows["gmp_equal_cost"][-1]
    gmp_equal = {"density": equal_row["density"], "epochs": equal["epochs"],
                 "test_accuracy": summarize(equal_row["test_accuracy_values"]),
                 "gmp_minus_imp": paired(equal_row, nearest(rows["imp"], equal_row["density"]))}
    return {"setup": {k: (list(v) if isinstance(v, tuple) else v) for k, v in setup.items()}, "imp": IMP[name],
            "pruning_at_init": PAI[name], "seeds": SEEDS, "densities": densities, "gmp_equal_cost": gmp_equal,
            "provenance": provenance()}


def plot(report: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("lenet", "resnet") if p in report]
    fig, axes = plt.subplots(1, len(parts), figsize=(7 * len(parts), 4.8), squeeze=False)
    for ax, part in zip(axes[0], parts):
        densities = report[part]["densities"]
        for method in ["imp", *CRITERIA, "gmp"]:
            x = [e["methods"][method]["density"] for e in densities]
            s = [e["methods"][method]["test_accuracy"] for e in densities]
            line, = ax.plot(x, [100 * v["mean"] for v in s], "o-", label=method)
            low = [100 * (v["ci_low"] if v["ci_low"] is not None else v["mean"]) for v in s]
            high = [100 * (v["ci_high"] if v["ci_high"] is not None else v["mean"]) for v in s]
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
            if method in SHUFFLED:
                shuffled = [100 * e["methods"][method]["shuffled_test_accuracy"]["mean"] for e in densities]
                ax.plot(x, shuffled, "x:", color=line.get_color())
        equal = report[part]["gmp_equal_cost"]
        ax.errorbar([equal["density"]], [100 * equal["test_accuracy"]["mean"]], fmt="*", markersize=12,
                    color="black", label="gmp, IMP's total epochs")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("density (kept fraction of weights)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{report[part]['setup']['model']}, Fashion-MNIST, {len(report[part]['seeds'])} seeds "
                     "(dotted: layer-shuffled)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "baselines.png", dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=list(SETUPS), default=list(SETUPS))
    parser.add_argument("--work", default="runs/baselines")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "baselines.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report.update({"benchmark": "baselines", "lt_plugin": lt_plugin.__version__, "machine": platform.machine(),
                   "papers": PAPERS})
    for part in args.parts:
        report[part] = run_setup(part, work)
        path.write_text(json.dumps(report, indent=1))
    plot(report, out)
    print(f"wrote {path}; `python benchmarks/render.py` renders the pages from it")


if __name__ == "__main__":
    main()
