"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"; Gale et al. 2019, "The State of
Sparsity"): the smallest weights are removed *during* training, every `frequency` steps from `start_step` to
`end_step`, on the cubic schedule of `pai.gradual_density`, the pruned weights held at zero in between.

One mechanism, two ways in:

- `GradualPruning`, a `fit` callback (the `gradual` strategy trains with it; kill -9 safe: the mask of each pruning
  step is a file of the training folder, and the checkpoint names the one it resumes with);
- `GradualPruner`, the same in Torch-Pruning's words for your own loop: `pruner.step()` after every
  `optimizer.step()`, `regularize` a no-op.

At a pruning step the weights that are still kept are ranked by |w| (`pai.magnitude_scores`) and exactly
round(density * count) of them stay (`pai.mask_from_scores`, ties broken by index), globally or per layer; a weight
once pruned is never chosen again, as in Zhu & Gupta's implementation, where a masked weight has no gradient.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Sequence

from torch import nn

from .callbacks import Callback, TrainState
from .errors import UserError
from .layout import FitFolder
from .masks import SCOPES, Mask, prunable_weight_names, resolve_ignored, unwrap_model
from .pai import gradual_density, magnitude_scores, mask_from_scores
from .store import atomic_save_safetensors, read_safetensors


@dataclasses.dataclass(frozen=True)
class GradualSchedule:
    """Zhu & Gupta's cubic schedule: the density falls from `initial_density` at `start_step` to `final_density` at
    `end_step`, pruning at start_step + k * frequency. `layer_densities` {weight name: its own final density} for
    layers on their own schedule (the same steps, their own end point), the rest ranked with `scope`."""

    start_step: int
    end_step: int
    frequency: int
    final_density: float
    initial_density: float = 1.0
    scope: str = "global"
    layer_densities: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.start_step < 0:
            raise UserError(f"the gradual schedule starts at step {self.start_step}: it must be 0 or later")
        if self.end_step <= self.start_step:
            raise UserError(f"the gradual schedule must end after it starts (steps {self.start_step} to "
                            f"{self.end_step})")
        if self.scope not in SCOPES:
            raise UserError(f"scope must be one of {', '.join(SCOPES)}, not {self.scope!r}")
        gradual_density(self.start_step, self.start_step, self.end_step, self.frequency, self.final_density,
                        self.initial_density)  # its own checks: frequency, the densities, end - start
        bad = {n: d for n, d in self.layer_densities.items() if not 0.0 <= d <= 1.0}
        if bad:
            raise UserError(f"layer densities must be in [0, 1], not {bad}")

    def is_pruning_step(self, step: int) -> bool:
        return self.start_step < step <= self.end_step and (step - self.start_step) % self.frequency == 0

    def density(self, step: int, final: Optional[float] = None) -> float:
        """The density at `step` (of the layers that follow the run's `final_density`, or of one ending at
        `final`)."""
        final = self.final_density if final is None else final
        return gradual_density(step, self.start_step, self.end_step, self.frequency, final, self.initial_density)

    def mask_at(self, model: nn.Module, step: int, previous: Mask) -> Mask:
        """The mask of pruning step `step`: `previous`'s kept weights of `model` ranked by |w|, exactly the
        schedule's count kept (the rest's over `scope`, each own layer's in itself)."""
        own = dict(self.layer_densities)
        rest = [n for n in previous.prunable if n not in own]
        scores = magnitude_scores(model, previous.prunable, previous)
        keep = {}
        if rest:
            keep.update(mask_from_scores({n: scores[n] for n in rest}, self.density(step), self.scope,
                                         previous=previous).tensors)
        for name, final in own.items():
            keep.update(mask_from_scores({name: scores[name]}, self.density(step, final), "layerwise",
                                         previous=previous).tensors)
        return Mask({n: keep[n] for n in previous.prunable}, previous.prunable, "weight")


class _MaskedTraining:
    """What the callback and the pruner share: the current mask, bound to the model's tensors, pruned on schedule."""

    def __init__(self, schedule: GradualSchedule, mask: Mask):
        self.schedule, self.mask, self.pruned_at = schedule, mask, schedule.start_step
        self._enforce = None

    def bind(self, model: nn.Module) -> None:
        self.mask.apply(model)
        self._enforce = self.mask.enforcer(model)

    def advance(self, model: nn.Module, step: int) -> bool:
        """After optimizer step `step`: the pruned weights zeroed again and, at a pruning step, the next mask
        drawn and applied. True when it pruned."""
        self._enforce()
        if not self.schedule.is_pruning_step(step):
            return False
        self.mask = self.schedule.mask_at(model, step, self.mask)
        self.pruned_at = step
        self.bind(model)
        return True


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
        if self.resumed_at is not None and self.resumed_at != self.schedule.start_step:
            mask = Mask.load(self._file(state, self.resumed_at))
        else:
            mask = Mask.ones(state.model, self.prunable)
        self.training = _MaskedTraining(self.schedule, mask)
        self.training.bind(state.model)

    def after_optimizer_step(self, state: TrainState) -> None:
        if self.training.advance(state.model, state.step) and state.accelerator.is_main_process:
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


class GradualPruner:
    """Gradual magnitude pruning in your own loop, in Torch-Pruning's words:

        pruner = GradualPruner(model, pruning_ratio=0.9, start_step=1000, end_step=9000, frequency=100)
        for inputs, targets in batches:
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward(); pruner.regularize(model); optimizer.step(); optimizer.zero_grad()
            pruner.step()                  # after every optimizer step: prunes on schedule, keeps the zeros

    `pruning_ratio` is the fraction of the prunable (Conv/Linear) weights removed by `end_step`, Zhu & Gupta's
    final sparsity; `global_pruning` one ranking over all layers (else every layer loses the same fraction);
    `ignored_layers` modules or names left unpruned (the classifier always is); `pruning_ratio_dict` {module or its
    name: the fraction of that layer removed by the end}, each on the same steps. `regularize` and
    `update_regularizer` do nothing (no penalty), so a generic Torch-Pruning loop runs unchanged. A wrapped model
    (DataParallel, DDP, `accelerator.prepare`, `torch.compile`) is unwrapped. `state_dict()`/`load_state_dict()`
    carry the step count and the mask (tensors) for your checkpoint.
    """

    def __init__(self, model: nn.Module, pruning_ratio: float = 0.9, start_step: int = 0, end_step: int = 1000,
                 frequency: int = 100, global_pruning: bool = True, ignored_layers=None,
                 pruning_ratio_dict: Optional[dict] = None):
        if not 0.0 <= pruning_ratio < 1.0:
            raise UserError(f"pruning_ratio is the fraction of weights removed, in [0, 1), not {pruning_ratio}")
        self.model = unwrap_model(model)
        ignored = resolve_ignored(self.model, ignored_layers)
        own = {}
        names = {id(m): n for n, m in self.model.named_modules()}
        for layer, ratio in (pruning_ratio_dict or {}).items():
            name = layer if isinstance(layer, str) else names.get(id(layer))
            if name is None or not isinstance(self.model.get_submodule(name), (nn.modules.conv._ConvNd, nn.Linear)):
                raise UserError(f"pruning_ratio_dict: {layer!r} is not a Conv or Linear layer of the model")
            own[f"{name}.weight"] = 1.0 - float(ratio)
        self.prunable = sorted(set(prunable_weight_names(self.model, ignored)) | set(own),
                               key=list(dict(self.model.named_parameters())).index)
        self.schedule = GradualSchedule(start_step, end_step, frequency, 1.0 - pruning_ratio,
                                        scope="global" if global_pruning else "layerwise", layer_densities=own)
        self.current_step = 0
        self._training = _MaskedTraining(self.schedule, Mask.ones(self.model, self.prunable))
        self._training.bind(self.model)

    @property
    def mask(self) -> Mask:
        return self._training.mask

    def density(self, step: Optional[int] = None) -> float:
        """The schedule's density at `step` (default: now)."""
        return self.schedule.density(self.current_step if step is None else step)

    def step(self) -> bool:
        """One optimizer step done: keep the pruned weights at zero and prune when the schedule says so. True when
        this step pruned."""
        self.current_step += 1
        return self._training.advance(self.model, self.current_step)

    def regularize(self, model: Optional[nn.Module] = None, loss=None, reg=None, bias=False) -> None:
        """No penalty: gradual magnitude pruning needs none (Torch-Pruning's signature, a no-op)."""

    def update_regularizer(self) -> None:
        """No penalty to update (Torch-Pruning's signature, a no-op)."""

    def state_dict(self) -> Dict[str, object]:
        return {"current_step": self.current_step, "pruned_at": self._training.pruned_at,
                "mask": {n: t.clone() for n, t in self.mask.tensors.items()}}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        self.current_step = int(state["current_step"])
        self._training.mask = Mask(state["mask"], self.prunable, "weight")
        self._training.pruned_at = int(state["pruned_at"])
        self._training.bind(self.model)

    def save(self, path) -> None:
        """The step count and mask as safetensors (no pickle)."""
        atomic_save_safetensors({f"mask/{n}": t for n, t in self.mask.tensors.items()}, path,
                                {"current_step": str(self.current_step), "pruned_at": str(self._training.pruned_at)})

    def load(self, path) -> None:
        tensors, meta = read_safetensors(path)
        self.load_state_dict({"current_step": meta["current_step"], "pruned_at": meta["pruned_at"],
                              "mask": {n[len("mask/"):]: t for n, t in tensors.items()}})
