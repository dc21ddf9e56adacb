"""What `train.fit` calls while it trains: callbacks, in the spirit of open_lth's post-gradient callbacks.

A strategy composes its training from these objects instead of `fit` growing a hook per strategy: the mask kept
enforced (`EnforceMask`) and checked (`RegrowthCheck`), weights kept at chosen steps (`Snapshots`), a penalty added to the gradients
(`SlimmingPenalty`, Early-Bird's), validation with the weights at the lowest validation loss kept (`EarlyStopping`)
and a rule that ends training (Early-Bird's detector). `fit` calls every callback's methods in the order of its
list, on every process, with the same `TrainState`. A callback with a `state_key` has its `state_dict()` written
into every checkpoint and given back to `load_state_dict` when the run resumes.

A callback that ends training returns True from `after_optimizer_step`; False means "go on", None "nothing decided
at this step". A step where some callback decided costs one all-reduce over the processes (they must stop
together), so a rule that decides only now and then returns None in between. A callback must decide the same way
when a resumed run replays a step.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import LtPluginWarning
from .layout import FitFolder
from .store import atomic_write, read_safetensors

if TYPE_CHECKING:  # the masks module needs nothing of this one
    from accelerate import Accelerator

    from .masks import Mask


@dataclass
class TrainState:
    """What `fit` shows its callbacks. `model` is the module being trained, unwrapped (DDP wraps it, never copies
    it): masks, penalties and files use it. `step` is the global optimizer step reached, `epoch` the epoch under way
    (from 0), `lr` the learning rate of the next step."""

    model: nn.Module
    optimizer: object
    accelerator: "Accelerator"
    run_dir: Path
    step: int
    epoch: int
    lr: float
    ensure_finite: Callable[[], None]  # raises DivergedError if a loss so far was NaN/inf; call before writing files
    write_weights: Callable[[Path, dict], None]  # the model's weights as safetensors (the main process writes)
    validate: Callable[[], Dict[str, float]]     # {"accuracy", "loss"} on the validation split at this step

    def save_weights(self, path, metadata: Optional[dict] = None) -> None:
        """The model's weights to `path`, with JSON `metadata`, once every loss so far is known to be finite."""
        self.ensure_finite()
        self.write_weights(Path(path), metadata or {})


class Callback:
    """The methods `fit` calls; a subclass overrides those it needs."""

    state_key: ClassVar[Optional[str]] = None  # the key of `state_dict()` in fit's checkpoint (None: no state)

    def state_dict(self):
        """What a resumed run needs of this callback (JSON values), written with each checkpoint."""
        return None

    def load_state_dict(self, saved) -> None:
        """Resuming from a checkpoint: what `state_dict()` returned when it was written (before `on_train_start`)."""

    def on_train_start(self, state: TrainState) -> None:
        """The model is on the device and loaded (from a checkpoint, when resuming); no step of this run yet."""

    def before_optimizer_step(self, state: TrainState) -> None:
        """The gradients of the step are complete and unscaled (fp16), not yet applied."""

    def after_optimizer_step(self, state: TrainState) -> Optional[bool]:
        """The step is applied and `state.step` counts it; True ends training here (see the module docstring)."""
        return None

    def on_validation(self, state: TrainState, scores: Dict[str, float]) -> None:
        """The validation split was scored at this step (`state.validate()`, or at an epoch's end)."""

    def on_checkpoint(self, state: TrainState) -> None:
        """The epoch's checkpoint, with `state_dict()`, is written."""

    def on_train_end(self, state: TrainState) -> None:
        """Training is over; the final weights are written next."""


class EnforceMask(Callback):
    """Zero the mask's pruned entries before training and after every optimizer step (the ticket stays a ticket)."""

    def __init__(self, mask: "Mask"):
        self.mask = mask
        self._enforce = None

    def on_train_start(self, state: TrainState) -> None:
        self.mask.apply(state.model)
        self._enforce = self.mask.enforcer(state.model)  # binds the model's tensors where they now live

    def after_optimizer_step(self, state: TrainState) -> None:
        self._enforce()


@torch.no_grad()
def regrown_by_tensor(mask: "Mask", model: nn.Module) -> Dict[str, int]:
    """{tensor name: entries the mask prunes that are not zero} for the tensors where some are (a training that did
    not keep the mask); a tensor of another shape (a physically pruned model) has none to count."""
    tensors = dict(model.named_buffers())
    tensors.update(model.named_parameters())
    counts = {}
    for name, keep in mask.tensors.items():
        tensor = tensors.get(name)
        if tensor is not None and keep.shape == tensor.shape and not bool(keep.all()):
            count = int(torch.count_nonzero(tensor[~keep.to(tensor.device)]))
            if count:
                counts[name] = count
    return counts


class RegrowthCheck(Callback):
    """Every `every` optimizer steps, the entries the mask prunes that training made nonzero, counted per tensor, and
    a warning naming them: a mask that is not kept during training shows itself when it happens, not at the end.
    `mask` is a Mask, or a function giving the current one (an own-loop pruner's, which changes at each step).
    In `fit`, a callback; in your own loop, `check(model, step)` (or `IMPPruner.watch_regrowth(optimizer)`)."""

    def __init__(self, mask, every: int = 100):
        if not (isinstance(every, int) and every >= 1):
            raise ValueError(f"every must be 1 or more optimizer steps, not {every!r}")
        self._mask = mask if callable(mask) else (lambda: mask)
        self.every = every
        self.found: List[Tuple[int, Dict[str, int]]] = []  # (step, counts) of every check that found some

    def check(self, model: nn.Module, step: int) -> Dict[str, int]:
        """The counts of regrown entries by tensor (empty: none), with a warning when there are some."""
        counts = regrown_by_tensor(self._mask(), model)
        if counts:
            self.found.append((step, counts))
            worst = ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1])[:3])
            warnings.warn(f"step {step}: {sum(counts.values())} entries the mask prunes are not zero ({worst}"
                          f"{', ...' if len(counts) > 3 else ''}): the mask is not kept during training",
                          LtPluginWarning, stacklevel=2)
        return counts

    def after_optimizer_step(self, state: TrainState) -> None:
        if state.step % self.every == 0:
            self.check(state.model, state.step)


class Snapshots(Callback):
    """The weights after each step in `steps` (0: before the first), as `<run_dir>/step_{k}.safetensors` with the
    step and the learning rate of the next step in their metadata: the rewind points of IMP."""

    def __init__(self, steps: Iterable[int]):
        self.steps = set(steps)

    def _save(self, state: TrainState) -> None:
        if state.step in self.steps:
            state.save_weights(FitFolder(state.run_dir).step(state.step), {"step": state.step, "lr": state.lr})

    def on_train_start(self, state: TrainState) -> None:
        self._save(state)

    def after_optimizer_step(self, state: TrainState) -> None:
        self._save(state)


class SlimmingPenalty(Callback):
    """Network slimming's L1 penalty: `strength * sign(gamma)` added to each scale's gradient (its subgradient),
    after backward and before the optimizer step (`fit` calls it on unscaled gradients under fp16)."""

    def __init__(self, scales: Sequence[nn.Parameter], strength: float):
        self.scales, self.strength = list(scales), strength

    @torch.no_grad()
    def add_to_gradients(self) -> None:
        for gamma in self.scales:
            if gamma.grad is not None:
                gamma.grad.add_(torch.sign(gamma), alpha=self.strength)

    def before_optimizer_step(self, state: TrainState) -> None:
        self.add_to_gradients()


class EarlyStopping(Callback):
    """Validation every `every` optimizer steps as well as at epoch ends (evals.jsonl), and the weights at the lowest
    validation loss (early_stop.safetensors): LTH's early-stopping iteration. `fit` adds it, last, for
    `TrainConfig.eval_every`. A new best is written as early_stop.pending.safetensors and becomes the best once the
    next checkpoint, which names its step, is written: a resumed run keeps the best of the part it resumes."""

    state_key = "early_stop"

    def __init__(self, every: int):
        self.every = every
        self.evals: List[dict] = []
        self.best: Optional[dict] = None
        self.resuming = False

    def state_dict(self) -> Optional[dict]:
        return self.best

    def load_state_dict(self, saved) -> None:
        self.best, self.resuming = saved, True

    def on_train_start(self, state: TrainState) -> None:
        """The record as of the checkpoint resumed (none: a fresh start), stale files removed."""
        files = FitFolder(state.run_dir)
        step = state.step if self.resuming else -1
        if files.evals.exists():
            self.evals = [e for e in map(json.loads, files.evals.read_text().splitlines()) if e["step"] <= step]
        if state.accelerator.is_main_process:
            pending = files.early_stop_pending
            pending_step = json.loads(read_safetensors(pending)[1]["step"]) if pending.exists() else None
            if self.best is not None and pending_step == self.best["step"]:
                pending.replace(files.early_stop)  # the checkpoint was written, the promotion was not
            pending.unlink(missing_ok=True)
            if self.best is None:
                files.early_stop.unlink(missing_ok=True)
        state.accelerator.wait_for_everyone()

    def after_optimizer_step(self, state: TrainState) -> None:
        if state.step % self.every == 0:
            state.validate()

    def on_validation(self, state: TrainState, scores: Dict[str, float]) -> None:
        entry = {"step": state.step, "val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}
        self.evals.append(entry)
        files = FitFolder(state.run_dir)
        if self.best is None or entry["val_loss"] < self.best["val_loss"]:
            self.best = entry
            state.save_weights(files.early_stop_pending, entry)
        if state.accelerator.is_main_process:
            text = "".join(json.dumps(e) + "\n" for e in self.evals)
            atomic_write(files.evals, lambda tmp: Path(tmp).write_text(text))

    def _promote(self, state: TrainState) -> None:
        pending = FitFolder(state.run_dir).early_stop_pending
        if state.accelerator.is_main_process and pending.exists():
            pending.replace(FitFolder(state.run_dir).early_stop)

    on_checkpoint = _promote
    on_train_end = _promote


class Lambda(Callback):
    """A callback from plain functions of the TrainState, for one-off hooks (tests, quick experiments)."""

    def __init__(self, before_optimizer_step: Optional[Callable[[TrainState], None]] = None,
                 after_optimizer_step: Optional[Callable[[TrainState], Optional[bool]]] = None):
        self._before, self._after = before_optimizer_step, after_optimizer_step

    def before_optimizer_step(self, state: TrainState) -> None:
        if self._before is not None:
            self._before(state)

    def after_optimizer_step(self, state: TrainState) -> Optional[bool]:
        return self._after(state) if self._after is not None else None
