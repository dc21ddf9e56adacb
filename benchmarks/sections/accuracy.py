"""benchmarks/README.md's "Accuracy on Fashion-MNIST" (benchmarks/results/accuracy.json): one seed, so every
sentence gives measurements and ranges, never a verdict."""

from __future__ import annotations

from render import block, results, stale_note
from sections.common import (ONE_SEED, command, count, early_bird_paper, fixed, option, percent, points, span,
                             table, times)

WEIGHT_PARTS = ("imp_weight", "imp_weight_random_reinit", "imp_weight_random_mask", "lottery_pools")
MODELS = {"ticket": "imp_weight", "random reinit": "imp_weight_random_reinit",
          "random mask": "imp_weight_random_mask"}


def report() -> dict:
    return results("accuracy")


def epochs() -> int:
    return int(option(report()["commands"]["common"], "--epochs"))


def gain(pool: dict, metric: str) -> float:
    """Pooled minus ticket on one level, `metric` one of test, val, corruption."""
    return pool[f"pooled_{metric}_accuracy"] - pool[f"ticket_{metric}_accuracy"]


def blends(accepted: list) -> str:
    return ", ".join(f"{level}@{alpha:g}" for level, alpha in accepted) or "-"


@block("accuracy.settings")
def settings() -> str:
    r, common = report(), report()["commands"]["common"]
    size = option(common, "--image-size")
    return (f"`benchmarks/results/accuracy.json`, made on {r['provenance']['made']} (commit "
            f"{r['provenance']['commit']}). {ONE_SEED} One model and one schedule for every row: timm "
            f"`{option(common, '--model')}` at {size}x{size}, {count(int(option(common, '--max-train-samples')))} "
            f"Fashion-MNIST training images, {epochs()} epochs of {r['steps_per_epoch']} steps, batch "
            f"{option(common, '--batch-size')}, `--opt {option(common, '--opt')}` lr {option(common, '--lr')} "
            f"momentum {option(common, '--momentum')}, {option(common, '--sched')} schedule, weight decay "
            f"{option(common, '--weight-decay')}, augmentation `{option(common, '--augment')}`, seed "
            f"{option(common, '--seed')}; {r['cpus']} CPU cores. The short schedule keeps absolute accuracies below a "
            "full schedule's.\n")


@block("accuracy.weight_table")
def weight_table() -> str:
    r = report()
    controls = " and ".join(f"`--control {c}`" for c in r["commands"]["controls"])
    rows = [[ticket["level"], f"{ticket['density']:.3f}", percent(ticket["test_accuracy"]),
             percent(reinit["test_accuracy"]), percent(mask["test_accuracy"]),
             percent(pool["pooled_test_accuracy"]), percent(pool["ticket_bn_test_accuracy"]),
             percent(pool["swa_test_accuracy"]), percent(pool["ema_test_accuracy"])]
            for ticket, reinit, mask, pool in zip(*(r[part] for part in WEIGHT_PARTS))]
    dense_pool = r["lottery_pools"][0]
    return (f"IMP weight tickets ({command(r['commands']['imp_weight'])}), the controls {controls} on the same "
            f"levels, and Lottery Pools on every level of the IMP run ({dense_pool['protocol']} protocol, "
            f"{command(r['commands']['lottery_pools'])}) with its baselines; test accuracy:\n\n"
            + stale_note("accuracy", *WEIGHT_PARTS)
            + table(["level", "density", "ticket", "random reinit", "random mask", "pooled", "ticket + BN", "SWA",
                     "EMA"], rows)
            + f"\nEnsemble of all {len(r['imp_weight'])} tickets "
              f"({times(dense_pool['ensemble_macs'] / dense_pool['macs'], 0)} the inference MACs): "
              f"{percent(dense_pool['ensemble_test_accuracy'])} test, "
              f"{percent(dense_pool['ensemble_corruption_accuracy'])} under corruptions.\n")


def sparse_accuracies() -> dict:
    """Test accuracy of the ticket and of each control at the sparse levels."""
    return {name: [row["test_accuracy"] for row in report()[part][1:]] for name, part in MODELS.items()}


def near_dense() -> str:
    base, sparse = report()["imp_weight"][0]["test_accuracy"], sparse_accuracies()
    farthest = max(abs(value - base) for values in sparse.values() for value in values)
    return (f"- Every model, ticket and controls, is within {100 * farthest:.2f} points of dense ({percent(base)}) "
            f"at every density down to {report()['imp_weight'][-1]['density']:.3f}: "
            + ", ".join(f"{name} {span(values, percent)}" for name, values in sparse.items())
            + ". resnet18 is far larger than this task needs.")


def against_controls() -> str:
    sparse = sparse_accuracies()
    gaps = {name: [t - c for t, c in zip(sparse["ticket"], sparse[name])] for name in MODELS if name != "ticket"}
    return ("- On this one seed, at the sparse levels, "
            + " and ".join(f"the ticket minus {name} is {span(values, points)} points" for name, values in gaps.items())
            + ": with one seed that is no verdict. [The LTH fidelity part](#lth-on-lenet-300-100-lth-figures-3-4) "
              "compares the ticket with the paper's controls over seeds.")


def pools_claim() -> str:
    dense_pool, *sparse = report()["lottery_pools"]
    kept = [p for p in sparse if p["accepted"]]
    return (f"- Lottery Pools: the pooled ticket is "
            f"{span([p['pooled_test_accuracy'] for p in report()['lottery_pools']], percent)} at every level. Pooled "
            f"minus ticket is {points(gain(dense_pool, 'test'))} points on the dense level (blending "
            f"{len(dense_pool['accepted'])} sparse tickets into it) and "
            f"{span([gain(p, 'test') for p in sparse], points)} at the sparse levels. Where the search kept a blend "
            "at a sparse level, its validation and test gains were "
            + "; ".join(f"level {p['level']}: {points(gain(p, 'val'))} and {points(gain(p, 'test'))}" for p in kept)
            + ".")


def averages_claim() -> str:
    sparse = report()["lottery_pools"][1:]
    lowest = {kind: min(sparse, key=lambda p: p[f"{kind}_test_accuracy"]) for kind in ("swa", "ema")}
    return ("- SWA and EMA blends, re-pruned as the reference code does, fall to "
            + " and ".join(f"{percent(p[f'{kind}_test_accuracy'])} ({kind.upper()}, density {p['density']:.3f})"
                           for kind, p in lowest.items()) + ".")


@block("accuracy.weight_claims")
def weight_claims() -> str:
    return "\n".join([near_dense(), against_controls(), pools_claim(), averages_claim()]) + "\n"


@block("accuracy.corruptions")
def corruptions() -> str:
    dense_pool, *sparse = pools = report()["lottery_pools"]
    rows = [[p["level"], f"{p['density']:.3f}"]
            + [percent(p[f"{kind}_corruption_accuracy"]) for kind in ("ticket", "pooled", "ticket_bn", "swa", "ema")]
            + [blends(p["accepted"])] for p in pools]
    corruptions = dense_pool["ticket_corruptions"]
    severities = len(next(iter(corruptions.values())))
    return (f"The same models under corruptions ({', '.join(corruptions)}, each at {severities} severities):\n\n"
            + stale_note("accuracy", "lottery_pools")
            + table(["level", "density", "ticket, corrupted", "pooled, corrupted", "ticket + BN, corrupted",
                     "SWA, corrupted", "EMA, corrupted", "accepted (level@alpha)"], rows)
            + f"\nOn the dense level pooling moves the corrupted accuracy from "
              f"{percent(dense_pool['ticket_corruption_accuracy'])} to "
              f"{percent(dense_pool['pooled_corruption_accuracy'])} (the ensemble of every ticket: "
              f"{percent(dense_pool['ensemble_corruption_accuracy'])}); at the sparse levels pooled minus ticket is "
              f"{span([gain(p, 'corruption') for p in sparse], points)} points. One seed.\n")


def search(row: dict) -> str:
    return "8-bit search" if row["search_precision"] == "int8" else "fp32 search"


def early_bird_rows() -> list:
    """Each Early-Bird row with the one-shot baseline of its ratio (the 8-bit search shares the fp32 run's)."""
    r = report()
    baselines = {row["ratio"]: row for row in r["early_bird"]}
    return [(row, baselines[row["ratio"]]) for row in r["early_bird"] + r["early_bird_int8"]]


def saved(row: dict, base: dict, what: str) -> float:
    """One-shot's training MACs or seconds over Early-Bird's (`what` macs or seconds)."""
    return base[f"baseline_train_{what}"] / row[f"train_{what}"]


@block("accuracy.early_bird")
def early_bird() -> str:
    rows = [[search(row), f"{row['ratio']:g}", f"{row['eb_epoch']:.1f}", f"{row['density']:.3f}",
             percent(row["test_accuracy"]), percent(base["baseline_test_accuracy"]), f"{row['train_macs']:.3g}",
             f"{base['baseline_train_macs']:.3g}", times(saved(row, base, "macs")), f"{row['train_seconds']:.0f}",
             f"{base['baseline_train_seconds']:.0f}", times(saved(row, base, "seconds"))]
            for row, base in early_bird_rows()]
    return (f"`early-bird {' '.join(report()['commands']['early_bird'])} --baseline` on the same schedule; the 8-bit "
            f"search is `--search-precision int8`. The one-shot baseline trains dense for {epochs()} epochs, prunes, "
            f"and retrains {epochs()} epochs; the 8-bit rows are compared with the same one-shot run:\n\n"
            + stale_note("accuracy", "early_bird", "early_bird_int8")
            + table(["Early-Bird", "ratio", f"emerged (epoch of {epochs()})", "density", "test", "one-shot test",
                     "training MACs", "one-shot training MACs", "MACs saved", "seconds", "one-shot seconds",
                     "seconds saved"], rows))


def at_ratio(ratio: float, pairs: list) -> str:
    base = pairs[0][1]
    return (f"At ratio {ratio:g} (density {span([row['density'] for row, _ in pairs], fixed(3))}) one-shot pruning "
            f"reaches {percent(base['baseline_test_accuracy'])} and Early-Bird "
            + " and ".join(f"{percent(row['test_accuracy'])} with the {search(row)}" for row, _ in pairs)
            + f", for {span([saved(row, b, 'macs') for row, b in pairs], times)} fewer training MACs and "
              f"{span([saved(row, b, 'seconds') for row, b in pairs], times)} fewer seconds.")


@block("accuracy.early_bird_claims")
def early_bird_claims() -> str:
    by_ratio = {}
    for row, base in early_bird_rows():
        by_ratio.setdefault(row["ratio"], []).append((row, base))
    emerged = span([row["eb_epoch"] for row, _ in early_bird_rows()], fixed(1))
    return " ".join([f"Tickets emerged at epoch {emerged} of {epochs()}. One seed, so each gap below is a "
                     "measurement, not a verdict."]
                    + [at_ratio(ratio, pairs) for ratio, pairs in by_ratio.items()]
                    + [f"For comparison, {early_bird_paper()}: a short schedule gives the search a larger share of "
                       "the total."]) + "\n"


def channel_speedup(entry: dict, engine: str, batch: int) -> float:
    """The ticket against the dense model timed in the same interleaved rounds (medians of each)."""
    return entry[f"{engine}_dense_seconds_batch_{batch}"] / entry[f"{engine}_ticket_seconds_batch_{batch}"]


@block("accuracy.imp_channel")
def imp_channel() -> str:
    r = report()
    latency = {entry["level"]: entry for entry in r["imp_channel_latency"]}
    timing = r["imp_channel_latency"][0]
    rows = [[level["level"], f"{level['density']:.3f}", percent(level["test_accuracy"]),
             f"{level['params'] / 1e6:.2f}M", f"{level['macs'] / 1e6:.1f}M",
             f"{1000 * latency[level['level']]['torch_ticket_seconds_batch_64']:.1f}"]
            + [times(channel_speedup(latency[level["level"]], engine, batch)) for engine in ("torch", "onnx")
               for batch in (1, 64)]
            + [f"{level['train_seconds']:.0f}"] for level in r["imp_channel"]]
    return (f"IMP channel tickets ({command(r['commands']['imp_channel'])}), each level exported and timed against "
            f"the dense model in the same interleaved rounds ({timing['rounds']} rounds after {timing['warmup']} "
            f"warm-up, {timing['threads']} threads; each side's median, the speed-up the ratio of the two):\n\n"
            + stale_note("accuracy", "imp_channel")
            + table(["channel level", "density", "test", "params", "MACs", "PyTorch b64 ms", "PyTorch speed-up b1",
                     "PyTorch speed-up b64", "ONNX Runtime speed-up b1", "ONNX Runtime speed-up b64",
                     "training seconds"], rows))


@block("accuracy.imp_channel_claims")
def imp_channel_claims() -> str:
    levels, latency = report()["imp_channel"], report()["imp_channel_latency"]
    dense, last, entry = levels[0], levels[-1], latency[-1]
    return (f"One seed: the channel tickets score {span([level['test_accuracy'] for level in levels[1:]], percent)} "
            f"against dense's {percent(dense['test_accuracy'])} down to density {last['density']:.3f}. At that "
            f"density the ticket has {times(dense['macs'] / last['macs'])} fewer MACs, and against the dense model "
            f"timed in the same rounds it is {times(channel_speedup(entry, 'torch', 64))} faster in PyTorch and "
            f"{times(channel_speedup(entry, 'onnx', 64))} in ONNX Runtime at batch 64 (medians of {entry['rounds']} "
            "rounds). The level-0 row times the dense model against itself: its ratios show the noise of a ratio.\n")
