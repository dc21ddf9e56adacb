"""Do channel tickets rounded to multiples of 8 or 16 run faster where they ship? Latency and accuracy, side by side.

Part 1, latency: for each model, density and --round-to, a channel mask is drawn on the dense model, exported
physically and to ONNX; `lt_plugin.deploy.latency_report` then times the ticket against the dense model in PyTorch and
in ONNX Runtime, in interleaved rounds (medians), at batch 1 and 64. The MACs limit (dense MACs / ticket MACs) is
what a latency speed-up would be if time followed MACs.
Part 2, accuracy: a short channel IMP run on the built-in digits per --round-to, to show what rounding costs.

    python benchmarks/deploy_latency.py [--models resnet18 mobilenetv3_large_100] [--rounds 20]
"""

import argparse
import json
import platform
import tempfile
from pathlib import Path

import timm
import torch

import lt_plugin
from lt_plugin.cli import main as cli_main
from lt_plugin.deploy import export_onnx, latency_report
from provenance import provenance


def latency_rows(model_name, image_size, densities, rounds_to, rounds, batches):
    torch.manual_seed(0)
    dense = timm.create_model(model_name, num_classes=10).eval()
    example = torch.zeros(1, 3, image_size, image_size)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        dense_onnx = Path(scratch) / "dense.onnx"
        export_onnx(dense, example, dense_onnx)
        for density in densities:
            for round_to in rounds_to:
                mask = lt_plugin.create_mask(dense, example, density, "channel", round_to=round_to)
                ticket = lt_plugin.export(dense, mask, example).eval()
                ticket_onnx = Path(scratch) / "ticket.onnx"
                export_onnx(ticket, example, ticket_onnx)
                report = latency_report(ticket, dense, example, batches=batches, rounds=rounds,
                                        onnx_files={"ticket": ticket_onnx, "dense": dense_onnx})
                row = {"model": model_name, "target_density": density, "round_to": round_to,
                       "density": mask.density, "macs_fraction": report["ticket_macs"] / report["dense_macs"],
                       "macs_limit": report["dense_macs"] / report["ticket_macs"]}
                for batch in batches:
                    for runtime in ("torch", "onnx"):
                        row[f"{runtime}_speedup_batch_{batch}"] = (report[f"{runtime}_dense_seconds_batch_{batch}"]
                                                                   / report[f"{runtime}_ticket_seconds_batch_{batch}"])
                        ticket_seconds = report[f"{runtime}_ticket_seconds_batch_{batch}"]
                        row[f"{runtime}_ticket_ms_batch_{batch}"] = ticket_seconds * 1e3
                rows.append(row)
                print(f"{model_name} density {mask.density:.3f} round-to {round_to or '-'}: MACs "
                      f"{row['macs_fraction']:.3f} (limit x{row['macs_limit']:.2f}), speed-up batch {batches[-1]}: "
                      f"torch x{row[f'torch_speedup_batch_{batches[-1]}']:.2f}, "
                      f"onnx x{row[f'onnx_speedup_batch_{batches[-1]}']:.2f}", flush=True)
    return rows


def accuracy_rows(rounds_to, density, work_dir):
    rows = []
    for round_to in rounds_to:
        out = Path(work_dir) / f"imp_round_{round_to or 'none'}"
        argv = ["imp", "--recipe", "demo", "--model", "resnet18", "--dataset", "digits", "--granularity", "channel",
                "--target-density", str(density), "--out", str(out)]
        if round_to:
            argv += ["--round-to", str(round_to)]
        assert cli_main(argv) == 0, argv
        for result in json.loads((out / "results.json").read_text()):
            rows.append({"round_to": round_to, "level": result["level"], "density": result["density"],
                         "macs": result["macs"], "test_accuracy": result["test_accuracy"]})
    return rows


def plot(rows, batch, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), dpi=120, squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        for round_to, marker in zip(sorted({r["round_to"] or 0 for r in mine}), "osd"):
            sel = [r for r in mine if (r["round_to"] or 0) == round_to]
            label = f"round-to {round_to}" if round_to else "free widths"
            ax.plot([r["density"] for r in sel], [r[f"onnx_speedup_batch_{batch}"] for r in sel], marker + "-",
                    label=f"{label}, ONNX Runtime")
            ax.plot([r["density"] for r in sel], [r[f"torch_speedup_batch_{batch}"] for r in sel], marker + ":",
                    label=f"{label}, PyTorch")
            ax.plot([r["density"] for r in sel], [r["macs_limit"] for r in sel], marker + "--", color="grey",
                    alpha=0.5, label=f"{label}, MACs limit")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("density (kept fraction of prunable weights)")
        ax.set_ylabel(f"speed-up over dense, batch {batch}")
        ax.set_title(f"{model}, CPU, {torch.get_num_threads()} threads")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenetv3_large_100"])
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.25, 0.1])
    parser.add_argument("--rounds-to", type=int, nargs="+", default=[0, 8, 16], help="0: free widths")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--accuracy-density", type=float, default=0.25)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    rounds_to = [r or None for r in args.rounds_to]
    batches = (1, 64)

    latency = [row for model in args.models
               for row in latency_rows(model, args.image_size, args.densities, rounds_to, args.rounds, batches)]
    with tempfile.TemporaryDirectory() as work_dir:
        accuracy = accuracy_rows(rounds_to, args.accuracy_density, work_dir)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "deploy_latency", "image_size": args.image_size, "batches": list(batches),
              "rounds": args.rounds, "warmup": 5, "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine(), "processor": platform.processor(),
              "latency": latency, "accuracy": accuracy, "provenance": provenance()}
    (out / "deploy_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(latency, batches[-1], out / "deploy_latency.png")
    print(f"wrote {out / 'deploy_latency.json'} and {out / 'deploy_latency.png'}")


if __name__ == "__main__":
    main()
