"""`python -m lt_plugin.particle_worker FOLDER LEVEL_FOLDER PARTICLE...`: train the given particles of one SWAMP level
of the run (or control) folder FOLDER, one after the other, in this one process (what each process of a SWAMP
level under accelerate launch runs its particles in; lt_plugin.strategies.swamp)."""

from __future__ import annotations

import sys
from typing import List

from .cli import guarded
from .strategies.swamp import train_particles


def main(argv: List[str]) -> int:
    return guarded(lambda: train_particles(argv[0], argv[1], [int(p) for p in argv[2:]]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
