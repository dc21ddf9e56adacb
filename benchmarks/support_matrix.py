"""What lt_plugin can prune: `lt-plugin check` over popular timm families, as a table for the docs.

Each model goes through `lt_plugin.check.check_model`, what `lt-plugin check MODEL --image-size 32` runs: the model
is built as a run builds it, traced by Torch-Pruning, channel masks at densities 0.75, 0.5 and 0.25 are exported,
and the exported model's outputs are compared with the masked dense model's. A model lt_plugin cannot prune is
refused with the one-line message a run would give (the first line of the UserError, which the CLI prints after
"lt-plugin: error: "). Passing, refusing and each model's seconds are what a user sees before starting a run, so
this table is the honest support matrix. Writes benchmarks/results/support_matrix.json and docs/support_matrix.md
(run a subset with --docs elsewhere, not to overwrite the page of the full list).

    python benchmarks/support_matrix.py [--models resnet18 caformer_s18] [--image-size 32] [--out DIR] [--docs FILE]
"""

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import timm
import torch
import torch_pruning as tp

import lt_plugin
from lt_plugin.check import DENSITIES, NUM_CLASSES, check_model
from lt_plugin.errors import UserError, first_line
from lt_plugin.experiment import Experiment
from provenance import provenance

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # model: family
    "resnet18": "ResNet", "resnet50": "ResNet", "resnext50_32x4d": "ResNeXt", "wide_resnet50_2": "Wide ResNet",
    "densenet121": "DenseNet", "efficientnet_b0": "EfficientNet", "mobilenetv2_100": "MobileNetV2",
    "mobilenetv3_small_100": "MobileNetV3", "mobilenetv4_conv_small": "MobileNetV4", "regnetx_002": "RegNetX",
    "regnety_002": "RegNetY", "convnext_atto": "ConvNeXt", "convnextv2_atto": "ConvNeXt V2",
    "ghostnet_100": "GhostNet", "repvgg_a0": "RepVGG", "vgg11": "VGG", "dla34": "DLA", "hrnet_w18_small": "HRNet",
    "inception_v3": "Inception", "vit_tiny_patch16_224": "ViT", "deit_tiny_patch16_224": "DeiT",
    "swin_tiny_patch4_window7_224": "Swin", "mobilevit_xxs": "MobileViT", "poolformer_s12": "PoolFormer (MetaFormer)",
    "caformer_s18": "CAFormer (MetaFormer)", "levit_128s": "LeViT", "efficientformer_l1": "EfficientFormer",
    "mixer_s16_224": "MLP-Mixer", "cifar_resnet20": "open_lth CIFAR ResNet (lt_plugin)",
    "cifar_resnet18": "Lottery Pools CIFAR ResNet-18 (lt_plugin)",
}
# Models whose smallest input is above 32 pixels are checked at the side they need (`lt-plugin check inception_v3
# --image-size 32` says "inception_v3 needs inputs of at least 75x75 pixels"), so that the table says whether they
# can be pruned at all.
SMALLEST_SIDE = {"inception_v3": 75, "efficientformer_l1": 193}


def output_scale(model: str, size: int) -> float:
    """The largest |output| of the dense model on check_model's inputs: the scale a difference is read against
    (randomly initialised, Inception outputs logits near 1e8, where float rounding alone differs by units)."""
    experiment = Experiment(model=model, image_size=size)
    dense = experiment.create_model(NUM_CLASSES, seed=0).eval()
    inputs = torch.randn(2, *experiment.example_inputs().shape[1:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return dense(inputs).abs().max().item()


def measure(model: str, image_size: int) -> dict:
    """One row: what `lt-plugin check` reports of `model`, or the one-line reason it refuses it."""
    size = max(image_size, SMALLEST_SIDE.get(model, 0))
    row = {"model": model, "family": MODELS.get(model, ""), "image_size": size}
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():  # timm's and Torch-Pruning's notices would bury the progress lines
            warnings.simplefilter("ignore")
            report = check_model(model, image_size=size)
    except UserError as exc:
        row.update(passed=False, reason=first_line(exc), seconds=time.perf_counter() - started)
        print(f"{model:30s} refused in {row['seconds']:5.1f} s: {row['reason']}", flush=True)
        return row
    seconds = time.perf_counter() - started
    rows = report["rows"]
    row.update(passed=True, reason=None, seconds=seconds, rows=rows, densities=[r["density"] for r in rows],
               macs_at_lowest_density=rows[-1]["macs"], max_difference=max(r["difference"] for r in rows),
               output_scale=output_scale(model, size), layer_norm=report["layer_norm"],
               unpruned_layers=len(report["unpruned"]), classifier=report["classifier"])
    print(f"{model:30s} passed  in {row['seconds']:5.1f} s: densities "
          + " ".join(f"{d:.3f}" for d in row["densities"])
          + f", MACs {row['macs_at_lowest_density']:.3f} of dense, max |difference| {row['max_difference']:.1e} "
          f"(outputs up to {row['output_scale']:.1e})",
          flush=True)
    return row


def markdown(result: dict) -> str:
    """The docs page: how the table was made and how to rerun it, then one line per model."""
    densities = ", ".join(f"{d:g}" for d in result["target_densities"])
    lines = [
        "# Support matrix: what lt_plugin can prune",
        "",
        f"Made by `python benchmarks/support_matrix.py` (lt_plugin {result['lt_plugin']}, timm {result['timm']}, "
        f"Torch-Pruning {result['torch_pruning']}, torch {result['torch']}; {result['total_seconds']:.0f} s on "
        f"{result['threads']} CPU threads). Each model went through `lt-plugin check MODEL --image-size "
        f"{result['image_size']}`, in process: built as a run builds it (10 classes), traced by Torch-Pruning, "
        f"channel masks at target densities {densities} exported, and the exported model's outputs compared with "
        "the masked dense model's on random inputs. A refused model gives the one-line reason a run would. Rerun "
        "it after upgrading timm or Torch-Pruning; `--models` checks a subset (with `--docs` elsewhere, not to "
        "overwrite this page), `--image-size` another input side; the numbers are in "
        "`benchmarks/results/support_matrix.json`.",
        "",
        "Densities are the channel densities reached, MACs those of the exported ticket at the lowest density as a "
        "fraction of the dense model's, and the difference the largest |masked - exported| output over the three "
        "masks, to be read against the largest |output| of the dense model (randomly initialised, a deep network's "
        "outputs can be huge). BatchNorm networks agree to float precision; LayerNorm/GroupNorm "
        "networks (marked LN) differ by design, as the norm's statistics count the zeroed channels: the exported "
        "model is the ticket a run trains. Seconds are each check's wall time, on CPUs shared with other jobs."
        + "".join(f" {row['model']} was checked at {row['image_size']}x{row['image_size']}, the smallest input it "
                  "takes." for row in result["rows"] if row["image_size"] != result["image_size"]),
        "",
        "| model | family | input | channel tickets | densities | MACs at lowest density | max \\|difference\\| "
        "| max \\|output\\| | seconds | reason refused |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        if row["passed"]:
            cells = ["yes", " / ".join(f"{d:.3f}" for d in row["densities"]), f"{row['macs_at_lowest_density']:.3f}",
                     f"{row['max_difference']:.1e}" + (" (LN)" if row["layer_norm"] else ""),
                     f"{row['output_scale']:.1e}", ""]
        else:
            cells = ["no", "", "", "", "", row["reason"].replace("|", "\\|")]
        cells.insert(5, f"{row['seconds']:.1f}")
        lines.append(f"| {row['model']} | {row['family']} | {row['image_size']} | " + " | ".join(cells) + " |")
    passed = sum(row["passed"] for row in result["rows"])
    lines += ["", f"{passed} of {len(result['rows'])} models give channel tickets.", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="timm model names (default: the list)")
    parser.add_argument("--image-size", type=int, default=32, help="side of the square inputs (default: 32)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the JSON")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "support_matrix.md"), help="the Markdown page")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [measure(model, args.image_size) for model in args.models]
    result = {"benchmark": "support_matrix", "image_size": args.image_size, "target_densities": list(DENSITIES),
              "lt_plugin": lt_plugin.__version__, "timm": timm.__version__, "torch_pruning": tp.__version__,
              "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
              "total_seconds": time.perf_counter() - started, "rows": rows, "provenance": provenance()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "support_matrix.json").write_text(json.dumps(result, indent=2) + "\n")
    docs = Path(args.docs)
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(markdown(result))
    print(f"{sum(r['passed'] for r in rows)} of {len(rows)} passed in {result['total_seconds']:.0f} s; "
          f"wrote {out / 'support_matrix.json'} and {docs}")


if __name__ == "__main__":
    main()
