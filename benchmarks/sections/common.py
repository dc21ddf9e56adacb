"""What every section writes the same way: numbers as text, tables, a part's family of paired differences adjusted
together, and the verdict each difference earns (lt_plugin.stats)."""

from __future__ import annotations

from typing import Callable, Dict, Hashable, Iterable, List, Optional, Sequence

from lt_plugin.stats import adjust_family

ADJUSTMENT = "holm"
ALPHA = 0.05


def percent(value: Optional[float], digits: int = 2) -> str:
    """0.8762 -> '87.62%'; '-' for a missing value."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def points(value: Optional[float], digits: int = 2) -> str:
    """A difference of accuracies in percentage points, signed: 0.0029 -> '+0.29'."""
    return "-" if value is None else f"{100 * value:+.{digits}f}"


def times(value: Optional[float], digits: int = 2) -> str:
    """A ratio: 2.413 -> 'x2.41'."""
    return "-" if value is None else f"x{value:.{digits}f}"


def count(value: float) -> str:
    """A count with thousands separators: 10000 -> '10,000'."""
    return f"{round(value):,}"


def gib(nbytes: float, digits: int = 2, unit: bool = True) -> str:
    """Bytes in GiB: '1.22 GiB' ('1.22' without the unit)."""
    return f"{nbytes / 2 ** 30:.{digits}f}" + (" GiB" if unit else "")


def minutes(seconds: float) -> str:
    """A duration in whole minutes: '71 minutes'."""
    return f"{seconds / 60:.0f} minutes"


def fixed(digits: int) -> Callable[[float], str]:
    """A shower of plain numbers for `span`: fixed(3)(0.18654) -> '0.187'."""
    return lambda value: f"{value:.{digits}f}"


def span(values: Iterable[float], show: Callable[[float], str]) -> str:
    """The range of some values as shown: 'x1.48 to x1.59'; one value when both ends show alike."""
    values = list(values)
    low, high = show(min(values)), show(max(values))
    return low if low == high else f"{low} to {high}"


def command(argv: Sequence[str]) -> str:
    """A command line as an inline code span: '`lt-plugin early-bird --ratios 0.3 0.5`'."""
    return "`" + " ".join(str(a) for a in argv) + "`"


def option(argv: Sequence[str], flag: str) -> str:
    """The value given to `flag` in a recorded command line (the word after it)."""
    return argv[list(argv).index(flag) + 1]


ONE_SEED = ("One seed: each number is one run's, with no interval, so a difference between two of them is a "
            "measurement, not a verdict.")


def mean_pm(summary: dict, digits: int = 2) -> str:
    """A mean accuracy over seeds with the half-width of its 95% interval, in points: '87.20% ± 0.26'."""
    if summary.get("mean") is None:
        return "-"
    if summary.get("ci_high") is None:
        return percent(summary["mean"], digits)
    return f"{percent(summary['mean'], digits)} ± {100 * (summary['ci_high'] - summary['mean']):.{digits}f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def adjusted(differences: Dict[Hashable, dict]) -> Dict[Hashable, dict]:
    """A part's paired differences (dicts of lt_plugin.stats.paired_difference, by any key) adjusted as one family:
    each with its Holm-adjusted p-value, the verdict from it and the interval that agrees with the verdict."""
    keys = [k for k, d in differences.items() if d is not None]
    family = adjust_family([differences[k] for k in keys], ADJUSTMENT, ALPHA)
    return dict(zip(keys, family))


def difference(entry: Optional[dict], digits: int = 2) -> str:
    """An adjusted difference in points with its Holm-consistent interval: '+0.29 [+0.10, +0.48]'; a difference with
    no spread, its value and 'no spread'."""
    if entry is None or entry.get("mean") is None:
        return "-"
    if entry.get("verdict") == "no spread":
        return f"{points(entry['mean'], digits)} (no spread)"
    low, high = entry.get("ci_adjusted_low"), entry.get("ci_adjusted_high")
    if low is None:
        return points(entry["mean"], digits)
    return f"{points(entry['mean'], digits)} [{points(low, digits)}, {points(high, digits)}]"


def family_note(entries: Dict[Hashable, dict], what: str) -> str:
    """The sentence that says how a part's verdicts were decided."""
    size = max((e["family_size"] for e in entries.values()), default=0)
    return (f"Verdicts and intervals are Holm-adjusted over the {size} paired tests of {what} (alpha {ALPHA}; "
            "the interval excludes zero exactly when the adjusted test does).")


def densities_text(values: List[float]) -> str:
    """Densities as a reader reads them: 'none', '0.217', '0.217 and 0.131', '0.217, 0.131 and 0.079'."""
    shown = [f"{d:.3f}" for d in values]
    if not shown:
        return "none"
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


def where(entries: Dict[float, dict], verdict: str) -> List[float]:
    """The densities (keys) whose difference earned `verdict`, largest first."""
    return sorted((k for k, e in entries.items() if e["verdict"] == verdict), reverse=True)


def names_text(names: List[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def grouped(found: Dict[str, List[float]], what: str, nowhere: str, sep: str = "; ") -> str:
    """Who earned a verdict where, the names that share their densities said together ('SNIP and SynFlow below IMP
    at 0.047 and 0.017; GraSP at 0.131'); `nowhere` names those that earned it at no density."""
    groups: Dict[tuple, List[str]] = {}
    for name, densities in found.items():
        groups.setdefault(tuple(densities), []).append(name)
    said = []
    for densities, names in groups.items():
        if densities:  # the verdict named once, before the first group
            said.append(f"{names_text(names)} {'' if said else what}at {densities_text(list(densities))}")
    quiet = groups.get((), [])
    if quiet:
        said.append(f"{names_text(quiet)} {nowhere}")
    return sep.join(said)


# What You et al. (ICLR 2020) report for Early-Bird against one-shot pruning, VGG-16 on CIFAR-100 (its table of
# training FLOPs at each pruning ratio; the energy saving is its abstract's range).
EARLY_BIRD_PAPER = {"ratios": (0.1, 0.3, 0.5), "early_bird_flops": (282, 243, 197), "one_shot_flops": 605,
                    "energy_saving": (2.2, 4.7), "epochs": 160}


def early_bird_paper() -> str:
    """The paper's saving, said one way wherever a page compares with it."""
    paper = EARLY_BIRD_PAPER
    saved = [paper["one_shot_flops"] / flops for flops in paper["early_bird_flops"]]
    ratios = ", ".join(f"{r:g}" for r in paper["ratios"])
    return (f"the paper reports {span(saved, lambda v: times(v, 1))} fewer training FLOPs than one-shot pruning "
            f"(VGG-16 on CIFAR-100 at ratios {ratios}: {', '.join(map(str, paper['early_bird_flops']))} against "
            f"{paper['one_shot_flops']}) and {span(paper['energy_saving'], lambda v: times(v, 1))} less energy, on "
            f"{paper['epochs']}-epoch schedules")
