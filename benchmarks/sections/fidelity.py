"""benchmarks/results/fidelity.json: the papers' effects on their own networks (benchmarks/fidelity.py)."""

from __future__ import annotations

from typing import Dict, List

from render import block, results, stale_note
from sections.common import (adjusted, difference, densities_text, early_bird_paper, family_note, mean_pm, table,
                             where)

CONTROLS = ("random-reinit", "random-mask")


def _by_density(curve: dict, metric: str) -> Dict[float, dict]:
    return {float(d): summary for d, summary in curve[metric].items()}


def _range(entries: Dict[float, dict], keys: List[float]) -> str:
    """'0.28 to 2.03 points': the smallest and largest magnitude of the differences at `keys`."""
    sizes = sorted(abs(100 * entries[k]["mean"]) for k in keys)
    return f"{sizes[0]:.2f}" + (f" to {sizes[-1]:.2f}" if len(sizes) > 1 else "") + " points"


def lth_family() -> Dict[tuple, dict]:
    """The LTH part's paired differences, adjusted as one family: (kind, density) -> difference, kind one of
    "dense" (ticket - dense), "dense_step" (its early-stopping iteration), "random-reinit", "random-mask"
    (control - ticket)."""
    tests = {}
    for row in results("fidelity")["lth"]["findings"]["densities"]:
        d = row["density"]
        tests[("dense", d)] = row["ticket_minus_dense"]
        tests[("dense_step", d)] = row["ticket_minus_dense_early_stop_step"]
        for control in CONTROLS:
            tests[(control, d)] = row[f"{control}_minus_ticket"]
    return adjusted(tests)


def lth_findings() -> Dict[str, str]:
    """The LTH part's verdicts as phrases: where tickets are above dense, where each control is below the ticket,
    where tickets stop early sooner."""
    family = lth_family()

    def at(kind: str, verdict: str) -> str:
        entries = {d: e for (k, d), e in family.items() if k == kind}
        chosen = where(entries, verdict)
        sized = chosen and kind != "dense_step" and verdict in ("above", "below")
        return densities_text(chosen) + (f" (by {_range(entries, chosen)})" if sized else "")
    return {"above_dense": at("dense", "above"), "below_dense": at("dense", "below"),
            "noise_dense": at("dense", "within noise"), "sooner": at("dense_step", "below"),
            "reinit_below": at("random-reinit", "below"), "mask_below": at("random-mask", "below"),
            "seeds": str(results("fidelity")["lth"]["findings"]["seeds"]), "tests": str(len(family))}


@block("fidelity.lth")
def lth() -> str:
    part = results("fidelity")["lth"]
    rows = part["findings"]["densities"]
    family = lth_family()
    curves = {name: (_by_density(c, "early_stop_test_accuracy"), _by_density(c, "early_stop_step"))
              for name, c in part["curves"].items()}
    ticket_acc, ticket_step = curves["ticket"]
    dense = 1.0

    def step(summaries, d):
        return f"{summaries[d]['mean']:,.0f}" if d in summaries else ""

    lines = [[f"{dense:.3f} (dense)", mean_pm(ticket_acc[dense]), step(ticket_step, dense)] + [""] * 7]
    for row in rows:
        d = row["density"]
        cells = [f"{d:.3f}", mean_pm(ticket_acc[d]), step(ticket_step, d)]
        for control in CONTROLS:
            acc, steps = curves[control]
            cells += [mean_pm(acc[d]) if d in acc else "", step(steps, d)]
        cells += [difference(family[("dense", d)])] + [difference(family[(c, d)]) for c in CONTROLS]
        lines.append(cells)
    header = ["density", "ticket", "early stop at", "random reinit", "early stop at", "random mask",
              "early stop at", "ticket - dense", "reinit - ticket", "mask - ticket"]
    found, n = lth_findings(), part["findings"]["seeds"]
    setup = (f"Recipe `lth-lenet` (Adam, batch 60, layer-wise, rewound to init, validation every 100 iterations) on "
             f"{part['train_samples']:,} of the 55,000 training images, {part['epochs']} epochs per level, {n} "
             f"seeds; {part['levels']} levels, each pruning 40% of each hidden layer and 20% of the output layer. "
             "Test accuracy at the early-stopping iteration (the lowest validation loss, LTH's measure): the mean "
             "± the half-width of its 95% interval over the seeds; differences paired over the seeds, in points.\n\n")
    claims = [
        f"- **Tickets above dense** at densities {found['above_dense']}; within noise at {found['noise_dense']}; "
        f"below at {found['below_dense']}.",
        f"- **Random reinitialisation below the ticket** at {found['reinit_below']}; **random masks below the "
        f"ticket** at {found['mask_below']}.",
        f"- **Tickets stop early sooner** than dense (their early-stopping iteration is below dense's "
        f"{ticket_step[dense]['mean']:,.0f}) at {found['sooner']}.",
        f"- The paper: {part['paper']}",
    ]
    return (stale_note("fidelity", "lth") + setup + table(header, lines) + "\n" + "\n".join(claims) + "\n\n"
            + family_note(family, f"this part ({n} seeds)") + "\n")


def pools_family() -> Dict[tuple, dict]:
    """The pools part's differences, one family: ("test" | "corrupted", level) -> pooled - ticket."""
    tests = {}
    for row in results("fidelity")["pools"]["levels"]:
        tests[("test", row["level"])] = row["pooled_minus_ticket"]
        tests[("corrupted", row["level"])] = row["pooled_minus_ticket_corrupted"]
    return adjusted(tests)


def pools_findings() -> str:
    """The pools part in a sentence: where the pooled ticket is above and below its ticket, where no blend was kept."""
    levels = results("fidelity")["pools"]["levels"]
    family, density = pools_family(), {row["level"]: row["density"] for row in levels}
    seeds = levels[0]["pooled_minus_ticket"]["n"]

    def at(kind: str, verdict: str) -> str:
        return densities_text(sorted((density[level] for (k, level), e in family.items()
                                      if k == kind and e["verdict"] == verdict), reverse=True))
    never = sorted((row["density"] for row in levels if row["pooled_at_seeds"] == 0), reverse=True)
    return (f"Lottery Pools (`confirm`) on that LTH run, {seeds} seeds: the pooled ticket above its ticket at "
            f"densities {at('test', 'above')}, below at {at('test', 'below')}; under corruptions above at "
            f"{at('corrupted', 'above')}; no blend kept at {densities_text(never)}")


@block("fidelity.pools")
def pools() -> str:
    part = results("fidelity")["pools"]
    levels = part["levels"]
    family = pools_family()
    seeds = levels[0]["pooled_minus_ticket"]["n"]
    lines = [[row["level"], f"{row['density']:.3f}", difference(family[("test", row["level"])]),
              difference(family[("corrupted", row["level"])]), f"{row['pooled_at_seeds']} of {seeds}"]
             for row in levels]

    def levels_where(kind: str, verdict: str) -> List[int]:
        return [level for (k, level), e in family.items() if k == kind and e["verdict"] == verdict]

    def level_text(values: List[int]) -> str:
        return ", ".join(map(str, values)) if values else "none"

    never = [row["level"] for row in levels if row["pooled_at_seeds"] == 0]
    claims = [
        f"- **Pooled above the ticket** (test) at levels {level_text(levels_where('test', 'above'))}; below at "
        f"levels {level_text(levels_where('test', 'below'))}; within noise or no spread at the others.",
        f"- **Under corruptions**, above at levels {level_text(levels_where('corrupted', 'above'))}; below at "
        f"levels {level_text(levels_where('corrupted', 'below'))}.",
        f"- No blend was kept at any seed at levels {level_text(never)}: there the pooled ticket is the ticket.",
        f"- The paper: {part['paper']}",
    ]
    return (stale_note("fidelity", "pools")
            + f"Lottery Pools with the `confirm` rule on every level of each of the {seeds} seeds of the LTH run "
              "above; pooled minus ticket, paired over the seeds, in points:\n\n"
            + table(["level", "density", "pooled - ticket", "under corruptions", "pooled at"], lines) + "\n"
            + "\n".join(claims) + "\n\n" + family_note(family, f"this part ({seeds} seeds)") + "\n")


@block("fidelity.small")
def small() -> str:
    part = results("fidelity")["small"]
    rules = part["levels"]
    tests = {(rule, kind, row["level"]): row[kind] for rule, rows in rules.items() for row in rows
             for kind in ("test_gain", "val_gain") if row.get(kind) is not None}
    family = adjusted(tests)
    seeds = len(part["seeds"]) if isinstance(part["seeds"], list) else part["seeds"]
    shown = [rule for rule in ("paper", "loss", "paired", "confirm") if rule in rules]
    header = ["level", "density"] + [f"`{rule}`: {kind}" for rule in shown for kind in ("validation", "test")]
    lines = []
    for i, row in enumerate(rules[shown[0]]):
        cells = [row["level"], f"{row['density']:.3f}"]
        for rule in shown:
            r = rules[rule][i]
            cells += [difference(family.get((rule, "val_gain", r["level"]))) + f" ({r['pooled_at_seeds']} of {seeds})",
                      difference(family.get((rule, "test_gain", r["level"])))]
        lines.append(cells)

    def count(rule: str, kind: str, verdict: str) -> int:
        return sum(1 for (r, k, _), e in family.items() if r == rule and k == kind and e["verdict"] == verdict)

    claims = [f"- `{rule}`: validation gain above zero at {count(rule, 'val_gain', 'above')} of {len(rules[rule])} "
              f"levels, test gain above at {count(rule, 'test_gain', 'above')} and below at "
              f"{count(rule, 'test_gain', 'below')}; it pooled at "
              f"{sum(r['pooled_at_seeds'] for r in rules[rule])} of {seeds * len(rules[rule])} (level, seed) cases."
              for rule in shown]
    return (stale_note("fidelity", "small")
            + f"{part['train_images']:,} training images, {part['val_images']:,} of them held out for validation, an "
              f"8-level `lth-lenet` IMP run over {seeds} seeds, pooled with each rule; gains in points, paired over "
              "the seeds (how many seeds pooled, beside the validation gain):\n\n"
            + table(header, lines) + "\n" + "\n".join(claims) + "\n\n"
            + family_note(family, f"this part ({seeds} seeds)") + "\n")


def early_bird_family() -> Dict[tuple, dict]:
    """The Early-Bird part's differences, one family: (schedule, ratio) -> Early-Bird - one-shot test accuracy."""
    return adjusted({(schedule, row["ratio"]): row["eb_minus_one_shot"]
                     for schedule, rows in results("fidelity")["eb"]["schedules"].items() for row in rows})


def early_bird_findings() -> str:
    """The Early-Bird part in a sentence: the training MACs saved and the accuracy against one-shot, per ratio."""
    part, family = results("fidelity")["eb"], early_bird_family()
    said = []
    for schedule, rows in part["schedules"].items():
        for row in rows:
            saved = row["train_macs_saved"].get("mean")
            said.append(f"at ratio {row['ratio']:g} ({schedule}) x{saved:.2f} fewer training MACs than one-shot, "
                        f"accuracy {difference(family[(schedule, row['ratio'])])} points "
                        f"({family[(schedule, row['ratio'])]['verdict']})" if saved else
                        f"at ratio {row['ratio']:g} ({schedule}) not found")
    seeds = max(r["test_accuracy"]["n"] for rows in part["schedules"].values() for r in rows)
    return f"`cifar_resnet20` on Fashion-MNIST, {seeds} seeds: " + "; ".join(said)


@block("fidelity.eb")
def early_bird() -> str:
    part = results("fidelity")["eb"]
    family = early_bird_family()
    lines = []
    for schedule, rows in part["schedules"].items():
        for row in rows:
            lines.append([f"`{schedule}`", f"{row['ratio']:g}", f"{row['found_at_seeds']}",
                          f"{row['eb_epoch']['mean']:.1f}" if row["eb_epoch"].get("mean") is not None else "-",
                          mean_pm(row["test_accuracy"]), difference(family[(schedule, row["ratio"])]),
                          f"x{row['train_macs_saved']['mean']:.2f}" if row["train_macs_saved"].get("mean") else "-"])
    header = ["retraining", "ratio", "found at seeds", "emerged (epoch)", "Early-Bird test", "Early-Bird - one-shot",
              "training MACs saved"]
    below = [f"ratio {r:g} (`{s}`)" for (s, r), e in family.items() if e["verdict"] == "below"]
    above = [f"ratio {r:g} (`{s}`)" for (s, r), e in family.items() if e["verdict"] == "above"]
    setup = part.get("setup", "")
    return (stale_note("fidelity", "eb") + (setup + "\n\n" if setup else "")
            + table(header, lines) + "\n"
            + ("- Early-Bird within noise of one-shot at every ratio and schedule.\n" if not (above or below) else
               f"- Early-Bird above one-shot at {', '.join(above) or 'no ratio'}; below at "
               f"{', '.join(below) or 'no ratio'}; within noise elsewhere.\n")
            + f"- For comparison, {early_bird_paper()}.\n\n" + family_note(family, "this part") + "\n")
