"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020; Renda et al. 2020).

Level 0 trains the dense model. Level L prunes the trained weights of level L-1, resets the survivors to the rewind
point and trains again. Run folder:

    config.json            hyperparameters, package versions, world size
    init.safetensors       theta_0, the dense initialisation
    level_L/mask.safetensors       the level's mask (dense space)
    level_L/train/                 the training run: checkpoints, metrics.jsonl, step_k.safetensors snapshots
                                   (level 0: theta_k, the rewind point; level L: the rewound ticket it starts from)
    level_L/weights.safetensors    trained weights mapped to the dense space
    level_L/result.json            written last: a level with it is finished and skipped on a rerun
    results.json, accuracy_vs_density.png
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import RunFolderError, UserError
from ..experiment import Experiment
from ..masks import (GRANULARITIES, SCOPES, Mask, classifier_weight_names, named_tensors, prunable_weight_names,
                     resolve_ignored)
from ..store import load_weights, read_json
from ..structure import IMPORTANCES, ChannelStructure, check_round_to, create_mask, export
from ..pipeline import train_ticket
from ..pruners import level_density
from ..report import plot_accuracy_vs_density
from ..train import TrainConfig, final_lr, steps_per_epoch
from .base import Strategy, TicketFiles, start_training_run

CONTROLS = ("random-reinit", "random-mask")
_REWIND = re.compile(r"^(init|lr|finetune|(\d+)(it|ep))$")


def check_finished(run_dir, imp: "IMP") -> None:
    """A RunFolderError unless every level of the IMP run in `run_dir` (`imp`, its strategy) has its result."""
    unfinished = [str(level) for level in range(imp.levels + 1)
                  if not (Path(run_dir) / f"level_{level}" / "result.json").exists()]
    if unfinished:
        raise RunFolderError(f"--run {run_dir} is unfinished (level {', '.join(unfinished)} has no result); "
                             "rerun its lt-plugin imp command first")


def parse_rewind(text: str) -> Tuple[str, int]:
    """'init' | '<N>it' | '<N>ep' | 'lr' | 'finetune' -> (kind, N); kind is init, it, ep, lr or finetune."""
    match = _REWIND.match(text)
    if not match:
        raise UserError(f"--rewind must be init, <N>it, <N>ep, lr or finetune, not {text!r}")
    if match.group(2) is None:
        return match.group(1), 0
    return match.group(3), int(match.group(2))


@dataclasses.dataclass
class PrunedLevels:
    """The pruning options and the level-by-level masks of strategies laid out in levels (IMP, Sparse Model Soups):
    level L's mask prunes level L-1's weights (level_{L-1}/weights.safetensors) to the level's density, never
    reviving what level L-1's mask pruned."""

    levels: int = dataclasses.field(default=3, metadata={"help": "pruning levels after the dense level 0"})
    prune_fraction: float = dataclasses.field(default=0.2, metadata={"help": "share of the remaining weights pruned "
                                                                             "per level"})
    target_density: Optional[float] = dataclasses.field(default=None, metadata={
        "type": float, "help": "final density after all levels (overrides --prune-fraction: keep d^(1/levels) "
                               "per level)"})
    layer_prune_fractions: dict = dataclasses.field(default_factory=dict, metadata={
        "help": "layers pruned at their own rate, as JSON {module name or pattern: fraction of its remaining weights "
                "pruned per level}, each layer on its own (Torch-Pruning's pruning_ratio_dict); the others follow "
                "--prune-fraction and --scope. Naming the classifier prunes it (LTH: '{\"fc\": 0.1}' for "
                "LeNet's output layer). Weight tickets"})
    granularity: str = dataclasses.field(default="weight", metadata={"choices": GRANULARITIES,
                                                                     "help": "weight (unstructured) or channel"})
    scope: str = dataclasses.field(default="global", metadata={"choices": SCOPES,
                                                               "help": "one threshold for all layers, or the same "
                                                                       "fraction per layer"})
    importance: str = dataclasses.field(default="magnitude", metadata={
        "choices": tuple(IMPORTANCES), "help": "Torch-Pruning importance for channel tickets"})
    ignore: list = dataclasses.field(default_factory=list, metadata={"help": "layer names left unpruned (the "
                                                                             "classifier always is)"})
    round_to: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "channel tickets: every pruned layer keeps a multiple of N channels (8 or 16 suit "
                             "vector units and tensor cores)"})

    def check_pruning_options(self) -> None:
        if self.levels < 0:
            raise UserError("--levels must be 0 or more")
        if not 0.0 < self.prune_fraction < 1.0:
            raise UserError("--prune-fraction must be between 0 and 1")
        if self.target_density is not None and not 0.0 < self.target_density <= 1.0:
            raise UserError("--target-density must be in (0, 1]")
        if self.layer_prune_fractions:
            if self.granularity != "weight":
                raise UserError("--layer-prune-fractions applies to weight tickets (--granularity weight)")
            if self.target_density is not None:
                raise UserError("--layer-prune-fractions goes with --prune-fraction, not --target-density")
            bad = {k: v for k, v in self.layer_prune_fractions.items()
                   if not (isinstance(v, (int, float)) and 0.0 < v < 1.0)}
            if bad:
                raise UserError(f"--layer-prune-fractions must be fractions in (0, 1), not {bad}")
        check_round_to(self.round_to)
        if self.round_to is not None and self.granularity != "channel":
            raise UserError("--round-to applies to channel tickets: add --granularity channel")

    def level_density(self, level: int, total_weights: int) -> float:
        """Target kept fraction at `level`: d^(L/levels), or (1 - f)^L counted in whole weights (open_lth)."""
        return level_density(level, self.levels, total_weights, self.target_density, self.prune_fraction)

    def own_rates(self, model) -> Dict[str, float]:
        """{weight name: fraction pruned per level} of the layers --layer-prune-fractions names (patterns as
        fnmatch's); a pattern that names no Conv/Linear layer is a mistake."""
        layers = [name for name, m in model.named_modules()
                  if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))]
        rates = {}
        for pattern, fraction in self.layer_prune_fractions.items():
            matched = fnmatch.filter(layers, pattern)
            if not matched:
                raise UserError(f"--layer-prune-fractions: {pattern!r} names no Conv or Linear layer of {self.model} "
                                f"(layers: {', '.join(layers[:6])}...)")
            rates.update({f"{name}.weight": float(fraction) for name in matched})
        return rates

    def prunes_classifier(self, model) -> bool:
        """Whether a layer rate names the classifier, which is otherwise never pruned."""
        return bool(classifier_weight_names(model) & set(self.own_rates(model)))

    def prunable_of(self, model) -> List[str]:
        """The weights this run prunes: Conv/Linear weights but the ignored layers' and, unless a layer rate names
        it, the classifier's."""
        ignored = resolve_ignored(model, self.ignore, ignore_classifier=not self.prunes_classifier(model))
        return prunable_weight_names(model, ignored)

    def level_densities(self, model, level: int) -> Tuple[float, Dict[str, float]]:
        """(density of the weights that follow --prune-fraction or --target-density, {weight: its own density}) at
        `level`: each count of weights pruned by its own schedule."""
        tensors, rates = named_tensors(model), self.own_rates(model)
        rest = sum(tensors[n].numel() for n in self.prunable_of(model) if n not in rates)
        own = {n: level_density(level, self.levels, tensors[n].numel(), None, f) for n, f in rates.items()}
        return (self.level_density(level, rest) if rest else 1.0), own

    def check_prunable(self, dense, example) -> None:
        """Fail now, not after training level 0, if Torch-Pruning cannot prune this model."""
        if self.granularity == "channel" and self.levels:
            create_mask(copy.deepcopy(dense), example, self.level_densities(dense, 1)[0], "channel",
                        importance=self.importance, scope=self.scope, ignored_layers=self.ignore,
                        round_to=self.round_to)

    def next_mask(self, folder, level, dense, example, prunable) -> Mask:
        """Level `level`'s mask: all ones at level 0, else level-1's trained weights pruned to this level's density."""
        if level == 0:
            return Mask.ones(dense, prunable, self.granularity)
        previous_dir = folder.path / f"level_{level - 1}"
        previous = Mask.load(previous_dir / "mask.safetensors")
        trained = copy.deepcopy(dense)
        trained.load_state_dict(load_weights(previous_dir / "weights.safetensors"))
        density, own = self.level_densities(trained, level)
        return create_mask(trained, example, density, self.granularity, importance=self.importance,
                           scope=self.scope, ignored_layers=self.ignore, previous=previous, round_to=self.round_to,
                           layer_densities=own, ignore_classifier=not self.prunes_classifier(trained))


@dataclasses.dataclass
class IMP(Strategy, PrunedLevels, TrainConfig, Experiment):
    """Iterative magnitude pruning with rewinding; one level is one-shot pruning."""

    description = "iterative magnitude pruning with rewinding (Frankle & Carbin; Frankle et al.)"

    rewind: str = dataclasses.field(default="init", metadata={
        "help": "init | <N>it | <N>ep (late rewinding) | lr (keep weights, rerun the LR schedule) | finetune "
                "(keep weights, final LR)"})
    control: Optional[str] = dataclasses.field(default=None, metadata={
        "type": str, "choices": CONTROLS, "help": "random-reinit (same mask, fresh init) or random-mask (random mask "
                                                  "at the same per-layer density)"})

    def __post_init__(self):
        super().__post_init__()
        self.check_pruning_options()
        parse_rewind(self.rewind)

    # ---- where the tickets are ----
    @classmethod
    def ticket_keys(cls, run_dir) -> List[str]:
        run_dir = Path(run_dir)
        levels = sorted(int(p.parent.name[len("level_"):]) for p in run_dir.glob("level_*/result.json"))
        return [str(level) for level in levels]

    @classmethod
    def locate_ticket(cls, run_dir, key: str) -> TicketFiles:
        return cls.level_ticket(run_dir, key, cls.from_run(run_dir))

    @classmethod
    def level_ticket(cls, run_dir, key: str, experiment: Experiment) -> TicketFiles:
        """The finished level `key` of a folder laid out in levels (an IMP run, or a run that pools one), whose
        model `experiment` builds."""
        run_dir = Path(run_dir)
        if key not in cls.ticket_keys(run_dir):
            raise UserError(f"{run_dir} has no finished level {key}; finished: "
                            f"{', '.join(cls.ticket_keys(run_dir)) or 'none'}")
        level_dir = run_dir / f"level_{key}"
        return TicketFiles(weights=level_dir / "weights.safetensors", mask=level_dir / "mask.safetensors",
                           result=read_json(level_dir / "result.json"), experiment=experiment)

    # ---- the run ----
    def run(self, out_dir) -> List[dict]:
        # Everything a user can get wrong is checked before the run folder gets its first file.
        run = start_training_run(self, out_dir)
        cfg, folder, data, example = run.cfg, run.folder, run.data, run.example
        dense = self.create_model(data.num_classes, seed=self.seed)
        prunable = self.prunable_of(dense)
        kind, amount = parse_rewind(self.rewind)
        spe = steps_per_epoch(cfg, len(data.train))
        rewind_step = {"it": amount, "ep": amount * spe}.get(kind, 0)
        if kind in ("it", "ep") and rewind_step >= cfg.epochs * spe:
            raise UserError(f"--rewind {self.rewind} is step {rewind_step}, past the end of training "
                            f"({cfg.epochs * spe} steps)")
        self.check_prunable(dense, example)
        self.check_run_folder(folder)
        folder.save_weights_once("init.safetensors", dense.state_dict())

        results = []
        for level in range(self.levels + 1):
            level_dir = folder.path / f"level_{level}"
            done = folder.read_result(level_dir)
            if done is not None:
                results.append(done)
                continue
            mask = folder.load_or_make_mask(
                level_dir, lambda: self._make_mask(folder, level, dense, example, prunable))
            start_weights, start_step, level_cfg = self._start(folder, level, kind, rewind_step, cfg, data)
            # Level 0 keeps theta_k for rewinding; later levels keep their starting point, the rewound ticket.
            results.append(train_ticket(run, self, level_dir, mask, start_weights, cfg=level_cfg,
                                        start_step=start_step,
                                        snapshot_steps=[rewind_step] if level == 0 else [start_step],
                                        desc=f"level {level}", describe=lambda r, level=level: {"level": level, **r}))
        folder.write_results(results, plots={"accuracy_vs_density.png": lambda path: plot_accuracy_vs_density(
            results, path)})
        return results

    def _make_mask(self, folder, level, dense, example, prunable) -> Mask:
        mask = self.next_mask(folder, level, dense, example, prunable)
        if level == 0 or self.control != "random-mask":
            return mask
        previous = Mask.load(folder.path / f"level_{level - 1}" / "mask.safetensors")
        seed = self.seed * 1000 + level
        if self.granularity == "weight":
            return random_mask_like(mask, previous, seed)
        model = copy.deepcopy(dense)  # the architecture: a random mask reads no weights
        structure = ChannelStructure(model, example, resolve_ignored(model, self.ignore), scope=self.scope)
        random_mask = structure.random_like(mask, previous, seed)
        export(model, random_mask, example)  # the random groups must still give a working model
        return random_mask

    def _start(self, folder, level, kind, rewind_step, cfg, data):
        """(dense start weights, start step, training config) for a level."""
        if level == 0:
            return load_weights(folder.path / "init.safetensors"), 0, cfg
        if self.control == "random-reinit":
            fresh = self.create_model(data.num_classes, seed=self.seed + level, pretrained=False)
            return fresh.state_dict(), rewind_step, cfg
        previous = folder.path / f"level_{level - 1}" / "weights.safetensors"
        if kind == "init":
            return load_weights(folder.path / "init.safetensors"), 0, cfg
        if kind in ("it", "ep"):
            return load_weights(folder.path / "level_0" / "train" / f"step_{rewind_step}.safetensors"), \
                rewind_step, cfg
        if kind == "lr":
            return load_weights(previous), 0, cfg
        constant = dataclasses.replace(cfg, sched="constant", warmup_epochs=0.0,
                                       lr=final_lr(cfg, len(data.train)))
        return load_weights(previous), 0, constant


@torch.no_grad()
def random_mask_like(mask: Mask, previous: Optional[Mask], seed: int) -> Mask:
    """A random weight mask with `mask`'s count per tensor, drawn among the entries `previous` kept."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, keep in mask.tensors.items():
        # Drawn on the CPU, where the generator is, whatever device the masks came from.
        allowed = (previous.tensors[name] if previous is not None else torch.ones_like(keep)).reshape(-1).cpu()
        candidates = allowed.nonzero().reshape(-1)
        chosen = candidates[torch.randperm(len(candidates), generator=generator)[: int(keep.sum())]]
        flat = torch.zeros(keep.numel(), dtype=torch.bool)
        flat[chosen] = True
        tensors[name] = flat.reshape(keep.shape)
    return Mask(tensors, mask.prunable, mask.granularity)
