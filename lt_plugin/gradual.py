"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"; Gale et al. 2019, "The State of
Sparsity"): the smallest weights are removed *during* training, every `frequency` steps from `start_step` to
`end_step`, on a named schedule (`lt_plugin.schedules`: Zhu & Gupta's cubic by default, fasterai's others), the
pruned weights held at zero in between.

One mechanism, two ways in:

- `GradualPruning`, a `fit` callback (the `gradual` strategy trains with it; kill -9 safe: the mask of each pruning
  step is a file of the training folder, and the checkpoint names the one it resumes with);
- `GradualPruner`, the same in Torch-Pruning's words for your own loop: `pruner.step()` after every
  `optimizer.step()`, `regularize` a no-op.

At a pruning step the weights that are still kept are ranked by |w| (`pai.magnitude_scores`) and exactly
round(density * count) of them stay (`pai.mask_from_scores`, ties broken by index), per layer (Zhu & Gupta's rule,
the default) or globally; a weight once pruned is never chosen again, as in Zhu & Gupta's implementation, where a
masked weight has no gradient. The schedule prunes at its start step too when its density there is below 1 (an
initial density below 1, or the one-shot schedule).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from .callbacks import Callback, TrainState
from .errors import UserError
from .layout import FitFolder
from .masks import SCOPES, Mask, prunable_weight_names, resolve_ignored, unwrap_model
from .pai import magnitude_scores, mask_from_scores
from .pruner_arguments import ratio_scopes, refuse_interactive, refuse_options, refuse_tracing
from .schedules import Point, check_schedule, pruning_window, scheduled_density
from .store import atomic_save_safetensors, read_safetensors


@dataclasses.dataclass(frozen=True)
class GradualSchedule:
    """The density falls from `initial_density` at `start_step` to `final_density` at `end_step` on `schedule`
    (SCHEDULES: cubic, Zhu & Gupta's, by default), pruning at start_step + k * frequency where the density falls.
    `layer_densities` {weight name, or a tuple of names ranked together: its own final density} for layers on their
    own schedule (the same steps, their own end point), the rest ranked with `scope` (layerwise: Zhu & Gupta's
    rule, every layer the same density). `iterative_steps` is the iterative schedule's number of equal steps."""

    start_step: int
    end_step: int
    frequency: int
    final_density: float
    initial_density: float = 1.0
    scope: str = "layerwise"
    layer_densities: Mapping[Union[str, Tuple[str, ...]], float] = dataclasses.field(default_factory=dict)
    schedule: str = "cubic"
    iterative_steps: int = 3

    def __post_init__(self):
        if self.start_step < 0:
            raise UserError(f"the gradual schedule starts at step {self.start_step}: it must be 0 or later")
        if self.end_step <= self.start_step:
            raise UserError(f"the gradual schedule must end after it starts (steps {self.start_step} to "
                            f"{self.end_step})")
        if self.scope not in SCOPES:
            raise UserError(f"scope must be one of {', '.join(SCOPES)}, not {self.scope!r}")
        check_schedule(self.schedule, self.iterative_steps)
        self.density(self.start_step)  # its own checks: frequency, the densities, end - start
        bad = {n: d for n, d in self.layer_densities.items() if not 0.0 <= d <= 1.0}
        if bad:
            raise UserError(f"layer densities must be in [0, 1], not {bad}")

    def density(self, step: int, final: Optional[float] = None) -> float:
        """The density after optimizer step `step` (of the layers that follow the run's `final_density`, or of one
        ending at `final`): 1 before the schedule starts."""
        final = self.final_density if final is None else final
        if step < self.start_step:
            return 1.0
        return scheduled_density(self.schedule, step, self.start_step, self.end_step, self.frequency, final,
                                 self.initial_density, self.iterative_steps)

    def _densities(self, step: int) -> Tuple[float, ...]:
        return (self.density(step), *(self.density(step, final) for final in self.layer_densities.values()))

    def is_pruning_step(self, step: int) -> bool:
        """Whether optimizer step `step` prunes: a step of the grid where some density falls."""
        if not self.start_step <= step <= self.end_step or (step - self.start_step) % self.frequency:
            return False
        before = self._densities(step - self.frequency if step > self.start_step else self.start_step - 1)
        return any(now < then for now, then in zip(self._densities(step), before))

    def mask_at(self, model: nn.Module, step: int, previous: Mask) -> Mask:
        """The mask of pruning step `step`: `previous`'s kept weights of `model` ranked by |w|, exactly the
        schedule's count kept (the rest's over `scope`, each own scope's within it)."""
        scoped = {key: (key,) if isinstance(key, str) else tuple(key) for key in self.layer_densities}
        taken = {name for names in scoped.values() for name in names}
        rest = [n for n in previous.prunable if n not in taken]
        scores = magnitude_scores(model, previous.prunable, previous)
        keep = {}
        if rest:
            keep.update(mask_from_scores({n: scores[n] for n in rest}, self.density(step), self.scope,
                                         previous=previous).tensors)
        for key, final in self.layer_densities.items():
            keep.update(mask_from_scores({n: scores[n] for n in scoped[key]}, self.density(step, final), "global",
                                         previous=previous).tensors)
        return Mask({n: keep[n] for n in previous.prunable}, previous.prunable, "weight")


class _MaskedTraining:
    """What the callback and the pruner share: the current mask, bound to the model's tensors where they are (and
    bound again when the model moves), pruned on schedule. `pruned_at` is the step of the last pruning (None: not
    pruned yet)."""

    def __init__(self, schedule: GradualSchedule, mask: Mask, pruned_at: Optional[int] = None):
        self.schedule, self.mask, self.pruned_at = schedule, mask, pruned_at
        self._enforce, self._bound_on = None, None

    def bind(self, model: nn.Module) -> None:
        self.mask.apply(model)
        self._enforce, self._bound_on = self.mask.enforcer(model), next(model.parameters()).device

    def enforce(self, model: nn.Module) -> None:
        if self._enforce is None or next(model.parameters()).device != self._bound_on:
            self.bind(model)  # the model moved (to a GPU, or meta): the mask follows it
        self._enforce()

    def prune_if_due(self, model: nn.Module, step: int) -> bool:
        """At a pruning step not yet taken, the next mask drawn and applied; True when it pruned."""
        if self.pruned_at == step or not self.schedule.is_pruning_step(step):
            return False
        self.mask = self.schedule.mask_at(model, step, self.mask)
        self.pruned_at = step
        self.bind(model)
        return True

    def advance(self, model: nn.Module, step: int) -> bool:
        """After optimizer step `step`: the pruned weights zeroed again, and pruned when the schedule says so."""
        self.enforce(model)
        return self.prune_if_due(model, step)


class GradualPruning(Callback):
    """`fit`'s gradual magnitude pruning of the weights `prunable` on `schedule`. Each pruning step's mask is written
    as `mask_step_{k}.safetensors` in the training folder before the checkpoint that names it (the checkpoint keeps
    the step of the mask it trained with), so a killed run resumes with the mask it had; the final mask is written
    to `final_mask` when training ends, before the final weights."""

    state_key = "gradual_pruning"

    def __init__(self, schedule: GradualSchedule, prunable: Sequence[str], final_mask):
        self.schedule, self.prunable, self.final_mask = schedule, list(prunable), final_mask
        self.resumed_at: Optional[int] = None
        self.training: Optional[_MaskedTraining] = None

    @staticmethod
    def _file(state: TrainState, step: int):
        return FitFolder(state.run_dir).pruned_mask(step)

    def state_dict(self) -> dict:
        return {"pruned_at": self.training.pruned_at}

    def load_state_dict(self, saved) -> None:
        self.resumed_at = saved["pruned_at"]

    def on_train_start(self, state: TrainState) -> None:
        # A checkpoint names the step of its mask; an older one named the start step before anything was pruned.
        if self.resumed_at is not None and self.schedule.is_pruning_step(self.resumed_at):
            self.training = _MaskedTraining(self.schedule, Mask.load(self._file(state, self.resumed_at)),
                                            self.resumed_at)
        else:
            self.training = _MaskedTraining(self.schedule, Mask.ones(state.model, self.prunable))
        self.training.bind(state.model)
        self._save_if_pruned(state, self.training.prune_if_due(state.model, state.step))  # a schedule from step 0

    def after_optimizer_step(self, state: TrainState) -> None:
        self._save_if_pruned(state, self.training.advance(state.model, state.step))

    def _save_if_pruned(self, state: TrainState, pruned: bool) -> None:
        if pruned and state.accelerator.is_main_process:
            self.training.mask.save(self._file(state, state.step))

    def _remove_masks(self, state: TrainState, keep: Optional[int]) -> None:
        if state.accelerator.is_main_process:
            for path in FitFolder(state.run_dir).pruned_masks():
                if keep is None or path.name != self._file(state, keep).name:
                    path.unlink(missing_ok=True)

    def on_checkpoint(self, state: TrainState) -> None:
        self._remove_masks(state, self.training.pruned_at)  # the checkpoint now names this one

    def on_train_end(self, state: TrainState) -> None:
        if state.accelerator.is_main_process:
            self.training.mask.save(self.final_mask)
        self._remove_masks(state, None)


# Torch-Pruning arguments gradual magnitude pruning does not take, beside pruner_arguments.NOT_TAKEN.
_NOT_TAKEN = {
    "round_to": "GradualPruner prunes single weights; round_to rounds channels (IMPPruner(granularity='channel'))",
    "iterative_pruning_ratio_scheduler": "the density follows schedule= (cubic, agp, one-shot, iterative, cosine, "
                                         "linear)",
}


class GradualPruner:
    """Gradual magnitude pruning in your own loop, in Torch-Pruning's words (and fasterai's schedules):

        pruner = GradualPruner(model, pruning_ratio=0.9, total_steps=10_000)   # 25% to 75% of training, cubic
        for inputs, targets in batches:
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward(); pruner.regularize(model, loss); optimizer.step(); optimizer.zero_grad()
            pruner.step()                  # after every optimizer step: prunes on schedule, keeps the zeros

    `pruning_ratio` is the fraction of the prunable (Conv/Linear) weights removed by `end`, Zhu & Gupta's final
    sparsity (`initial_ratio` the fraction removed at `start`, their s_i); `schedule` is cubic (Zhu & Gupta's, also
    called agp), one-shot, iterative (`iterative_steps` equal steps, 3 by default), cosine or linear, fasterai's
    formulas; `start` and `end` are optimizer steps (ints) or fractions of `total_steps` (floats), also `<N>it` or
    `<N>ep` (with `steps_per_epoch`), pruning every `frequency` steps, the end moved back onto that grid.
    `global_pruning` one ranking over all layers (default False: every layer loses the same fraction, Zhu & Gupta's
    rule); `ignored_layers` modules, names or parameters left unpruned (the classifier always is);
    `pruning_ratio_dict` {module, its name or a tuple of them: the fraction removed by the end}, each on the same
    steps (a tuple ranked as one under global_pruning). `regularize` and `update_regularizer` do nothing (no
    penalty), so a generic Torch-Pruning loop runs unchanged. A wrapped model (DataParallel, DDP,
    `accelerator.prepare`, `torch.compile`) is unwrapped; the mask follows the model when it moves.
    `state_dict()`/`load_state_dict()` (tensors and plain values: `accelerator.register_for_checkpointing(pruner)`
    resumes it) and `save(path)`/`load(path)` (safetensors) carry the step count and the mask.
    """

    def __init__(self, model: nn.Module, example_inputs=None, importance=None, *, pruning_ratio: float = 0.9,
                 schedule: str = "cubic", start: Point = 0.25, end: Point = 0.75, frequency: int = 100,
                 total_steps: Optional[int] = None, steps_per_epoch: Optional[int] = None,
                 iterative_steps: Optional[int] = None, initial_ratio: float = 0.0, global_pruning: bool = False,
                 ignored_layers=None, pruning_ratio_dict: Optional[dict] = None, forward_fn=None,
                 output_transform=None, **torch_pruning_options):
        refuse_options("GradualPruner", torch_pruning_options, _NOT_TAKEN)
        refuse_tracing("GradualPruner", forward_fn, output_transform, "gradual magnitude pruning (|w|) never needs")
        if importance is not None:
            raise UserError("GradualPruner ranks |w| (Zhu & Gupta); importance ranks channels: drop it, or use "
                            "IMPPruner(granularity='channel', importance=...)")
        for name, ratio in (("pruning_ratio", pruning_ratio), ("initial_ratio", initial_ratio)):
            if not 0.0 <= ratio < 1.0:
                raise UserError(f"{name} is a fraction of the weights removed, in [0, 1), not {ratio}")
        if iterative_steps is not None and schedule != "iterative":
            raise UserError(f"iterative_steps counts the steps of the iterative schedule; schedule={schedule!r} "
                            "prunes every `frequency` steps")
        check_schedule(schedule, 3 if iterative_steps is None else iterative_steps)
        self.model = unwrap_model(model)
        self.example_inputs = example_inputs  # Torch-Pruning's signature: weights need no trace
        scopes = ratio_scopes(self.model, pruning_ratio_dict, joint=global_pruning)
        own = {names[0] if len(names) == 1 else names: 1.0 - ratio for names, ratio in scopes.items()}
        scoped = {name for names in scopes for name in names}
        order = list(dict(self.model.named_parameters()))
        self.prunable = sorted(set(prunable_weight_names(self.model, resolve_ignored(self.model, ignored_layers)))
                               | scoped, key=order.index)
        start_step, end_step = pruning_window(start, end, frequency, total_steps, steps_per_epoch)
        self.schedule = GradualSchedule(start_step, end_step, frequency, 1.0 - pruning_ratio,
                                        initial_density=1.0 - initial_ratio,
                                        scope="global" if global_pruning else "layerwise", layer_densities=own,
                                        schedule=schedule, iterative_steps=iterative_steps or 3)
        self.reset()

    @property
    def mask(self) -> Mask:
        return self._training.mask

    def density(self, step: Optional[int] = None) -> float:
        """The schedule's density after `step` optimizer steps (default: now)."""
        return self.schedule.density(self.current_step if step is None else step)

    def step(self, interactive: bool = False) -> bool:
        """One optimizer step done: keep the pruned weights at zero and prune when the schedule says so. True when
        this step pruned."""
        refuse_interactive("GradualPruner", interactive)
        self.current_step += 1
        return self._training.advance(self.model, self.current_step)

    def reset(self) -> None:
        """Back to step 0 with nothing pruned (Torch-Pruning's reset): the schedule starts again from the model's
        current weights."""
        self.current_step = 0
        self._training = _MaskedTraining(self.schedule, Mask.ones(self.model, self.prunable))
        self._training.bind(self.model)
        self._training.prune_if_due(self.model, 0)  # a schedule that prunes at step 0 prunes the model given

    def regularize(self, model: Optional[nn.Module] = None, loss=None, reg=None, bias=False) -> None:
        """No penalty: gradual magnitude pruning needs none (Torch-Pruning's signature, a no-op)."""

    def update_regularizer(self) -> None:
        """No penalty to update (Torch-Pruning's signature, a no-op)."""

    def state_dict(self) -> Dict[str, object]:
        """The step count, the step of the last pruning (-1: none yet) and the mask: tensors and plain values."""
        pruned_at = self._training.pruned_at
        return {"current_step": self.current_step, "pruned_at": -1 if pruned_at is None else pruned_at,
                "mask": {n: t.detach().cpu().clone() for n, t in self.mask.tensors.items()}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        if sorted(state["mask"]) != sorted(self.prunable):
            raise UserError("the state is of a GradualPruner of other weights: build the pruner as the saved one was "
                            "built")
        pruned_at = int(state["pruned_at"])
        self.current_step = int(state["current_step"])
        self._training = _MaskedTraining(self.schedule, Mask(state["mask"], self.prunable, "weight"),
                                         None if pruned_at < 0 else pruned_at)
        self._training.bind(self.model)

    def save(self, path) -> None:
        """The step count and mask as safetensors (no pickle)."""
        state = self.state_dict()
        atomic_save_safetensors({f"mask/{n}": t for n, t in state["mask"].items()}, path,
                                {"current_step": str(state["current_step"]), "pruned_at": str(state["pruned_at"])})

    def load(self, path) -> None:
        tensors, meta = read_safetensors(path)
        self.load_state_dict({"current_step": meta["current_step"], "pruned_at": meta["pruned_at"],
                              "mask": {n[len("mask/"):]: t for n, t in tensors.items()}})
