"""Stochastic weight averaging under a mask (Izmailov et al. 2018), as SWAMP's particles train (Choi, Lee, Nam, Lee,
ICLR 2024), on torch's own pieces: `AveragedModel` keeps the running average, `SWALR` anneals the learning rate to
the SWA rate, `update_bn` recomputes BatchNorm statistics of the average.

From `start_step` on the learning rate follows SWALR (cosine, over `anneal_steps`, from the rate the schedule had
at `start_step` to `swa_lr`, then constant), and the average takes the weights after every optimizer step
start_step + k * every (k >= 1), as the SWA code SWAMP's appendix follows averages once per epoch after its
pre-training epochs. The pruned weights of the mask are zero in the average after every update: a sparse particle
averages to a sparse network.

One mechanism, two ways in:

- `StochasticWeightAveraging`, a `fit` callback (kill -9 safe: the average of each update is a file of the training
  folder, `swa_step_{k}`, written before the checkpoint that names it; the final average is `swa_average` when
  training ends, before the final weights);
- `MaskedSWA` for your own loop: `swa.step()` after every optimizer step (and after your scheduler's), then
  `swa.finish(loader)`; `state_dict()`/`load_state_dict()` carry the average for your checkpoint.

`average_under_mask(states, mask)` averages particles (state dicts, read one at a time) and zeroes what the mask
prunes: SWAMP's particle average.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

from .callbacks import Callback, TrainState
from .errors import UserError
from .layout import FitFolder
from .masks import Mask, unwrap_model
from .pooling import average
from .store import atomic_save_safetensors, read_safetensors

State = Dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class SWASchedule:
    """When the average is updated and what rate the optimizer runs at: updates after optimizer steps
    `start_step` + k * `every` (k >= 1); from `start_step` on the rate anneals to `swa_lr` over `anneal_steps`
    (cosine, torch's SWALR), then stays there."""

    start_step: int
    every: int
    swa_lr: float
    anneal_steps: int = 0

    def __post_init__(self):
        if self.start_step < 0:
            raise UserError(f"SWA starts at step {self.start_step}: it must be 0 or later")
        if self.every < 1:
            raise UserError(f"SWA averages every {self.every} optimizer steps: it must be 1 or more")
        if not self.swa_lr > 0:
            raise UserError(f"the SWA learning rate must be positive, not {self.swa_lr}")
        if self.anneal_steps < 0:
            raise UserError(f"SWA anneals over {self.anneal_steps} steps: it must be 0 or more")

    def is_update_step(self, step: int) -> bool:
        return step > self.start_step and (step - self.start_step) % self.every == 0

    def update_steps(self, first: int, last: int) -> List[int]:
        """The update steps of a training from step `first` (excluded) to step `last` (included)."""
        return [s for s in range(max(first, self.start_step) + 1, last + 1) if self.is_update_step(s)]


class _SWARate:
    """SWALR's rates, replayed on a stand-in optimizer (the training's own scheduler sets the real optimizer's rate at
    every step, which SWALR's recurrence, reading the rate it set last, cannot follow): `at(n)` is the rate of each
    parameter group n optimizer steps after `start_step`."""

    def __init__(self, start_lrs: List[float], schedule: SWASchedule):
        self.optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr}
                                          for lr in start_lrs])
        self.scheduler = SWALR(self.optimizer, swa_lr=schedule.swa_lr, anneal_epochs=schedule.anneal_steps,
                               anneal_strategy="cos")
        self.steps = 0

    def at(self, n: int) -> List[float]:
        while self.steps < n:
            self.optimizer.step()  # no gradients: nothing moves; the scheduler expects it before its own step
            self.scheduler.step()
            self.steps += 1
        return [group["lr"] for group in self.optimizer.param_groups]


class _Averaging:
    """What the callback and the own-loop piece share: the running average (torch's AveragedModel) with the mask's
    pruned entries zero, and the SWA rate from `start_step` on."""

    def __init__(self, schedule: SWASchedule, mask: Optional[Mask]):
        self.schedule, self.mask = schedule, mask
        self.averaged: Optional[AveragedModel] = None
        self.start_lrs: Optional[List[float]] = None  # each group's rate at start_step: what SWALR anneals from
        self.updated_at: Optional[int] = None
        self._rate: Optional[_SWARate] = None

    def bind(self, model: nn.Module) -> None:
        """The running average, a copy of `model` (its weights are replaced at the first update)."""
        self.averaged = AveragedModel(unwrap_model(model), use_buffers=False)

    def set_rate(self, optimizer, step: int) -> None:
        """From `start_step` on, the optimizer's rate for the step after `step` is SWALR's."""
        if step < self.schedule.start_step:
            return
        if self.start_lrs is None:
            self.start_lrs = [group["lr"] for group in optimizer.param_groups]
        if self._rate is None:
            self._rate = _SWARate(self.start_lrs, self.schedule)
        for group, lr in zip(optimizer.param_groups, self._rate.at(step - self.schedule.start_step)):
            group["lr"] = lr

    @torch.no_grad()
    def after_step(self, model: nn.Module, optimizer, step: int) -> bool:
        """Optimizer step `step` done: the average updated when the schedule says (the mask's pruned entries zeroed
        in it), the rate of the next step set. True when the average was updated."""
        updated = self.schedule.is_update_step(step)
        if updated:
            self.averaged.update_parameters(unwrap_model(model))
            if self.mask is not None:
                self.mask.apply(self.averaged.module)
            self.updated_at = step
        self.set_rate(optimizer, step)
        return updated

    def tensors(self) -> State:
        return {name: value.detach().clone() for name, value in self.averaged.module.state_dict().items()}

    def metadata(self) -> dict:
        return {"updated_at": self.updated_at, "n_averaged": int(self.averaged.n_averaged),
                "start_lrs": self.start_lrs}

    @torch.no_grad()
    def load(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping) -> None:
        if metadata.get("updated_at") is not None:
            self.averaged.module.load_state_dict(tensors)
        self.averaged.n_averaged.fill_(int(metadata["n_averaged"]))
        self.updated_at, self.start_lrs = metadata.get("updated_at"), metadata.get("start_lrs")


class StochasticWeightAveraging(Callback):
    """`fit`'s SWA on `schedule`, the pruned entries of `mask` (dense-space, for a model trained dense; None for a
    physically pruned one) zero in the average. Each update's average is written as `swa_step_{k}.safetensors` in
    the training folder before the checkpoint that names it; the final average as `swa_average.safetensors` when
    training ends, before the final weights. `average_of(run_dir)` reads it back."""

    state_key = "swa"

    def __init__(self, schedule: SWASchedule, mask: Optional[Mask] = None):
        self.schedule, self.mask = schedule, mask
        self.averaging: Optional[_Averaging] = None
        self.resumed: Optional[dict] = None

    def state_dict(self) -> dict:
        return self.averaging.metadata()

    def load_state_dict(self, saved) -> None:
        self.resumed = saved

    def on_train_start(self, state: TrainState) -> None:
        self.averaging = _Averaging(self.schedule, self.mask)
        self.averaging.bind(state.model)
        if self.resumed is not None:
            self.averaging.load(*self._resumed_average(FitFolder(state.run_dir)))
        self.averaging.set_rate(state.optimizer, state.step)  # a run resumed past start_step goes on at SWA's rate

    def _resumed_average(self, files: FitFolder):
        """The average the checkpoint names: its update's file, or the final one when training had ended."""
        updated_at = self.resumed.get("updated_at")
        if updated_at is None:
            return {}, self.resumed
        for path in (files.swa_step(updated_at), files.swa_average):
            if path.exists():
                tensors, metadata = read_safetensors(path)
                if json.loads(metadata["updated_at"]) == updated_at:
                    return tensors, self.resumed
        raise UserError(f"{files.root} has lost the SWA average of step {updated_at} that its checkpoint names; "
                        "delete the folder's checkpoint to train it again")

    def _save(self, state: TrainState, path) -> None:
        state.ensure_finite()
        if state.accelerator.is_main_process:
            atomic_save_safetensors(self.averaging.tensors(), path,
                                    {k: json.dumps(v) for k, v in self.averaging.metadata().items()})

    def after_optimizer_step(self, state: TrainState) -> None:
        if self.averaging.after_step(state.model, state.optimizer, state.step):
            self._save(state, FitFolder(state.run_dir).swa_step(state.step))

    def _remove_steps(self, state: TrainState, keep: Optional[int]) -> None:
        if state.accelerator.is_main_process:
            files = FitFolder(state.run_dir)
            for path in files.swa_steps():
                if keep is None or path != files.swa_step(keep):
                    path.unlink(missing_ok=True)

    def on_checkpoint(self, state: TrainState) -> None:
        self._remove_steps(state, self.averaging.updated_at)  # the checkpoint now names this one

    def on_train_end(self, state: TrainState) -> None:
        if self.averaging.updated_at is None:
            raise UserError(f"[{state.run_dir}] training ended at step {state.step} before the first SWA update "
                            f"(step {self.schedule.start_step + self.schedule.every})")
        self._save(state, FitFolder(state.run_dir).swa_average)
        self._remove_steps(state, None)
        state.accelerator.wait_for_everyone()


def average_of(run_dir) -> State:
    """The final SWA average a training folder holds (`StochasticWeightAveraging`)."""
    return read_safetensors(FitFolder(run_dir).swa_average)[0]


class MaskedSWA:
    """Stochastic weight averaging in your own loop, the pruned weights of `mask` kept at zero in the average:

        swa = MaskedSWA(model, optimizer, swa_lr=0.05, start_step=3000, every=100, mask=mask)
        for inputs, targets in batches:
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward(); optimizer.step(); optimizer.zero_grad(); scheduler.step()
            swa.step()                    # after every optimizer step, and after your scheduler's
        swa.finish(train_loader)          # BatchNorm statistics of the average (torch's update_bn)
        averaged = swa.module             # the averaged network

    From `start_step` on the optimizer's rate is SWALR's (cosine over `anneal_steps`, default `every`, from the
    rate at `start_step` to `swa_lr`), replacing your scheduler's. A wrapped model (DDP, `accelerator.prepare`) is
    unwrapped. `state_dict()`/`load_state_dict()` carry the step count, the rates and the average (tensors) for
    your checkpoint (`accelerator.register_for_checkpointing(swa)`).
    """

    def __init__(self, model: nn.Module, optimizer, swa_lr: float, start_step: int, every: int,
                 mask: Optional[Mask] = None, anneal_steps: Optional[int] = None):
        self.model, self.optimizer = unwrap_model(model), optimizer
        self.schedule = SWASchedule(start_step, every, swa_lr, every if anneal_steps is None else anneal_steps)
        self.current_step = 0
        self._averaging = _Averaging(self.schedule, mask)
        self._averaging.bind(self.model)

    @property
    def module(self) -> nn.Module:
        """The averaged network (a copy of the model, its weights the average)."""
        return self._averaging.averaged.module

    @property
    def updated_at(self) -> Optional[int]:
        """The step of the last update (None before the first)."""
        return self._averaging.updated_at

    def step(self) -> bool:
        """One optimizer step done: the average updated when the schedule says, the SWA rate set from `start_step`
        on. True when this step updated the average."""
        self.current_step += 1
        return self._averaging.after_step(self.model, self.optimizer, self.current_step)

    def finish(self, loader: Iterable, device: Optional[torch.device] = None) -> nn.Module:
        """The average's BatchNorm statistics recomputed over `loader` (torch's update_bn); returns the network."""
        if self.updated_at is None:
            first = self.schedule.start_step + self.schedule.every
            raise UserError(f"no SWA update yet: the first comes after step {first}, the loop is at step "
                            f"{self.current_step}")
        update_bn(loader, self.module, device)
        return self.module

    def state_dict(self) -> dict:
        return {"current_step": self.current_step, **self._averaging.metadata(),
                "averaged": self._averaging.tensors()}

    def load_state_dict(self, state: Mapping) -> None:
        self.current_step = int(state["current_step"])
        self._averaging.load(state["averaged"], state)
        self._averaging.set_rate(self.optimizer, self.current_step)


@torch.no_grad()
def average_under_mask(states: Iterable[State], mask: Optional[Mask] = None) -> State:
    """The mean of the particles' state dicts (SWAMP's particle average; read one at a time, `pooling.average`),
    the entries `mask` prunes set to zero."""
    averaged = average(states)
    if mask is not None:
        for name, keep in mask.tensors.items():
            value = averaged[name]
            if keep.shape == value.shape:
                averaged[name] = value * keep.to(value.device, value.dtype)
    return averaged
