"""Is a GPU kept busy? `fit`'s training throughput against the same model on batches already on the GPU, in one run.

Parts (each measured side by side in this one run; the machine's absolute speed drifts, ratios less):
  a. resnet50 at 224 px in bf16, dense: images/s through `fit` (8-bit pixels from host memory, pinned, copied
     without blocking, normalised on the GPU; the mask, schedule and checks of a real run) against a loop over
     batches already normalised on the GPU (the ceiling the input pipeline can reach), with the GPU's utilisation
     sampled by nvidia-smi during each timed window. Target: fit >= 0.9 of the GPU-resident rate.
  b. the same for an exported channel ticket (`--round-to 8`, --density of the weights), next to its MACs ratio.
     Target: the ticket's GPU-resident speed-up >= 0.8 of its MACs ratio.
  c. channels_last on and off for the dense model on resident batches (what `--channels-last auto` chooses).
  d. wall time per IMP level of resnet18 at 32 px on Fashion-MNIST (bf16), through the `imp` strategy.

    python benchmarks/gpu.py [--steps 60] [--batch-size 256] [--train-samples 20000] [--out benchmarks/results]

Without a CUDA GPU it prints one line and exits 0, writing nothing (`--smoke` runs every part on the CPU with a
tiny model and writes to a temporary folder: a check of the script, not a measurement).
"""

import argparse
import copy
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_pruning as tp

import lt_plugin
from lt_plugin.callbacks import Callback
from lt_plugin.experiment import Experiment
from lt_plugin.loaders import DeviceNormalize
from lt_plugin.train import TrainConfig, fit, make_accelerator
from provenance import provenance

WARMUP_STEPS = 10  # steps before a timed window: cuDNN autotuning, allocator growth, worker start-up


class StepClock(Callback):
    """Synchronised timestamps at two optimizer steps: images/s over the steps between them, nothing else timed."""

    def __init__(self, first: int, last: int, batch_size: int, utilisation):
        self.first, self.last, self.batch_size, self.utilisation = first, last, batch_size, utilisation
        self.started = self.seconds = None

    def after_optimizer_step(self, state):
        if state.step in (self.first, self.last):
            if state.accelerator.device.type == "cuda":
                torch.cuda.synchronize()
            if state.step == self.first:
                self.started = time.perf_counter()
                self.utilisation.start()
            else:
                self.seconds = time.perf_counter() - self.started
                self.utilisation.stop()
        return None

    @property
    def images_per_second(self) -> float:
        return (self.last - self.first) * self.batch_size / self.seconds


class Utilisation:
    """nvidia-smi's GPU utilisation (percent of time a kernel ran), sampled every 0.2 s between start and stop."""

    def __init__(self, enabled: bool):
        self.enabled, self.samples, self._stop = enabled and shutil.which("nvidia-smi") is not None, [], None

    def start(self):
        if not self.enabled:
            return
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "--id=0"], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip().isdigit():
                self.samples.append(int(out.stdout.strip()))
            self._stop.wait(0.2)

    def stop(self):
        if self._stop is not None:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self):
        return statistics.mean(self.samples) if self.samples else None


def through_fit(model, data, cfg, steps, batch_size, run_dir, device_is_gpu):
    """(images/s, mean GPU utilisation) of `fit` over steps WARMUP_STEPS..steps."""
    utilisation = Utilisation(device_is_gpu)
    clock = StepClock(WARMUP_STEPS, steps, batch_size, utilisation)
    fit(model, data.train, data.val, cfg, run_dir, accelerator=make_accelerator(cfg), callbacks=[clock], desc="fit")
    return clock.images_per_second, utilisation.mean


def gpu_resident(model, data, device, steps, batch_size, channels_last, precision):
    """(images/s, mean GPU utilisation) of plain training steps on batches already normalised on the device."""
    normalize = DeviceNormalize(data.train, device, channels_last)
    count = min(len(data.train) // batch_size, 8)
    batches = [(normalize(data.train.pixel_batch(range(i * batch_size, (i + 1) * batch_size))[0].to(device)),
                data.train.labels[i * batch_size:(i + 1) * batch_size].to(device)) for i in range(count)]
    model = model.to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    utilisation = Utilisation(device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in range(steps):
        if step == WARMUP_STEPS:
            sync()
            started = time.perf_counter()
            utilisation.start()
        inputs, targets = batches[step % count]
        with autocast:
            loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - started
    utilisation.stop()
    return (steps - WARMUP_STEPS) * batch_size / seconds, utilisation.mean


def imp_levels(args, out_dir):
    """Wall seconds of each level of a 2-level IMP run of resnet18 at 32 px (one epoch per level)."""
    started, times = time.perf_counter(), []
    options = dict(model=args.imp_model, dataset=args.dataset, image_size=32, epochs=1, levels=2,
                   batch_size=args.batch_size, lr=0.05, max_train_samples=args.train_samples,
                   mixed_precision=args.precision)
    results = lt_plugin.create_strategy("imp", **options).run(out_dir)
    total = time.perf_counter() - started
    times = [r["train_seconds"] for r in results]
    return {"model": args.imp_model, "levels": len(results), "train_seconds": times, "total_seconds": total,
            "densities": [r["density"] for r in results], "test_accuracy": [r["test_accuracy"] for r in results]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--imp-model", default="resnet18")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per measurement (the first "
                        f"{WARMUP_STEPS} untimed)")
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--density", type=float, default=0.5, help="weight density of the channel ticket (part b)")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU with a tiny model and data, "
                        "written to a temporary folder: checks the script, measures nothing")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    if args.smoke:
        args.model = args.imp_model = "test_resnet"
        args.dataset, args.image_size, args.batch_size, args.steps, args.train_samples = "digits", 32, 32, 14, 512
        args.out = tempfile.mkdtemp(prefix="gpu-smoke-")
    elif not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA GPU on this machine; nothing measured (run it where there is one; --smoke "
              "checks the script on the CPU)")
        return 0
    device = torch.device("cuda" if not args.smoke else "cpu")
    out = Path(args.out)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    experiment = Experiment(model=args.model, dataset=args.dataset, image_size=args.image_size,
                            max_train_samples=max(args.train_samples, args.batch_size * args.steps))
    data = experiment.load_data()
    example = experiment.example_inputs()
    dense = experiment.create_model(data.num_classes, seed=0)
    mask = lt_plugin.create_mask(dense, example, args.density, "channel", round_to=8)
    ticket = lt_plugin.export(dense, mask, example)
    dense_macs, _ = tp.utils.count_ops_and_params(dense, example)
    ticket_macs, _ = tp.utils.count_ops_and_params(ticket, example)
    # One epoch over enough images for --steps steps; the schedule is constant so every step costs the same.
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, eval_batch_size=args.batch_size, lr=0.01,
                      sched="constant", mixed_precision=args.precision)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke)",
              "torch": torch.__version__, "python": platform.python_version(), "model": args.model,
              "image_size": args.image_size, "batch_size": args.batch_size, "precision": args.precision,
              "timed_steps": args.steps - WARMUP_STEPS, "num_workers": None, "macs_ratio": dense_macs / ticket_macs,
              "ticket_density": mask.density, "provenance": provenance()}
    for name, model in (("dense", dense), ("ticket", ticket)):
        resident, resident_util = gpu_resident(copy.deepcopy(model), data, device, args.steps, args.batch_size,
                                               device.type == "cuda", args.precision)
        through, through_util = through_fit(copy.deepcopy(model), data, cfg, args.steps, args.batch_size, work / name,
                                            device.type == "cuda")
        report[name] = {"resident_images_per_second": resident, "fit_images_per_second": through,
                        "fit_efficiency": through / resident, "resident_gpu_utilisation": resident_util,
                        "fit_gpu_utilisation": through_util}
        print(f"{name:7} resident {resident:8.0f} img/s   fit {through:8.0f} img/s   x{through / resident:.2f}")
    report["num_workers"] = lt_plugin.loaders.default_num_workers(device)
    report["ticket_speedup"] = (report["ticket"]["resident_images_per_second"]
                                / report["dense"]["resident_images_per_second"])
    report["speedup_share_of_macs_ratio"] = report["ticket_speedup"] / report["macs_ratio"]
    layouts = {}
    for channels_last in (True, False):
        layouts["channels_last" if channels_last else "contiguous"] = gpu_resident(
            copy.deepcopy(dense), data, device, args.steps, args.batch_size, channels_last, args.precision)[0]
    report["dense_memory_format_images_per_second"] = layouts
    report["imp"] = imp_levels(args, work / "imp")
    report["targets"] = {"fit_efficiency_dense >= 0.9": report["dense"]["fit_efficiency"] >= 0.9,
                         "speedup_share_of_macs_ratio >= 0.8": report["speedup_share_of_macs_ratio"] >= 0.8}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, out / "gpu.png")
    print(f"ticket: MACs x{report['macs_ratio']:.2f}, speed-up x{report['ticket_speedup']:.2f} "
          f"({report['speedup_share_of_macs_ratio']:.2f} of the MACs ratio); channels_last "
          f"{layouts['channels_last']:.0f} vs contiguous {layouts['contiguous']:.0f} img/s; IMP levels "
          f"{', '.join(f'{s:.1f}' for s in report['imp']['train_seconds'])} s")
    print(f"wrote {out / 'gpu.json'} and {out / 'gpu.png'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _plot(report, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["dense", "ticket"]
    width = 0.38
    for offset, (key, label) in enumerate((("resident_images_per_second", "batches already on the GPU"),
                                           ("fit_images_per_second", "through fit"))):
        left.bar([i + offset * width for i in range(2)], [report[n][key] for n in names], width, label=label)
    left.set_xticks([i + width / 2 for i in range(2)], [f"dense\n{report['model']}",
                                                        f"ticket (density {report['ticket_density']:.2f})"])
    left.set_ylabel("training images/s")
    left.set_title(f"{report['device']}, {report['image_size']} px, {report['precision']}")
    left.legend()
    right.bar(["MACs ratio", "speed-up"], [report["macs_ratio"], report["ticket_speedup"]])
    right.set_title("exported channel ticket against dense")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
