"""Replicates: the same experiment once per seed, and the aggregate over the seeds (open_lth's `--replicate`; every
lottery-ticket paper's figure is a mean over trials with its spread).

`--seeds 0 1 2` on a training strategy runs it once per seed, each seed a complete run folder of its own
(`RUN/seed_S/`, resumable and kill -9 safe like any run), sequentially in one process that loads the data once. The
run's own results.json, table and plot aggregate the seeds: per ticket (level, ratio...), every numeric entry's mean,
its sample standard deviation and a 95% Student-t confidence interval, with the per-seed values kept
(lt_plugin.stats). A branch of a replicated run works seed by seed into its own `seed_S/` folders and aggregates
the same way.

`--parallel seeds` under `accelerate launch` with P processes gives each process its own seeds (seeds[i::P]), each
trained in a process of its own on its own device with no gradient all-reduce: for the papers' small networks this
scales with the number of devices where data parallelism does not, and each seed's run is the run a single process
makes of it. `python -m lt_plugin.seed_worker RUN SEED...` is that process.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from typing import Dict, List, Mapping, Sequence

from .errors import UserError
from .experiment import data_loaded_once
from .layout import RunLayout
from .report import plot_with_intervals
from .run_folder import RunFolder
from .stats import summarize
from .store import read_json
from .train.config import make_accelerator, train_config_of

PARALLEL = ("none", "seeds")
# Environment variables that make a launched process one of several; a seed's own process goes without them.
_DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
KEY_FIELDS = ("level", "ratio", "rewind_point")  # what names a ticket's row in a results.json


@dataclasses.dataclass
class Replicates:
    """The replicate options of a training strategy."""

    seeds: list = dataclasses.field(default_factory=list, metadata={
        "type": int, "help": "run the experiment once per seed, each into RUN/seed_S (its own run folder, resumable); "
                             "RUN's results, table and plot give every accuracy's mean and 95% interval over them"})
    parallel: str = dataclasses.field(default="none", metadata={
        "choices": PARALLEL, "help": "seeds: under accelerate launch with P processes, each process trains its own "
                                     "seeds on its own device, no gradient all-reduce (the papers' small networks); "
                                     "none: every seed uses all processes (data parallel)"})

    def check_replicates(self) -> None:
        seeds = list(self.seeds)
        if any(not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2**31 for s in seeds):
            raise UserError(f"--seeds must be whole numbers in [0, 2**31), not {seeds}")
        if len(set(seeds)) != len(seeds):
            raise UserError(f"--seeds has a seed twice: {seeds}")
        if self.parallel == "seeds" and not seeds:
            raise UserError("--parallel seeds needs --seeds")


def seed_strategy(strategy, seed: int):
    """The strategy of one seed of a replicated run: its options, that seed, no replicates."""
    return dataclasses.replace(strategy, seed=seed, seeds=[], parallel="none")


def aggregate(results_by_seed: Mapping[int, Sequence[dict]]) -> List[dict]:
    """One row per ticket (matched by its level, ratio or rewind point) over the seeds: the entries every seed's row
    has alike are copied; each numeric entry m becomes its mean, with `m_std`, `m_ci` ([low, high], 95%) and
    `m_values` (one per seed, in `seeds` order, None where a seed lacks it); `seeds` and `n_seeds` say which."""
    seeds = list(results_by_seed)
    rows: Dict[tuple, Dict[int, dict]] = {}
    for seed in seeds:
        for row in results_by_seed[seed]:
            rows.setdefault(tuple(row.get(k) for k in KEY_FIELDS), {})[seed] = row
    out = []
    for by_seed in rows.values():
        first = next(iter(by_seed.values()))
        row = {"seeds": [s for s in seeds if s in by_seed], "n_seeds": len(by_seed)}
        for name in first:
            values = [by_seed[s].get(name) if s in by_seed else None for s in seeds]
            present = [v for v in values if v is not None]
            if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present) \
                    and name not in KEY_FIELDS:
                summary = summarize(values)
                if len(set(present)) == 1:  # one value (a level's density, say): itself, not a rounded mean
                    summary["mean"] = summary["ci_low"] = summary["ci_high"] = present[0]
                row.update({name: summary["mean"], f"{name}_std": summary["std"],
                            f"{name}_ci": [summary["ci_low"], summary["ci_high"]], f"{name}_values": values})
            elif all(v == first[name] for v in present):
                row[name] = first[name]
        out.append(row)
    return out


def interval_text(row: dict, name: str, percent: bool = True) -> str:
    """'mean ± half-width of the 95% interval', or the mean alone for one seed."""
    mean, (low, high) = row.get(name), row.get(f"{name}_ci", [None, None])
    if mean is None:
        return "-"
    fmt = "{:.2%}" if percent else "{:.0f}"
    if low is None:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format((high - low) / 2)}"


def interval_points(rows: Sequence[dict], name: str) -> list:
    """(density, mean, low, high) of one entry, for `report.plot_with_intervals`."""
    return [(r["density"], r.get(name), *r.get(f"{name}_ci", [None, None])) for r in rows
            if r.get("density") is not None and r.get(name) is not None]


REPLICATE_COLUMNS = (("level", "level", "{}"), ("ratio", "ratio", "{:g}"), ("rewind_point", "rewind", "{}"),
                     ("density", "density", "{:.4f}"), ("n_seeds", "seeds", "{}"),
                     ("test_accuracy_text", "test acc (95% CI)", "{}"), ("val_accuracy_text", "val acc", "{}"),
                     ("early_stop_step_text", "early-stop it.", "{}"),
                     ("early_stop_test_accuracy_text", "test acc at early stop", "{}"),
                     ("barrier_text", "barrier", "{}"))


def table_rows(rows: Sequence[dict]) -> List[dict]:
    """The aggregate rows with their intervals as text, for `REPLICATE_COLUMNS`."""
    texts = {"test_accuracy": True, "val_accuracy": True, "early_stop_step": False, "early_stop_test_accuracy": True,
             "barrier": True}
    return [{**r, **{f"{name}_text": interval_text(r, name, percent) for name, percent in texts.items()
                     if r.get(name) is not None}} for r in rows]


def write_aggregate(folder, rows: List[dict], title: str) -> None:
    """The replicated run's results.json, its table and its plot (accuracy with bands; the early-stopping iteration
    beside it where the seeds have one), through the run folder's results writer."""
    accuracy = {"mean over seeds": interval_points(rows, "test_accuracy")}
    steps = {"mean over seeds": interval_points(rows, "early_stop_step")} if any(
        r.get("early_stop_step") is not None for r in rows) else None
    plots = {"accuracy_vs_density.png": lambda path: plot_with_intervals(accuracy, path, title, steps)} \
        if accuracy["mean over seeds"] else {}
    folder.write_results(rows, plots=plots, columns=REPLICATE_COLUMNS, rows=table_rows(rows))


def run_replicates(strategy, out_dir) -> List[dict]:
    """Run `strategy` once per seed of `strategy.seeds` into `out_dir/seed_S` and aggregate them in `out_dir`."""
    strategy.check_replicates()
    layout = RunLayout(out_dir)
    accelerator = make_accelerator(dataclasses.replace(train_config_of(strategy), log_with=None))
    folder = RunFolder(out_dir, accelerator)
    parallel = strategy.parallel == "seeds" and accelerator.num_processes > 1
    strategy.check_run_folder(folder)
    if parallel:
        mine = strategy.seeds[accelerator.process_index::accelerator.num_processes]
        _run_in_own_process(layout, mine, accelerator.local_process_index)
        accelerator.wait_for_everyone()
    else:
        with data_loaded_once():
            for seed in strategy.seeds:
                seed_strategy(strategy, seed).run(layout.seed(seed).root)
    rows = aggregate({seed: read_json(layout.seed(seed).results) for seed in strategy.seeds})
    write_aggregate(folder, rows, f"{strategy.name}: {strategy.model}, seeds {', '.join(map(str, strategy.seeds))}")
    return rows


def _run_in_own_process(layout: RunLayout, seeds: List[int], local_index: int) -> None:
    """This process's seeds, trained in a process of its own (`python -m lt_plugin.seed_worker`)."""
    if seeds:
        run_in_own_process(["lt_plugin.seed_worker", str(layout.root), *map(str, seeds)], local_index,
                           f"seeds {' '.join(map(str, seeds))}")


def run_in_own_process(module_args: Sequence[str], local_index: int, what: str) -> None:
    """`python -m MODULE ARGS...` in a process of its own: one process, its own device (the local rank's GPU where
    there are GPUs), no process group (what `--parallel seeds` trains a seed in, and SWAMP a particle)."""
    env = {k: v for k, v in os.environ.items() if k not in _DISTRIBUTED_ENV}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else None
    env["CUDA_VISIBLE_DEVICES"] = devices[local_index] if devices and local_index < len(devices) else \
        str(local_index)
    done = subprocess.run([sys.executable, "-m", *module_args], env=env)
    if done.returncode:
        raise UserError(f"the process of {what} failed (exit code {done.returncode}); rerun the same command to "
                        "resume")
