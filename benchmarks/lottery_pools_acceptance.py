"""Which acceptance rule should Lottery Pools use by default? Each rule measured on the same IMP runs over seeds.

For each rule (lt_plugin.acceptance: paper, paired, loss, confirm) Lottery Pools pools every level of each seed's
IMP run (the fast protocol, 5,000 validation images), and per level the test gain of the pooled ticket over the
ticket (both with their BatchNorm statistics recomputed alike) is paired over the seeds. Every (level, seed) case is
kept: whether the rule pooled, and the test gain. The default is chosen on the cases of some seeds only (the
selection seeds): the rule with the largest mean test gain whose harm (the share of the cases that pooled where the
pooled ticket lost test accuracy) stays at or under the significance (0.05) on every network. Its gain and harm are
then reported on the other seeds' cases, which took no part in the choice, the harm with its exact (Clopper-Pearson)
95% upper bound.

The runs, on Fashion-MNIST (55,000 training images less those the options drop, 5,000 held out, the 10,000 test
images):
- LeNet-300-100 (recipe lth-lenet): the seeds of benchmarks/fidelity.py's lth run (--work runs/fidelity), made here
  if they are not there yet;
- cifar_resnet20 (SGD 0.1, multistep, crop-flip, weight decay on every parameter): --resnet-train images, 5 levels
  of 36% of the weights, --resnet-epochs epochs, 3 seeds.

--networks and --rules measure a part (each run merges into the JSON): a rule whose harm rate is over the
significance on one network cannot be the default, so it need not be measured on the other.
Writes benchmarks/results/lottery_pools_acceptance.json and .png.

    python benchmarks/lottery_pools_acceptance.py [--work runs/fidelity]
"""

import argparse
import json
import platform
import time
from pathlib import Path

from scipy.stats import binomtest

import lt_plugin
from fidelity import lth_tickets
from lt_plugin.layout import RunLayout
from lt_plugin.stats import paired_difference
from lt_plugin.store import read_json
from provenance import provenance

RULES = ("paper", "paired", "loss", "confirm")
SIGNIFICANCE = 0.05
# The rule is chosen on these seeds' cases; its gains are reported on the others' (held out from the choice).
SELECTION_SEEDS = {"lenet_300_100": [0, 1, 2], "cifar_resnet20": [0, 1]}
VAL_FRACTION = 5_000 / 60_000
RESULTS = Path(__file__).parent / "results"


def imp_runs(args, work: Path) -> dict:
    """{network: its replicated IMP run}, made (or resumed) here."""
    runs = {network: path for network, path in (("lenet_300_100", work / "lth"), ("cifar_resnet20", work /
            f"resnet20_imp_{args.resnet_train}x{args.resnet_epochs}_val{args.resnet_val}")) if network in args.networks}
    if "lenet_300_100" in runs:
        lth_tickets(runs["lenet_300_100"])  # benchmarks/fidelity.py's lth run: read back, or made as it makes it
    if "cifar_resnet20" not in runs:
        return runs
    lt_plugin.create_strategy("imp", model="cifar_resnet20", dataset="fashion-mnist",
                              val_fraction=args.resnet_val / 60_000,
                              max_train_samples=args.resnet_train, epochs=args.resnet_epochs, batch_size=128,
                              opt="momentum", lr=0.1,
                              sched="multistep", augment="crop-flip", wd_norm_bias=True, levels=5,
                              prune_fraction=0.36, seeds=[0, 1, 2]).run(runs["cifar_resnet20"])
    return runs


def measure(network: str, run: Path, work: Path, rules=RULES, targets=("all",)) -> dict:
    """Per rule: every (level, seed) case, whether it pooled and its test gain, and the per-level gains paired over
    the seeds."""
    out = {}
    for rule in rules:
        folder = work / (f"acceptance_{network}_{rule}" + ("" if list(targets) == ["all"] else
                                                            "_levels_" + "-".join(map(str, targets))))
        started = time.perf_counter()
        rows = lt_plugin.create_branch("lottery-pools", run_dir=str(run), acceptance=rule, targets=list(targets),
                                       significance=SIGNIFICANCE).run(folder)
        seconds = time.perf_counter() - started
        layout = RunLayout(folder)
        cases = [{"seed": seed, "level": r["level"], "density": r["density"], "pooled": bool(r["accepted"]),
                  "gain": r["pooled_test_accuracy"] - r["ticket_bn_test_accuracy"]}
                 for seed in layout.seeds() for r in read_json(layout.seed(seed).results)]
        out[rule] = {
            "levels": [{"level": r["level"], "density": r["density"],
                        "test_gain": paired_difference(r["pooled_test_accuracy_values"],
                                                       r["ticket_bn_test_accuracy_values"])} for r in rows],
            "cases": cases, "seconds": seconds, "smallest_gain": rows[0].get("smallest_gain"),
            "provenance": provenance(),
        }
        print(f"{network} {rule}: {summary(cases)} ({seconds:.0f}s)", flush=True)
    return out


def summary(cases: list) -> dict:
    """What a rule did on some (level, seed) cases: how many, how many pooled, the mean test gain over all of them,
    and among the cases that pooled how many lost test accuracy (the harm) with the exact (Clopper-Pearson) 95%
    upper bound of that rate."""
    pooled = [c for c in cases if c["pooled"]]
    harmed = sum(c["gain"] < 0 for c in pooled)
    upper = binomtest(harmed, len(pooled)).proportion_ci(0.95, method="exact").high if pooled else None
    return {"cases": len(cases), "pooled": len(pooled), "mean_gain": sum(c["gain"] for c in cases) / len(cases),
            "harmed": harmed, "harm_rate": harmed / len(pooled) if pooled else 0.0, "harm_upper_95": upper}


def choose(report: dict) -> dict:
    """The default rule, chosen on the selection seeds' cases only: of the rules whose harm (among the cases that
    pooled) is at most the significance on every network, the one with the largest mean test gain. Its gains are
    reported on the held-out seeds' cases, which took no part in the choice."""
    networks = report["networks"]
    measured = [rule for rule in RULES if all(rule in results for results in networks.values())]

    def part(network: str, rule: str, held_out: bool) -> dict:
        chosen_on = SELECTION_SEEDS[network]
        return summary([c for c in networks[network][rule]["cases"] if (c["seed"] in chosen_on) != held_out])

    selection = {rule: {n: part(n, rule, False) for n in networks} for rule in measured}
    eligible = [rule for rule in measured if all(s["harm_rate"] <= SIGNIFICANCE for s in selection[rule].values())]
    gain = {rule: sum(s["mean_gain"] for s in selection[rule].values()) / len(networks) for rule in measured}
    chosen = max(eligible, key=lambda rule: gain[rule]) if eligible else None
    return {"selection_seeds": {n: SELECTION_SEEDS[n] for n in networks}, "selection": selection,
            "eligible": eligible, "selection_mean_gain": gain, "default": chosen,
            "held_out": {rule: {n: part(n, rule, True) for n in networks} for rule in measured}}


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = list(report["networks"])
    fig, axes = plt.subplots(1, len(networks), figsize=(6 * len(networks), 4), dpi=120, squeeze=False)
    for ax, network in zip(axes[0], networks):
        for rule in report["networks"][network]:
            rows = report["networks"][network][rule]["levels"]
            x = [r["density"] for r in rows]
            done = summary(report["networks"][network][rule]["cases"])
            line, = ax.plot(x, [100 * r["test_gain"]["mean"] for r in rows], "o-", label=(
                f"{rule} (pooled {done['pooled']} of {done['cases']} cases, {done['harmed']} of them lost)"))
            lows = [100 * (r["test_gain"]["ci_low"] if r["test_gain"]["ci_low"] is not None else r["test_gain"]["mean"])
                    for r in rows]
            highs = [100 * (r["test_gain"]["ci_high"] if r["test_gain"]["ci_high"] is not None else
                            r["test_gain"]["mean"]) for r in rows]
            ax.fill_between(x, lows, highs, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.axhline(0, color="gray")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("density")
        ax.set_ylabel("pooled minus ticket, test (points)")
        ax.set_title(network)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Lottery Pools' acceptance rules (bands: 95% intervals over seeds); default: "
                 f"{report['choice']['default']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/fidelity")
    parser.add_argument("--resnet-train", type=int, default=5_000)
    parser.add_argument("--resnet-epochs", type=int, default=6)
    parser.add_argument("--resnet-val", type=int, default=5_000, help="validation images of the resnet run")
    parser.add_argument("--resnet-targets", nargs="+", default=["all"],
                        help="the resnet run's levels to pool (all: every level; each costs ~2 minutes per rule)")
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES),
                        help="the rules to measure (a rule harmful on one network cannot be the default anyway)")
    parser.add_argument("--networks", nargs="+", choices=["lenet_300_100", "cifar_resnet20"],
                        default=["lenet_300_100", "cifar_resnet20"])
    args = parser.parse_args()
    work = Path(args.work)
    runs = imp_runs(args, work)
    path = RESULTS / "lottery_pools_acceptance.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": {}, "networks": {}}  # other networks stay
    report.update({"benchmark": "lottery_pools_acceptance", "lt_plugin": lt_plugin.__version__,
                   "machine": platform.processor() or platform.machine(), "significance": SIGNIFICANCE})
    for network, run in runs.items():
        report["runs"][network] = str(run)
        report["networks"][network] = measure(network, run, work, args.rules,
                                              args.resnet_targets if network == "cifar_resnet20" else ["all"])
    report["choice"] = choose(report)
    report["provenance"] = provenance()
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "lottery_pools_acceptance.png")
    print(json.dumps(report["choice"], indent=2))


if __name__ == "__main__":
    main()
