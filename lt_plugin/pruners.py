"""IMP with rewinding as a piece for your own training loop, in Torch-Pruning's words.

Torch-Pruning users build a pruner, call `pruner.step()` between rounds of fine-tuning, and the pruner prunes their
model in place. `IMPPruner` does the same for lottery tickets (`EarlyBirdPruner` is in `early_bird_pruner`,
`GradualPruner` in `gradual`):

    pruner = IMPPruner(model, example_inputs, pruning_ratio=0.8, iterative_steps=3)   # density 0.2 after 3 steps
    train(model)                                  # level 0: dense
    for _ in range(pruner.iterative_steps):
        pruner.step()                             # prune the trained weights, rewind the survivors (theta_0)
        optimizer = make_optimizer(model)         # IMP trains each level with a fresh optimizer
        pruner.mask_after_steps(optimizer)        # weight tickets: keep the pruned entries zero
        train(model, optimizer)                   # a channel ticket's model is physically smaller now

The ticket lives in the dense model's space (its mask, the rewind point, the levels); a channel ticket's model is
pruned in place through Torch-Pruning's dependency graph, and read back into the dense space at the next step.
"""

from __future__ import annotations

import bisect
import copy
import warnings
from collections import defaultdict
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn

from .callbacks import RegrowthCheck
from .errors import LtPluginWarning, UserError
from .layout import RunLayout
from .levels import level_density
from .masks import (GRANULARITIES, Mask, classifier_weight_names, magnitude_mask, named_tensors,
                    prunable_weight_names, resolve_ignored, snapshot, unwrap_model)
from .model_checks import check_same_device, device_of, inputs_on
from .pruner_arguments import ratio_scopes, refuse_interactive, refuse_options, refuse_tracing
from .schedules import Point, training_step
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


def _plan_increment(applied: list, plan: list) -> list:
    """The plan entries that prune a model already pruned by `applied` to `plan` (a superset), each root's channel
    indices counted among the channels `applied` left it (what its module has now)."""
    done = {(root, bool(is_out)): sorted(idxs) for root, is_out, idxs in applied}
    increment = []
    for root, is_out, idxs in plan:
        removed = done.get((root, bool(is_out)), [])
        new = sorted(set(idxs) - set(removed))
        if new:
            increment.append([root, is_out, [c - bisect.bisect_left(removed, c) for c in new]])
    return increment


class IMPPruner:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020) for your own loop.

    Arguments Torch-Pruning's pruners have keep their names and meaning, but for `pruning_ratio`: here it is the
    fraction of the prunable (Conv/Linear) *weights* removed after all `iterative_steps` steps, for weight and for
    channel tickets alike (Torch-Pruning's is a fraction of channels), reached as a constant fraction of what is
    left per step: the density after step k is (1 - pruning_ratio)^(k / iterative_steps), as `lt-plugin imp
    --target-density 1-r --levels n` prunes. Without `pruning_ratio`, each step prunes `prune_fraction` of the
    remaining weights (IMP's 20%, open_lth's counting). `importance` (any `tp.importance.Importance` or a name in
    IMPORTANCES), `round_to`, `forward_fn` and `output_transform` are for channel tickets: weight tickets rank |w|,
    and refuse them. `global_pruning` is one threshold over all layers, `ignored_layers` modules, names or
    parameters left unpruned (the classifier always is), `pruning_ratio_dict` {module, its name or a tuple of them:
    the fraction of their weights removed after all steps} for layers pruned at their own rate (weight tickets; a
    tuple's layers ranked together under global_pruning, as Torch-Pruning's; naming the classifier prunes it).
    docs/own-loop.md's table says which of Torch-Pruning's other arguments mean something here.

    `model` may be wrapped (DataParallel, DistributedDataParallel, `accelerator.prepare`, torch.compile): the pruner
    works on the module inside. The rewind point is the model's weights when the pruner is built (theta_0), or
    after `rewind_to` optimizer steps of the dense training (an int; a float is a fraction of `total_steps`;
    `<N>it`, `<N>ep` with `steps_per_epoch`), counted by `mask_after_steps(optimizer)`; `rewind_point()` takes the
    current weights instead; `rewind=False` keeps the trained weights (learning-rate rewinding and fine-tuning,
    whose schedule is your loop's).

    `step()` prunes the trained weights to the next level, never reviving what earlier levels removed, and rewinds
    the survivors, in the model the pruner was given, as Torch-Pruning's `step()` does: a weight ticket's pruned
    entries are zeroed (keep them zero with `mask_after_steps(optimizer)` or `apply_mask()`; found nonzero at
    `step()` or `save_level()` they are zeroed again with a warning, and `watch_regrowth` checks during training),
    a channel ticket's layers lose their channels through Torch-Pruning's dependency graph (build its optimizer
    anew, and wrap or prepare it anew: its parameters are new). It returns that model (the wrapper given, for
    weight tickets). IMP trains every level with a fresh optimizer: build one, or pass yours as
    `step(optimizer=...)` (weight tickets) to have its state cleared. A `step()` past `iterative_steps` warns and
    prunes nothing, as Torch-Pruning's. `state_dict()`/`load_state_dict()` hold tensors and plain values only
    (`accelerator.register_for_checkpointing(pruner)` resumes it; `load_state_from(folder)` first for a channel
    ticket, whose model must have its shape before its optimizer is built).
    """

    def __init__(self, model: nn.Module, example_inputs, importance=None, *, pruning_ratio: Optional[float] = None,
                 iterative_steps: int = 1, global_pruning: bool = True, ignored_layers: Optional[Sequence] = None,
                 round_to: Optional[int] = None, granularity: str = "weight", rewind: bool = True,
                 rewind_to: Point = 0, total_steps: Optional[int] = None, steps_per_epoch: Optional[int] = None,
                 prune_fraction: float = 0.2, pruning_ratio_dict: Optional[dict] = None, forward_fn=None,
                 output_transform=None, **torch_pruning_options):
        refuse_options("IMPPruner", torch_pruning_options)
        if granularity not in GRANULARITIES:
            raise UserError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
        if granularity == "weight" and (importance is not None or round_to is not None):
            raise UserError("importance and round_to choose and round channels: weight tickets rank |w|; drop them "
                            "or use granularity='channel'")
        if granularity == "weight":
            refuse_tracing("IMPPruner", forward_fn, output_transform, "a weight ticket (ranked by |w|) never needs")
        if pruning_ratio is not None and not 0.0 <= pruning_ratio < 1.0:
            raise UserError(f"pruning_ratio must be in [0, 1) (the fraction of weights removed), not {pruning_ratio}")
        if not (isinstance(iterative_steps, int) and iterative_steps >= 1):
            raise UserError(f"iterative_steps must be 1 or more, not {iterative_steps}")
        self.wrapper, self.model = model, unwrap_model(model)
        check_same_device(self.model, example_inputs)
        model = self.model
        self.example_inputs, self.forward_fn, self.output_transform = example_inputs, forward_fn, output_transform
        self.importance, self.granularity, self.round_to = importance, granularity, round_to
        self.scope = "global" if global_pruning else "layerwise"
        self.ignored_layers = self._ignored_by_name(ignored_layers or [])  # found again in the dense copy
        self.iterative_steps, self.prune_fraction, self.rewind = iterative_steps, prune_fraction, rewind
        self.pruning_ratio = pruning_ratio
        self.target_density = None if pruning_ratio is None else 1.0 - pruning_ratio
        self.scopes = ratio_scopes(model, pruning_ratio_dict, joint=global_pruning)
        if self.scopes and granularity != "weight":
            raise UserError("pruning_ratio_dict applies to weight tickets; channel tickets follow Torch-Pruning's "
                            "groups")
        scoped = {name for names in self.scopes for name in names}
        self._prune_classifier = bool(classifier_weight_names(model) & scoped)
        order = list(dict(model.named_parameters()))
        ignored = resolve_ignored(model, self.ignored_layers, ignore_classifier=not self._prune_classifier)
        self._prunable = sorted(set(prunable_weight_names(model, ignored)) | scoped, key=order.index)
        self._total = sum(named_tensors(model)[n].numel() for n in self._prunable if n not in scoped)
        self._rewind_step = training_step(rewind_to, "rewind_to", total_steps, steps_per_epoch) if rewind else None
        # The dense space every ticket lives in: the model itself for weight tickets; for channel tickets a copy,
        # since the model is pruned in place.
        self._dense = model if granularity == "weight" else copy.deepcopy(model)
        self.reset()

    def reset(self) -> None:
        """Back to level 0 (Torch-Pruning's reset): no step taken, nothing pruned, and the rewind point taken again
        from the model's current weights (or after `rewind_to` steps). A channel ticket's model, physically pruned,
        cannot grow back: build a new pruner on a fresh model instead."""
        if self.granularity == "channel" and getattr(self, "_applied_plan", []):
            raise UserError("the model of this channel ticket is physically pruned and cannot grow back: build a new "
                            "IMPPruner on a fresh model")
        self.mask = Mask.ones(self._dense, self._prunable, self.granularity)
        self._absorb(None, warn=False)  # the model's current weights, in the dense space
        self.current_step, self._steps_seen = 0, 0
        self._history: List[dict] = []
        self._applied_plan: list = []  # the channel plan the model has been pruned to
        self._rewind_state = snapshot(self._dense) if self._rewind_step == 0 else None
        self._enforce, self._enforced_on = None, None

    def rewind_point(self) -> None:
        """The model's current weights become the point survivors are rewound to (late rewinding)."""
        self._absorb(None, warn=False)
        self._rewind_state = snapshot(self._dense)

    def density(self, step: int) -> float:
        """The kept fraction of the prunable weights (but those of pruning_ratio_dict) after `step` steps."""
        return level_density(step, self.iterative_steps, self._total, self.target_density, self.prune_fraction)

    def _absorb(self, trained: Optional[nn.Module], warn: bool = True) -> None:
        """The weights of the model trained at the current level (`trained`, else the pruner's model) in the dense
        space; a weight ticket's regrown pruned entries zeroed again, with a warning."""
        trained = self.model if trained is None else unwrap_model(trained)
        if trained is not self._dense:
            self._dense.load_state_dict(self.mask.to_dense(trained.state_dict(), self._dense.state_dict()))
        regrown = self.mask.regrown(self._dense)
        if regrown and warn:
            warnings.warn(f"{regrown} weights the ticket prunes are not zero: the mask was not kept during training "
                          "(pruner.mask_after_steps(optimizer) or pruner.apply_mask() after each step); they are "
                          "zeroed again", LtPluginWarning, stacklevel=3)
        if regrown:
            self.mask.apply(self._dense)

    def _next_mask(self, step: int) -> Mask:
        """The mask of level `step`: the trained weights of the dense space pruned to the level's densities."""
        fraction = step / self.iterative_steps
        own = {names: (1.0 - ratio) ** fraction for names, ratio in self.scopes.items()}
        if self.granularity == "channel":
            device = device_of(self._dense)
            return create_mask(self._dense, inputs_on(self.example_inputs, device), self.density(step), "channel",
                               importance=self.importance, scope=self.scope, ignored_layers=self.ignored_layers,
                               previous=self.mask, round_to=self.round_to, forward_fn=self.forward_fn,
                               output_transform=self.output_transform)
        alone = {names[0]: density for names, density in own.items() if len(names) == 1}
        scoped = {name for names in own for name in names}
        rest = [n for n in self._prunable if n not in scoped or n in alone]
        keep = dict(magnitude_mask(self._dense, self.density(step), rest, self.scope, self.mask, alone).tensors)
        for names, density in own.items():
            if len(names) > 1:  # a tuple of pruning_ratio_dict under global_pruning: one threshold over its layers
                keep.update(magnitude_mask(self._dense, density, list(names), "global", self.mask).tensors)
        return Mask({n: keep[n] for n in self._prunable}, self._prunable, "weight")

    def step(self, trained: Optional[nn.Module] = None, optimizer=None, interactive: bool = False) -> nn.Module:
        """Prune the trained weights to the next level's density and rewind the survivors, in the pruner's model;
        returns that model. `trained`: a model trained at the current level other than the pruner's (its weights
        are read). `optimizer` (weight tickets): its state is cleared, a fresh optimizer as IMP's every level."""
        refuse_interactive("IMPPruner", trained if isinstance(trained, bool) else interactive)
        if self.current_step >= self.iterative_steps:
            warnings.warn(f"the pruner has taken its {self.iterative_steps} iterative steps: nothing is pruned",
                          LtPluginWarning, stacklevel=2)
            return self.wrapper if self.granularity == "weight" else self.model
        if optimizer is not None and self.granularity == "channel":
            raise UserError("a channel ticket's parameters are new after step(): build a new optimizer for the model "
                            "instead of passing one to step()")
        if self.rewind and self._rewind_state is None:
            raise UserError(f"rewind_to is step {self._rewind_step} of the dense training, but the pruner counted "
                            f"{self._steps_seen} optimizer steps: call pruner.mask_after_steps(optimizer) before the "
                            "dense training (or pruner.rewind_point() at the step you rewind to)")
        self._absorb(trained)
        mask = self._next_mask(self.current_step + 1)
        if self._rewind_state is not None and self.rewind:
            self._dense.load_state_dict(self._rewind_state)
        self.mask = mask
        mask.apply(self._dense)
        self.current_step += 1
        self._history.append({"step": self.current_step, "density": mask.density, "plan": mask.plan})
        self._enforce = None
        if optimizer is not None:
            _innermost_optimizer(optimizer).state = defaultdict(dict)  # what a fresh optimizer starts from
        if self.granularity == "weight":
            return self.wrapper
        self._prune_model()
        self.model.load_state_dict(export(self._dense, mask, inputs_on(self.example_inputs, device_of(self._dense)),
                                          self.forward_fn, self.output_transform).state_dict())
        return self.model

    def _prune_model(self) -> None:
        """The pruner's model pruned in place from the plan it has to the mask's (Torch-Pruning's dependency graph on
        the model itself, as Torch-Pruning's step() prunes)."""
        target = {(root, bool(is_out)): set(idxs) for root, is_out, idxs in self.mask.plan}
        if any(not set(idxs) <= target.get((root, bool(is_out)), set()) for root, is_out, idxs in self._applied_plan):
            raise UserError("the model is pruned further than this ticket: a pruned channel cannot grow back; build "
                            "a fresh model and pruner to load this state")
        increment = _plan_increment(self._applied_plan, self.mask.plan)
        if increment:
            ChannelStructure(self.model, inputs_on(self.example_inputs, device_of(self.model)), ignored=[],
                             forward_fn=self.forward_fn, output_transform=self.output_transform
                             ).export(Mask({}, [], "channel", increment))
        self._applied_plan = [list(entry) for entry in self.mask.plan]

    def regularize(self, model: Optional[nn.Module] = None, loss=None, reg=None, bias=False) -> None:
        """Nothing: IMP trains without a penalty (Torch-Pruning's BasePruner.regularize, for generic loops)."""

    def update_regularizer(self) -> None:
        """Nothing: IMP has no penalty to update (Torch-Pruning's BasePruner.update_regularizer)."""

    def apply_mask(self) -> None:
        """Zero the pruned entries of the pruner's model again (after an optimizer step of a weight ticket); bound
        to the model's tensors where they are, and rebound when the model moves. A channel ticket trains physically
        small: there is nothing to zero."""
        if self.granularity == "channel":
            return
        device = device_of(self.model)
        if self._enforce is None or self._enforced_on != device:
            self._enforce, self._enforced_on = self.mask.enforcer(self.model), device
        self._enforce()

    def _after_optimizer_step(self) -> None:
        self.apply_mask()
        if self.current_step == 0 and self._rewind_state is None and self.rewind:
            self._steps_seen += 1
            if self._steps_seen == self._rewind_step:
                self.rewind_point()

    def mask_after_steps(self, optimizer):
        """Keep the mask enforced after every step of `optimizer` (a torch step post-hook on the optimizer it wraps:
        a plain one, Accelerate's, one a GradScaler steps), and count the dense training's steps for `rewind_to`;
        returns its handle."""
        return _innermost_optimizer(optimizer).register_step_post_hook(lambda *_: self._after_optimizer_step())

    def watch_regrowth(self, optimizer, every: int = 100):
        """Every `every` steps of `optimizer`, count per layer the pruned entries training made nonzero, with a
        warning naming them (`lt_plugin.callbacks.RegrowthCheck`); returns the hook's handle (`.check` is the
        RegrowthCheck, `.check.found` what it found)."""
        check, steps = RegrowthCheck(lambda: self.mask, every), [0]

        def count(*_):
            steps[0] += 1
            if steps[0] % every == 0:
                check.check(self.model, steps[0])
        handle = _innermost_optimizer(optimizer).register_step_post_hook(count)
        handle.check = check
        return handle

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
        [indices]], ...], which replays the pruning on a fresh model; empty for weight tickets."""
        return [list(entry) for entry in self.mask.plan]

    def levels(self) -> List[dict]:
        """Each step taken: {"step", "density", "plan"}."""
        return list(self._history)

    # ---- checkpoints: tensors and plain values, no pickle ----
    def state_dict(self) -> dict:
        """What resumes the pruner: its steps, mask, levels and rewind point (tensors on the CPU, numbers, strings,
        lists and dicts: `torch.load(weights_only=True)` reads it)."""
        rewind = self._rewind_state
        return {"pruner": "IMPPruner", "granularity": self.granularity, "prunable": list(self._prunable),
                "current_step": self.current_step, "steps_seen": self._steps_seen,
                "mask": {n: t.detach().cpu().clone() for n, t in self.mask.tensors.items()},
                "plan": [list(entry) for entry in self.mask.plan],
                "history": [{"step": h["step"], "density": h["density"], "plan": [list(e) for e in h["plan"]]}
                            for h in self._history],
                "rewind_state": None if rewind is None else {k: v.detach().cpu().clone() for k, v in rewind.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; a channel ticket's model is pruned in place to the state's plan (its weights
        come from your checkpoint of the model)."""
        if (state.get("pruner"), state.get("granularity"), list(state.get("prunable", []))) != \
                ("IMPPruner", self.granularity, self._prunable):
            raise UserError("the state is not of an IMPPruner of this model and granularity: build the pruner as the "
                            "saved one was built")
        self.current_step, self._steps_seen = int(state["current_step"]), int(state["steps_seen"])
        self.mask = Mask(state["mask"], self._prunable, self.granularity, [list(e) for e in state["plan"]])
        self._history = [dict(h) for h in state["history"]]
        self._rewind_state = None if state["rewind_state"] is None else dict(state["rewind_state"])
        self._enforce = None
        if self.granularity == "channel":
            self._prune_model()

    def load_state_from(self, checkpoint_dir) -> None:
        """This pruner's state from a folder `accelerator.save_state` wrote (its registered objects' files, read
        with weights_only: no pickled code runs). A channel ticket's model takes its pruned shape, so that its
        optimizer can be built and `accelerator.load_state` can load its weights."""
        states = []
        for path in sorted(Path(checkpoint_dir).glob("custom_checkpoint_*.pkl")):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # another registered object's state, not of plain values
                continue
            if isinstance(state, dict) and state.get("pruner") == "IMPPruner" and \
                    list(state.get("prunable", [])) == self._prunable:
                states.append(state)
        if len(states) != 1:
            raise UserError(f"{checkpoint_dir} holds {len(states)} states of an IMPPruner of this model, not one: "
                            "register the pruner with accelerator.register_for_checkpointing before save_state")
        self.load_state_dict(states[0])

    def __getstate__(self):
        return {**self.__dict__, "_enforce": None, "_enforced_on": None}  # the bound enforcer is rebuilt on use

    # ---- the ticket as the command line's run folders and exports hold it ----
    def save_level(self, run_dir, trained: Optional[nn.Module] = None, metrics: Optional[dict] = None,
                   model_name: Optional[str] = None) -> Path:
        """The current ticket as a level of an IMP run folder (config.json, level_K/mask, weights and result.json),
        so that `lt-plugin export --run RUN_DIR --level K` ships it and `lt-plugin lottery-pools` can pool the
        levels. The folder's config records the schedule (`pruning_ratio` or `prune_fraction`,
        `pruning_ratio_dict`, the ignored layers), so the branches treat each layer as its run did. `metrics`
        (e.g. {"test_accuracy": ...}) go into its result; `model_name` is the timm name of the model (default: the
        one timm recorded when it built it)."""
        if any(len(names) > 1 for names in self.scopes):
            raise UserError("a pruning_ratio_dict key ranked as one scope (a tuple or a block, under global_pruning) "
                            "has no form in an IMP run folder, whose layer rates prune each layer on its own: use "
                            "global_pruning=False, or name the layers one by one")
        self._absorb(trained)
        model_name = model_name or getattr(self.model, "pretrained_cfg", {}).get("architecture")
        if model_name is None:
            raise UserError("save_level needs model_name: the timm name that builds this model")
        # The options `lt-plugin imp` would have run with; the others keep their defaults when the run is read.
        per_level = {names[0][:-len(".weight")]: 1.0 - (1.0 - ratio) ** (1 / self.iterative_steps)
                     for names, ratio in self.scopes.items()}
        hparams = {"model": model_name, "image_size": int(self.example_inputs.shape[-1]),
                   "levels": self.iterative_steps, "granularity": self.granularity, "scope": self.scope,
                   "ignore": self._ignored_names(), "round_to": self.round_to,
                   "importance": self.importance if isinstance(self.importance, str) else "magnitude",
                   "target_density": self.target_density, "prune_fraction": self.prune_fraction,
                   "layer_prune_fractions": per_level}
        layout = RunLayout(run_dir)
        atomic_write_json({"strategy": "imp", "hparams": hparams, "world_size": 1, "written_by": "IMPPruner"},
                          layout.config)
        ticket = layout.level(self.current_step)
        self.mask.save(ticket.mask)
        atomic_save_safetensors(self._dense.state_dict(), ticket.weights)
        classifier = self.model.get_classifier() if hasattr(self.model, "get_classifier") else None
        result = {"level": self.current_step, "density": self.mask.density,
                  "num_classes": getattr(self.model, "num_classes", getattr(classifier, "out_features", None)),
                  **(metrics or {})}
        atomic_write_json(result, ticket.result)
        return ticket.root

    def _ignored_by_name(self, ignored_layers) -> List[str]:
        """The ignored modules and parameters by their names in the model (the dense copy a channel ticket ranks in
        has the same names)."""
        names = {id(m): n for n, m in self.model.named_modules()}
        names.update({id(p): n for n, p in self.model.named_parameters()})
        found = []
        for layer in ignored_layers:
            key = id(unwrap_model(layer) if isinstance(layer, nn.Module) else layer)
            if not isinstance(layer, str) and key not in names:
                raise UserError(f"ignored_layers: a {type(layer).__name__} that is not part of the model")
            found.append(layer if isinstance(layer, str) else names[key])
        return found

    def _ignored_names(self) -> List[str]:
        """The ignored layers as `--ignore` names them: a layer's weight or bias stands for the layer; a parameter
        outside a layer (timm's cls_token) is never pruned by a weight ticket, and a channel ticket refuses it."""
        layers = dict(self.model.named_modules())
        names = []
        for name in self.ignored_layers:
            owner = name.rpartition(".")[0]
            if name in layers:
                names.append(name)
            elif next(layers[owner].children(), None) is None:
                names.append(owner)
        return names

    def export(self, trained: Optional[nn.Module] = None) -> nn.Module:
        """The ticket as it ships, a new model: physically pruned for channel tickets, a masked dense copy for
        weight tickets."""
        self._absorb(trained)
        if self.granularity == "channel":
            return export(self._dense, self.mask, inputs_on(self.example_inputs, device_of(self._dense)),
                          self.forward_fn, self.output_transform)
        return self.mask.apply(copy.deepcopy(self._dense))
