"""Lottery Pools' fast protocol against the paper's (reference) protocol, on the same finished IMP runs.

For each IMP run given, `lt-plugin lottery-pools` runs with `--protocol fast` and `--protocol reference` into
`<run>/pools-protocol-fast` and `<run>/pools-protocol-reference` (finished targets are kept: rerunning costs nothing),
then their search seconds, validation passes and pooled accuracies are compared target by target. Writes
benchmarks/results/lottery_pools_protocols.json and .png.

    lt-plugin imp --recipe demo --model resnet18 --dataset digits --out runs/demo
    lt-plugin imp --recipe demo --model resnet18 --dataset fashion-mnist --max-train-samples 10000 --out runs/fm
    python benchmarks/lottery_pools_protocols.py --runs runs/demo runs/fm --targets all "0 1"
"""

import argparse
import json
import platform
from pathlib import Path

import torch

from lt_plugin.cli import main as cli_main
from provenance import provenance

PROTOCOLS = ("fast", "reference")


def compare(run: Path, targets: list) -> dict:
    results = {}
    for protocol in PROTOCOLS:
        out = run / f"pools-protocol-{protocol}"
        assert cli_main(["lottery-pools", "--run", str(run), "--protocol", protocol, "--targets", *targets,
                         "--out", str(out)]) == 0
        results[protocol] = json.loads((out / "results.json").read_text())
    rows = []
    for fast, reference in zip(results["fast"], results["reference"]):
        rows.append({"level": fast["level"], "density": fast["density"],
                     **{f"{key}_{protocol}": entry[key]
                        for protocol, entry in (("fast", fast), ("reference", reference))
                        for key in ("search_seconds", "val_passes", "recalibrations", "pooled_val_accuracy",
                                    "pooled_test_accuracy", "accepted")},
                     "ticket_test_accuracy": fast["ticket_test_accuracy"]})
    imp = json.loads((run / "config.json").read_text())["hparams"]
    search = {protocol: sum(r[f"search_seconds_{protocol}"] for r in rows) for protocol in PROTOCOLS}
    return {"run": str(run), "model": imp["model"], "dataset": imp["dataset"],
            "max_train_samples": imp["max_train_samples"], "targets": targets, "rows": rows,
            "search_seconds": search, "speedup": search["reference"] / search["fast"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True, help="finished IMP run folders")
    parser.add_argument("--targets", nargs="+", default=None,
                        help="per run, its targets as one argument ('all' or e.g. '0 1'); default: all")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    targets = args.targets or ["all"] * len(args.runs)
    runs = [compare(Path(run), t.split()) for run, t in zip(args.runs, targets)]
    for entry in runs:
        print(f"{entry['run']}: search {entry['search_seconds']['fast']:.1f} s fast, "
              f"{entry['search_seconds']['reference']:.1f} s reference: x{entry['speedup']:.1f}; pooled test, fast - "
              f"reference: " + ", ".join(
                  f"{(r['pooled_test_accuracy_fast'] - r['pooled_test_accuracy_reference']) * 100:+.2f}"
                  for r in entry["rows"]) + " points")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "lottery_pools_protocols", "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine(), "runs": runs, "provenance": provenance()}
    (out / "lottery_pools_protocols.json").write_text(json.dumps(report, indent=2) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    labels = [f"{Path(e['run']).name}\nlevel {r['level']}" for e in runs for r in e["rows"]]
    x = range(len(labels))
    for offset, protocol in ((-0.2, "fast"), (0.2, "reference")):
        axes[0].bar([i + offset for i in x], [r[f"search_seconds_{protocol}"] for e in runs for r in e["rows"]],
                    width=0.4, label=protocol)
        axes[1].bar([i + offset for i in x], [r[f"pooled_test_accuracy_{protocol}"] * 100 for e in runs
                                              for r in e["rows"]], width=0.4, label=protocol)
    axes[1].plot(list(x), [r["ticket_test_accuracy"] * 100 for e in runs for r in e["rows"]], "k_", markersize=20,
                 label="ticket")
    for ax, title in zip(axes, ("search seconds per target", "pooled test accuracy, %")):
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_title(title)
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    bottom = min(r["ticket_test_accuracy"] for e in runs for r in e["rows"]) * 100 - 2
    axes[1].set_ylim(bottom=bottom)
    fig.tight_layout()
    fig.savefig(out / "lottery_pools_protocols.png")
    print(f"wrote {out / 'lottery_pools_protocols.json'} and {out / 'lottery_pools_protocols.png'}")


if __name__ == "__main__":
    main()
