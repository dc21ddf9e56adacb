"""benchmarks/results/lottery_pools_acceptance.json: which acceptance rule Lottery Pools uses by default
(benchmarks/lottery_pools_acceptance.py)."""

from __future__ import annotations

from lt_plugin.stats import paired_difference

from render import block, results, stale_note
from sections.common import adjusted, difference, family_note, percent, points, table

NETWORKS = {"lenet_300_100": "LeNet-300-100", "cifar_resnet20": "`cifar_resnet20`"}


def _harm(summary: dict) -> str:
    """'0 of 14 (95% upper bound 23.2%)': the pooled cases that lost test accuracy."""
    if not summary["pooled"]:
        return "none pooled"
    return f"{summary['harmed']} of {summary['pooled']} (95% upper bound {percent(summary['harm_upper_95'], 1)})"


def _summary_table(choice: dict, subset: str) -> str:
    rows = [[NETWORKS[network], f"`{rule}`", s["cases"], s["pooled"], points(s["mean_gain"]), _harm(s)]
            for rule, by_network in choice[subset].items() for network, s in by_network.items()]
    return table(["network", "rule", "(level, seed) cases", "pooled", "mean test gain (points)",
                  "pooled cases below the ticket on test"], rows)


def _separable(report: dict, network: str, a: str, b: str) -> dict:
    """`a`'s test gain minus `b`'s over the same (level, seed) cases, paired."""
    cases = {rule: {(c["seed"], c["level"]): c["gain"] for c in report["networks"][network][rule]["cases"]}
             for rule in (a, b)}
    shared = sorted(set(cases[a]) & set(cases[b]))
    return paired_difference([cases[a][k] for k in shared], [cases[b][k] for k in shared])


def held_out_claim() -> str:
    """The default rule in a sentence: chosen on the selection seeds, read on the held-out ones."""
    report = results("lottery_pools_acceptance")
    choice = report["choice"]
    default = choice["default"]
    said = [f"{NETWORKS[n]} {s['pooled']} of {s['cases']} cases pooled, {points(s['mean_gain'])} points on average, "
            f"harm {_harm(s)}" for n, s in choice["held_out"][default].items()]
    return (f"The default rule `{default}` was chosen on some seeds; on the held-out seeds: " + "; ".join(said))


@block("acceptance")
def acceptance() -> str:
    report = results("lottery_pools_acceptance")
    choice = report["choice"]
    seeds = choice["selection_seeds"]
    default = choice["default"]
    parts = []
    for network in report["networks"]:
        note = stale_note("lottery_pools_acceptance", f"networks.{network}")
        if note:
            parts.append(f"{NETWORKS[network]}: {note}")
    missing = [NETWORKS[n] for n in NETWORKS if n not in report["networks"]]
    lines = [
        "".join(parts),
        (f"Not measured with today's recipes: {', '.join(missing)} (`--networks cifar_resnet20` runs it); the choice "
         f"rests on {', '.join(NETWORKS[n] for n in report['networks'])} alone.\n" if missing else ""),
        "The rule is chosen on the cases of the selection seeds ("
        + "; ".join(f"{NETWORKS[n]}: {', '.join(map(str, s))}" for n, s in seeds.items())
        + f"), among the rules whose pooled cases lost test accuracy at most {percent(report['significance'], 0)} "
          "of the time there; its gains are then read on the other seeds, which took no part in the choice.\n",
        "On the selection seeds:\n", _summary_table(choice, "selection"),
        f"\nEligible: {', '.join(f'`{r}`' for r in choice['eligible']) or 'none'}. "
        f"**The default is `{default}`**: the largest mean test gain among them on the selection seeds.\n",
        "On the held-out seeds:\n", _summary_table(choice, "held_out"), "",
    ]
    for network in report["networks"]:
        chosen_from = {rule: choice["selection"][rule][network] for rule in choice["eligible"]}
        bounds = [f"`{rule}` {_harm(s)}" for rule, s in chosen_from.items()
                  if s["pooled"] and s["harmed"] == 0 and s["harm_upper_95"] > report["significance"]]
        if bounds:
            lines.append(f"On {NETWORKS[network]}'s selection seeds, " + "; ".join(bounds) + ": these cases show no "
                         f"harm, but too few pooled cases to show a harm rate under "
                         f"{percent(report['significance'], 0)}.\n")
    if default:
        gaps = {(network, other): _separable(report, network, default, other)
                for network in report["networks"] for other in choice["eligible"] if other != default}
        for (network, other), gap in adjusted(gaps).items():
            lines.append(f"On {NETWORKS[network]}, `{default}` minus `{other}` over the same (level, seed) cases, all "
                         f"seeds: {difference(gap)} points ({gap['verdict']}): "
                         + ("these cases cannot tell the two rules apart." if gap["verdict"] in
                            ("within noise", "no spread") else "the cases separate the two rules.") + "\n")
    for network, rules in report["networks"].items():
        tests = {(rule, r["level"]): r["test_gain"] for rule, measured in rules.items() for r in measured["levels"]}
        family = adjusted(tests)
        names = list(rules)
        rows = [[f"{r['density']:.3f}", *[difference(family[(rule, r["level"])]) for rule in names]]
                for r in rules[names[0]]["levels"]]
        lines += [f"Per level on {NETWORKS[network]} (pooled minus ticket on test, points, paired over the seeds):\n",
                  table(["density", *[f"`{rule}`" for rule in names]], rows),
                  family_note(family, f"this network's levels and rules") + "\n"]
    return "\n".join(lines)
