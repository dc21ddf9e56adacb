"""README.md's Results: one line per strategy, each from the replicated benchmark that decides it (or, for speed, the
ratios measured side by side), with the verdicts the benchmark's own section gives."""

from __future__ import annotations

from render import block, made_before, results
from sections.acceptance import held_out_claim
from sections.baselines import lenet_findings
from sections.common import table, times
from sections.fidelity import early_bird_findings, lth_findings, pools_findings
from sections.successors import successors_findings

PAGE = "benchmarks/README.md"


def _link(text: str, anchor: str) -> str:
    return f"[{text}]({PAGE}#{anchor})"


def _fresh(name: str, part: str = "") -> str:
    """'' when the part includes every change to its method, else a short warning."""
    return "" if not made_before(name, part) else " (measured before a later change to its method: see details)"


def _channel_speed() -> str:
    """The speed of exported channel tickets against dense, timed in the same rounds (deploy_latency.json)."""
    r = results("deploy_latency")
    big = r["batches"][-1]
    rows = [row for row in r["latency"] if row["model"] == "resnet18"]
    best = max(rows, key=lambda row: row[f"torch_speedup_batch_{big}"])
    return (f"Exported channel tickets of resnet18 run faster than dense: at density {best['density']:.3f} "
            f"(`--round-to {best['round_to']}`) {times(best[f'torch_speedup_batch_{big}'])} in PyTorch and "
            f"{times(best[f'onnx_speedup_batch_{big}'])} in ONNX Runtime at batch {big} (the MACs allow "
            f"{times(best['macs_limit'])}; medians of {r['rounds']} rounds interleaved with dense)")


@block("readme.results")
def readme_results() -> str:
    lth = lth_findings()
    rows = [
        ["`imp`",
         f"LeNet-300-100 (`lth-lenet`), {lth['seeds']} seeds: tickets above dense at densities {lth['above_dense']}; "
         f"random reinitialisation below the ticket at {lth['reinit_below']}, random masks at {lth['mask_below']}; "
         f"tickets stop early sooner at {lth['sooner']}{_fresh('fidelity', 'lth')}. {_channel_speed()}.",
         _link("LTH", "lth-on-lenet-300-100-lth-figures-3-4") + ", "
         + _link("channel tickets", "rounded-channel-counts-where-tickets-ship")],
        ["`early-bird`", early_bird_findings() + _fresh("fidelity", "eb") + ".",
         _link("Early-Bird", "early-bird-on-cifar_resnet20-iclr-2020")],
        ["`prune-at-init`, `gradual`", lenet_findings() + _fresh("baselines", "lenet") + ".",
         _link("Baselines", "baselines-pruning-at-initialisation-and-gradual-magnitude-pruning")],
        ["`lottery-pools`", pools_findings() + _fresh("fidelity", "pools") + ". " + held_out_claim() + ".",
         _link("Lottery Pools", "lottery-pools-on-the-lth-run-aaai-2023") + ", "
         + _link("acceptance rule", "lottery-pools-which-acceptance-rule")],
        ["`sparse-model-soups`, `swamp`, `instant-soup`", successors_findings() + _fresh("successors") + ".",
         _link("Successors", "successors-of-lottery-pools-on-lenet-300-100")],
    ]
    return table(["command", "result, decided over seeds (Holm-adjusted paired tests)", "details"], rows)
