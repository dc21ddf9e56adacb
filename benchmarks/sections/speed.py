"""benchmarks/README.md's "Speed against what users would otherwise use" (benchmarks/results/speed.json); every ratio
is of two things timed in the same interleaved rounds."""

from __future__ import annotations

import statistics

from render import block, results, stale_note
from sections.common import command, early_bird_paper, minutes, percent, points, span, table, times


def report() -> dict:
    return results("speed")


def round_to(row: dict) -> str:
    return "-" if row["round_to"] is None else str(row["round_to"])


@block("speed.settings")
def settings() -> str:
    r = report()
    return (f"`benchmarks/results/speed.json` (`benchmarks/speed.py`: {r['model']} at {r['image_size']}x"
            f"{r['image_size']}, {r['torch_threads']} threads; every comparison in interleaved rounds, medians), made "
            f"on {r['provenance']['made']}; `speed.py` took {minutes(r['wall_seconds'])}.\n")


@block("speed.weight_ticket")
def weight_ticket() -> str:
    a = report()["a_weight_ticket_step"]
    names = {"dense": "dense", "lt_plugin": "lt_plugin (mask enforced after the step)",
             "torch_nn_utils_prune": "torch.nn.utils.prune (mask in every forward)"}
    rows = [[label, f"{1000 * a['seconds'][key]:.1f}",
             ", ".join(times(repeat[key] / repeat["dense"], 3) for repeat in a["repeats"])]
            for key, label in names.items()]
    return (f"**a. Training a weight ticket** (density {a['density']:.2f}, batch {a['batch']}; lt_plugin enforces the "
            "mask after each optimizer step, as `fit` does; `torch.nn.utils.prune` multiplies it in every forward; "
            f"{len(a['repeats'])} measurements of {a['rounds']} rounds each):\n\n"
            + table(["weight ticket step", "ms (median of the measurements)", "of dense, each measurement"], rows))


@block("speed.weight_ticket_claims")
def weight_ticket_claims() -> str:
    a = report()["a_weight_ticket_step"]
    over_prune = [r["lt_plugin"] / r["torch_nn_utils_prune"] for r in a["repeats"]]
    over_dense = [r["lt_plugin"] / r["dense"] for r in a["repeats"]]
    return (f"The lt_plugin step is {times(a['lt_plugin_over_dense'], 3)} of the dense step as the median of the "
            f"{len(a['repeats'])} measurements' ratios ({span(over_dense, lambda v: times(v, 3))}); the ratio of the "
            f"median times is {times(a['seconds']['lt_plugin'] / a['seconds']['dense'], 3)}. Against "
            f"`torch.nn.utils.prune` it is {times(a['lt_plugin_over_torch_prune'], 3)} "
            f"({span(over_prune, lambda v: times(v, 3))}: faster in "
            f"{sum(v < 1 for v in over_prune)} of {len(over_prune)} measurements).\n")


@block("speed.channel_levels")
def channel_levels() -> str:
    b = report()["b_channel_levels"]
    rows = [[f"{r['density']:.3f}", round_to(r), f"{r['macs_share']:.3f}", f"{r['time_share']:.3f}",
             times(r["time_over_macs"])] for r in b["rows"]]
    return (f"**b. Channel IMP: training time against MACs** (each level's exported ticket, batch {b['batch']}, "
            f"{b['rounds']} rounds, free channel counts and `--round-to 8`; time and MACs as shares of the dense "
            "model's):\n\n"
            + table(["channel level density", "round-to", "MACs share", "training time share", "time / MACs"], rows))


def profile_totals() -> tuple:
    profiles = report()["b_channel_levels"]["profile_seconds"]
    dense, sparse = profiles.values()
    return dense, sparse, sum(sparse.values()) / sum(dense.values())


@block("speed.channel_profile")
def channel_profile() -> str:
    b = report()["b_channel_levels"]
    rows = [r["time_over_macs"] for r in b["rows"]]
    dense, sparse, _ = profile_totals()
    sparse_name = list(b["profile_seconds"])[1]
    table_rows = [[kind, f"{1000 * dense[kind]:.1f}", f"{1000 * sparse[kind]:.1f}", f"{sparse[kind] / dense[kind]:.2f}"]
                  for kind in dense]
    return (f"Time falls {span(rows, times)} slower than MACs. Profiled (one step, dense against the {sparse_name} "
            "ticket, self CPU time by kind of operator):\n\n"
            + table(["operators (self CPU ms per step)", "dense", sparse_name, "share"], table_rows))


@block("speed.channel_profile_claims")
def channel_profile_claims() -> str:
    b = report()["b_channel_levels"]
    dense, sparse, profiled = profile_totals()
    sparsest = [r for r in b["rows"] if r["round_to"] is None][-1]
    free = {r["target_density"]: r for r in b["rows"] if r["round_to"] is None}
    rounded = {r["target_density"]: r for r in b["rows"] if r["round_to"] is not None}
    half_and_below = [t for t in free if t <= 0.5]
    others = sorted((k for k in dense if k != "convolution"), key=lambda k: sparse[k] / dense[k], reverse=True)
    return (f"The convolutions keep {percent(sparse['convolution'] / dense['convolution'], 0)} of their time for "
            f"{percent(sparsest['macs_share'], 0)} of the MACs: thinner convolutions run CPU kernels less "
            "efficiently. The other operators keep "
            + ", ".join(f"{percent(sparse[kind] / dense[kind], 0)} ({kind})" for kind in others)
            + f", and the profile sums to {percent(profiled, 0)} of dense where the clock says "
              f"{percent(sparsest['time_share'], 0)}: a per-step cost that no operator owns stays. None of this is "
              "lt_plugin's code: the exported ticket is a plain timm model. Rounding channel counts to 8 gives "
              f"{span([rounded[t]['time_over_macs'] for t in half_and_below], times)} instead of "
              f"{span([free[t]['time_over_macs'] for t in half_and_below], times)} at densities "
              f"{max(half_and_below):g} and below.\n")


@block("speed.channel_fit")
def channel_fit() -> str:
    levels = results("accuracy")["imp_channel"]
    dense = levels[0]
    pairs = ", ".join(f"{level['train_seconds'] / dense['train_seconds']:.2f} for {level['macs'] / dense['macs']:.2f}"
                      for level in levels[1:])
    return ("In a whole `fit` (the one-seed channel run of the accuracy suite, data and bookkeeping included) each "
            f"level's training time was {pairs} of dense against those MACs shares.\n")


@block("speed.inference")
def inference() -> str:
    c = report()["c_inference_latency"]
    def batch(r: dict, size: int, digits: int) -> list:
        return ([f"{r[f'{kind}_ms_batch_{size}']:.{digits}f}" for kind in ("dense", "masked", "exported")]
                + [times(r[f"speedup_batch_{size}"])])
    rows = [[f"{r['density']:.3f}", round_to(r), times(r["macs_ratio"])] + batch(r, 1, 2) + batch(r, 64, 1)
            for r in c["rows"]]
    return (f"**c. Inference: exported channel ticket against dense and the masked dense model**, PyTorch on CPU, "
            f"{c['rounds']} interleaved rounds:\n\n"
            + table(["density", "round-to", "MACs ratio", "dense ms b1", "masked ms b1", "exported ms b1",
                     "exported speed-up b1", "dense ms b64", "masked ms b64", "exported ms b64",
                     "exported speed-up b64"], rows))


@block("speed.inference_claims")
def inference_claims() -> str:
    rows = report()["c_inference_latency"]["rows"]
    share = [r[f"speedup_batch_{b}"] / r["macs_ratio"] for r in rows for b in (1, 64)]
    return (f"A masked model runs at {span([r['masked_speedup_batch_64'] for r in rows], times)} of the dense speed "
            f"at batch 64 and {span([r['masked_speedup_batch_1'] for r in rows], times)} at batch 1; the exported "
            f"ticket is {span([r['speedup_batch_64'] for r in rows], times)} faster at batch 64 and "
            f"{span([r['speedup_batch_1'] for r in rows], times)} at batch 1, {span(share, lambda v: percent(v, 0))} "
            "of the MACs ceiling ([rounded channel counts](#rounded-channel-counts-where-tickets-ship) shows rounding "
            "to 16 and ONNX Runtime).\n")


@block("speed.lottery_pools")
def lottery_pools() -> str:
    d = report()["d_lottery_pools_protocols"]
    rows = [[f"level {r['level']}", f"{r['density']:.3f}", f"{r['search_seconds_fast']:.1f}",
             f"{r['search_seconds_reference']:.1f}", times(r["search_seconds_reference"] / r["search_seconds_fast"], 1),
             r["val_passes_fast"], r["val_passes_reference"], percent(r["pooled_test_accuracy_fast"]),
             percent(r["pooled_test_accuracy_reference"]),
             points(r["pooled_test_accuracy_fast"] - r["pooled_test_accuracy_reference"])] for r in d["rows"]]
    return (f"**d. Lottery Pools, fast default against `--protocol reference`** on one IMP run "
            f"({command(d['imp_command'])}):\n\n"
            + stale_note("speed", "d_lottery_pools_protocols")
            + table(["Lottery Pools target", "density", "fast s", "reference s", "speed-up", "fast val passes",
                     "reference val passes", "fast test", "reference test", "difference"], rows))


@block("speed.lottery_pools_claims")
def lottery_pools_claims() -> str:
    d = report()["d_lottery_pools_protocols"]
    protocols = results("lottery_pools_protocols")["runs"]
    differ = [r for r in d["rows"] if r["accepted_fast"] != r["accepted_reference"]]
    blends = lambda accepted: " and ".join(f"{level}@{alpha:g}" for level, alpha in accepted) or "none"
    per_target = [r["search_seconds_reference"] / r["search_seconds_fast"] for r in d["rows"]]
    lines = [f"The fast protocol searched {times(d['speedup'], 1)} faster over both targets "
             f"({span(per_target, lambda v: times(v, 1))} per target)."]
    for r in differ:
        val = span([r["pooled_val_accuracy_fast"], r["pooled_val_accuracy_reference"]], percent)
        lines.append(f"At level {r['level']} the two protocols reached validation accuracy {val} "
                     f"with different blends (fast {blends(r['accepted_fast'])}, reference "
                     f"{blends(r['accepted_reference'])}), "
                     f"{points(r['pooled_test_accuracy_fast'] - r['pooled_test_accuracy_reference'])} points apart "
                     "on test; one run, so no verdict.")
    lines.append("The speed-up grows with the training set, over which the reference recomputes BatchNorm statistics "
                 "for every blend: "
                 + " and ".join(f"{times(run['speedup'], 1)} on {run['dataset']}" for run in protocols)
                 + " ([below](#lottery-pools-fast-against-reference)).")
    return " ".join(lines) + "\n"


@block("speed.early_bird")
def early_bird() -> str:
    e = report()["e_early_bird"]
    epochs = e["command"][e["command"].index("--epochs") + 1]
    rows = [[f"{r['ratio']:g}", r["eb_epoch"], percent(r["test_accuracy"]), percent(r["baseline_test_accuracy"]),
             f"{r['train_macs']:.3g}", f"{r['baseline_train_macs']:.3g}", times(r["train_macs_saved"]),
             f"{r['train_seconds']:.0f}", f"{r['baseline_train_seconds']:.0f}", times(r["train_seconds_saved"])]
            for r in e["rows"]]
    return (f"**e. Early-Bird against one-shot pruning** ({command(e['command'])}: training MACs and seconds to a "
            "retrained ticket, search included; one seed):\n\n"
            + stale_note("speed", "e_early_bird")
            + table(["Early-Bird ratio", f"emerged (epoch of {epochs})", "test", "one-shot test", "training MACs",
                     "one-shot", "saved", "seconds", "one-shot", "saved"], rows))


@block("speed.early_bird_claims")
def early_bird_claims() -> str:
    e = report()["e_early_bird"]
    epochs = e["command"][e["command"].index("--epochs") + 1]
    fashion = results("accuracy")["early_bird"] + results("accuracy")["early_bird_int8"]
    baselines = {r["ratio"]: r for r in results("accuracy")["early_bird"]}
    return (f"Here {span([r['train_macs_saved'] for r in e['rows']], times)} fewer MACs and "
            f"{span([r['train_seconds_saved'] for r in e['rows']], times)} fewer seconds, with tickets emerging at "
            f"epoch {span([r['eb_epoch'] for r in e['rows']], str)} of {epochs}; on Fashion-MNIST above, "
            f"{span([baselines[r['ratio']]['baseline_train_macs'] / r['train_macs'] for r in fashion], times)} fewer "
            f"MACs. For comparison, {early_bird_paper()}. The saving is the share of training the search replaces, "
            "and seconds save less than MACs on CPU cores because a thinner network's step falls less than its MACs "
            "(b above).\n")
