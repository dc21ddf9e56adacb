"""The baselines a lottery ticket is measured against, laid out as an IMP run (one `level_L/` per density, level 0
dense, results.json, a table and a plot; resumable, kill -9 safe, `--seeds`), each level trained from theta_0:

- `prune-at-init`: the mask chosen at initialisation by a criterion (SNIP, GraSP, SynFlow, magnitude, random;
  lt_plugin.pai), then trained with the run's recipe, as an IMP level is;
- `gradual`: gradual magnitude pruning during one training (Zhu & Gupta 2017; lt_plugin.gradual), the density
  falling on the cubic schedule (or another `--schedule`) from `--start` to `--end`, every layer to the same
  density unless `--scope global`.

Each level's density is IMP's for the same `--levels`, `--prune-fraction` or `--target-density` (and
`--layer-prune-fractions`), so `lt-plugin compare` matches them level for level with an IMP run. A prune-at-init
ticket starts at theta_0 (step 0), so IMP's controls (`lt-plugin imp --control random-reinit|random-mask --run RUN`)
run on it too: random-mask is Frankle et al. 2021's layer-shuffle test. A gradual ticket was pruned while it
trained, so a control would change its training too: they refuse gradual runs.
"""

from __future__ import annotations

import dataclasses
import math
from itertools import islice
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
import torch_pruning as tp

from ..errors import UserError
from ..experiment import Experiment
from ..gradual import GradualPruning, GradualSchedule
from ..layout import RunLayout
from ..levels import PrunedLevels
from ..loaders import DeviceNormalize, is_stream, make_loader, on_device
from ..masks import SCOPES, Mask
from ..pai import CRITERIA, prune_at_init
from ..pipeline import train_ticket
from ..replicates import Replicates, run_replicates
from ..schedules import SCHEDULES, pruning_window
from ..report import COLUMNS, plot_accuracy_vs_density
from ..store import load_weights
from ..structure import create_mask
from ..train.config import TrainConfig, steps_per_epoch
from .base import LevelTickets, Strategy, start_training_run
from .registry import register_strategy

SCORE_SAMPLES_PER_CLASS = 10  # Synaptic-Flow's prune_dataset_ratio and GraSP's samples_per_class
SCORE_BATCH_SIZE = 256        # Synaptic-Flow's prune_batch_size
CHANNEL_CRITERIA = ("snip", "magnitude", "random")  # those with a per-channel form over Torch-Pruning's groups


@dataclasses.dataclass
class FromInit(LevelTickets, Strategy, Replicates, PrunedLevels, TrainConfig, Experiment):
    """A run in levels of IMP's densities whose every level trains from theta_0."""

    columns: ClassVar[tuple] = COLUMNS  # the table of its results
    # True where a level's mask is chosen while it trains from a dense start (gradual pruning, Instant Soup)
    prunes_while_training: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        self.check_pruning_options()
        self.check_replicates()
        if self.importance != "magnitude":
            raise UserError(f"--importance is IMP's ranking of channels; {self.name} ranks by its own rule")

    def ticket_start(self, run_dir, key: str) -> Tuple[Dict[str, torch.Tensor], int]:
        """Every level trained from theta_0; refused where the level's mask was chosen while it trained: training
        that mask from theta_0 (or a fresh initialisation, or at random positions) would change the training as
        well as the one thing a control changes."""
        if self.prunes_while_training:
            raise UserError(f"a {self.name} run's tickets were pruned while they trained from a dense start, so a "
                            "control (random-reinit, random-mask) would change their training too; the controls "
                            "read imp, prune-at-init and swamp runs")
        return load_weights(RunLayout(run_dir).init), 0

    def run(self, out_dir) -> List[dict]:
        if self.seeds:
            return run_replicates(self, out_dir)
        run = start_training_run(self, out_dir)
        dense = self.create_model(run.data.num_classes, seed=self.seed)
        self.check_run(run, dense)
        self.check_prunable(dense, run.example)
        self.check_run_folder(run.folder)
        layout = run.folder.layout
        run.folder.save_weights_once(layout.init, dense.state_dict())
        init = load_weights(layout.init)
        results = []
        for level in range(self.levels + 1):
            ticket = layout.level(level)
            done = run.folder.read_result(ticket)
            results.append(done if done is not None else self.train_level(run, dense, level, ticket, init))
        run.folder.write_results(results, columns=self.columns, plots={
            "accuracy_vs_density.png": lambda path: plot_accuracy_vs_density(results, path)})
        return results

    def check_run(self, run, dense) -> None:
        """The strategy's own checks against the data and the model, before the run folder gets a file."""

    def train_level(self, run, dense, level: int, ticket, init) -> dict:
        raise NotImplementedError


@register_strategy("prune-at-init")
@dataclasses.dataclass
class PruneAtInit(FromInit):
    """Pruning at initialisation: each level's mask chosen at theta_0 by a criterion, then trained."""

    criterion: str = dataclasses.field(default="snip", metadata={
        "choices": CRITERIA, "help": "snip |g*w| (Lee et al. 2019), grasp -w*Hg (Wang et al. 2020), synflow "
                                     "(Tanaka et al. 2020, data-free, iterative), magnitude |w| or random"})
    score_samples: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "training images SNIP and GraSP score on, drawn with --seed (default: 10 per class, "
                             "as the Synaptic-Flow and GraSP code; SNIP's code used one training batch)"})
    iterations: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "rounds of scoring and pruning, each to density^(k/rounds) (default: 100 for synflow, "
                             "its paper's; 1 for the others)"})

    def __post_init__(self):
        super().__post_init__()
        if self.granularity == "channel" and self.criterion not in CHANNEL_CRITERIA:
            raise UserError(f"--criterion {self.criterion} scores single weights; channel tickets take "
                            f"{', '.join(CHANNEL_CRITERIA)} (SNIP as Torch-Pruning's group Taylor importance)")
        if self.score_samples is not None and self.score_samples < 1:
            raise UserError(f"--score-samples must be 1 or more, not {self.score_samples}")
        if self.iterations is not None and self.iterations < 1:
            raise UserError(f"--iterations must be 1 or more, not {self.iterations}")

    def train_level(self, run, dense, level: int, ticket, init) -> dict:
        mask = run.folder.load_or_make_mask(ticket, lambda: self.level_mask(run, dense, level))
        return train_ticket(run, self, ticket, mask, init, snapshot_steps=[0], desc=f"level {level}",
                            describe=lambda r: {"level": level, "criterion": self.criterion, **r})

    def level_mask(self, run, dense, level: int) -> Mask:
        """The mask of `level`'s density chosen by the criterion at theta_0 (the levels are drawn independently)."""
        prunable = self.prunable_of(dense)
        if level == 0:
            return Mask.ones(dense, prunable, self.granularity)
        density, own = self.level_densities(dense, level)
        model = dense.to(run.accelerator.device)
        batches = self.score_batches(run) if self.criterion in ("snip", "grasp") else None
        seed = self.seed * 100_003 + level
        if self.granularity == "channel":
            return self._channel_mask(run, model, density, batches, seed)
        # One scoring of the whole network per round; layers on their own rate get their quota in it.
        return prune_at_init(model, batches, self.criterion, density, prunable=prunable, scope=self.scope,
                             iterations=self.iterations, example_inputs=run.example.to(run.accelerator.device),
                             seed=seed, layer_densities=own)

    def _channel_mask(self, run, model, density: float, batches, seed: int) -> Mask:
        """Channel tickets through Torch-Pruning's groups: group magnitude, random, or SNIP's |g*w| summed per
        channel (group Taylor importance) with g the gradient over the score batches."""
        if self.criterion == "snip":
            model.eval().zero_grad(set_to_none=True)  # scored in eval mode, as lt_plugin.pai scores
            for inputs, targets in batches:
                F.cross_entropy(model(inputs), targets).backward()
            model.train()
            importance = tp.importance.GroupTaylorImportance()
        else:
            importance = "magnitude" if self.criterion == "magnitude" else "random"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # Torch-Pruning's random importance draws from torch's generator
            mask = create_mask(model, run.example.to(run.accelerator.device), density, "channel",
                               importance=importance, scope=self.scope, ignored_layers=self.ignore,
                               round_to=self.round_to)
        model.zero_grad(set_to_none=True)
        return mask

    def score_batches(self, run) -> list:
        """The training images SNIP and GraSP score on, on the device: `score_samples` (10 per class) drawn at
        random with --seed, as Synaptic-Flow's prune loader draws them, in batches of 256."""
        train, device = run.data.train, run.accelerator.device
        count = min(self.score_samples or SCORE_SAMPLES_PER_CLASS * run.data.num_classes, len(train))
        if is_stream(train):
            loader = train.loader(SCORE_BATCH_SIZE, seed=self.seed, normalise=False)
        else:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))[:count].tolist()
            loader = make_loader(train, SCORE_BATCH_SIZE, device, sampler=order)
        batches = on_device(islice(loader, math.ceil(count / SCORE_BATCH_SIZE)), device,
                            DeviceNormalize(train, device))
        out, taken = [], 0
        for inputs, targets in batches:
            take = min(len(targets), count - taken)
            out.append((inputs[:take], targets[:take]))
            taken += take
        return out


@register_strategy("gradual")
@dataclasses.dataclass
class Gradual(FromInit):
    """Gradual magnitude pruning: each level one training from theta_0 that prunes to the level's density."""

    prunes_while_training = True

    # Zhu & Gupta prune every layer to the same sparsity (Gale et al. follow them): layer-wise, not IMP's global.
    # Runs made before this default record their scope in config.json, so a rerun of one holds it to "global".
    scope: str = dataclasses.field(default="layerwise", metadata={
        "choices": SCOPES, "help": "the same fraction per layer (Zhu & Gupta's rule), or one threshold for all "
                                   "layers"})
    start: str = dataclasses.field(default="0.25", metadata={
        "help": "the first step of the schedule (<N>it, <N>ep or a fraction of the training); it prunes there only "
                "if the schedule's density falls there (one-shot), else first one --frequency later"})
    end: str = dataclasses.field(default="0.75", metadata={
        "help": "the step the level's density is reached (<N>it, <N>ep or a fraction of the training), moved back "
                "to the last pruning step before it"})
    frequency: int = dataclasses.field(default=100, metadata={"help": "optimizer steps between two prunings"})
    schedule: str = dataclasses.field(default="cubic", metadata={
        "choices": SCHEDULES, "before": "cubic",
        "help": "how the density falls: cubic (Zhu & Gupta's, fasterai's agp), one-shot, iterative (3 equal "
                "steps), cosine or linear (fasterai's schedules)"})

    def __post_init__(self):
        super().__post_init__()
        if self.granularity != "weight":
            raise UserError("gradual prunes single weights (Zhu & Gupta): --granularity weight")
        if self.frequency < 1:
            raise UserError(f"--frequency must be 1 or more optimizer steps, not {self.frequency}")

    def schedule_steps(self, cfg: TrainConfig, train_size: int) -> Tuple[int, int]:
        """(start step, end step) of the schedule in this training: the end on the pruning grid."""
        per_epoch = steps_per_epoch(cfg, train_size)
        return pruning_window(str(self.start), str(self.end), self.frequency, cfg.epochs * per_epoch, per_epoch,
                              names=("--start", "--end", "--frequency"))

    def check_run(self, run, dense) -> None:
        self.schedule_steps(run.cfg, len(run.data.train))

    def train_level(self, run, dense, level: int, ticket, init) -> dict:
        prunable = self.prunable_of(dense)
        if level == 0:
            return train_ticket(run, self, ticket, run.folder.load_or_make_mask(
                ticket, lambda: Mask.ones(dense, prunable)), init, desc="level 0",
                describe=lambda r: {"level": 0, **r})
        density, own = self.level_densities(dense, level)
        start, end = self.schedule_steps(run.cfg, len(run.data.train))
        schedule = GradualSchedule(start, end, self.frequency, density, scope=self.scope, layer_densities=own,
                                   schedule=self.schedule)

        def final_mask() -> Mask:
            run.accelerator.wait_for_everyone()
            return Mask.load(ticket.mask)

        def describe(result: dict) -> dict:
            result = {"level": level, **result, "prune_start_step": start, "prune_end_step": end}
            if result.get("early_stop_step") is not None and result["early_stop_step"] < end:
                # the lowest validation loss came before the level's density was reached: not this ticket's
                for key in [k for k in result if k.startswith("early_stop_")]:
                    del result[key]
            return result
        return train_ticket(run, self, ticket, Mask.ones(dense, prunable), init, desc=f"level {level}",
                            callbacks=lambda model: [GradualPruning(schedule, prunable, ticket.mask)],
                            final_mask=final_mask, describe=describe)
