"""benchmarks/results/baselines.json: IMP's tickets against pruning at initialisation and gradual magnitude pruning
(benchmarks/baselines.py)."""

from __future__ import annotations

from typing import Dict, List

from render import block, results, stale_note
from sections.common import adjusted, difference, densities_text, family_note, grouped, mean_pm, table, where

CRITERIA = ("snip", "grasp", "synflow", "magnitude", "random")
NAMES = {"imp": "IMP", "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow", "magnitude": "magnitude",
         "random": "random", "gmp": "GMP"}


def _family(part: dict) -> Dict[tuple, dict]:
    tests = {("gmp_equal_cost",): part["gmp_equal_cost"]["gmp_minus_imp"]}
    for entry in part["densities"]:
        d = entry["density"]
        tests[("synflow_minus_snip", d)] = entry["synflow_minus_snip"]
        for method, m in entry["methods"].items():
            if m.get("method_minus_imp") is not None:
                tests[("minus_imp", method, d)] = m["method_minus_imp"]
            if m.get("shuffled_minus_method") is not None:
                tests[("shuffled", method, d)] = m["shuffled_minus_method"]
    return adjusted(tests)


def _at(family: dict, kind: str, method: str = "") -> Dict[float, dict]:
    """{density: adjusted difference} of one comparison."""
    return {key[-1]: e for key, e in family.items() if key[0] == kind and (not method or key[1] == method)}


def _layer_table(part: dict) -> str:
    """Each method's kept fraction per layer at the sparsest density: what a layer shuffle keeps."""
    last = part["densities"][-1]
    layers = list(last["methods"]["imp"]["layer_densities"])
    rows = [[NAMES[m]] + [f"{last['methods'][m]['layer_densities'][layer]:.3f}" for layer in layers]
            for m in ("imp", *CRITERIA)]
    return (f"Each method's kept fraction of every layer at density {last['density']:.3f} (the mean over the seeds), "
            "the per-layer counts its shuffle keeps:\n\n" + table(["method", *[f"`{n}`" for n in layers]], rows))


def lenet_findings() -> str:
    """The LeNet part in a sentence: pruning at init against IMP, SynFlow against SNIP, the shuffles, GMP."""
    part = results("baselines")["lenet"]
    family = _family(part)
    below = {NAMES[m]: where(_at(family, "minus_imp", m), "below") for m in CRITERIA}
    above = {NAMES[m]: where(_at(family, "minus_imp", m), "above") for m in CRITERIA}
    shuffled = {NAMES[m]: where(_at(family, "shuffled", m), "below") for m in ("imp", *CRITERIA)
                if _at(family, "shuffled", m)}
    equal = family[("gmp_equal_cost",)]
    return (f"LeNet-300-100 (`lth-lenet`), {len(part['seeds'])} seeds: "
            + grouped(below, "below IMP ", "never below IMP")
            + (f"; {grouped({n: d for n, d in above.items() if d}, 'above IMP ', '')}" if any(above.values()) else
               "; no mask chosen at init above IMP")
            + f"; SynFlow above SNIP at {densities_text(where(_at(family, 'synflow_minus_snip'), 'above'))}; "
            + "shuffling each layer's mask lowers " + grouped(shuffled, "", "at no density", sep=", and ")
            + f"; GMP given IMP's whole budget: {difference(equal)} points against IMP ({equal['verdict']})")


@block("baselines.lenet")
def lenet() -> str:
    part = results("baselines")["lenet"]
    setup, seeds = part["setup"], len(part["seeds"])
    family = _family(part)
    densities = part["densities"]
    methods = ["imp", *CRITERIA, "gmp"]
    accuracy = table(["density", *[NAMES[m] for m in methods]],
                     [[f"{e['density']:.3f}", *[mean_pm(e["methods"][m]["test_accuracy"]) for m in methods]]
                      for e in densities])
    shuffled = [m for m in ("imp", *CRITERIA) if m in densities[0]["methods"]
                and densities[0]["methods"][m].get("shuffled_minus_method") is not None]
    header = ["density", "SynFlow - SNIP", *[f"{NAMES[m]} shuffled - {NAMES[m]}" for m in shuffled],
              *[f"{NAMES[m]} - IMP" for m in (*CRITERIA, "gmp")]]
    rows = []
    for e in densities:
        d = e["density"]
        rows.append([f"{d:.3f}", difference(family[("synflow_minus_snip", d)]),
                     *[difference(family[("shuffled", m, d)]) for m in shuffled],
                     *[difference(family[("minus_imp", m, d)]) for m in (*CRITERIA, "gmp")]])
    equal = part["gmp_equal_cost"]
    equal_entry = family[("gmp_equal_cost",)]

    def below_imp(method: str) -> List[float]:
        return where(_at(family, "minus_imp", method), "below")

    def moved(method: str) -> str:
        shifts = _at(family, "shuffled", method)
        return (f"below at {densities_text(where(shifts, 'below'))}, above at {densities_text(where(shifts, 'above'))}")

    claims = [
        f"- **SynFlow against SNIP**: above at {densities_text(where(_at(family, 'synflow_minus_snip'), 'above'))},"
        f" below at {densities_text(where(_at(family, 'synflow_minus_snip'), 'below'))}, within noise elsewhere.",
        "- **Pruning at initialisation below IMP's tickets**: " + "; ".join(
            f"{NAMES[m]} at {densities_text(below_imp(m))}" for m in CRITERIA) + ".",
        "- **Shuffled against unshuffled** (a layer shuffle keeps each layer's count): " + "; ".join(
            f"{NAMES[m]} {moved(m)}" for m in shuffled) + ".",
        f"- **GMP at IMP's epochs per training** below IMP at {densities_text(below_imp('gmp'))}, above at "
        f"{densities_text(where(_at(family, 'minus_imp', 'gmp'), 'above'))}. **Given IMP's whole budget** "
        f"({equal['epochs']} epochs, once) for IMP's last density {equal['density']:.3f}: "
        f"{mean_pm(equal['test_accuracy'])}, GMP - IMP {difference(equal_entry)} ({equal_entry['verdict']}).",
    ]
    papers = results("baselines")["papers"]
    intro = (f"LeNet-300-100, recipe `{setup['recipe']}`, {setup['max_train_samples']:,} Fashion-MNIST training images, "
             f"{setup['epochs']} epochs per training, {seeds} seeds. IMP rewound to init, layer-wise as LTH prunes it "
             f"({part['imp']['prune_fraction']:.0%} of each hidden layer per level, its even levels at the others' "
             f"densities); pruning at initialisation ranked {part['pruning_at_init']['scope']}ly, as its papers "
             "rank, so each method chooses its own per-layer densities; GMP prunes every layer to the same sparsity "
             "(Zhu & Gupta). Test accuracy, the mean ± the half-width of its 95% interval over the seeds:\n\n")
    return (stale_note("baselines", "lenet") + intro + accuracy + "\n"
            + "Differences paired over the seeds, in points:\n\n" + table(header, rows) + "\n"
            + _layer_table(part) + "\n" + "\n".join(claims) + "\n\n"
            + "What the papers found: " + " ".join(f"{text}." for text in papers.values()) + "\n\n"
            + family_note(family, f"this part ({seeds} seeds)") + "\n")
