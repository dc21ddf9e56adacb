"""The controls that show a ticket matters (Frankle & Carbin 2019, Figures 3-4 and their random controls; open_lth's
`randomly_reinitialize` and `randomly_prune` lottery branches), as branches of a finished run: each trains, level by
level, a network that differs from the run's ticket in one thing only.

- `random-reinit`: the ticket's own mask, a fresh initialisation, started at the run's rewind step;
- `random-mask`: the ticket's exact count of kept weights in every tensor (weight tickets) or of kept channels in
  every Torch-Pruning group (channel tickets), at positions drawn at random, on the run's own rewind-point weights
  (theta_0, or theta_k of its dense training); each level's mask is drawn on its own, as open_lth's branch draws it.

What is drawn at random comes from the control's --seed and the run's seed together (`draw_seed`), never the run's
seed alone, so every replicate of a run gets its own control and the ticket's initialisation is never drawn again.

Both train with the run's training options, data order included (its --seed), so the ticket and its control form a
pair that `lt-plugin compare` can difference; each level trains as the run's strategy trains a level
(`Strategy.train_level_ticket`: one training, or SWAMP's particles averaged). They read IMP runs and runs of any
strategy whose tickets have a rewind point (`Strategy.ticket_start`). Folder (RUN/controls/NAME unless --out), laid out as an IMP run:
    config.json, level_L/{mask.safetensors, train/, weights.safetensors, result.json}, results.json, plot
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from ..errors import UserError
from ..layout import RunLayout
from ..masks import Mask, resolve_ignored
from ..report import plot_accuracy_vs_density
from ..store import atomic_write_json, read_json
from ..strategies.base import TicketFiles, level_ticket, start_training_run
from ..structure import ChannelStructure, export
from .base import Branch, FinishedRun, trainer_of
from .base import register_branch


@torch.no_grad()
def shuffled_like(mask: Mask, seed: int) -> Mask:
    """A weight mask with exactly `mask`'s count of kept entries in every tensor, at positions drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, keep in mask.tensors.items():
        flat = torch.zeros(keep.numel(), dtype=torch.bool)
        flat[torch.randperm(keep.numel(), generator=generator)[: int(keep.sum())]] = True  # drawn on the CPU
        tensors[name] = flat.reshape(keep.shape)
    return Mask(tensors, mask.prunable, mask.granularity)


@dataclasses.dataclass
class Control(Branch):
    """A control of a finished run's tickets: trains each level again with one thing changed."""

    reads = ()  # any run whose tickets have a rewind point

    seed: int = dataclasses.field(default=0, metadata={
        "help": "seed of the control's random draw (a fresh initialisation, or the masks' positions), drawn with "
                "the run's own seed; the run's seed still sets the data order"})
    targets: list = dataclasses.field(default_factory=lambda: ["pruned"], metadata={
        "help": "the run's levels to control: pruned (every level but the dense one), all, or level numbers"})

    def __post_init__(self):
        super().__post_init__()
        targets = [str(t) for t in self.targets]
        if targets not in (["pruned"], ["all"]) and not (targets and all(t.isdigit() for t in targets)):
            raise UserError(f"--targets must be pruned, all or level numbers, not {' '.join(targets) or 'nothing'}")
        self.targets = targets if not targets[0].isdigit() else sorted({int(t) for t in targets})

    # ---- where the tickets are: levels, built as the run's model ----
    @classmethod
    def ticket_keys(cls, run_dir) -> List[str]:
        return [str(level) for level in RunLayout(run_dir).finished_levels()]

    @classmethod
    def locate_ticket(cls, run_dir, key: str) -> TicketFiles:
        return level_ticket(run_dir, key, trainer_of(read_json(RunLayout(run_dir).source_config)))

    # ---- the run ----
    def run_branch(self, source: FinishedRun, out: Path) -> List[dict]:
        keys = [int(key) for key in source.keys()]
        if self.targets in (["pruned"], ["all"]):
            levels = [k for k in keys if self.targets == ["all"] or source.mask(k).num_pruned()]
        else:
            levels = list(self.targets)
        unknown = [str(level) for level in levels if level not in keys]
        if unknown:
            raise UserError(f"--targets {' '.join(unknown)}: the run has levels {', '.join(map(str, keys))}")
        self.check_levels(source, levels)
        trainer = source.trainer  # the run's model, data and training, its seed (the data order) included
        run = start_training_run(trainer, out)
        self.check_run_folder(run.folder)
        layout = run.folder.layout
        if run.folder.is_main and not layout.source_config.exists():
            atomic_write_json(source.trainer_config, layout.source_config)
        results = []
        for level in levels:
            ticket = layout.level(level)
            done = run.folder.read_result(ticket)
            if done is None:
                start_state, start_step = self.start(source, level, run)
                mask = run.folder.load_or_make_mask(ticket, lambda: self.mask_of(source, level, run))
                done = trainer.train_level_ticket(
                    run, ticket, mask, start_state, level=level, start_step=start_step, snapshot_steps=[start_step],
                    desc=f"{self.name} level {level}", describe=lambda r, level=level: {
                        "level": level, "control": self.name, "control_seed": self.draw_seed(source), **r})
            results.append(done)
        run.folder.write_results(results, plots={"accuracy_vs_density.png": lambda path: plot_accuracy_vs_density(
            results, path, title=f"{self.name} control: test accuracy against density")})
        return results

    def check_levels(self, source: FinishedRun, levels: List[int]) -> None:
        """A UserError, before anything is written, if the run's tickets cannot have this control."""
        if levels:
            source.start(levels[0])  # a run whose tickets have no rewind point says so

    def draw_seed(self, source: FinishedRun) -> int:
        """The seed of the control's draws for the run `source`: --seed and the run's seed together, never a seed
        a run of seeds under 100,003 draws its own initialisation with."""
        return (self.seed + 1) * 100_003 + source.trainer.seed

    @abc.abstractmethod
    def start(self, source: FinishedRun, level: int, run) -> Tuple[Dict[str, torch.Tensor], int]:
        """(dense weights, global step) the control of `level` trains from."""

    @abc.abstractmethod
    def mask_of(self, source: FinishedRun, level: int, run) -> Mask:
        """The control's mask at `level`."""


@register_branch("random-reinit")
@dataclasses.dataclass
class RandomReinit(Control):
    """The ticket's mask with a fresh initialisation (Frankle & Carbin's random reinitialisation)."""

    def start(self, source: FinishedRun, level: int, run):
        _, step = source.start(level)  # the run's rewind step: the schedule continues from there
        fresh = source.trainer.create_model(run.data.num_classes, seed=self.draw_seed(source), pretrained=False)
        return fresh.state_dict(), step

    def mask_of(self, source: FinishedRun, level: int, run) -> Mask:
        return source.mask(level)


@register_branch("random-mask")
@dataclasses.dataclass
class RandomMask(Control):
    """The ticket's per-layer counts at random positions, on the run's own rewind-point weights."""

    def start(self, source: FinishedRun, level: int, run):
        return source.start(level)

    def mask_of(self, source: FinishedRun, level: int, run) -> Mask:
        ticket = source.mask(level)
        seed = self.draw_seed(source) * 1000 + level
        if ticket.granularity == "weight":
            return shuffled_like(ticket, seed)
        model = source.trainer.create_model(run.data.num_classes, seed=0, pretrained=False)  # the architecture
        structure = ChannelStructure(model, run.example, resolve_ignored(model, getattr(source.trainer, "ignore", [])))
        mask = structure.random_like(ticket, None, seed)
        export(model, mask, run.example)  # the random groups must still give a working model
        return mask
