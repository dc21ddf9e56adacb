"""Do the papers' effects show, beyond the noise of seeds? LTH on LeNet-300-100, Lottery Pools and Early-Bird, on the
full Fashion-MNIST, every claim with a 95% interval over seeds.

Parts (each runs alone with --parts; every run is a run folder under --work, so a rerun resumes):
  lth    LTH Figures 3/4 over --seeds seeds: LeNet-300-100 on --train-samples of the training images (recipe
         lth-lenet: Adam 1.2e-3, batch 60, layer-wise,
         rewound to init, early stopping at the lowest validation loss), 40% of each hidden layer and 20% of the
         output layer per level for --levels levels (the paper's per-level rule at fewer, coarser densities), and
         its two controls as the paper defines them, branches of each seed's run (random-reinit: the ticket's masks,
         a fresh initialisation; random-mask: the ticket's per-layer counts at random positions). The test accuracy
         at the early-stopping iteration and the iteration itself, per density, with intervals; the paired
         differences ticket - dense, random-reinit - ticket and random-mask - ticket over the seeds.
  pools  Lottery Pools (the default acceptance rule) on each seed of the lth run: pooled minus ticket, with its
         interval, in distribution and under CIFAR-10-C style corruptions.
  small  Lottery Pools as a new user meets it: 4,000 training images with 400 held out, a LeNet-300-100 IMP run of 8
         levels over 3 seeds; every acceptance rule: does the pooled ticket differ from the ticket, and does test
         accuracy fall where validation accuracy rises?
  eb     Early-Bird on cifar_resnet20 with --baseline over 3 seeds (3,000 training images, crop-flip, 8 epochs,
         ratios 0.3 and 0.5), with both of the reference's retraining schedules (scratch, continue): accuracy
         against the one-shot ticket of the same retraining, paired over seeds, and the training MACs saved.
Fashion-MNIST is split as LTH splits MNIST: 55,000 training, 5,000 validation, the 10,000 test images. Writes
benchmarks/results/fidelity.json and fidelity_*.png; needs Debian's dataset-fashion-mnist.

    python benchmarks/fidelity.py [--parts lth pools small eb] [--seeds 5] [--epochs 10] [--work runs/fidelity]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import lt_plugin
from lt_plugin.compare import compare
from provenance import provenance
from lt_plugin.layout import RunLayout
from lt_plugin.stats import paired_difference, summarize, verdict
from lt_plugin.store import read_json

VAL_FRACTION = 5_000 / 60_000
# What the papers report (shared REFERENCE.md, read off their figures where so marked).
PAPER = {
    "lth": "LeNet-300-100 on MNIST (LTH Figures 3-4, approximate): tickets beat the dense test accuracy from ~50% down "
           "to ~13% of the weights and still match it near ~3.6%; they reach their early-stopping iteration sooner "
           "than the dense network; randomly reinitialised tickets fall below dense far earlier and learn slower.",
    "pools": "Lottery Pools (AAAI 2023): pooled tickets beat the tickets at the same sparsity, up to +1.88 points on "
             "CIFAR-100 and +2.36 on CIFAR-100-C, and the pooled dense network beats dense by up to +2.22; gains "
             "shrink at the highest sparsities (ResNet-18/CIFAR-10: ticket ~94.5, pooled ~95.1).",
    "eb": "Early-Bird (ICLR 2020), VGG-16/CIFAR-100 at p = 10/30/50%: EB 71.81/72.17/71.28 vs one-shot "
          "72.62/71.31/70.96; training FLOPs 282/243/197 vs 605 (x2.1-3.1 fewer: the search to the emergence epoch, "
          "then the rest of the schedule on the small network); the ticket is found within the first ~10-20% of "
          "training.",
}
ACCEPTANCE = ("paper", "paired", "loss", "confirm")


def log(name: str, started: float) -> None:
    print(f"{name}: {time.perf_counter() - started:.0f}s", flush=True)


def per_density(rows, metric):
    """{density: summary of `metric` over seeds} of an aggregated results.json."""
    return {r["density"]: summarize(r.get(f"{metric}_values", [r.get(metric)])) for r in rows}


def paired(a_row: dict, b_row: dict, metric: str) -> dict:
    """a - b on the seeds both rows have (replicated rows: `metric_values` in `seeds` order)."""
    a = dict(zip(a_row["seeds"], a_row[f"{metric}_values"]))
    b = dict(zip(b_row["seeds"], b_row[f"{metric}_values"]))
    shared = [s for s in a if s in b and a[s] is not None and b[s] is not None]
    return paired_difference([a[s] for s in shared], [b[s] for s in shared])


def significant(difference: dict) -> str:
    """lt_plugin.stats.verdict of one difference on its own p-value (unadjusted: a family's adjustment is the
    reader's): 'above', 'below', 'within noise', or 'no spread' / 'one seed' / 'no pairs' where no test was made."""
    return verdict(difference, difference["p_value"])


def lth_tickets(run: Path, seeds: int = 5, epochs: int = 8, train_samples: int = 20_000, levels: int = 8) -> list:
    """The LTH run (the defaults are this script's): LeNet-300-100, recipe lth-lenet, 40% of each hidden layer and 20%
    of the output layer per level; read back when it is finished (the acceptance benchmark pools it too)."""
    return lt_plugin.create_strategy("imp", model="lenet_300_100", recipe="lth-lenet", dataset="fashion-mnist",
                                     val_fraction=VAL_FRACTION, max_train_samples=train_samples, epochs=epochs,
                                     levels=levels, prune_fraction=0.4, layer_prune_fractions={"fc": 0.2},
                                     seeds=list(range(seeds))).run(run)


def lth_part(args, work: Path) -> dict:
    run = work / "lth"
    started = time.perf_counter()
    lth_tickets(run, args.seeds, args.epochs, args.train_samples, args.levels)
    log("lth tickets", started)
    for control in ("random-reinit", "random-mask"):
        started = time.perf_counter()
        lt_plugin.create_branch(control, run_dir=str(run)).run()
        log(f"lth {control}", started)
    controls = {name: RunLayout(run).branch(name) for name in ("random-reinit", "random-mask")}
    compare([run, *controls.values()], out=work / "lth_compare", metric="early_stop_test_accuracy")
    tickets = read_json(RunLayout(run).results)
    rows = {"ticket": tickets, **{name: read_json(RunLayout(path).results) for name, path in controls.items()}}
    dense = tickets[0]
    findings = {"densities": [], "seeds": args.seeds}
    for i, ticket in enumerate(tickets[1:], start=1):
        entry = {"density": ticket["density"],
                 "ticket_minus_dense": paired(ticket, dense, "early_stop_test_accuracy"),
                 "ticket_minus_dense_early_stop_step": paired(ticket, dense, "early_stop_step")}
        for name in controls:
            control = next(r for r in rows[name] if r["level"] == ticket["level"])
            entry[f"{name}_minus_ticket"] = paired(control, ticket, "early_stop_test_accuracy")
            entry[f"{name}_minus_ticket_early_stop_step"] = paired(control, ticket, "early_stop_step")
        findings["densities"].append(entry)
    by = {key: [e["density"] for e in findings["densities"] if significant(e[key]) == side]
          for key, side in (("ticket_minus_dense", "above"), ("random-reinit_minus_ticket", "below"),
                            ("random-mask_minus_ticket", "below"))}
    not_below = [e["density"] for e in findings["densities"] if significant(e["ticket_minus_dense"]) != "below"]
    sooner = [e["density"] for e in findings["densities"]
              if significant(e["ticket_minus_dense_early_stop_step"]) == "below"]
    findings.update({"tickets_above_dense_at": by["ticket_minus_dense"],
                     "tickets_not_below_dense_down_to": min(not_below, default=None),
                     "tickets_stop_early_sooner_at": sooner,
                     "random_reinit_below_ticket_at": by["random-reinit_minus_ticket"],
                     "random_mask_below_ticket_at": by["random-mask_minus_ticket"]})
    curves = {name: {"density": [r["density"] for r in result],
                     **{metric: per_density(result, metric) for metric in ("early_stop_test_accuracy",
                                                                          "early_stop_step")}}
              for name, result in rows.items()}
    return {"epochs": args.epochs, "levels": args.levels, "train_samples": args.train_samples, "paper": PAPER["lth"],
            "curves": _jsonable(curves), "findings": findings}


def pooled_at(folder: Path, level: int) -> int:
    """At how many seeds of a replicated Lottery Pools folder the pooled ticket of `level` is not the ticket."""
    layout = RunLayout(folder)
    return sum(1 for seed in layout.seeds() for r in read_json(layout.seed(seed).results)
               if r["level"] == level and r["accepted"])


def pools_part(args, work: Path) -> dict:
    started = time.perf_counter()
    out = work / "lth_pools"
    rows = lt_plugin.create_branch("lottery-pools", run_dir=str(work / "lth"), corruptions=True,
                                   corruption_samples=2_000).run(out)
    log("pools", started)
    levels = [{"level": r["level"], "density": r["density"], "acceptance": r["acceptance"],
               "pooled_minus_ticket": paired_difference(r["pooled_test_accuracy_values"],
                                                        r["ticket_bn_test_accuracy_values"]),
               "pooled_minus_ticket_corrupted": paired_difference(r["pooled_corruption_accuracy_values"],
                                                                  r["ticket_corruption_accuracy_values"]),
               "pooled_at_seeds": pooled_at(out, r["level"])} for r in rows]
    gains = [e["pooled_minus_ticket"]["mean"] for e in levels]
    return {"paper": PAPER["pools"], "levels": levels,
            "findings": {"acceptance": levels[0]["acceptance"], "mean_test_gain": sum(gains) / len(gains),
                         "largest_test_gain": max(gains),
                         "levels_pooled_at_some_seed": [e["level"] for e in levels if e["pooled_at_seeds"]],
                         "levels_above_ticket": [e["level"] for e in levels
                                                 if significant(e["pooled_minus_ticket"]) == "above"],
                         "levels_below_ticket": [e["level"] for e in levels
                                                 if significant(e["pooled_minus_ticket"]) == "below"]}}


def small_part(args, work: Path) -> dict:
    run = work / "small_imp"
    started = time.perf_counter()
    lt_plugin.create_strategy("imp", model="lenet_300_100", recipe="lth-lenet", dataset="fashion-mnist",
                              val_fraction=400 / 60_000, max_train_samples=4_000, levels=8,
                              seeds=[0, 1, 2]).run(run)
    out = {}
    for acceptance in ACCEPTANCE:
        folder = work / f"small_pools_{acceptance}"
        rows = lt_plugin.create_branch("lottery-pools", run_dir=str(run), acceptance=acceptance).run(folder)
        out[acceptance] = [{"level": r["level"], "density": r["density"],
                            "test_gain": paired_difference(r["pooled_test_accuracy_values"],
                                                           r["ticket_bn_test_accuracy_values"]),
                            "val_gain": paired_difference(r["pooled_val_accuracy_values"],
                                                          r["ticket_bn_val_accuracy_values"]),
                            "pooled_at_seeds": pooled_at(folder, r["level"]),
                            "smallest_gain": r.get("smallest_gain")} for r in rows]
    log("small", started)
    return {"levels": out, "val_images": 400, "train_images": 4_000, "seeds": 3,
            "findings": {rule: {"levels_pooled_at_some_seed": [e["level"] for e in rows if e["pooled_at_seeds"]],
                                "mean_test_gain": sum(e["test_gain"]["mean"] for e in rows) / len(rows),
                                "levels_where_test_falls": [e["level"] for e in rows
                                                            if significant(e["test_gain"]) == "below"],
                                "smallest_detectable_gain": rows[0]["smallest_gain"]}
                         for rule, rows in out.items()}}


EB_RUN = dict(model="cifar_resnet20", dataset="fashion-mnist", val_fraction=VAL_FRACTION, max_train_samples=3_000,
              epochs=8, batch_size=128, opt="momentum", lr=0.1, sched="multistep", augment="crop-flip",
              wd_norm_bias=True, ratios=[0.3, 0.5], baseline=True, seeds=[0, 1, 2])


def eb_setup() -> str:
    """The eb part's run in a sentence (its page shows it)."""
    run = EB_RUN
    return (f"`{run['model']}`, {run['max_train_samples']:,} Fashion-MNIST training images ({run['augment']}), "
            f"{run['epochs']} epochs, batch {run['batch_size']}, SGD {run['lr']:g} with plain momentum and multi-step "
            f"decay, weight decay on every parameter, ratios {' and '.join(f'{r:g}' for r in run['ratios'])}, "
            f"{len(run['seeds'])} seeds.")


def eb_part(args, work: Path) -> dict:
    out = {}
    for schedule in args.eb_schedules:
        started = time.perf_counter()
        rows = lt_plugin.create_strategy("early-bird", retrain_schedule=schedule, **EB_RUN).run(
            work / f"eb_{schedule}")
        log(f"eb {schedule}", started)
        out[schedule] = [{"ratio": r["ratio"], "found_at_seeds": sum(1 for f in r.get("eb_step_values", []) if f),
                          "eb_epoch": summarize(r.get("eb_epoch_values", [])),
                          "test_accuracy": summarize(r.get("test_accuracy_values", [])),
                          "eb_minus_one_shot": paired_difference(r.get("test_accuracy_values", []),
                                                                 r.get("baseline_test_accuracy_values", [])),
                          "train_macs_saved": summarize(r.get("train_macs_saved_values", [])),
                          "train_seconds_saved": summarize(r.get("train_seconds_saved_values", []))}
                         for r in rows]
    return {"paper": PAPER["eb"], "setup": eb_setup(), "schedules": out,
            "findings": {schedule: {"macs_saved": [e["train_macs_saved"]["mean"] for e in rows],
                                    "eb_minus_one_shot": [e["eb_minus_one_shot"]["mean"] for e in rows],
                                    "eb_against_one_shot": [significant(e["eb_minus_one_shot"]) for e in rows]}
                         for schedule, rows in out.items()}}


PARTS = {"lth": lth_part, "pools": pools_part, "small": small_part, "eb": eb_part}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _density_axis(ax, ylabel: str) -> None:
    ax.axhline(0, color="gray")
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("density (kept fraction of weights)")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend()


def plot(report: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)

    def band(ax, x, summaries, scale, label):
        means = [scale * s["mean"] for s in summaries]
        line, = ax.plot(x, means, "o-", label=label)
        lows = [scale * (s["ci_low"] if s["ci_low"] is not None else s["mean"]) for s in summaries]
        highs = [scale * (s["ci_high"] if s["ci_high"] is not None else s["mean"]) for s in summaries]
        ax.fill_between(x, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)

    if "lth" in report:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for name, curve in report["lth"]["curves"].items():
            x = curve["density"]
            band(left, x, [curve["early_stop_test_accuracy"][str(d)] for d in x], 100, name)
            band(right, x, [curve["early_stop_step"][str(d)] for d in x], 1, name)
        for ax, label in ((left, "test accuracy at early stopping (%)"), (right, "early-stopping iteration")):
            ax.set_xscale("log")
            ax.invert_xaxis()
            ax.set_xlabel("density (kept fraction of weights)")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.suptitle(f"LTH on LeNet-300-100, Fashion-MNIST, {report['lth']['findings']['seeds']} seeds (bands: 95% "
                     "intervals; cf. LTH Figures 3-4)")
        save(fig, "fidelity_lth.png")
    if "pools" in report:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        rows = report["pools"]["levels"]
        x = [r["density"] for r in rows]
        band(ax, x, [r["pooled_minus_ticket"] for r in rows], 100, "test")
        band(ax, x, [r["pooled_minus_ticket_corrupted"] for r in rows], 100, "test, corrupted")
        _density_axis(ax, "pooled minus ticket (points)")
        ax.set_title(f"Lottery Pools ({rows[0]['acceptance']}) on the LTH run, "
                     f"{rows[0]['pooled_minus_ticket']['n']} seeds (bands: 95% intervals)")
        save(fig, "fidelity_pools.png")
    if "small" in report:
        rules = report["small"]["levels"]
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for rule, rows in rules.items():
            x = [r["density"] for r in rows]
            band(left, x, [r["val_gain"] for r in rows], 100, rule)
            band(right, x, [r["test_gain"] for r in rows], 100, rule)
        _density_axis(left, "pooled minus ticket, validation (points)")
        _density_axis(right, "pooled minus ticket, test (points)")
        fig.suptitle(f"Lottery Pools on {report['small']['train_images']:,} images ({report['small']['val_images']} "
                     f"for validation), {report['small']['seeds']} seeds, per acceptance rule (bands: 95% intervals)")
        save(fig, "fidelity_small.png")
    if "eb" in report:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        labels, means, lows, highs = [], [], [], []
        for schedule, rows in report["eb"]["schedules"].items():
            for e in rows:
                d = e["eb_minus_one_shot"]
                labels.append(f"{schedule}\nratio {e['ratio']:g}\nMACs x{e['train_macs_saved']['mean']:.2f}")
                means.append(100 * d["mean"])
                lows.append(100 * (d["mean"] - (d["ci_low"] if d["ci_low"] is not None else d["mean"])))
                highs.append(100 * ((d["ci_high"] if d["ci_high"] is not None else d["mean"]) - d["mean"]))
        ax.bar(range(len(labels)), means, yerr=[lows, highs], capsize=4)
        ax.axhline(0, color="gray")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel("Early-Bird minus one-shot test accuracy (points)")
        ax.set_title("Early-Bird on cifar_resnet20, Fashion-MNIST, 3 seeds (95% intervals)")
        save(fig, "fidelity_eb.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the lth part (the paper's five trials)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per IMP level in the lth part (the recipe's "
                        "55 is 50K iterations; LeNet stops early within a few thousand)")
    parser.add_argument("--train-samples", type=int, default=20_000, help="training images of the lth part (of "
                        "55,000: five seeds, each with two controls, in about an hour on 2 CPU cores)")
    parser.add_argument("--levels", type=int, default=8, help="IMP levels of the lth part (to density ~2%%)")
    parser.add_argument("--eb-schedules", nargs="+", choices=["scratch", "continue"], default=["scratch", "continue"],
                        help="the eb part's retraining schedules (continue: the training cost the paper counts)")
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
        report[name]["provenance"] = provenance()
        report["machine"] = {"python": platform.python_version(),
                             "processor": platform.processor() or platform.machine()}
        path.write_text(json.dumps(report, indent=2) + "\n")  # after each part: the others stay as they were
        print(json.dumps(report[name]["findings"], indent=2))
    plot({name: report[name] for name in args.parts}, out)  # the figures of the parts run now
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
