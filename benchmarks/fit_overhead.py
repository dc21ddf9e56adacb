"""What `fit` costs over a bare PyTorch loop on the papers' small networks, and what a run costs around its training.

The papers' networks are tiny, so a run's time goes to per-step and per-run overheads, not arithmetic. Measured side
by side in one process, interleaved rounds, medians:

a. `fit` against a bare loop over the same model, optimizer and batches (the same DataLoader and sampler, the same
   normalisation on the device, cross-entropy, backward, optimizer step, a validation pass at each epoch's end):
   LeNet-300-100 (`lth-lenet`: Adam 1.2e-3, batch 60) and `cifar_resnet20` (SGD 0.1, batch 128) on Fashion-MNIST.
   Target: fit within 1.10x of the bare loop.
b. A run's fixed cost: `lt-plugin imp --levels 0` as a command (imports, data, model, training, scoring) against the
   training time it reports; and a replicated run of 3 seeds against 3 runs of one seed, the fixed costs paid once.
   With `--earlier DIR` (a checkout of earlier code), that fixed cost and `lt-plugin --help` with the earlier code and
   today's, interleaved round by round.

Writes benchmarks/results/fit_overhead.json and fit_overhead.png.

    python benchmarks/fit_overhead.py [--rounds 3] [--train-samples 12000] [--earlier DIR]
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lt_plugin
from lt_plugin.experiment import Experiment
from lt_plugin.loaders import DeviceNormalize, make_loader
from lt_plugin.train import EpochShuffle, TrainConfig, evaluate, fit, make_accelerator
from lt_plugin.train.config import create_optimizer
from provenance import provenance

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]
SETUPS = {  # LeNet-300-100 on the whole training set (55,000 images): its epochs are short enough as it is
    "lenet_300_100": dict(experiment=dict(model="lenet_300_100", image_size=28, max_train_samples=None),
                          train=dict(opt="adam", lr=1.2e-3, batch_size=60, sched="constant", weight_decay=0.0)),
    "cifar_resnet20": dict(experiment=dict(model="cifar_resnet20", image_size=32),
                           train=dict(opt="momentum", lr=0.1, batch_size=128, sched="constant", weight_decay=1e-4)),
}


def bare_loop(model, data, cfg: TrainConfig, device) -> float:
    """Seconds of `cfg.epochs` epochs of plain PyTorch over fit's batches, with a validation pass per epoch."""
    optimizer = create_optimizer(model, cfg)
    loader = make_loader(data.train, cfg.batch_size, device, sampler=EpochShuffle(len(data.train), cfg.seed),
                         drop_last=True)
    normalize = DeviceNormalize(data.train, device)
    accelerator = make_accelerator(cfg)
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        loader.sampler.set_epoch(epoch)
        model.train()
        for inputs, targets in loader:
            loss = F.cross_entropy(model(normalize(inputs.to(device))), targets.to(device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        evaluate(model, data.val, accelerator, cfg.eval_batch_size)
    return time.perf_counter() - started


def fit_loop(model, data, cfg: TrainConfig, scratch: Path) -> float:
    accelerator = make_accelerator(cfg)
    result = fit(model, data.train, data.val, cfg, scratch, accelerator=accelerator, desc="bench")
    return result.train_seconds


def measure_fit(name: str, setup: dict, rounds: int, samples: int, epochs: int, scratch: Path) -> dict:
    experiment = Experiment(**{"dataset": "fashion-mnist", "val_fraction": 5_000 / 60_000,
                               "max_train_samples": samples, **setup["experiment"]})
    data = experiment.load_data()
    cfg = TrainConfig(epochs=epochs, **setup["train"])
    seconds = {"fit": [], "bare": []}
    for round_ in range(rounds):
        for side in ("fit", "bare"):  # interleaved: both sides see the same machine
            model = experiment.create_model(data.num_classes, seed=0)
            if side == "fit":
                seconds[side].append(fit_loop(model, data, cfg, scratch / f"{name}_{round_}"))
            else:
                seconds[side].append(bare_loop(model, data, cfg, torch.device("cpu")))
    steps = epochs * (len(data.train) // cfg.batch_size)
    fit_s, bare_s = statistics.median(seconds["fit"]), statistics.median(seconds["bare"])
    return {"model": name, "train_samples": len(data.train), "epochs": epochs, "steps": steps,
            "batch_size": cfg.batch_size, "seconds": seconds, "fit_median_s": fit_s, "bare_median_s": bare_s,
            "ratio": fit_s / bare_s, "fit_ms_per_step": 1000 * fit_s / steps, "bare_ms_per_step": 1000 * bare_s / steps}


def _timed(argv, tree: Path = REPO) -> float:
    """Wall seconds of `python -m lt_plugin ARGV` with the lt_plugin of `tree` (a checkout) first on the path."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lt_plugin", *argv], check=True, capture_output=True,
                   env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(tree)})
    return time.perf_counter() - started


def _command(out: Path, extra, tree: Path = REPO) -> float:
    return _timed(["imp", "--model", "lenet_300_100", "--recipe", "lth-lenet", "--dataset", "fashion-mnist",
                   "--max-train-samples", "6000", "--epochs", "2", "--levels", "0", "--out", str(out), *extra], tree)


def _fixed(out: Path, seconds: float) -> float:
    """A finished command's seconds beyond the training it reports."""
    return seconds - json.loads((out / "results.json").read_text())[0]["train_seconds"]


def measure_against_earlier(earlier: Path, scratch: Path, rounds: int) -> dict:
    """A run's fixed cost and `lt-plugin --help` with the code of an earlier checkout and with today's, the two
    interleaved round by round on the same machine; medians and their ratio (today's over the earlier's)."""
    sides = {"earlier": earlier, "today": REPO}
    fixed, helps = {side: [] for side in sides}, {side: [] for side in sides}
    for round_ in range(rounds):
        for side, tree in sides.items():
            out = scratch / f"{side}_{round_}"
            fixed[side].append(_fixed(out, _command(out, [], tree)))
            helps[side].append(_timed(["--help"], tree))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=earlier, capture_output=True, text=True).stdout.strip()
    median = {side: statistics.median(fixed[side]) for side in sides}
    return {"earlier_commit": commit, "fixed_seconds": fixed, "help_seconds": helps,
            "fixed_median_seconds": median, "fixed_ratio": median["today"] / median["earlier"],
            "help_ratio": statistics.median(helps["today"]) / statistics.median(helps["earlier"])}


def measure_run_costs(scratch: Path) -> dict:
    single = [_command(scratch / f"single_{seed}", ["--seed", str(seed)]) for seed in range(3)]
    replicated = _command(scratch / "replicated", ["--seeds", "0", "1", "2"])
    train = [json.loads((scratch / f"single_{s}" / "results.json").read_text())[0]["train_seconds"] for s in range(3)]
    return {"command_seconds": single, "train_seconds": train, "replicated_3_seeds_seconds": replicated,
            "three_single_runs_seconds": sum(single), "fixed_seconds_per_run": statistics.median(
                [c - t for c, t in zip(single, train)]),
            "replicated_saving": sum(single) / replicated}


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    names = [r["model"] for r in report["fit"]]
    for i, side in enumerate(("bare", "fit")):
        left.bar([x + 0.4 * i for x in range(len(names))], [r[f"{side}_ms_per_step"] for r in report["fit"]], 0.4,
                 label=f"{side} loop")
    left.set_xticks([x + 0.2 for x in range(len(names))], [f"{n}\nx{r['ratio']:.2f}" for n, r in
                                                           zip(names, report["fit"])])
    left.set_ylabel("ms per optimizer step (training and validation)")
    left.set_title("fit against a bare PyTorch loop")
    left.legend()
    costs = report["run_costs"]
    right.bar(["3 runs of one seed", "one run of 3 seeds"], [costs["three_single_runs_seconds"],
                                                          costs["replicated_3_seeds_seconds"]])
    right.set_ylabel("seconds, as commands")
    right.set_title(f"LeNet-300-100, 2 epochs of 6,000 images: x{costs['replicated_saving']:.2f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", default="runs/bench-fit-overhead")
    parser.add_argument("--earlier", help="a checkout of earlier code (git worktree add DIR COMMIT): also measure a "
                                          "run's fixed cost and --help with it and with today's, interleaved")
    args = parser.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)  # every measurement trains: no finished run to read back
    report = {"benchmark": "fit_overhead", "lt_plugin": lt_plugin.__version__, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
              "fit": [measure_fit(name, setup, args.rounds, args.train_samples, args.epochs, work / "fit")
                      for name, setup in SETUPS.items()],
              "run_costs": measure_run_costs(work / "runs"), "provenance": provenance()}
    if args.earlier:
        report["against_earlier"] = measure_against_earlier(Path(args.earlier), work / "earlier", args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fit_overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "fit_overhead.png")
    for r in report["fit"]:
        print(f"{r['model']}: fit {r['fit_median_s']:.2f}s, bare {r['bare_median_s']:.2f}s, x{r['ratio']:.3f} "
              f"({r['fit_ms_per_step']:.2f} vs {r['bare_ms_per_step']:.2f} ms/step)")
    costs = report["run_costs"]
    print(f"a run's fixed cost: {costs['fixed_seconds_per_run']:.1f}s; 3 seeds as one run x"
          f"{costs['replicated_saving']:.2f} faster than 3 runs")
    if args.earlier:
        against = report["against_earlier"]
        print(f"against {args.earlier}: fixed cost x{against['fixed_ratio']:.2f}, --help x{against['help_ratio']:.2f}")


if __name__ == "__main__":
    main()
