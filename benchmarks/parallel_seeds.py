"""Seeds per hour: a replicated run in one process against `--parallel seeds` over 2 processes.

The papers' networks are too small for data parallelism to pay (a LeNet-300-100 step is a few milliseconds; an
all-reduce per step costs as much), so `--parallel seeds` gives each process its own seeds instead. Measured here
on the CPU: `lt-plugin imp` on LeNet-300-100 (recipe lth-lenet, Fashion-MNIST, 2 levels) with 4 seeds, once as one
process and once under `accelerate launch --multi_gpu --num_processes 2 ... --parallel seeds`
(ACCELERATE_USE_CPU=1; each process one thread, as one would give each its own device). Both runs' weights are
compared (the one process uses 2 threads, so float32's last digits may differ; tests/test_replicates.py checks
bit for bit at equal threads). Rounds alternate; medians. On a CPU the processes share
the machine's cores, so the ratio is bounded by them; on P GPUs each seed runs on a device of its own.

Writes benchmarks/results/parallel_seeds.json and parallel_seeds.png.

    python benchmarks/parallel_seeds.py [--rounds 2] [--train-samples 6000] [--epochs 2]
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

import lt_plugin
from lt_plugin.layout import RunLayout
from lt_plugin.store import load_weights
from provenance import provenance

SEEDS = [0, 1, 2, 3]


def command(args, out: Path) -> list:
    return ["-m", "lt_plugin.cli", "imp", "--model", "lenet_300_100", "--recipe", "lth-lenet", "--dataset",
            "fashion-mnist", "--max-train-samples", str(args.train_samples), "--epochs", str(args.epochs),
            "--levels", "2", "--seeds", *map(str, SEEDS), "--out", str(out)]


def timed(argv: list, env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - started


def largest_difference(a: Path, b: Path) -> float:
    """The largest difference between the two runs' weights (the thread counts differ: float32's last digits may)."""
    worst = 0.0
    for seed in SEEDS:
        for level in range(3):
            x = load_weights(RunLayout(a).seed(seed).level(level).weights)
            y = load_weights(RunLayout(b).seed(seed).level(level).weights)
            assert x.keys() == y.keys()
            worst = max([worst, *((x[k].double() - y[k].double()).abs().max().item() for k in x)])
    return worst


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=6_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--work", default="runs/bench-parallel-seeds")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    one = {**base, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    two = {**base, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2)), "ACCELERATE_USE_CPU": "1"}
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    seconds = {"one_process": [], "two_processes": []}
    differences = []
    for _ in range(args.rounds):
        shutil.rmtree(work, ignore_errors=True)
        seconds["one_process"].append(timed([sys.executable, *command(args, work / "one")], one))
        seconds["two_processes"].append(timed([*launcher, *command(args, work / "two"), "--parallel", "seeds"],
                                              two))
        differences.append(largest_difference(work / "one", work / "two"))
        print({k: round(v[-1], 1) for k, v in seconds.items()}, "largest difference:", differences[-1], flush=True)
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    report = {"benchmark": "parallel_seeds", "lt_plugin": lt_plugin.__version__, "torch": torch.__version__,
              "cpus": os.cpu_count(), "machine": platform.machine(), "seeds": SEEDS,
              "run": {"model": "lenet_300_100", "recipe": "lth-lenet", "train_samples": args.train_samples,
                      "epochs": args.epochs, "levels": 2},
              "seconds": seconds, "median_seconds": medians,
              "seeds_per_hour": {k: 3600 * len(SEEDS) / v for k, v in medians.items()},
              "speedup": medians["one_process"] / medians["two_processes"],
              "largest_weight_difference": max(differences), "provenance": provenance()}
    (out / "parallel_seeds.json").write_text(json.dumps(report, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = ["1 process", "2 processes\n--parallel seeds"]
    ax.bar(labels, [report["seeds_per_hour"]["one_process"], report["seeds_per_hour"]["two_processes"]])
    ax.set_ylabel("seeds per hour")
    ax.set_title(f"LeNet-300-100, {len(SEEDS)} seeds, {report['cpus']} CPU cores: x{report['speedup']:.2f}")
    fig.tight_layout()
    fig.savefig(out / "parallel_seeds.png", dpi=120)
    plt.close(fig)
    print(json.dumps({k: report[k] for k in ("median_seconds", "seeds_per_hour", "speedup", "largest_weight_difference")}))


if __name__ == "__main__":
    main()
