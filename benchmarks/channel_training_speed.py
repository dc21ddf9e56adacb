"""Does a channel ticket train faster when it is exported? Side-by-side training throughput, in one run.

For each density, a channel mask is built on the dense model; then the masked dense model (what a library without
export would train) and the physically pruned export are timed on the same batches, interleaved over several rounds
so that machine noise hits both alike. Writes JSON and a PNG next to this script (benchmarks/results/).

    python benchmarks/channel_training_speed.py [--model resnet18] [--image-size 32] [--rounds 5]
"""

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torch_pruning as tp

import lt_plugin
from provenance import provenance


def images_per_second(model, batches, enforce=None):
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs, targets = batches[0]
    F.cross_entropy(model(inputs), targets).backward()  # warm-up step, not timed
    optimizer.zero_grad()
    started = time.perf_counter()
    for inputs, targets in batches:
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
        if enforce is not None:
            enforce()
    return sum(len(t) for _, t in batches) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    torch.manual_seed(0)
    dense = timm.create_model(args.model, num_classes=10)
    example = torch.zeros(1, 3, args.image_size, args.image_size)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator),
                torch.randint(0, 10, (args.batch_size,), generator=generator)) for _ in range(args.steps)]
    dense_macs, _ = tp.utils.count_ops_and_params(dense, example)

    rows = []
    for density in args.densities:
        if density >= 1.0:
            mask = None
            small = copy.deepcopy(dense)
        else:
            mask = lt_plugin.create_mask(dense, example, density, granularity="channel")
            small = lt_plugin.export(dense, mask, example)
        masked = mask.apply(copy.deepcopy(dense)) if mask is not None else copy.deepcopy(dense)
        enforce = mask.enforcer(masked) if mask is not None else None
        macs, params = tp.utils.count_ops_and_params(small, example)
        masked_speed, exported_speed = [], []
        for _ in range(args.rounds):  # interleaved: both see the same machine state
            masked_speed.append(images_per_second(masked, batches, enforce))
            exported_speed.append(images_per_second(small, batches))
        row = {"density": mask.density if mask is not None else 1.0, "macs_fraction": macs / dense_macs,
               "params": params, "masked_images_per_second": statistics.median(masked_speed),
               "exported_images_per_second": statistics.median(exported_speed),
               "speedup_exported_over_masked": statistics.median(
                   e / m for e, m in zip(exported_speed, masked_speed))}
        rows.append(row)
        print(f"density {row['density']:.3f}  MACs {row['macs_fraction']:.3f}  masked "
              f"{row['masked_images_per_second']:.0f} img/s  exported {row['exported_images_per_second']:.0f} img/s "
              f" speed-up x{row['speedup_exported_over_masked']:.2f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "channel_training_speed", "model": args.model, "image_size": args.image_size,
              "batch_size": args.batch_size, "steps": args.steps, "rounds": args.rounds,
              "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "processor": platform.processor(), "rows": rows, "provenance": provenance()}
    (out / "channel_training_speed.json").write_text(json.dumps(report, indent=2) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    d = [r["density"] for r in rows]
    ax.plot(d, [r["masked_images_per_second"] for r in rows], "o-", label="masked dense model")
    ax.plot(d, [r["exported_images_per_second"] for r in rows], "s-", label="exported (physically pruned)")
    ax.set_xscale("log")
    ax.set_xticks(d, [f"{x:.3g}" for x in d])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.invert_xaxis()
    ax.set_xlabel("density (kept fraction of prunable weights)")
    ax.set_ylabel("training images / s")
    ax.set_title(f"{args.model}, {args.image_size}x{args.image_size}, batch {args.batch_size}, CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "channel_training_speed.png")
    print(f"wrote {out / 'channel_training_speed.json'} and {out / 'channel_training_speed.png'}")


if __name__ == "__main__":
    main()
