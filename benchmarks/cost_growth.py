"""How each strategy's wall time grows with the model's MACs and with its number of levels or candidates.

Three timm models of growing MACs (resnet10t, resnet18, resnet34 at 32x32) on the built-in digits, one epoch per
training: `imp` with 3 weight levels (seconds per level), `lottery-pools` on target 0 of that run with 1, 2 and 3
candidates (search seconds), `early-bird` at ratio 0.5 over 2 epochs (wall seconds). Seconds per MAC measured here
carry over to a longer schedule on this machine; to a GPU scale them by one measured level there. Writes
benchmarks/results/cost_growth.json and .png.

    python benchmarks/cost_growth.py
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from lt_plugin.cli import main as cli_main
from provenance import provenance

MODELS = ("resnet10t", "resnet18", "resnet34")
COMMON = ["--dataset", "digits", "--image-size", "32", "--epochs", "1", "--seed", "0"]
CANDIDATES = (1, 2, 3)


def timed(argv) -> float:
    started = time.perf_counter()
    assert cli_main(argv) == 0, argv
    return time.perf_counter() - started


def measure(model: str, work: Path) -> dict:
    imp_dir = work / model / "imp"
    imp_wall = timed(["imp", "--model", model, *COMMON, "--levels", "3", "--out", str(imp_dir)])
    levels = json.loads((imp_dir / "results.json").read_text())
    search = {}
    for count in CANDIDATES:
        out = work / model / f"pools_{count}"
        timed(["lottery-pools", "--run", str(imp_dir), "--targets", "0", "--max-candidates", str(count),
               "--out", str(out)])
        search[count] = json.loads((out / "results.json").read_text())[0]["search_seconds"]
    eb_wall = timed(["early-bird", "--model", model, *COMMON, "--epochs", "2", "--ratios", "0.5", "--check-every", "4",
                     "--out", str(work / model / "early_bird")])
    row = {"model": model, "macs": levels[0]["macs"], "params": levels[0]["params"],
           "imp_level_train_seconds": [r["train_seconds"] for r in levels], "imp_wall_seconds": imp_wall,
           "pools_search_seconds": search, "early_bird_wall_seconds": eb_wall}
    print(f"{model}: {row['macs'] / 1e6:.0f}M MACs; IMP {imp_wall:.0f} s for 4 levels; Lottery Pools "
          + ", ".join(f"{c} candidates {s:.1f} s" for c, s in search.items()) + f"; Early-Bird {eb_wall:.0f} s",
          flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench-cost-growth")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [measure(model, Path(args.work)) for model in MODELS]
    report = {"wall_seconds": time.perf_counter() - started, "benchmark": "cost_growth", "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "machine": platform.machine(), "common": COMMON, "rows": rows,
              "provenance": provenance()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost_growth.json").write_text(json.dumps(report, indent=2) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    macs = [r["macs"] / 1e6 for r in rows]
    left.plot(macs, [sum(r["imp_level_train_seconds"]) / len(r["imp_level_train_seconds"]) for r in rows], "o-",
              label="IMP, training seconds per level")
    left.plot(macs, [r["pools_search_seconds"][CANDIDATES[-1]] for r in rows], "s-",
              label=f"Lottery Pools, search seconds per target ({CANDIDATES[-1]} candidates)")
    left.plot(macs, [r["early_bird_wall_seconds"] for r in rows], "^-", label="Early-Bird, wall seconds")
    for r, x in zip(rows, macs):
        left.annotate(r["model"], (x, r["early_bird_wall_seconds"]), fontsize=7, xytext=(3, 3),
                      textcoords="offset points")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("dense MACs per image (M)")
    left.set_ylabel("seconds")
    left.set_title("against the model's MACs (digits, 1 epoch)")
    left.legend(fontsize=7)
    for index, r in enumerate(rows):
        cumulative = torch.tensor(r["imp_level_train_seconds"]).cumsum(0).tolist()
        right.plot(range(len(cumulative)), cumulative, "o-", color=f"C{index}",
                   label=f"IMP {r['model']}: training seconds to level L")
        right.plot(list(CANDIDATES), [r["pools_search_seconds"][c] for c in CANDIDATES], "s--", color=f"C{index}",
                   label=f"Lottery Pools {r['model']}: search seconds for N candidates")
    right.set_xlabel("level L / candidates N")
    right.set_ylabel("seconds")
    right.set_title("against levels and candidates")
    right.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "cost_growth.png")
    print(f"wrote {out / 'cost_growth.json'} and {out / 'cost_growth.png'}")


if __name__ == "__main__":
    main()
