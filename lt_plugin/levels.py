"""IMP's level arithmetic, shared by every strategy laid out in pruning levels (IMP, Sparse Model Soups) and by the
own-loop `IMPPruner`: the density of each level, the rewind points, and the pruning options with the level-by-level
masks (`PrunedLevels`).
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import re
from typing import Dict, List, Optional, Tuple

import torch

from .errors import UserError
from .masks import (GRANULARITIES, SCOPES, Mask, classifier_weight_names, named_tensors, prunable_weight_names,
                    resolve_ignored)
from .model_checks import check_round_to
from .store import load_weights
from .structure import IMPORTANCES, create_mask

_REWIND = re.compile(r"^(init|lr|finetune|(\d+)(it|ep))$")
_POINT = re.compile(r"^(\d+)(it|ep)$")


def level_density(level: int, levels: int, total_weights: int, target_density: Optional[float] = None,
                  prune_fraction: float = 0.2) -> float:
    """The kept fraction of the prunable weights at IMP level `level` of `levels`: target_density^(level/levels)
    (a constant fraction of what is left), or, without a target, `prune_fraction` of the remaining weights pruned
    per level, counted in whole weights as open_lth counts them."""
    if target_density is not None:
        return target_density ** (level / levels) if levels else 1.0
    remaining = total_weights
    for _ in range(level):
        remaining -= math.ceil(prune_fraction * remaining)
    return remaining / total_weights



def parse_rewind(text: str) -> Tuple[str, int]:
    """'init' | '<N>it' | '<N>ep' | 'lr' | 'finetune' -> (kind, N); kind is init, it, ep, lr or finetune."""
    match = _REWIND.match(text)
    if not match:
        raise UserError(f"--rewind must be init, <N>it, <N>ep, lr or finetune, not {text!r}")
    if match.group(2) is None:
        return match.group(1), 0
    return match.group(3), int(match.group(2))


def rewind_point_step(point: str, per_epoch: int) -> int:
    """The global step of a point of training: init (0), <N>it or <N>ep; 0 for lr and finetune (no point)."""
    kind, amount = parse_rewind(point)
    return {"it": amount, "ep": amount * per_epoch}.get(kind, 0)


def point_step(text: str, per_epoch: int, total: int, option: str) -> int:
    """A point of a training of `total` steps as a global step: <N>it, <N>ep, or a fraction of the training in
    [0, 1]; `option` names the flag in the error."""
    match = _POINT.match(str(text))
    if match:
        return int(match.group(1)) * (per_epoch if match.group(2) == "ep" else 1)
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"--{option} is <N>it, <N>ep or a fraction of the training in [0, 1], not {text!r}")
    return int(fraction * total)


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

    def next_mask(self, layout, level, dense, example, prunable) -> Mask:
        """Level `level`'s mask in the run folder `layout`: all ones at level 0, else level-1's trained weights
        pruned to this level's density."""
        if level == 0:
            return Mask.ones(dense, prunable, self.granularity)
        previous_ticket = layout.level(level - 1)
        previous = Mask.load(previous_ticket.mask)
        trained = copy.deepcopy(dense)
        trained.load_state_dict(load_weights(previous_ticket.weights))
        density, own = self.level_densities(trained, level)
        return create_mask(trained, example, density, self.granularity, importance=self.importance,
                           scope=self.scope, ignored_layers=self.ignore, previous=previous, round_to=self.round_to,
                           layer_densities=own, ignore_classifier=not self.prunes_classifier(trained))

