"""benchmarks/results/successors.json: IMP's successors (Sparse Model Soups, SWAMP, Instant Soup, Lottery Pools) at
IMP's densities, with what each costs to train (benchmarks/successors.py)."""

from __future__ import annotations

from typing import Dict

from render import block, results, stale_note
from sections.common import adjusted, difference, densities_text, family_note, grouped, mean_pm, table, where

METHODS = ("imp", "sms", "swamp", "instant-soup", "pools")
NAMES = {"imp": "IMP", "sms": "Sparse Model Soups", "swamp": "SWAMP", "instant-soup": "Instant Soup",
         "pools": "Lottery Pools"}
SWAMP_AVERAGE = {"swamp_average_minus_best_particle": "best particle",
                 "swamp_average_minus_particles_mean": "particles' mean"}


def successors_family() -> Dict[tuple, dict]:
    """Every paired difference of the part, one family: (method, density) -> method - IMP, and (comparison,
    density) -> SWAMP's average against its best particle or its particles' mean."""
    tests = {}
    for e in results("successors")["densities"]:
        for method in METHODS[1:]:
            tests[(method, e["density"])] = e["methods"][method]["minus_imp"]
        for name in SWAMP_AVERAGE:
            tests[(name, e["density"])] = e[name]
    return adjusted(tests)


def _at(family: dict, kind: str, verdict: str) -> list:
    """The densities where one comparison earned `verdict`."""
    return where({d: e for (k, d), e in family.items() if k == kind}, verdict)


def _where(family: dict, kind: str, verdict: str) -> str:
    return densities_text(_at(family, kind, verdict))


def successors_findings() -> str:
    """The part in a sentence: each successor against IMP, and what averaging SWAMP's particles adds."""
    report, family = results("successors"), successors_family()
    above = {NAMES[m]: _at(family, m, "above") for m in METHODS[1:]}
    below = {NAMES[m]: _at(family, m, "below") for m in METHODS[1:]}
    best = _at(family, "swamp_average_minus_best_particle", "above")
    return (f"LeNet-300-100 (`lth-lenet`), {len(report['seeds'])} seeds: "
            + grouped(above, "above IMP ", "never above IMP") + "; "
            + grouped(below, "below IMP ", "never below IMP")
            + "; SWAMP's average above its best particle "
            + (f"at {densities_text(best)}" if best else "at no density"))


@block("successors")
def successors() -> str:
    report, family = results("successors"), successors_family()
    densities, setup = report["densities"], report["setup"]
    accuracy = table(["density", *[NAMES[m] for m in METHODS]],
                     [[f"{e['density']:.3f}", *[mean_pm(e["methods"][m]["test_accuracy"]) for m in METHODS]]
                      for e in densities])
    differences = table(["density", *[f"{NAMES[m]} - IMP" for m in METHODS[1:]],
                         *[f"SWAMP average - {label}" for label in SWAMP_AVERAGE.values()]],
                        [[f"{e['density']:.3f}", *[difference(family[(m, e["density"])]) for m in METHODS[1:]],
                          *[difference(family[(name, e["density"])]) for name in SWAMP_AVERAGE]]
                         for e in densities])
    cost = table(["density", *[f"{NAMES[m]}: epochs (seconds)" for m in METHODS], "SWAMP level / IMP level"],
                 [[f"{e['density']:.3f}",
                   *[f"{e['methods'][m]['cost']['epochs']:.3g} ({e['methods'][m]['cost']['seconds']['mean']:,.0f})"
                     for m in METHODS],
                   f"x{e['swamp_level_time_over_imp']['mean']:.2f}"] for e in densities])
    claims = [f"- **{NAMES[m]}** above IMP at {_where(family, m, 'above')}; below at {_where(family, m, 'below')}; "
              "within noise elsewhere." for m in METHODS[1:]]
    claims += [f"- **SWAMP's average against its {label}**: above at {_where(family, name, 'above')}, below at "
               f"{_where(family, name, 'below')}." for name, label in SWAMP_AVERAGE.items()]
    claims += [f"- The papers: {' '.join(report['papers'][m] for m in METHODS[1:])}"]
    return (stale_note("successors")
            + f"LeNet-300-100, recipe `{setup['recipe']}`, {setup['max_train_samples']:,} Fashion-MNIST training "
              f"images, {setup['epochs']} epochs per training, {len(report['seeds'])} seeds; Sparse Model Soups "
              f"with {report['ingredients']} copies per level, SWAMP with {report['particles']} particles. Test "
              "accuracy, the mean ± the half-width of its 95% interval over the seeds:\n\n" + accuracy
            + "\nDifferences paired over the seeds, in points:\n\n" + differences
            + "\nThe training each method spends to reach a density (Lottery Pools: the whole IMP run it pools), in "
              "epochs and measured seconds (the mean over the seeds), and SWAMP's level time over IMP's:\n\n" + cost
            + "\n" + "\n".join(claims) + "\n\n"
            + family_note(family, f"this part ({len(report['seeds'])} seeds)") + "\n")
