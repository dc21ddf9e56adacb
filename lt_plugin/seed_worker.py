"""`python -m lt_plugin.seed_worker RUN SEED...`: train the given seeds of the replicated run RUN, one after the other,
in this one process (what each process of `--parallel seeds` runs its seeds in; lt_plugin.replicates)."""

from __future__ import annotations

import sys
from typing import List, Sequence

from .branches.base import trainer_of
from .cli import guarded
from .experiment import data_loaded_once
from .layout import RunLayout
from .replicates import seed_strategy
from .store import read_json


def train_seeds(run_dir, seeds: Sequence[int]) -> None:
    layout = RunLayout(run_dir)
    strategy = trainer_of(read_json(layout.config))
    with data_loaded_once():
        for seed in seeds:
            seed_strategy(strategy, seed).run(layout.seed(seed).root)


def main(argv: List[str]) -> int:
    return guarded(lambda: train_seeds(argv[0], [int(seed) for seed in argv[1:]]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
