"""SWAMP: Sparse Weight Averaging with Multiple Particles (Choi, Lee, Nam, Lee; ICLR 2024, arXiv 2305.14852).

IMP with rewinding whose every level trains N particles instead of one: all start from the level's rewound ticket
(theta_k, the mask applied) at step k and differ in their SGD noise (the data order, augmentation, dropout: each its
own seed); each trains with stochastic weight averaging under the mask (lt_plugin.swa: torch's AveragedModel, SWALR,
update_bn); the particles' averages are averaged (the mean of their tensors, the mask's pruned entries zero), and
BatchNorm statistics recomputed. That average is the level's ticket, and the next level's mask is one magnitude
pruning of it (IMP's, global by default). SWAMP+ (`swamp_plus`): one particle at the levels before it, N after.

theta_k comes from one training of the dense network from theta_0 to step k (level_0/train, stopped there); with
--rewind init the particles start at theta_0. Under `accelerate launch` with P processes the particles of a level
train in parallel, particle p in process p % P, each a process of its own with no gradient all-reduce (the
`--parallel seeds` pattern, `python -m lt_plugin.particle_worker`); on one process one after the other.

Run folder (lt_plugin.layout):
    config.json, init.safetensors        hyperparameters; theta_0
    level_0/train/                       the dense training from theta_0 to theta_k (step_k.safetensors)
    level_L/mask.safetensors             the level's mask
    level_L/start.safetensors            the rewound ticket the particles start from (metadata: its step)
    level_L/particle_P/                  each particle: train/ (its fit, swa_average.safetensors), its SWA
                                         average's weights (BatchNorm recomputed) and result.json
    level_L/weights.safetensors          the particles' average, BatchNorm recomputed: the level's ticket
    level_L/result.json                  written last
    results.json, swamp.png
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional, Tuple

import torch

from ..callbacks import Lambda, Snapshots
from ..errors import UserError
from ..layout import RunLayout, TicketFolder
from ..levels import parse_rewind, rewind_point_step
from ..masks import Mask
from ..pipeline import ticket_cost, train_ticket
from ..replicates import run_in_own_process, run_replicates
from ..report import plot_accuracy_curves
from ..schedules import training_step
from ..scoring import BN_BATCH_SIZE, Scorer
from ..store import atomic_save_safetensors, load_weights, read_json, read_safetensors
from ..swa import StochasticWeightAveraging, SWASchedule, average_of, average_under_mask
from ..train.config import TrainConfig, steps_per_epoch
from ..train.loop import fit
from .base import start_training_run
from .imp import IMP
from .registry import get_strategy_class, register_strategy
from .soups import recalibrated

_TABLE = (("level", "level", "{}"), ("density", "density", "{:.4f}"), ("particles", "particles", "{}"),
          ("test_accuracy", "average test", "{:.2%}"), ("val_accuracy", "average val", "{:.2%}"),
          ("best_particle_test_accuracy", "best particle test", "{:.2%}"),
          ("particles_mean_test_accuracy", "particles' mean test", "{:.2%}"),
          ("train_seconds", "train seconds", "{:.1f}"))


def particle_seed(seed: int, particle: int) -> int:
    """The seed of particle p's SGD noise: the run's own for particle 0 (a one-particle level trains as IMP's
    level does), and one no small run seed uses for the others, so replicates never share a data order."""
    return seed if particle == 0 else ((seed + 1) * 100_003 + particle) % 2**31


@register_strategy("swamp")
@dataclasses.dataclass
class SWAMP(IMP):
    """IMP whose every level averages particles trained with SWA from the rewound ticket (Choi et al.)."""

    particles: int = dataclasses.field(default=4, metadata={
        "help": "particles per level: trainings from the same rewound ticket that differ in their SGD noise"})
    swa_start: str = dataclasses.field(default="0.5", metadata={
        "help": "where SWA starts, as <N>it, <N>ep or a fraction of the training: the learning rate anneals to "
                "--swa-lr from there, and the average takes the weights every --swa-every after it"})
    swa_every: str = dataclasses.field(default="1ep", metadata={
        "help": "optimizer steps between two updates of a particle's average, as <N>it, <N>ep or a fraction of "
                "the training (the SWA code SWAMP follows: once per epoch)"})
    swa_lr: Optional[float] = dataclasses.field(default=None, metadata={
        "type": float, "help": "the constant learning rate of SWA (default: half of --lr; the paper's 0.05 "
                               "against its 0.1)"})
    swamp_plus: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "SWAMP+: levels before this one train one particle (with SWA), levels from it on "
                             "--particles (default: every level --particles)"})
    bn_fraction: float = dataclasses.field(default=1.0, metadata={
        "help": "fraction of the training set each average's BatchNorm statistics are recomputed on (1: a full "
                "pass, as torch's update_bn and the SWA code)"})

    def __post_init__(self):
        super().__post_init__()
        if parse_rewind(self.rewind)[0] not in ("init", "it", "ep"):
            raise UserError(f"swamp rewinds to init or theta_k (<N>it, <N>ep), not {self.rewind!r}: its particles "
                            "start from the rewound ticket")
        if self.keep_steps:
            raise UserError("--keep-steps: swamp's dense training stops at the rewind point, theta_k; it keeps no "
                            "later weights")
        if self.particles < 1:
            raise UserError(f"--particles must be 1 or more, not {self.particles}")
        if self.swa_lr is not None and not self.swa_lr > 0:
            raise UserError(f"--swa-lr must be positive, not {self.swa_lr}")
        if self.swamp_plus is not None and not 0 <= self.swamp_plus <= self.levels:
            raise UserError(f"--swamp-plus is the first level with --particles particles, in 0..{self.levels}, not "
                            f"{self.swamp_plus}")
        if not 0.0 < self.bn_fraction <= 1.0:
            raise UserError(f"--bn-fraction must be in (0, 1], not {self.bn_fraction}")
        training_step(str(self.swa_start), "--swa-start", 1, 1)  # the form; the steps once the data are known
        training_step(str(self.swa_every), "--swa-every", 1, 1)

    # ---- the options as steps ----
    def particles_at(self, level: Optional[int]) -> int:
        """The particles of `level`: one before --swamp-plus, --particles from it on."""
        plus = self.swamp_plus is not None and level is not None and level < self.swamp_plus
        return 1 if plus else self.particles

    def swa_schedule(self, cfg: TrainConfig, per_epoch: int, start_step: int) -> SWASchedule:
        """The particles' SWA in a training of `cfg` rewound to `start_step`; a UserError when it has no update."""
        last = cfg.epochs * per_epoch
        start = training_step(str(self.swa_start), "--swa-start", last, per_epoch)
        every = training_step(str(self.swa_every), "--swa-every", last, per_epoch)
        if every < 1:
            raise UserError(f"--swa-every {self.swa_every} is less than one optimizer step ({per_epoch} per epoch)")
        if start < start_step:
            raise UserError(f"--swa-start {self.swa_start} is step {start}, before the rewind point (step "
                            f"{start_step}) the particles start from")
        if start + every > last:
            raise UserError(f"--swa-start {self.swa_start} is step {start}: with --swa-every {self.swa_every} the "
                            f"first average would be at step {start + every}, past the end of training ({last} "
                            "steps)")
        return SWASchedule(start, every, self.swa_lr if self.swa_lr is not None else cfg.lr / 2, anneal_steps=every)

    def particle_config(self, cfg: TrainConfig, particle: int) -> TrainConfig:
        """Particle p trains with its own seed (data order, augmentation, dropout); its average has no
        early-stopping iteration (validation every N steps would only cost)."""
        return dataclasses.replace(cfg, seed=particle_seed(cfg.seed, particle), eval_every=0)

    def bn_batches(self, train_size: int) -> Optional[int]:
        return None if self.bn_fraction == 1.0 else max(1, round(self.bn_fraction * train_size / BN_BATCH_SIZE))

    # ---- the run ----
    def run(self, out_dir) -> List[dict]:
        if self.seeds:
            return run_replicates(self, out_dir)
        run = start_training_run(self, out_dir)
        cfg, folder, data, example = run.cfg, run.folder, run.data, run.example
        dense = self.create_model(data.num_classes, seed=self.seed)
        prunable = self.prunable_of(dense)
        per_epoch = steps_per_epoch(cfg, len(data.train))
        rewind_step = rewind_point_step(self.rewind, per_epoch)
        if rewind_step >= cfg.epochs * per_epoch:
            raise UserError(f"--rewind {self.rewind} is step {rewind_step}, past the end of training "
                            f"({cfg.epochs * per_epoch} steps)")
        self.swa_schedule(cfg, per_epoch, rewind_step)
        self.check_prunable(dense, example)
        self.check_run_folder(folder)
        layout = folder.layout
        folder.save_weights_once(layout.init, dense.state_dict())
        results = []
        for level in range(self.levels + 1):
            ticket = layout.level(level)
            done = folder.read_result(ticket)
            if done is None:
                mask = folder.load_or_make_mask(ticket, lambda: self.next_mask(layout, level, dense, example,
                                                                               prunable))
                done = self.train_level_ticket(run, ticket, mask, self.rewind_weights(run, rewind_step),
                                               level=level, start_step=rewind_step, desc=f"level {level}",
                                               describe=lambda r, level=level: {
                                                   "level": level, **r, "cost_epochs": r["cost_epochs"] + (
                                                       rewind_step / per_epoch if level == 0 else 0.0)})
            results.append(done)
        curves = {name: [(r["density"], r[f"{name}_test_accuracy"]) for r in results]
                  for name in ("best_particle", "particles_mean")}
        curves["average"] = [(r["density"], r["test_accuracy"]) for r in results]
        folder.write_results(results, columns=_TABLE, plots={"swamp.png": lambda path: plot_accuracy_curves(
            curves, path, None, title="SWAMP: test accuracy against density")})
        return results

    def rewind_weights(self, run, step: int) -> Dict[str, torch.Tensor]:
        """theta_k: theta_0 for k = 0, else the dense training from theta_0 stopped at step k (level_0/train)."""
        layout = run.folder.layout
        if step == 0:
            return load_weights(layout.init)
        files = layout.level(0).train
        if not files.step(step).exists():
            model = self.create_model(run.data.num_classes, seed=self.seed, pretrained=False)
            model.load_state_dict(load_weights(layout.init))
            fit(model, run.data.train, run.data.val, dataclasses.replace(run.cfg, eval_every=0), files.root,
                accelerator=run.accelerator, desc="level 0 to the rewind point",
                callbacks=[Snapshots([step]), Lambda(after_optimizer_step=lambda s: True if s.step >= step else None)])
        return load_weights(files.step(step))

    # ---- a level: its particles, then their average ----
    def train_level_ticket(self, run, ticket: TicketFolder, mask: Mask, start_state, *, level=None, start_step=0,
                           desc="train", describe=None, snapshot_steps=()) -> dict:
        """The level's particles trained from (`start_state`, `mask`) at `start_step`, in parallel processes under
        accelerate launch, then averaged; the result of the average, which `ticket` holds. The start file keeps the
        rewound ticket (`snapshot_steps`, one training's way of keeping it, has nothing to add)."""
        done = run.folder.read_result(ticket)
        if done is not None:
            return done
        count = self.particles_at(level)
        accelerator = run.accelerator
        if run.folder.is_main and not ticket.start.exists():
            atomic_save_safetensors({k: v.detach().cpu() for k, v in start_state.items()}, ticket.start,
                                    {"step": json.dumps(start_step)})
        accelerator.wait_for_everyone()
        if accelerator.num_processes > 1:
            mine = [p for p in range(accelerator.process_index, count, accelerator.num_processes)
                    if not ticket.particle(p).finished]
            if mine:
                run_in_own_process(["lt_plugin.particle_worker", str(run.folder.path), str(ticket.root),
                                    *map(str, mine)], accelerator.local_process_index,
                                   f"particles {' '.join(map(str, mine))} of {ticket.root}")
            accelerator.wait_for_everyone()
        else:
            for p in range(count):
                self.train_particle(run, ticket, mask, p, desc)
        return self.average_particles(run, ticket, mask, count, start_step, describe)

    def train_particle(self, run, ticket: TicketFolder, mask: Mask, particle: int, desc: str = "train") -> dict:
        """Particle `particle` of the level `ticket`, from its start file: trained with SWA under the mask, its
        average's BatchNorm statistics recomputed, scored and finished in its folder."""
        start_state, start_step = start_of(ticket)
        cfg = self.particle_config(run.cfg, particle)
        schedule = self.swa_schedule(cfg, steps_per_epoch(cfg, len(run.data.train)), start_step)
        folder = ticket.particle(particle)
        dense_mask = mask if mask.granularity == "weight" and mask.num_pruned() else None

        def to_average(trained) -> None:
            trained.model.load_state_dict(average_of(folder.train.root))
            Scorer(run.data, run.accelerator, run.cfg, run.example, trained.model, self.seed,
                   self.bn_batches(len(run.data.train))).recalibrate(trained.model, dense_mask)

        return train_ticket(run, self, folder, mask, start_state, cfg=cfg, start_step=start_step,
                            desc=f"{desc} particle {particle}", after_fit=to_average,
                            callbacks=lambda model: [StochasticWeightAveraging(schedule, dense_mask)],
                            describe=lambda r: {"particle": particle, "seed": cfg.seed,
                                                "swa_updates": len(schedule.update_steps(start_step, r["steps"])),
                                                **r})

    def average_particles(self, run, ticket: TicketFolder, mask: Mask, count: int, start_step: int,
                          describe=None) -> dict:
        """The particles' averages averaged under the mask (read one at a time), BatchNorm statistics recomputed,
        scored beside the best particle and the particles' mean; the level's ticket finished."""
        particles = [read_json(ticket.particle(p).result) for p in range(count)]
        device = run.accelerator.device
        states = ({k: v.to(device) for k, v in load_weights(ticket.particle(p).weights).items()}
                  for p in range(count))
        template = self.create_model(run.data.num_classes, seed=0, pretrained=False)
        scorer = Scorer(run.data, run.accelerator, run.cfg, run.example, template, self.seed,
                        self.bn_batches(len(run.data.train)))
        state = recalibrated(scorer, average_under_mask(states, mask), mask)
        model = scorer.materialise(state, mask)
        scores = scorer.scores({"average": model})
        macs, params = ticket_cost(model, mask, scorer.example)
        best = max(range(count), key=lambda p: particles[p]["val_accuracy"])
        per_epoch = steps_per_epoch(run.cfg, len(run.data.train))
        result = {"density": mask.density, "params": params, "macs": macs, "num_classes": run.data.num_classes,
                  "precision": run.accelerator.mixed_precision, "particles": count,
                  "val_accuracy": scores["average_val_accuracy"], "test_accuracy": scores["average_test_accuracy"],
                  "best_particle": best, "best_particle_val_accuracy": particles[best]["val_accuracy"],
                  "best_particle_test_accuracy": particles[best]["test_accuracy"],
                  "particles_mean_test_accuracy": sum(r["test_accuracy"] for r in particles) / count,
                  "particle_results": [{k: r.get(k) for k in ("particle", "seed", "val_accuracy", "test_accuracy",
                                                              "train_seconds", "swa_updates")} for r in particles],
                  "train_seconds": sum(r["train_seconds"] for r in particles), "steps": particles[0]["steps"],
                  "rewind_step": start_step,
                  "cost_epochs": count * (particles[0]["steps"] - start_step) / per_epoch}  # the particles' epochs
        if describe is not None:
            result = describe(result)
        run.folder.finish_ticket(ticket, {k: v.cpu() for k, v in state.items()}, result)
        return result


def start_of(ticket: TicketFolder) -> Tuple[Dict[str, torch.Tensor], int]:
    """(weights, global step) the particles of a level start from (its start file)."""
    tensors, metadata = read_safetensors(ticket.start)
    return tensors, json.loads(metadata["step"])


def train_particles(folder, ticket_dir, particles: List[int]) -> None:
    """The particles of the level `ticket_dir` of the run (or control) folder `folder`, one after the other in this
    one process: what each process of a SWAMP level under accelerate launch runs its particles in."""
    layout = RunLayout(folder)
    config = read_json(layout.source_config if layout.source_config.exists() else layout.config)
    strategy = get_strategy_class(config["strategy"]).from_hparams(config["hparams"])
    run = start_training_run(strategy, folder)
    ticket = TicketFolder(ticket_dir)
    mask = Mask.load(ticket.mask)
    for particle in particles:
        strategy.train_particle(run, ticket, mask, particle, f"{ticket.root.name}")
