"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020; Renda et al. 2020).

Level 0 trains the dense model. Level L prunes the trained weights of level L-1, resets the survivors to the rewind
point and trains again. Run folder (lt_plugin.layout):

    config.json            hyperparameters, package versions, world size
    init.safetensors       theta_0, the dense initialisation
    level_L/mask.safetensors       the level's mask (dense space)
    level_L/train/                 the training run: checkpoints, metrics.jsonl, step_k.safetensors snapshots
                                   (level 0: theta_k, the rewind point, and --keep-steps; level L: the rewound
                                   ticket it starts from)
    level_L/weights.safetensors    trained weights mapped to the dense space
    level_L/result.json            written last: a level with it is finished and skipped on a rerun
    results.json, accuracy_vs_density.png

The random-reinit and random-mask controls are branches of a finished run (lt_plugin.branches.controls).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Tuple

import torch

from ..errors import RunFolderError, UserError
from ..experiment import Experiment
from ..layout import RunLayout
from ..levels import PrunedLevels, parse_rewind, rewind_point_step
from ..pipeline import train_ticket
from ..replicates import Replicates, run_replicates
from ..report import plot_accuracy_vs_density
from ..store import load_weights, read_json
from ..train.config import TrainConfig, final_lr, steps_per_epoch
from .base import LevelTickets, Strategy, start_training_run
from .registry import register_strategy


@register_strategy("imp")
@dataclasses.dataclass
class IMP(LevelTickets, Strategy, Replicates, PrunedLevels, TrainConfig, Experiment):
    """Iterative magnitude pruning with rewinding; one level is one-shot pruning."""

    rewind: str = dataclasses.field(default="init", metadata={
        "help": "init | <N>it | <N>ep (late rewinding) | lr (keep weights, rerun the LR schedule) | finetune "
                "(keep weights, final LR)"})
    keep_steps: list = dataclasses.field(default_factory=list, metadata={
        "help": "further points of the dense training (level 0) whose weights are kept, as <N>it or <N>ep, e.g. "
                "for instability analysis of this run's tickets from several rewind points"})

    def __post_init__(self):
        super().__post_init__()
        self.check_pruning_options()
        self.check_replicates()
        parse_rewind(self.rewind)
        for point in self.keep_steps:
            if parse_rewind(str(point))[0] not in ("init", "it", "ep"):
                raise UserError(f"--keep-steps are init, <N>it or <N>ep, not {point!r}")

    @classmethod
    def from_hparams(cls, hparams: dict) -> "IMP":
        if hparams.get("control"):
            raise RunFolderError(
                f"a {hparams['control']} control run made by an earlier lt_plugin, which pruned its own trained "
                "weights instead of keeping the ticket's masks; rerun it as a branch of its IMP run: lt-plugin imp "
                f"--control {hparams['control']} --run IMP_RUN")
        return super().from_hparams(hparams)

    # ---- where a ticket started (its tickets are levels: LevelTickets) ----
    def ticket_start(self, run_dir, key: str) -> Tuple[Dict[str, torch.Tensor], int]:
        """The rewind point: theta_0, or theta_k of level 0's training with its global step k."""
        kind, _ = parse_rewind(self.rewind)
        if kind not in ("init", "it", "ep"):
            raise UserError(f"the run rewinds by {self.rewind!r}: its tickets restart from trained weights, not from "
                            "a point a control could be drawn at (init, <N>it, <N>ep)")
        layout = RunLayout(run_dir)
        if kind == "init":
            return load_weights(layout.init), 0
        per_epoch = read_json(layout.level(0).result)["steps"] // self.epochs  # level 0 trains the whole schedule
        step = rewind_point_step(self.rewind, per_epoch)
        return load_weights(layout.level(0).train.step(step)), step

    # ---- the run ----
    def run(self, out_dir) -> List[dict]:
        if self.seeds:
            return run_replicates(self, out_dir)
        # Everything a user can get wrong is checked before the run folder gets its first file.
        run = start_training_run(self, out_dir)
        cfg, folder, data, example = run.cfg, run.folder, run.data, run.example
        dense = self.create_model(data.num_classes, seed=self.seed)
        prunable = self.prunable_of(dense)
        kind, _ = parse_rewind(self.rewind)
        per_epoch = steps_per_epoch(cfg, len(data.train))
        last = cfg.epochs * per_epoch
        rewind_step = rewind_point_step(self.rewind, per_epoch)
        if kind in ("it", "ep") and rewind_step >= last:
            raise UserError(f"--rewind {self.rewind} is step {rewind_step}, past the end of training ({last} steps)")
        kept = sorted({rewind_point_step(str(point), per_epoch) for point in self.keep_steps} | {rewind_step})
        if kept[-1] >= last:
            raise UserError(f"--keep-steps {' '.join(map(str, self.keep_steps))}: past the end of training ({last} "
                            "steps)")
        self.check_prunable(dense, example)
        self.check_run_folder(folder)
        layout = folder.layout
        folder.save_weights_once(layout.init, dense.state_dict())

        results = []
        for level in range(self.levels + 1):
            ticket = layout.level(level)
            done = folder.read_result(ticket)
            if done is not None:
                results.append(done)
                continue
            mask = folder.load_or_make_mask(ticket, lambda: self.next_mask(layout, level, dense, example, prunable))
            start_weights, start_step, level_cfg = self._start(layout, level, kind, rewind_step, cfg, data)
            # Level 0 keeps theta_k for rewinding; later levels keep their starting point, the rewound ticket.
            results.append(train_ticket(run, self, ticket, mask, start_weights, cfg=level_cfg, start_step=start_step,
                                        snapshot_steps=kept if level == 0 else [start_step], desc=f"level {level}",
                                        describe=lambda r, level=level: {"level": level, **r}))
        folder.write_results(results, plots={"accuracy_vs_density.png": lambda path: plot_accuracy_vs_density(
            results, path)})
        return results

    def _start(self, layout: RunLayout, level: int, kind: str, rewind_step: int, cfg: TrainConfig, data):
        """(dense start weights, start step, training config) for a level."""
        if level == 0 or kind == "init":
            return load_weights(layout.init), 0, cfg
        if kind in ("it", "ep"):
            return load_weights(layout.level(0).train.step(rewind_step)), rewind_step, cfg
        previous = load_weights(layout.level(level - 1).weights)
        if kind == "lr":
            return previous, 0, cfg
        constant = dataclasses.replace(cfg, sched="constant", warmup_epochs=0.0, lr=final_lr(cfg, len(data.train)))
        return previous, 0, constant

