"""What `train.fit` calls while it trains: callbacks, in the spirit of open_lth's post-gradient callbacks.

A strategy composes its training from these objects instead of `fit` growing a hook per strategy: the mask kept
enforced (`EnforceMask`), weights kept at chosen steps (`Snapshots`), a penalty added to the gradients (e.g.
Early-Bird's slimming penalty) and a rule that ends training (Early-Bird's detector). `fit` calls every callback's
methods in the order of its list, on every process, with the same `TrainState`.

A callback that ends training returns True from `after_optimizer_step`; False means "go on", None "nothing decided
at this step". A step where some callback decided costs one all-reduce over the processes (they must stop
together), so a rule that decides only now and then returns None in between. A callback must decide the same way
when a resumed run replays a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional

from torch import nn

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

    def save_weights(self, path, metadata: Optional[dict] = None) -> None:
        """The model's weights to `path`, with JSON `metadata`, once every loss so far is known to be finite."""
        self.ensure_finite()
        self.write_weights(Path(path), metadata or {})


class Callback:
    """The methods `fit` calls; a subclass overrides those it needs."""

    def on_train_start(self, state: TrainState) -> None:
        """The model is on the device and loaded (from a checkpoint, when resuming); no step of this run yet."""

    def before_optimizer_step(self, state: TrainState) -> None:
        """The gradients of the step are complete and unscaled (fp16), not yet applied."""

    def after_optimizer_step(self, state: TrainState) -> Optional[bool]:
        """The step is applied and `state.step` counts it; True ends training here (see the module docstring)."""
        return None


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


class Snapshots(Callback):
    """The weights after each step in `steps` (0: before the first), as `<run_dir>/step_{k}.safetensors` with the
    step and the learning rate of the next step in their metadata: the rewind points of IMP."""

    def __init__(self, steps: Iterable[int]):
        self.steps = set(steps)

    def _save(self, state: TrainState) -> None:
        if state.step in self.steps:
            state.save_weights(state.run_dir / f"step_{state.step}.safetensors", {"step": state.step, "lr": state.lr})

    def on_train_start(self, state: TrainState) -> None:
        self._save(state)

    def after_optimizer_step(self, state: TrainState) -> None:
        self._save(state)


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
