"""benchmarks/README.md's "Cost growth" (benchmarks/results/cost_growth.json)."""

from __future__ import annotations

import statistics

from render import block, results
from sections.common import command, table, times


def report() -> dict:
    return results("cost_growth")


def level_seconds(row: dict) -> float:
    return statistics.mean(row["imp_level_train_seconds"])


@block("cost_growth.table")
def cost_table() -> str:
    r = report()
    counts = list(r["rows"][0]["pools_search_seconds"])
    rows = [[row["model"], f"{row['macs'] / 1e6:.0f}M", f"{level_seconds(row):.1f}",
             " / ".join(f"{row['pools_search_seconds'][c]:.1f}" for c in counts),
             f"{row['early_bird_wall_seconds']:.1f}"] for row in r["rows"]]
    return (f"`benchmarks/results/cost_growth.json` (`benchmarks/cost_growth.py`: {command(r['common'])}, "
            f"{r['torch_threads']} threads):\n\n"
            + table(["model", "dense MACs",
                     f"IMP: training seconds per level (mean of {len(r['rows'][0]['imp_level_train_seconds'])})",
                     f"Lottery Pools: search seconds for {' / '.join(counts)} candidates",
                     "Early-Bird (a short search, one ratio): wall seconds"], rows))


@block("cost_growth.claims")
def claims() -> str:
    first, last = report()["rows"][0], report()["rows"][-1]
    return (f"Time grows more slowly than MACs on this small data ({times(last['macs'] / first['macs'], 1)} MACs from "
            f"{first['model']} to {last['model']}: {times(level_seconds(last) / level_seconds(first), 1)} time per "
            "level), because fixed costs (evaluation set-up, data, Python) weigh more on small models.\n")
