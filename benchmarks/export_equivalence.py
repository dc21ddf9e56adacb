"""Masked against exported channel tickets across the support matrix: output difference, MACs, parameters.

For each model a channel mask at the given density is built with random (not just initial) norm scales, then the
masked dense model and its physical export run on the same inputs. BatchNorm networks should agree to float
precision; LayerNorm networks differ because LayerNorm's statistics count the zeroed channels. Writes JSON and a PNG
to benchmarks/results/.

    python benchmarks/export_equivalence.py [--density 0.25] [--image-size 32]
"""

import argparse
import copy
import json
import time
from pathlib import Path

import timm
import torch
import torch_pruning as tp

import lt_plugin
from provenance import provenance

MODELS = [("resnet18", {}), ("resnet50", {}), ("vgg16_bn", {}), ("efficientnet_b0", {}),
          ("mobilenetv3_small_100", {}), ("regnetx_002", {}), ("convnext_atto", {}),
          ("deit_tiny_patch16_224", {"patch_size": 4})]


def randomise_norms(model):
    """Norm scales and layer scales away from their initial values, so that zeroed channels would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ("norm" in name or "bn" in name or name.endswith("gamma")):
                p.copy_(torch.rand_like(p) + 0.5)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    x = torch.randn(8, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, kwargs in MODELS:
        torch.manual_seed(0)
        if "img_size" not in kwargs and "patch_size" in kwargs:
            kwargs = {**kwargs, "img_size": args.image_size}
        model = timm.create_model(name, num_classes=10, **kwargs).eval()
        randomise_norms(model)
        started = time.perf_counter()
        mask = lt_plugin.create_mask(model, x[:1], args.density, granularity="channel")
        seconds = time.perf_counter() - started
        masked = mask.apply(copy.deepcopy(model)).eval()
        small = lt_plugin.export(model, mask, x[:1]).eval()
        with torch.no_grad():
            reference = masked(x)
            diff = (reference - small(x)).abs().max().item()
        dense_macs, dense_params = tp.utils.count_ops_and_params(model, x[:1])
        macs, params = tp.utils.count_ops_and_params(small, x[:1])
        norms = {type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__}
        row = {"model": name, "norms": sorted(norms), "density": mask.density, "max_abs_diff": diff,
               "output_scale": reference.abs().max().item(), "macs_fraction": macs / dense_macs,
               "params_fraction": params / dense_params, "mask_seconds": seconds}
        rows.append(row)
        print(f"{name:24s} density {row['density']:.3f}  max |masked - exported| {diff:.2e}  "
              f"MACs {row['macs_fraction']:.3f}  params {row['params_fraction']:.3f}  mask {seconds:.1f}s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_equivalence.json").write_text(json.dumps(
        {"benchmark": "export_equivalence", "image_size": args.image_size, "target_density": args.density,
         "rows": rows, "provenance": provenance()}, indent=2) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    names = [r["model"].replace("_patch16_224", "") for r in rows]
    values = [max(r["max_abs_diff"], 1e-16) for r in rows]
    colors = ["tab:orange" if any("LayerNorm" in n for n in r["norms"]) else "tab:blue" for r in rows]
    ax.bar(names, values, color=colors)
    ax.axhline(1e-4, color="gray", linestyle="--", label="1e-4")
    ax.set_yscale("log")
    ax.set_ylabel("max |masked - exported| output")
    ax.set_title(f"Channel tickets at density {args.density}: blue BatchNorm, orange LayerNorm")
    ax.tick_params(axis="x", rotation=45)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "export_equivalence.png")
    print(f"wrote {out / 'export_equivalence.json'} and {out / 'export_equivalence.png'}")


if __name__ == "__main__":
    main()
