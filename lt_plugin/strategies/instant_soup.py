"""Instant Soup Pruning (Jaiswal, Liu, Chen, Ding, Wang; ICML 2023; code VITA-Group/instant_soup): a ticket from one
training pass, no rewinding. The model trains on (its optimizer and learning-rate schedule carry on between
prunings); every `round_every` epochs a round of `denoisers` look-ahead trainings, each on its own random subset
with a fresh optimizer, gives noisy masks that prune `round_fraction` of the remaining weights; their merge (union or
intersection, brought to the round's exact count) is the model's next mask (lt_plugin.denoisers). Near the level's
density the rest is pruned at once by the model's own magnitudes, and the rest of the training fine-tunes.

Laid out as gradual pruning is (lt_plugin.strategies.baselines): level 0 the dense training, level L one training
from theta_0 (`--pretrained-file`'s weights, or the model's initialisation) that prunes to IMP's level-L density
(the same `--levels`, `--prune-fraction`, `--target-density`, `--layer-prune-fractions`), so `lt-plugin compare`
matches it level by level with an IMP run. A level costs one training pass plus its denoisers' steps (`cost_epochs`)
where IMP's level L costs L + 1 passes (`imp_cost_epochs`). The ticket of a level is the weights of the epoch end,
after the last pruning, with the best validation accuracy (the latest on a tie): chosen by validation, never by test.

Run folder: config.json, init.safetensors; level_L/{mask, train/ (mask_step_K, denoiser_K_J while a round runs,
step_K snapshots of the epochs it may choose until the level is finished), weights, result.json}; results.json,
instant_soup.png.
"""

from __future__ import annotations

import dataclasses
from ..denoisers import MERGES, Denoisers, InstantSoupRounds, round_count
from ..errors import UserError
from ..gradual import GradualPruning
from ..loaders import is_stream
from ..masks import Mask
from ..pipeline import train_ticket
from ..store import load_weights
from ..train.config import TrainConfig, steps_per_epoch
from .baselines import FromInit
from .registry import register_strategy


@register_strategy("instant-soup")
@dataclasses.dataclass
class InstantSoup(FromInit):
    """Instant Soup Pruning: each level one training whose prunings take the merged masks of look-ahead denoisers."""

    prunes_while_training = True

    columns = (("level", "level", "{}"), ("density", "density", "{:.4f}"), ("rounds", "rounds", "{}"),
               ("val_accuracy", "val acc", "{:.2%}"), ("test_accuracy", "test acc", "{:.2%}"),
               ("selected_step", "chosen step", "{}"), ("cost_epochs", "cost (epochs)", "{:.2f}"),
               ("imp_cost_epochs", "IMP's cost (epochs)", "{}"), ("train_seconds", "train s", "{:.1f}"))

    denoisers: int = dataclasses.field(default=5, metadata={
        "help": "denoisers per pruning round (the reference code's 5; the paper: 4 for BERT, 5 for CLIP)"})
    lookahead_steps: int = dataclasses.field(default=50, metadata={
        "help": "optimizer steps each denoiser trains before it is pruned (the paper's C: 50 for CLIP, 30 for BERT)"})
    subset_fraction: float = dataclasses.field(default=0.1, metadata={
        "help": "share of the training set each denoiser draws its batches from, in (0, 1] (the reference: 10%)"})
    merge: str = dataclasses.field(default="union", metadata={
        "choices": MERGES, "help": "union: what any denoiser keeps (the paper); intersection: what every one keeps "
                                   "(an option of the reference code); either brought to the round's exact count"})
    round_fraction: float = dataclasses.field(default=0.1, metadata={
        "help": "share of the remaining weights each round prunes (the reference code's 10%; the paper: 10% for "
                "BERT, 15% for CLIP)"})
    round_every: float = dataclasses.field(default=0.5, metadata={
        "help": "epochs of training between two prunings (the reference code's half epoch)"})
    denoiser_lr_scales: list = dataclasses.field(default_factory=list, metadata={
        "type": float, "help": "each denoiser's learning rate as a multiple of the training's at the round, one per "
                               "denoiser (default: 1 for all, as the reference code)"})
    denoiser_weight_decays: list = dataclasses.field(default_factory=list, metadata={
        "type": float, "help": "each denoiser's weight decay, one per denoiser (default: --weight-decay)"})

    def __post_init__(self):
        super().__post_init__()
        if self.granularity != "weight":
            raise UserError("instant-soup prunes single weights (Jaiswal et al.): --granularity weight")
        if self.denoisers < 1:
            raise UserError(f"--denoisers must be 1 or more, not {self.denoisers}")
        if self.lookahead_steps < 1:
            raise UserError(f"--lookahead-steps must be 1 or more, not {self.lookahead_steps}")
        if not 0.0 < self.subset_fraction <= 1.0:
            raise UserError(f"--subset-fraction must be in (0, 1], not {self.subset_fraction}")
        if not 0.0 < self.round_fraction < 1.0:
            raise UserError(f"--round-fraction must be in (0, 1), not {self.round_fraction}")
        if not self.round_every > 0:
            raise UserError(f"--round-every must be a positive number of epochs, not {self.round_every}")
        for name, values in (("lr-scales", self.denoiser_lr_scales), ("weight-decays", self.denoiser_weight_decays)):
            if values and len(values) != self.denoisers:
                raise UserError(f"--denoiser-{name} needs one value per denoiser ({self.denoisers}), not {values}")
            if any(not float(v) >= 0 for v in values):
                raise UserError(f"--denoiser-{name} must be 0 or more, not {values}")
        if any(not float(v) > 0 for v in self.denoiser_lr_scales):
            raise UserError(f"--denoiser-lr-scales must be positive, not {self.denoiser_lr_scales}")

    # ---- the rounds ----
    def every_steps(self, cfg: TrainConfig, train_size: int) -> int:
        return max(1, round(self.round_every * steps_per_epoch(cfg, train_size)))

    def check_run(self, run, dense) -> None:
        if is_stream(run.data.train):
            raise UserError("instant-soup draws each denoiser's subset by index: it cannot read a stream "
                            "(--streaming)")
        total = run.cfg.epochs * steps_per_epoch(run.cfg, len(run.data.train))
        every = self.every_steps(run.cfg, len(run.data.train))
        for level in range(1, self.levels + 1):
            rounds = round_count(self.level_densities(dense, level), self.round_fraction)
            if (rounds + 1) * every > total:
                raise UserError(f"level {level} needs {rounds} denoiser rounds and a last pruning, one every "
                                f"{every} steps ({(rounds + 1) * every} steps), more than the {total} of training: "
                                "raise --round-fraction, lower --round-every or train more --epochs")

    def rounds(self, run, dense, level: int, train_dir) -> InstantSoupRounds:
        """The prunings of `level`'s training, its denoisers writing into the training folder `train_dir`."""
        cfg = run.cfg
        per_epoch = steps_per_epoch(cfg, len(run.data.train))
        denoisers = Denoisers(self.create_model(run.data.num_classes, seed=0, pretrained=False), run.data.train, cfg,
                              per_epoch, run.accelerator, train_dir, self.denoisers, self.lookahead_steps,
                              self.subset_fraction, self.denoiser_lr_scales or [1.0] * self.denoisers,
                              self.denoiser_weight_decays or [cfg.weight_decay] * self.denoisers,
                              seed=cfg.seed * 1_009 + level, scope=self.scope)
        return InstantSoupRounds(self.every_steps(cfg, len(run.data.train)), self.level_densities(dense, level),
                                 self.round_fraction, self.merge, self.scope, denoisers)

    # ---- a level ----
    def train_level(self, run, dense, level: int, ticket, init) -> dict:
        prunable = self.prunable_of(dense)
        cfg = dataclasses.replace(run.cfg, eval_every=0)  # the ticket is chosen among epoch ends, by validation
        per_epoch = steps_per_epoch(cfg, len(run.data.train))
        rounds = self.rounds(run, dense, level, ticket.train.root) if level else None
        last_pruning = rounds.end_step if rounds is not None else 0
        epoch_ends = [e * per_epoch for e in range(1, cfg.epochs + 1) if e * per_epoch >= last_pruning]
        chosen = {}

        def select(trained) -> None:
            """The epoch end after the last pruning with the best validation accuracy (the latest on a tie)."""
            eligible = [h for h in trained.history if h["step"] in epoch_ends]
            best = max(reversed(eligible), key=lambda h: h["val_accuracy"])
            trained.model.load_state_dict(load_weights(ticket.train.step(best["step"])))
            chosen["step"] = best["step"]

        def final_mask() -> Mask:
            run.accelerator.wait_for_everyone()
            return Mask.load(ticket.mask)

        denoiser_steps = rounds.rounds * self.denoisers * self.lookahead_steps if rounds is not None else 0

        def describe(result: dict) -> dict:
            return {"level": level, **result, "selected_step": chosen["step"],
                    "rounds": rounds.rounds if rounds is not None else 0, "prune_end_step": last_pruning,
                    "denoiser_steps": denoiser_steps,
                    "cost_epochs": cfg.epochs + denoiser_steps / per_epoch, "imp_cost_epochs": (level + 1) * cfg.epochs}

        # Level 0's mask is its file; a pruned level starts dense and writes its final mask when training ends.
        start = Mask.ones(dense, prunable) if level else run.folder.load_or_make_mask(
            ticket, lambda: Mask.ones(dense, prunable))
        result = train_ticket(run, self, ticket, start, init, cfg=cfg, desc=f"level {level}",
                              snapshot_steps=epoch_ends, after_fit=select, describe=describe,
                              callbacks=(lambda model: [GradualPruning(rounds, prunable, ticket.mask)]) if level
                              else None, final_mask=final_mask if level else None)
        if run.folder.is_main:  # the chosen epoch is the ticket's weights now
            for step in epoch_ends:
                ticket.train.step(step).unlink(missing_ok=True)
        return result
