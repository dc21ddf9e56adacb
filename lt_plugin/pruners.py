"""The strategies' mechanics as pieces for your own training loop, in Torch-Pruning's words.

Torch-Pruning users build a pruner, call `pruner.step()` between rounds of fine-tuning and, for slimming,
`pruner.regularize(model)` between `backward()` and `optimizer.step()`. The same words give lottery tickets:

    pruner = IMPPruner(model, example_inputs, pruning_ratio=0.8, iterative_steps=3)   # density 0.2 after 3 steps
    train(model)                                  # level 0: dense
    for _ in range(pruner.iterative_steps):
        model = pruner.step()                     # prune the trained weights, rewind the survivors (theta_0)
        optimizer = make_optimizer(model)         # IMP trains each level with a fresh optimizer
        pruner.mask_after_steps(optimizer)        # weight tickets: keep the pruned entries zero
        train(model, optimizer)                   # a channel ticket comes back physically small

    pruner = EarlyBirdPruner(model, example_inputs, pruning_ratio=0.5)  # draws the initialisation's mask
    for epoch in ...:
        ...; loss.backward(); pruner.regularize(model); optimizer.step()
        if pruner.update(epoch): break            # the Early-Bird rule held: the ticket has emerged
    small = pruner.step()                         # physically pruned, with the weights at emergence

`lt_plugin.lottery_pool` (lt_plugin.pooling) pools the tickets you hold. The built-in strategies are made of the
same pieces: `create_mask` and the rewinding of IMPPruner, the EarlyBirdDetector, the SlimmingPenalty and the
channel masks drawn by `draw_channel_flags`.
"""

from __future__ import annotations

import copy
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .callbacks import SlimmingPenalty
from .early_bird_rule import (DISTANCES, EarlyBirdDetector, draw_channel_flags, early_bird_importance, norm_scales,
                              resolve_score)
from .errors import LtPluginWarning, UserError
from .layout import RunLayout
from .levels import level_density
from .masks import (GRANULARITIES, Mask, classifier_weight_names, named_tensors, prunable_weight_names,
                    resolve_ignored, snapshot, unwrap_model)
from .model_checks import check_same_device
from .store import atomic_save_safetensors, atomic_write_json
from .structure import ChannelStructure, create_mask, export


def _innermost_optimizer(optimizer):
    """The torch optimizer an optimizer wrapper steps (Accelerate's AcceleratedOptimizer keeps it as `.optimizer`)."""
    while not hasattr(optimizer, "register_step_post_hook") or hasattr(optimizer, "optimizer"):
        if not hasattr(optimizer, "optimizer"):
            raise UserError(f"{type(optimizer).__name__} is not a torch optimizer (no register_step_post_hook)")
        optimizer = optimizer.optimizer
    return optimizer


class _Handles:
    """Several hook handles removed as one (what `mask_gradients` returns)."""

    def __init__(self, handles):
        self.handles = list(handles)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class IMPPruner:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020) for your own loop.

    Arguments Torch-Pruning's pruners have keep their names and meaning, but for `pruning_ratio`: here it is the
    fraction of the prunable (Conv/Linear) *weights* removed after all `iterative_steps` steps, for weight and for
    channel tickets alike (Torch-Pruning's is a fraction of channels), reached as a constant fraction of what is
    left per step: the density after step k is (1 - pruning_ratio)^(k / iterative_steps), as `lt-plugin imp
    --target-density 1-r --levels n` prunes. Without `pruning_ratio`, each step prunes `prune_fraction` of the
    remaining weights (IMP's 20%, open_lth's counting). `importance` (any `tp.importance.Importance` or a name in
    IMPORTANCES) and `round_to` are for channel tickets: weight tickets rank |w|, and refuse them. `global_pruning`
    is one threshold over all layers, `ignored_layers` modules or names left unpruned (the classifier always is),
    `pruning_ratio_dict` {module or its name: the fraction of that layer's weights removed after all steps} for
    layers pruned at their own rate, each on its own (weight tickets; naming the classifier prunes it).

    `model` may be wrapped (DataParallel, DistributedDataParallel, a model from `accelerator.prepare`, torch.compile):
    the pruner works on the module inside, with its own layer names and classifier. The rewind point is the model's
    weights when the pruner is built (theta_0); `rewind_point()` takes the current weights instead (late rewinding,
    e.g. at iteration k); `rewind=False` keeps the trained weights (learning-rate rewinding and fine-tuning, whose
    schedule is your loop's).

    `step()` prunes the trained weights to the next level, never reviving what earlier levels removed, rewinds the
    survivors and returns the model to train: for weight tickets the model the pruner was given (keep its pruned
    entries zero with `mask_after_steps(optimizer)` or `apply_mask()`), for channel tickets a physically smaller
    copy, which the next `step()` reads back (or the model passed to it). A weight ticket's pruned entries found
    nonzero at `step()` or `save_level()` (the mask was not enforced) are zeroed again, with a warning. IMP trains
    every level with a fresh optimizer: build one for the returned model, or pass yours as `step(optimizer=...)`
    to have its state (momentum, Adam's moments) cleared. A `step()` past `iterative_steps` warns and prunes
    nothing, as Torch-Pruning's pruners do.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, importance=None,
                 pruning_ratio: Optional[float] = None, iterative_steps: int = 1, global_pruning: bool = True,
                 ignored_layers: Optional[Sequence] = None, round_to: Optional[int] = None,
                 granularity: str = "weight", rewind: bool = True, prune_fraction: float = 0.2,
                 pruning_ratio_dict: Optional[Dict[Union[nn.Module, str], float]] = None):
        if granularity not in GRANULARITIES:
            raise UserError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
        if granularity == "weight" and (importance is not None or round_to is not None):
            raise UserError("importance and round_to choose and round channels: weight tickets rank |w|; drop them "
                            "or use granularity='channel'")
        if pruning_ratio is not None and not 0.0 <= pruning_ratio < 1.0:
            raise UserError(f"pruning_ratio must be in [0, 1) (the fraction of weights removed), not {pruning_ratio}")
        if not (isinstance(iterative_steps, int) and iterative_steps >= 1):
            raise UserError(f"iterative_steps must be 1 or more, not {iterative_steps}")
        self.wrapper, self.model = model, unwrap_model(model)
        check_same_device(self.model, example_inputs)
        model = self.model
        self.example_inputs = example_inputs
        self.importance, self.granularity, self.round_to = importance, granularity, round_to
        self.scope = "global" if global_pruning else "layerwise"
        self.ignored_layers = list(ignored_layers or [])
        self.iterative_steps, self.prune_fraction, self.rewind = iterative_steps, prune_fraction, rewind
        self.pruning_ratio = pruning_ratio
        self.target_density = None if pruning_ratio is None else 1.0 - pruning_ratio
        self._names = {id(m): n for n, m in model.named_modules()}
        self.own_ratios = {f"{self._name_of(layer)}.weight": float(ratio)
                           for layer, ratio in (pruning_ratio_dict or {}).items()}
        if self.own_ratios and granularity != "weight":
            raise UserError("pruning_ratio_dict applies to weight tickets; channel tickets follow Torch-Pruning's "
                            "groups")
        self._prune_classifier = bool(classifier_weight_names(model) & set(self.own_ratios))
        prunable = prunable_weight_names(model, resolve_ignored(model, self.ignored_layers,
                                                                ignore_classifier=not self._prune_classifier))
        self._total = sum(named_tensors(model)[n].numel() for n in prunable if n not in self.own_ratios)
        self.mask = Mask.ones(model, prunable, granularity)
        self.current_step = 0
        self._history: List[dict] = []
        self._rewind_state = snapshot(model) if rewind else None
        self._enforce, self._enforced_on = None, None
        self._trainee: nn.Module = model  # the model the current level trains: what `step()` reads back

    def _name_of(self, layer: Union[nn.Module, str]) -> str:
        return layer if isinstance(layer, str) else self._names[id(unwrap_model(layer))]

    def rewind_point(self) -> None:
        """The model's current weights become the point survivors are rewound to (late rewinding)."""
        self._rewind_state = snapshot(self.model)

    def density(self, step: int) -> float:
        """The kept fraction of the prunable weights (but those of pruning_ratio_dict) after `step` steps."""
        return level_density(step, self.iterative_steps, self._total, self.target_density, self.prune_fraction)

    def _absorb(self, trained: Optional[nn.Module]) -> None:
        """The weights of the model trained at the current level (`trained`, else the one the last step handed
        out) in the pruner's dense model; a weight ticket's regrown pruned entries zeroed again, with a warning."""
        trained = self._trainee if trained is None else unwrap_model(trained)
        if trained is not self.model:
            self.model.load_state_dict(self.mask.to_dense(trained.state_dict(), self.model.state_dict()))
        regrown = self.mask.regrown(self.model)
        if regrown:
            warnings.warn(f"{regrown} weights the ticket prunes are not zero: the mask was not kept during training "
                          "(pruner.mask_after_steps(optimizer) or pruner.apply_mask() after each step); they are "
                          "zeroed again", LtPluginWarning, stacklevel=3)
            self.mask.apply(self.model)

    def step(self, trained: Optional[nn.Module] = None, optimizer=None) -> nn.Module:
        """Prune the trained weights to the next level's density and rewind the survivors; returns the model to
        train at that level. `trained`: the model trained at the current level (default: the one the last step
        returned, or the pruner's model at level 0). `optimizer` (weight tickets): its state is cleared, a fresh
        optimizer as IMP's every level."""
        if self.current_step >= self.iterative_steps:
            warnings.warn(f"the pruner has taken its {self.iterative_steps} iterative steps: nothing is pruned",
                          LtPluginWarning, stacklevel=2)
            return self.wrapper if self.granularity == "weight" else self._trainee
        if optimizer is not None and self.granularity == "channel":
            raise UserError("a channel ticket comes back as a new, smaller model: build a new optimizer for it "
                            "instead of passing one to step()")
        self._absorb(trained)
        step = self.current_step + 1
        own = {name: (1.0 - ratio) ** (step / self.iterative_steps) for name, ratio in self.own_ratios.items()}
        mask = create_mask(self.model, self.example_inputs, self.density(step), self.granularity,
                           importance=self.importance, scope=self.scope, ignored_layers=self.ignored_layers,
                           previous=self.mask, round_to=self.round_to, layer_densities=own,
                           ignore_classifier=not self._prune_classifier)
        if self._rewind_state is not None:
            self.model.load_state_dict(self._rewind_state)
        self.mask = mask
        mask.apply(self.model)
        self.current_step += 1
        self._history.append({"step": self.current_step, "density": mask.density, "plan": mask.plan})
        self._enforce = None
        if optimizer is not None:
            _innermost_optimizer(optimizer).state = defaultdict(dict)  # what a fresh optimizer starts from
        if self.granularity == "channel":
            self._trainee = export(self.model, mask, self.example_inputs)
            return self._trainee
        self._trainee = self.model
        return self.wrapper

    def regularize(self, model: nn.Module, loss=None, reg=None, bias=False) -> None:
        """Nothing: IMP trains without a penalty (Torch-Pruning's BasePruner.regularize, for generic loops)."""

    def update_regularizer(self) -> None:
        """Nothing: IMP has no penalty to update (Torch-Pruning's BasePruner.update_regularizer)."""

    def apply_mask(self) -> None:
        """Zero the pruned entries of the pruner's model again (after an optimizer step of a weight ticket); bound
        to the model's tensors where they are, and rebound when the model moves. A channel ticket trains physically
        small: there is nothing to zero."""
        if self.granularity == "channel":
            return
        device = next(self.model.parameters()).device
        if self._enforce is None or self._enforced_on != device:
            self._enforce, self._enforced_on = self.mask.enforcer(self.model), device
        self._enforce()

    def mask_after_steps(self, optimizer):
        """Keep the mask enforced after every step of `optimizer` (a torch step post-hook on the optimizer it wraps:
        a plain one, Accelerate's, one a GradScaler steps); returns its handle."""
        return _innermost_optimizer(optimizer).register_step_post_hook(lambda *_: self.apply_mask())

    def mask_gradients(self):
        """Zero the gradients of the pruned weights as backward computes them (tensor hooks), so that an optimizer
        that scales a layer's step by its norms (LAMB, LARS) counts only the ticket's weights; returns a handle
        whose `remove()` ends it. Weight tickets; a channel ticket has no pruned weight left."""
        tensors = named_tensors(self.model)
        hooks = []
        for name, keep in self.mask.tensors.items():
            tensor = tensors[name]
            if isinstance(tensor, nn.Parameter) and not bool(keep.all()) and keep.shape == tensor.shape:
                factor = keep.to(device=tensor.device, dtype=tensor.dtype)
                hooks.append(tensor.register_hook(lambda grad, factor=factor: grad * factor))
        return _Handles(hooks)

    def pruning_history(self) -> list:
        """Torch-Pruning's pruning history of the current channel ticket, [[root module, is_out_channel_fn,
        [indices]], ...], which replays the export on a fresh model; empty for weight tickets."""
        return [list(entry) for entry in self.mask.plan]

    def levels(self) -> List[dict]:
        """Each step taken: {"step", "density", "plan"}."""
        return list(self._history)

    def save_level(self, run_dir, trained: Optional[nn.Module] = None, metrics: Optional[dict] = None,
                   model_name: Optional[str] = None) -> Path:
        """The current ticket as a level of an IMP run folder (config.json, level_K/mask, weights and result.json),
        so that `lt-plugin export --run RUN_DIR --level K` ships it and `lt-plugin lottery-pools` can pool the
        levels. The folder's config records the schedule (`pruning_ratio` or `prune_fraction`,
        `pruning_ratio_dict`, the ignored layers), so the branches treat each layer as its run did. `metrics`
        (e.g. {"test_accuracy": ...}) go into its result; `model_name` is the timm name of the model (default: the
        one timm recorded when it built it)."""
        self._absorb(trained)
        model_name = model_name or getattr(self.model, "pretrained_cfg", {}).get("architecture")
        if model_name is None:
            raise UserError("save_level needs model_name: the timm name that builds this model")
        # The options `lt-plugin imp` would have run with; the others keep their defaults when the run is read.
        per_level = {name[:-len(".weight")]: 1.0 - (1.0 - ratio) ** (1 / self.iterative_steps)
                     for name, ratio in self.own_ratios.items()}
        hparams = {"model": model_name, "image_size": int(self.example_inputs.shape[-1]),
                   "levels": self.iterative_steps, "granularity": self.granularity, "scope": self.scope,
                   "ignore": [self._name_of(layer) for layer in self.ignored_layers], "round_to": self.round_to,
                   "importance": self.importance if isinstance(self.importance, str) else "magnitude",
                   "target_density": self.target_density, "prune_fraction": self.prune_fraction,
                   "layer_prune_fractions": per_level}
        layout = RunLayout(run_dir)
        atomic_write_json({"strategy": "imp", "hparams": hparams, "world_size": 1, "written_by": "IMPPruner"},
                          layout.config)
        ticket = layout.level(self.current_step)
        self.mask.save(ticket.mask)
        atomic_save_safetensors(self.model.state_dict(), ticket.weights)
        classifier = self.model.get_classifier() if hasattr(self.model, "get_classifier") else None
        result = {"level": self.current_step, "density": self.mask.density,
                  "num_classes": getattr(self.model, "num_classes", getattr(classifier, "out_features", None)),
                  **(metrics or {})}
        atomic_write_json(result, ticket.result)
        return ticket.root

    def export(self, trained: Optional[nn.Module] = None) -> nn.Module:
        """The ticket as it ships: physically pruned for channel tickets, a masked dense copy for weight tickets."""
        self._absorb(trained)
        if self.granularity == "channel":
            return export(self.model, self.mask, self.example_inputs)
        return self.mask.apply(copy.deepcopy(self.model))


class EarlyBirdPruner:
    """Early-Bird tickets (You et al., ICLR 2020) for your own loop, in Torch-Pruning's slimming words.

    `regularize(model)` after `backward()` adds the network-slimming penalty (`penalty * sign(gamma)` on every
    BatchNorm scale, or LayerNorm/GroupNorm scale on a model without BatchNorm), as Torch-Pruning's BNScalePruner
    (`reg` overrides the strength for that call); `update(epoch_or_step)` draws the channel mask at `pruning_ratio`
    (a fraction of channels, as Torch-Pruning's) from the current weights and returns whether the ticket has
    emerged: the newest of the last `window` masks is within `epsilon` of every older one (EarlyBirdDetector). As
    the reference, the first mask is the initialisation's, drawn when the pruner is built. `step()` returns the
    ticket physically pruned, with the weights it had when it emerged. `model` may be wrapped (DataParallel, DDP,
    Accelerate, torch.compile). `score` "auto" ranks channels by |gamma| on BatchNorm models (one global threshold)
    and by Torch-Pruning's group magnitude otherwise. `distance` "norm" compares masks over every
    normalisation-layer channel (the reference's BatchNorm channels), "outputs" over the prunable layers' output
    channels.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, pruning_ratio: float = 0.5,
                 penalty: float = 1e-4, epsilon: float = 0.1, window: int = 5, score: str = "auto",
                 ignored_layers: Optional[Sequence] = None, round_to: Optional[int] = None, distance: str = "norm"):
        if not 0.0 < pruning_ratio < 1.0:
            raise UserError(f"pruning_ratio must be in (0, 1) (the fraction of channels removed), not {pruning_ratio}")
        if distance not in DISTANCES:
            raise UserError(f"distance must be one of {', '.join(DISTANCES)}, not {distance!r}")
        model = unwrap_model(model)
        self.model, self.example_inputs, self.pruning_ratio = model, example_inputs, pruning_ratio
        self.ignored = resolve_ignored(model, ignored_layers)
        self.score = resolve_score(score, model)
        self.structure = ChannelStructure(model, example_inputs, self.ignored,
                                          importance=early_bird_importance(self.score), scope="global",
                                          round_to=round_to)
        self.norms = norm_scales(model, self.ignored) if distance == "norm" else None
        self.penalty = SlimmingPenalty(norm_scales(model, self.ignored).values(), penalty)
        self.detector = EarlyBirdDetector(window, epsilon)
        self.checks: List[Union[int, float, None]] = []  # what each update was called with (None at the start)
        self.found_at: Union[int, float, None] = None     # ... at the update where the ticket emerged
        self._ticket: Optional[Tuple[list, Dict[str, torch.Tensor]]] = None
        self.update(None)

    def regularize(self, model: Optional[nn.Module] = None, reg: Optional[float] = None, bias=False) -> None:
        """Add the slimming penalty to the scales' gradients of `model` (default: the pruner's; call it between
        `backward()` and `optimizer.step()`); `reg` is the strength of this call (default: `penalty`)."""
        model = self.model if model is None else unwrap_model(model)
        scales = self.penalty.scales if model is self.model else list(norm_scales(model, self.ignored).values())
        SlimmingPenalty(scales, self.penalty.strength if reg is None else reg).add_to_gradients()

    def update_regularizer(self) -> None:
        """Nothing: the slimming penalty keeps its scales (Torch-Pruning's update_regularizer, for generic loops)."""

    def update(self, epoch_or_step: Union[int, float, None] = None) -> bool:
        """Draw the mask from the current weights; True once the ticket has emerged (and from then on)."""
        plan, flags = draw_channel_flags(self.structure, [self.pruning_ratio], self.norms)[self.pruning_ratio]
        self.checks.append(epoch_or_step)
        emerged = self.detector.update(flags)
        if emerged and self.found_at is None:
            self.found_at = epoch_or_step
            self._ticket = (plan, snapshot(self.model))
        return self.found_at is not None

    @property
    def mask(self) -> Optional[Mask]:
        """The emerged ticket's channel mask in the dense space (None before it emerged)."""
        return None if self._ticket is None else self.structure.mask_from_plan(self._ticket[0])

    def step(self) -> nn.Module:
        """The emerged ticket physically pruned (Torch-Pruning's dependency graph), with its weights at emergence."""
        if self._ticket is None:
            raise UserError("the Early-Bird ticket has not emerged yet: call update() at each check until it does")
        plan, state = self._ticket
        dense = copy.deepcopy(self.model)
        dense.load_state_dict(state)
        return export(dense, self.structure.mask_from_plan(plan), self.example_inputs)
