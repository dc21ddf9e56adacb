"""Memory and speed of the two data paths: in memory (8-bit pixels) and streamed (decoded as read).

1. Peak memory and loading time against dataset size and image size: Fashion-MNIST with 10k/30k/60k training images
   (plus its 6,000 validation and 10,000 test images) at 32/128/224 px, each path, each configuration in a fresh
   process: `load_data`, then 20 training batches of 128 read through a DataLoader, as `fit` reads them. Peak memory
   is the process's maximum resident set (`ru_maxrss`); the imported libraries' share is measured before loading.
2. The streaming path's images/s with 0, 1 and 2 DataLoader workers at 32 and 224 px, next to the images/s a resnet18
   training step consumes at that size on this machine (batch 128, 2 threads): below it, loading starves training.
3. Per-process peak memory of a 2-process run (`accelerate launch`, CPU) against a 1-process one, both paths.
4. The issue's check: `lt-plugin imp --dataset fashion-mnist --image-size 224 --levels 0 --epochs 1
   --max-train-samples 512 --batch-size 32 --data-in-memory no` and its peak memory.
5. The `--streaming` path (a `datasets` IterableDataset of 64 shards, read by each process's `loader`): peak memory
   at 224 px for the three dataset sizes, and images/s with 0, 1 and 2 workers next to the streamed path's; and the
   run of 4. with `--streaming`.
Writes benchmarks/results/data_loading.json and .png; `--sections` reruns some parts into the existing JSON.

    python benchmarks/data_loading.py        # Debian's dataset-fashion-mnist installed; ~25 minutes on 2 cores
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = (10_000, 30_000, 60_000)
IMAGE_SIZES = (32, 128, 224)
PATHS = {"in memory": "yes", "streamed": "no"}
HUB_STREAM = "stream"  # the child's in_memory argument for --streaming
READ_BATCHES = 20

CHILD = r"""
import json, os, resource, sys, time
import torch
from torch.utils.data import DataLoader
from lt_plugin.data import load_data
mode, image_size, samples, in_memory, workers, batches = sys.argv[1:7]
image_size, samples, workers, batches = int(image_size), int(samples), int(workers), int(batches)
torch.set_num_threads(2)
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
imports = rss()
started = time.perf_counter()
streaming = in_memory == "stream"
data = load_data("fashion-mnist", image_size=image_size, in_chans=3, max_train_samples=samples,
                 in_memory="auto" if streaming else in_memory, streaming=streaming)
load_seconds = time.perf_counter() - started
if streaming:  # as fit reads an epoch
    loader = data.train.loader(128, num_batches=len(data.train) // 128, seed=0, num_workers=workers)
else:
    loader = DataLoader(data.train, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(0),
                        drop_last=True, num_workers=workers)
out = {"load_seconds": load_seconds, "imports_bytes": imports, "in_memory": data.in_memory,
       "images": len(data.train) + len(data.val) + len(data.test)}
iterator = iter(loader)
next(iterator)  # worker start-up and the first batch are not timed
started = time.perf_counter()
read = 0
for _ in range(batches):
    read += len(next(iterator)[1])
out["read_images_per_second"] = read / (time.perf_counter() - started)
del iterator
if mode == "train_step":
    import timm, torch.nn.functional as F
    model = timm.create_model("resnet18", num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs, targets = next(iter(loader))
    for i in range(4):
        if i == 1:
            started = time.perf_counter()
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    out["train_images_per_second"] = 3 * len(targets) / (time.perf_counter() - started)
out["peak_bytes"] = rss()
out["rank"] = int(os.environ.get("RANK", "0"))
print("RESULT " + json.dumps(out), flush=True)
"""


def child(args, launcher=None) -> list:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(CHILD)
    command = (launcher or [sys.executable]) + [f.name, *map(str, args)]
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    if launcher:
        env["ACCELERATE_USE_CPU"] = "1"
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    os.unlink(f.name)
    results = [json.loads(line[len("RESULT "):]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return results


def memory_rows() -> list:
    rows = []
    for image_size in IMAGE_SIZES:
        for samples in SIZES:
            for path, flag in PATHS.items():
                result = child(["load", image_size, samples, flag, 0, READ_BATCHES])[0]
                rows.append({"path": path, "image_size": image_size, "train_images": samples, **result})
                print(f"{path:9} {image_size:3} px {result['images']:6} images: "
                      f"load {result['load_seconds']:6.1f} s, "
                      f"peak {result['peak_bytes'] / 2 ** 30:.2f} GiB "
                      f"(imports {result['imports_bytes'] / 2 ** 30:.2f})",
                      flush=True)
    return rows


def throughput_rows() -> list:
    rows = []
    for image_size in (32, 224):
        train = child(["train_step", image_size, SIZES[0], "yes", 0, 2])[0]["train_images_per_second"]
        for workers in (0, 1, 2):
            result = child(["load", image_size, SIZES[0], "no", workers, READ_BATCHES])[0]
            rows.append({"image_size": image_size, "workers": workers,
                         "stream_images_per_second": result["read_images_per_second"],
                         "train_step_images_per_second": train})
            print(f"streamed {image_size} px, {workers} workers: {result['read_images_per_second']:,.0f} images/s "
                  f"(a resnet18 training step takes {train:,.0f} images/s)", flush=True)
    return rows


def processes_rows() -> list:
    launcher = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    rows = []
    for path, flag in PATHS.items():
        single = child(["load", 128, SIZES[-1], flag, 0, READ_BATCHES])[0]
        double = child(["load", 128, SIZES[-1], flag, 0, READ_BATCHES], launcher=launcher)
        rows.append({"path": path, "image_size": 128, "train_images": SIZES[-1],
                     "one_process_peak_bytes": single["peak_bytes"],
                     "two_processes_peak_bytes": [r["peak_bytes"] for r in sorted(double, key=lambda r: r["rank"])]})
        print(f"{path}: one process {single['peak_bytes'] / 2 ** 30:.2f} GiB, two processes "
              + " and ".join(f"{r['peak_bytes'] / 2 ** 30:.2f}" for r in double) + " GiB each", flush=True)
    return rows


def hub_stream_rows() -> list:
    rows = []
    for samples in SIZES:
        for workers in ((0, 1, 2) if samples == SIZES[0] else (0,)):
            row = {"train_images": samples, "workers": workers, "image_size": 224}
            for path, flag in (("hub stream", HUB_STREAM), ("streamed", "no")):
                result = child(["load", 224, samples, flag, workers, READ_BATCHES])[0]
                row[path] = {key: result[key] for key in ("images", "peak_bytes", "load_seconds",
                                                          "read_images_per_second")}
            rows.append(row)
            print(f"224 px, {row['hub stream']['images']} images, {workers} workers: --streaming peak "
                  f"{row['hub stream']['peak_bytes'] / 2 ** 30:.2f} GiB, "
                  f"{row['hub stream']['read_images_per_second']:,.0f} images/s; --data-in-memory no "
                  f"{row['streamed']['peak_bytes'] / 2 ** 30:.2f} GiB, "
                  f"{row['streamed']['read_images_per_second']:,.0f} images/s", flush=True)
    return rows


PEAK_OF = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
           "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024); sys.exit(code)")


def run_224(work: Path, data_flags=("--data-in-memory", "no")) -> dict:
    """The issue's short 224 px streamed run, in a wrapper process whose only child it is (its peak memory)."""
    command = [str(Path(sys.executable).parent / "lt-plugin"), "imp", "--model", "resnet18", "--dataset",
               "fashion-mnist", "--image-size", "224", "--levels", "0", "--epochs", "1", "--max-train-samples", "512",
               "--batch-size", "32", *data_flags, "--out", str(work / ("imp_224" + "_".join(data_flags)))]
    shutil.rmtree(command[-1], ignore_errors=True)  # a run folder left by an earlier run would only be read back
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK_OF, *command], capture_output=True, text=True,
                          env=dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1"))
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed:\n{done.stderr[-2000:]}")
    peak = int(next(line.split()[1] for line in done.stdout.splitlines() if line.startswith("PEAK ")))
    result = {"command": command[1:], "seconds": time.perf_counter() - started, "peak_bytes": peak}
    print(f"224 px run {' '.join(data_flags)}: peak {peak / 2 ** 30:.2f} GiB in {result['seconds']:.0f} s", flush=True)
    return result


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=120)
    for (name, _), style in zip(PATHS.items(), ("-", "--")):
        for image_size, color in zip(IMAGE_SIZES, ("C0", "C1", "C2")):
            rows = [r for r in report["memory"] if r["path"] == name and r["image_size"] == image_size]
            images = [r["images"] for r in rows]
            axes[0].plot(images, [r["peak_bytes"] / 2 ** 30 for r in rows], "o" + style, color=color,
                         label=f"{name}, {image_size} px")
            axes[1].plot(images, [r["load_seconds"] for r in rows], "o" + style, color=color,
                         label=f"{name}, {image_size} px")
    hub = [r for r in report.get("hub_stream", []) if r["workers"] == 0]
    axes[0].plot([r["hub stream"]["images"] for r in hub], [r["hub stream"]["peak_bytes"] / 2 ** 30 for r in hub],
                 "x:", color="C3", label="--streaming, 224 px")
    axes[0].set_title("peak memory (GiB)")
    axes[1].set_title("loading seconds")
    for ax in axes[:2]:
        ax.set_xlabel("images (train + val + test)")
        ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    ax = axes[2]
    rows = report["throughput"]
    labels = [f"{r['image_size']} px\n{r['workers']} workers" for r in rows]
    ax.bar(range(len(rows)), [r["stream_images_per_second"] for r in rows],
           label="streamed (--data-in-memory no), images/s")
    ax.plot(range(len(rows)), [r["train_step_images_per_second"] for r in rows], "k_", markersize=25,
            label="resnet18 training step, images/s")
    for r in report.get("hub_stream", []):
        if r["train_images"] == SIZES[0]:
            position = next(i for i, row in enumerate(rows)
                            if (row["image_size"], row["workers"]) == (224, r["workers"]))
            ax.plot(position, r["hub stream"]["read_images_per_second"], "rx", markersize=8,
                    label="--streaming, images/s" if r["workers"] == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_title("streaming against what training consumes")
    ax.legend(fontsize=7)
    fig.suptitle(f"Fashion-MNIST loading, {os.cpu_count()} CPUs")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench-data")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    args = parser.parse_args()
    import torch
    from provenance import provenance
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = set(args.sections) != set(SECTIONS) and (out / "data_loading.json").exists()
    report = json.loads((out / "data_loading.json").read_text()) if partial else {}
    report.update({"benchmark": "data_loading", "torch": torch.__version__, "cpus": os.cpu_count(),
                   "machine": platform.machine(), "read_batches": READ_BATCHES})
    for section in args.sections:
        report[section] = SECTIONS[section](Path(args.work))
    # A partial rerun leaves the file's provenance (its oldest sections') and records the sections it made.
    report.setdefault("sections_provenance", {}).update({section: provenance() for section in args.sections})
    if not partial:
        report["provenance"] = provenance()
    (out / "data_loading.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "data_loading.png")
    print(f"wrote {out / 'data_loading.json'} and {out / 'data_loading.png'}")


SECTIONS = {"memory": lambda work: memory_rows(), "throughput": lambda work: throughput_rows(),
            "processes": lambda work: processes_rows(), "run_224": run_224,
            "hub_stream": lambda work: hub_stream_rows(),
            "run_224_streaming": lambda work: run_224(work, ("--streaming",))}

if __name__ == "__main__":
    main()
