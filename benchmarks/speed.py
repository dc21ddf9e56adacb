"""The speed suite: lt_plugin against what users would otherwise use, ratios measured side by side in one run.

a. One training step (forward, backward, SGD step) of a weight ticket with its mask enforced as `fit` enforces it,
   against the dense step and against `torch.nn.utils.prune` (same model, batch, threads, data): interleaved rounds,
   medians. Target: within 2% of dense, not slower than torch.nn.utils.prune.
b. Channel IMP: the training step of each level's exported ticket (the densities of a 4-level run to 0.25) against
   the dense step, as a share, next to the level's share of the dense MACs; with a profile of the dense and the
   sparsest step by kind of operator, to show where time does not follow MACs. Target: time share within 1.3x of
   the MACs share.
c. Inference latency of an exported channel ticket against the dense model and the masked dense model, batch 1 and
   64, densities 0.5 and 0.25 (free channel counts and rounded to 8), next to the MACs ratio (the ceiling).
d. Lottery Pools: the fast default against `--protocol reference` on the same IMP run (Fashion-MNIST, 8,000 training
   images, 1,800 validation images, 10,000 test images so 0.01 points resolve). Target: at least 5x faster, within
   0.2 points. The ratio grows with the training set, over which the reference recomputes BatchNorm statistics for
   every blend.
e. Early-Bird against one-shot pruning (`--baseline`): total training MACs and seconds to a retrained ticket.
Also the cost growth (benchmarks/cost_growth.py's plot): wall time against model MACs and levels/candidates.

Writes benchmarks/results/speed.json and speed.png and prints the README's tables.

    make bench-speed        # = python benchmarks/speed.py && python benchmarks/cost_growth.py
"""

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as torch_prune
import torch_pruning as tp
from timm.optim import create_optimizer_v2
from torch.profiler import ProfilerActivity, profile

import lt_plugin
from lt_plugin.cli import main as cli_main
from lt_plugin.deploy import interleaved_medians

sys.path.insert(0, str(Path(__file__).parent))
from lottery_pools_protocols import compare  # noqa: E402  (a script next to this one)
from provenance import provenance  # noqa: E402

MODEL, IMAGE_SIZE, BATCH = "resnet18", 32, 128
REPEATS = 3
CHANNEL_DENSITIES = [0.25 ** (level / 4) for level in range(1, 5)]  # a 4-level channel IMP run to 0.25
POOLS_IMP = ["imp", "--model", "resnet18", "--dataset", "fashion-mnist", "--image-size", "32",
             "--max-train-samples", "8000", "--val-fraction", "0.03", "--epochs", "2", "--levels", "2",
             "--target-density", "0.25", "--rewind", "8it"]
EARLY_BIRD = ["early-bird", "--model", "resnet18", "--dataset", "digits", "--epochs", "10", "--ratios", "0.3", "0.5",
              "--baseline"]


def _batch(batch=BATCH, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator),
            torch.randint(0, 10, (batch,), generator=generator))


def _step_fn(model, batch, after_step=None):
    """One training step as `fit` takes it (timm's SGD with momentum and weight decay), then `after_step`."""
    model.train()
    optimizer = create_optimizer_v2(model, "sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)
    inputs, targets = batch

    def step():
        F.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step()
    return step


def _dense():
    """The dense model every part measures, and its example input."""
    torch.manual_seed(0)
    return timm.create_model(MODEL, num_classes=10), torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)


def weight_ticket_step(rounds: int, density: float = 0.1) -> dict:
    dense, example = _dense()
    mask = lt_plugin.create_mask(dense, example, density, "weight")
    ticket = copy.deepcopy(dense)
    mask.apply(ticket)
    pruned = copy.deepcopy(dense)
    for name, keep in mask.tensors.items():
        module_name, _, parameter = name.rpartition(".")
        torch_prune.custom_from_mask(pruned.get_submodule(module_name), parameter, keep)
    batch = _batch()
    runs = {"dense": _step_fn(dense, batch), "lt_plugin": _step_fn(ticket, batch, mask.enforcer(ticket)),
            "torch_nn_utils_prune": _step_fn(pruned, batch)}
    # A 2% target is within one measurement's noise here (+-1.5%): three measurements, the median of their ratios.
    repeats = [interleaved_medians(runs, rounds, warmup=3) for _ in range(REPEATS)]
    seconds = {name: statistics.median(r[name] for r in repeats) for name in runs}
    kept = all(bool((p[~mask.tensors[n]] == 0).all()) for n, p in ticket.named_parameters() if n in mask.tensors)
    row = {"density": mask.density, "batch": BATCH, "rounds": rounds, "repeats": repeats, "seconds": seconds,
           "mask_held": kept,
           "lt_plugin_over_dense": statistics.median(r["lt_plugin"] / r["dense"] for r in repeats),
           "lt_plugin_over_torch_prune": statistics.median(r["lt_plugin"] / r["torch_nn_utils_prune"]
                                                           for r in repeats)}
    print(f"a. weight ticket step: dense {seconds['dense'] * 1e3:.0f} ms, lt_plugin {seconds['lt_plugin'] * 1e3:.0f} "
          f"ms (x{row['lt_plugin_over_dense']:.3f} of dense), torch.nn.utils.prune "
          f"{seconds['torch_nn_utils_prune'] * 1e3:.0f} ms", flush=True)
    return row


# Matched in this order against lower-case operator names (forward and autograd's backward nodes).
OPERATOR_KINDS = (("convolution", ("conv",)), ("normalisation", ("batch_norm", "batchnorm")),
                  ("optimizer", ("_foreach", "sgd")), ("pooling and linear", ("pool", "addmm", "linear", "mm")),
                  ("elementwise", ("relu", "threshold", "add", "mul", "copy_")))


def _profile(step, steps=3) -> dict:
    """Self CPU seconds of one step by kind of operator (the mean over `steps` profiled steps)."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    kinds = {kind: 0.0 for kind, _ in OPERATOR_KINDS} | {"other": 0.0}
    for event in prof.key_averages():
        name = event.key.lower()
        kind = next((kind for kind, keys in OPERATOR_KINDS if any(k in name for k in keys)), "other")
        kinds[kind] += event.self_cpu_time_total / 1e6 / steps
    return kinds


def _channel_tickets(dense, example, densities) -> list:
    """(target density, round_to, mask, exported ticket, MACs share of dense) per density, free and rounded to 8."""
    dense_macs, _ = tp.utils.count_ops_and_params(dense.eval(), example)
    tickets = []
    for density in densities:
        for round_to in (None, 8):
            mask = lt_plugin.create_mask(dense, example, density, "channel", round_to=round_to)
            ticket = lt_plugin.export(dense, mask, example).eval()
            macs, _ = tp.utils.count_ops_and_params(ticket, example)
            tickets.append((density, round_to, mask, ticket, macs / dense_macs))
    return tickets


def channel_levels(rounds: int) -> dict:
    dense, example = _dense()
    batch = _batch()
    tickets = {(density, round_to): (ticket, mask.density, share)
               for density, round_to, mask, ticket, share in _channel_tickets(dense, example, CHANNEL_DENSITIES)}
    runs = {"dense": _step_fn(copy.deepcopy(dense), batch)}
    runs.update({f"{d:.3f}/{r}": _step_fn(t, batch) for (d, r), (t, _, _) in tickets.items()})
    seconds = interleaved_medians(runs, rounds, warmup=2)
    rows = []
    for (density, round_to), (_, kept, macs_share) in tickets.items():
        time_share = seconds[f"{density:.3f}/{round_to}"] / seconds["dense"]
        rows.append({"target_density": density, "round_to": round_to, "density": kept, "macs_share": macs_share,
                     "time_share": time_share, "time_over_macs": time_share / macs_share})
        print(f"b. channel density {kept:.3f} round-to {round_to or '-'}: MACs share {macs_share:.3f}, time share "
              f"{time_share:.3f} (x{time_share / macs_share:.2f})", flush=True)
    sparsest = tickets[(CHANNEL_DENSITIES[-1], None)][0]
    profiles = {"dense": _profile(_step_fn(copy.deepcopy(dense), batch)),
                f"density {CHANNEL_DENSITIES[-1]:.2f}": _profile(_step_fn(sparsest, batch))}
    return {"batch": BATCH, "rounds": rounds, "dense_step_seconds": seconds["dense"], "rows": rows,
            "profile_seconds": profiles}


def inference_latency(rounds: int) -> dict:
    dense, example = _dense()
    rows = []
    for density, round_to, mask, ticket, share in _channel_tickets(dense, example, (0.5, 0.25)):
        masked = copy.deepcopy(dense)
        mask.apply(masked)
        row = {"target_density": density, "round_to": round_to, "density": mask.density, "macs_ratio": 1 / share}
        for batch in (1, 64):
            inputs = torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(batch))
            with torch.inference_mode():
                medians = interleaved_medians({name: (lambda m=m: m(inputs)) for name, m in
                                               (("dense", dense), ("masked", masked), ("exported", ticket))},
                                              rounds, warmup=5)
            for name, value in medians.items():
                row[f"{name}_ms_batch_{batch}"] = value * 1e3
            row[f"speedup_batch_{batch}"] = medians["dense"] / medians["exported"]
            row[f"masked_speedup_batch_{batch}"] = medians["dense"] / medians["masked"]
        rows.append(row)
        print(f"c. density {mask.density:.3f} round-to {round_to or '-'}: exported x{row['speedup_batch_1']:.2f} "
              f"(b1) x{row['speedup_batch_64']:.2f} (b64), masked x{row['masked_speedup_batch_64']:.2f}, MACs "
              f"x{row['macs_ratio']:.2f}", flush=True)
    return {"rounds": rounds, "rows": rows}


def pools_protocols(work: Path) -> dict:
    run = work / "pools_imp"
    assert cli_main([*POOLS_IMP, "--out", str(run)]) == 0
    entry = compare(run, ["1", "2"])
    print(f"d. Lottery Pools: fast x{entry['speedup']:.1f} faster than reference; pooled test, fast - reference: "
          + ", ".join(f"{(r['pooled_test_accuracy_fast'] - r['pooled_test_accuracy_reference']) * 100:+.2f}"
                      for r in entry["rows"]) + " points", flush=True)
    return {"imp_command": POOLS_IMP, **entry}


def early_bird(work: Path) -> dict:
    out = work / "early_bird"
    assert cli_main([*EARLY_BIRD, "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    for r in rows:
        r.pop("distances", None)
        print(f"e. Early-Bird ratio {r['ratio']:g}: training MACs saved x{r['train_macs_saved']:.2f}, seconds saved "
              f"x{r['train_seconds_saved']:.2f}", flush=True)
    return {"command": EARLY_BIRD, "rows": rows}


def tables(report: dict) -> str:
    a = report["a_weight_ticket_step"]
    s = a["seconds"]
    out = ["| weight ticket step (density %.2f, batch %d) | ms | of dense |" % (a["density"], a["batch"]),
           "|---|---|---|"]
    for name, label in (("dense", "dense"), ("lt_plugin", "lt_plugin (mask enforced after the step)"),
                        ("torch_nn_utils_prune", "torch.nn.utils.prune (mask in every forward)")):
        ratio = statistics.median(r[name] / r["dense"] for r in a["repeats"])
        out.append(f"| {label} | {s[name] * 1e3:.1f} | x{ratio:.3f} |")
    b = report["b_channel_levels"]
    out += ["", "| channel level density | round-to | MACs share | training time share | time / MACs |",
            "|---|---|---|---|---|"]
    for r in b["rows"]:
        out.append(f"| {r['density']:.3f} | {r['round_to'] or '-'} | {r['macs_share']:.3f} | {r['time_share']:.3f} | "
                   f"x{r['time_over_macs']:.2f} |")
    profiles = b["profile_seconds"]
    names = list(profiles)
    out += ["", "| operators (self CPU ms per step) | " + " | ".join(names) + " | share |", "|---|---|---|---|"]
    for kind in profiles[names[0]]:
        dense_ms, sparse_ms = profiles[names[0]][kind] * 1e3, profiles[names[1]][kind] * 1e3
        out.append(f"| {kind} | {dense_ms:.1f} | {sparse_ms:.1f} | {sparse_ms / dense_ms if dense_ms else 0:.2f} |")
    c = report["c_inference_latency"]
    out += ["", "| density | round-to | MACs ratio | dense ms b1 | masked ms b1 | exported ms b1 | exported speed-up "
            "b1 | dense ms b64 | masked ms b64 | exported ms b64 | exported speed-up b64 |", "|---" * 11 + "|"]
    for r in c["rows"]:
        out.append(f"| {r['density']:.3f} | {r['round_to'] or '-'} | x{r['macs_ratio']:.2f} | "
                   f"{r['dense_ms_batch_1']:.2f} | {r['masked_ms_batch_1']:.2f} | {r['exported_ms_batch_1']:.2f} | "
                   f"x{r['speedup_batch_1']:.2f} | {r['dense_ms_batch_64']:.1f} | {r['masked_ms_batch_64']:.1f} | "
                   f"{r['exported_ms_batch_64']:.1f} | x{r['speedup_batch_64']:.2f} |")
    d = report["d_lottery_pools_protocols"]
    out += ["", "| Lottery Pools target | density | fast s | reference s | speed-up | fast val passes | reference val "
            "passes | fast test | reference test | difference |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        out.append(f"| level {r['level']} | {r['density']:.3f} | {r['search_seconds_fast']:.1f} | "
                   f"{r['search_seconds_reference']:.1f} | "
                   f"x{r['search_seconds_reference'] / r['search_seconds_fast']:.1f} | {r['val_passes_fast']} | "
                   f"{r['val_passes_reference']} | {r['pooled_test_accuracy_fast']:.2%} | "
                   f"{r['pooled_test_accuracy_reference']:.2%} | "
                   f"{(r['pooled_test_accuracy_fast'] - r['pooled_test_accuracy_reference']) * 100:+.2f} |")
    e = report["e_early_bird"]
    out += ["", "| Early-Bird ratio | emerged (epoch of 10) | test | one-shot test | training MACs | one-shot | "
            "saved | seconds | one-shot | saved |", "|---" * 10 + "|"]
    for r in e["rows"]:
        out.append(f"| {r['ratio']:g} | {r['eb_epoch']} | {r['test_accuracy']:.2%} | "
                   f"{r['baseline_test_accuracy']:.2%} | "
                   f"{r['train_macs']:.3g} | {r['baseline_train_macs']:.3g} | x{r['train_macs_saved']:.2f} | "
                   f"{r['train_seconds']:.0f} | {r['baseline_train_seconds']:.0f} | x{r['train_seconds_saved']:.2f} |")
    return "\n".join(out)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), dpi=110)
    a = report["a_weight_ticket_step"]["seconds"]
    ax = axes[0, 0]
    ax.bar(["dense", "lt_plugin\nticket", "torch.nn.utils\n.prune"],
           [a["dense"] * 1e3, a["lt_plugin"] * 1e3, a["torch_nn_utils_prune"] * 1e3], color=["gray", "C0", "C1"])
    ax.set_title("a. weight ticket training step, ms")
    b = report["b_channel_levels"]["rows"]
    ax = axes[0, 1]
    for round_to, marker in ((None, "o"), (8, "s")):
        rows = [r for r in b if r["round_to"] == round_to]
        ax.plot([r["macs_share"] for r in rows], [r["time_share"] for r in rows], marker + "-",
                label=f"round-to {round_to or 'none'}")
    ax.plot([0, 1], [0, 1], "k--", label="time = MACs")
    ax.plot([0, 1 / 1.3], [0, 1], "k:", label="target: 1.3x")
    ax.set_xlabel("MACs share of dense")
    ax.set_ylabel("training time share of dense")
    ax.set_title("b. channel levels: time against MACs")
    ax.legend(fontsize=7)
    c = report["c_inference_latency"]["rows"]
    ax = axes[0, 2]
    labels = [f"{r['target_density']:g}/{r['round_to'] or '-'}" for r in c]
    x = range(len(c))
    for offset, key, label in ((-0.3, "speedup_batch_1", "exported b1"), (-0.1, "speedup_batch_64", "exported b64"),
                               (0.1, "masked_speedup_batch_64", "masked b64"), (0.3, "macs_ratio", "MACs ratio")):
        ax.bar([i + offset for i in x], [r[key] for r in c], width=0.2, label=label)
    ax.set_xticks(list(x), [f"density {lb}" for lb in labels], fontsize=7)
    ax.set_title("c. inference speed-up over dense")
    ax.legend(fontsize=7)
    d = report["d_lottery_pools_protocols"]["rows"]
    ax = axes[1, 0]
    x = range(len(d))
    ax.bar([i - 0.2 for i in x], [r["search_seconds_fast"] for r in d], width=0.4, label="fast")
    ax.bar([i + 0.2 for i in x], [r["search_seconds_reference"] for r in d], width=0.4, label="reference")
    ax.set_xticks(list(x), [f"level {r['level']}" for r in d])
    ax.set_title("d. Lottery Pools search seconds per target")
    ax.legend(fontsize=7)
    e = report["e_early_bird"]["rows"]
    for ax, key, title in ((axes[1, 1], "train_macs", "e. training MACs to a retrained ticket"),
                           (axes[1, 2], "train_seconds", "e. training seconds to a retrained ticket")):
        x = range(len(e))
        ax.bar([i - 0.2 for i in x], [r[key] for r in e], width=0.4, label="Early-Bird")
        ax.bar([i + 0.2 for i in x], [r[f"baseline_{key}"] for r in e], width=0.4, label="one-shot")
        ax.set_xticks(list(x), [f"ratio {r['ratio']:g}" for r in e])
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"lt_plugin speed ({MODEL}, {IMAGE_SIZE}x{IMAGE_SIZE}, {torch.get_num_threads()} threads, "
                 f"torch {torch.__version__})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench-speed", help="run folders of parts d and e")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds of parts a-c")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    started = time.perf_counter()
    report = {"benchmark": "speed", "lt_plugin": lt_plugin.__version__, "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
              "model": MODEL, "image_size": IMAGE_SIZE}
    report["a_weight_ticket_step"] = weight_ticket_step(args.rounds)
    report["b_channel_levels"] = channel_levels(args.rounds)
    report["c_inference_latency"] = inference_latency(args.rounds * 2)
    report["d_lottery_pools_protocols"] = pools_protocols(work)
    report["e_early_bird"] = early_bird(work)
    report["wall_seconds"] = time.perf_counter() - started
    report["provenance"] = provenance()
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out / "speed.png")
    print("\n" + tables(report))
    print(f"\nwrote {out / 'speed.json'} and {out / 'speed.png'} in {report['wall_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
