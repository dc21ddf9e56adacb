"""The training loop: `fit`, one seeded, resumable loop on Accelerate, shared by every strategy.

The same code runs on one CPU, one GPU or `accelerate launch` over N processes. Batches are global
(split_batches=True), the data order depends only on (seed, epoch) and the learning rate only on the global
optimizer step, so a run resumed from its per-epoch checkpoint, or started rewound at step k, follows the schedule
and data order of an uninterrupted run. What a strategy adds to the training (a mask kept enforced, snapshots, a
penalty, a rule that stops it, early stopping) comes as `callbacks` (lt_plugin.callbacks).

Datasets read in order through their own `loader` (`data.IterableImages`, the `--streaming` path) are read
differently: each process reads its own share of the stream, in batches of its share of the global batch, shuffled
by (seed, epoch); an epoch has as many steps as an indexable dataset of the same size, and a resumed or rewound epoch
reads its first batches again and drops them.

Precision: one policy for training, evaluation and BatchNorm statistics, the Accelerator's (`--mixed-precision`, or
when unset what `accelerate launch --mixed_precision` or its config file says): the model runs under
`accelerator.autocast()` in all three, so a ticket is scored in the precision it was trained in. A step reads
nothing back from the device: the loss, the accuracy and a NaN/inf check accumulate there, read every
DIVERGENCE_CHECK_STEPS steps, before files are written and at the end of each epoch.

Folder written by `fit` (lt_plugin.layout.FitFolder; safetensors metadata values are JSON strings):
    checkpoint.safetensors   "model/*" and "optimizer/*" tensors at the end of the last finished epoch, metadata
                             epoch, step, history, train_seconds, stopped, optimizer (the rest of its state),
                             scaler (fp16's GradScaler), settings, the callbacks' states; deleted on success
    metrics.jsonl            one JSON line per finished epoch
    step_{k}.safetensors     weights after k optimizer steps (callbacks.Snapshots); metadata step, lr
    evals.jsonl              with eval_every: one line per validation (step, val_loss, val_accuracy)
    early_stop.safetensors   with eval_every: the weights at the lowest validation loss; metadata its evals line
    model.safetensors        final weights; metadata val_accuracy, train_seconds, steps, history, settings
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast, set_seed
from timm.layers import convert_sync_batchnorm as timm_convert_sync_batchnorm
from torch import nn
from tqdm.auto import tqdm

from ..callbacks import Callback, EarlyStopping, TrainState
from ..errors import DivergedError, UserError
from ..layout import FitFolder
from ..loaders import DeviceNormalize, is_stream
from .checkpoint import (TrainResult, load_into, load_result, read_checkpoint, result_settings, save_checkpoint,
                         save_weights, write_metrics)
from .config import (SCHEDULES, TrainConfig, check_sync_bn, create_optimizer, create_scheduler,
                     resolve_train_config, steps_per_epoch)
from .batches import epoch_seed, shuffled_epochs, streamed_epochs
from .evaluation import evaluate, validate

DIVERGENCE_CHECK_STEPS = 50  # optimizer steps between two reads of the device's NaN/inf flag


def convert_sync_batchnorm(model: nn.Module) -> Dict[str, nn.Module]:
    """Replace the BatchNorm layers of `model` in place by torch's SyncBatchNorm (timm's conversion, which keeps the
    activation of timm's BatchNormAct2d). The new layers share the old ones' parameters and buffers, so state-dict
    names and values, masks and optimizers see no difference. Returns the replaced layers by name."""
    originals = {name: m for name, m in model.named_modules()
                 if name and isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)}
    timm_convert_sync_batchnorm(model)
    return originals


def revert_sync_batchnorm(model: nn.Module, originals: Dict[str, nn.Module]) -> None:
    """Put back the layers `convert_sync_batchnorm` replaced, given the synced layers' tensors as they are now:
    moving the model (Accelerate's `prepare`, any `.to()` that converts) gives the synced layers new buffers, and
    the trained statistics are those."""
    for name, layer in originals.items():
        synced = model.get_submodule(name)
        for key, tensor in [*synced.named_parameters(recurse=False), *synced.named_buffers(recurse=False)]:
            setattr(layer, key, tensor)
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, layer)


def _check_can_train(model: nn.Module, train_set, cfg: TrainConfig, accelerator: Accelerator) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"{type(model).__name__} has no parameters that require grad: nothing to train")
    if len(train_set) == 0:
        raise UserError("the training set is empty")
    if len(train_set) < cfg.batch_size:
        raise UserError(f"the training set has {len(train_set)} samples, fewer than one batch of {cfg.batch_size}; "
                        "lower batch_size")
    if cfg.batch_size % accelerator.num_processes:
        raise UserError(f"batch_size {cfg.batch_size} must be a multiple of the {accelerator.num_processes} processes")
    if accelerator.gradient_accumulation_steps != cfg.grad_accum_steps:
        raise UserError(f"the Accelerator accumulates {accelerator.gradient_accumulation_steps} steps, the config "
                        f"{cfg.grad_accum_steps}: make it with make_accelerator(cfg)")
    if cfg.sched not in SCHEDULES:
        raise UserError(f"sched must be one of {', '.join(SCHEDULES)}, not {cfg.sched!r}")


def _tracker_config(cfg: TrainConfig) -> dict:
    # Trackers such as TensorBoard accept only scalars and strings as hyper-parameters.
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in asdict(cfg).items()}


def _finish_trackers(accelerator: Accelerator) -> None:
    # Not accelerator.end_training(): it also destroys the process group, which later fits still need.
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()


def fit(model: nn.Module, train_set, val_set, cfg: TrainConfig, run_dir, *, accelerator: Accelerator,
        callbacks: Sequence[Callback] = (), start_step: int = 0, desc: str = "train") -> TrainResult:
    """Train `model` in place from global step `start_step` to the end of the schedule; see the module docstring.

    `start_step=k` means rewound to step k: the LR schedule and data order continue as an uninterrupted run's would
    at step k, with a fresh optimizer. A finished run folder is loaded, not retrained; a checkpoint is resumed.
    `callbacks` (lt_plugin.callbacks: a mask, snapshots, a penalty, a stop rule) are called in their order; when one
    ends training, the epoch is closed (validation, checkpoint) and the run is finished at that step. With
    `cfg.eval_every` N an `EarlyStopping` callback, called last, also scores the validation split every N steps
    and keeps the weights at its lowest loss (TrainResult.early_stop, early_stop.safetensors, evals.jsonl). At the
    end the Accelerator's references to what fit prepared are released (`accelerator.free_memory()`) and the model
    keeps its own forward (without Accelerate's autocast patch) and memory format.
    """
    files = FitFolder(run_dir)
    cfg = resolve_train_config(cfg, accelerator)
    settings = result_settings(cfg, accelerator.num_processes if is_stream(train_set) else None)
    accelerator.wait_for_everyone()
    if files.model.exists():
        return load_result(model, files.model, settings)
    _check_can_train(model, train_set, cfg, accelerator)
    check_sync_bn(cfg, accelerator)
    last_step = cfg.epochs * steps_per_epoch(cfg, len(train_set))
    if not 0 <= start_step <= last_step:
        raise UserError(f"start_step {start_step} is outside the schedule's 0..{last_step} steps")
    callbacks = list(callbacks)
    early_stopping = EarlyStopping(cfg.eval_every) if cfg.eval_every else None
    if early_stopping is not None:
        callbacks.append(early_stopping)  # last: it scores the step as the other callbacks leave it (masked)
    return _Training(model, train_set, val_set, cfg, files, accelerator, callbacks, desc, settings,
                     early_stopping).run(start_step)


class _Training:
    """The work of one `fit` that trains: resume, prepare, then epoch after epoch (train, close), finish, release."""

    def __init__(self, model, train_set, val_set, cfg: TrainConfig, files: FitFolder, accelerator: Accelerator,
                 callbacks: List[Callback], desc: str, settings: dict, early_stopping: Optional[EarlyStopping]):
        self.model, self.train_set, self.val_set, self.cfg = model, train_set, val_set, cfg
        self.files, self.accelerator, self.callbacks, self.desc = files, accelerator, callbacks, desc
        self.settings, self.early_stopping = settings, early_stopping
        self.per_epoch = steps_per_epoch(cfg, len(train_set))
        self.history: List[dict] = []
        self.train_seconds, self.stopped = 0.0, False
        self.own_forward = model.__dict__.get("forward")  # Accelerate's autocast patch goes in its place
        self.synced: Dict[str, nn.Module] = {}
        self.channels_last = False
        self.validated: Optional[tuple] = None  # (step, scores) of the last validation

    def run(self, start_step: int) -> TrainResult:
        try:
            self._prepare(*self._resume(start_step))
            if self.cfg.log_with:
                self.accelerator.init_trackers("_".join(self.desc.split()), config=_tracker_config(self.cfg))
            for callback in self.callbacks:
                callback.on_train_start(self.state)
            for epoch in range(self.state.step // self.per_epoch, self.cfg.epochs if not self.stopped else 0):
                started = time.perf_counter()
                totals = self._train_epoch(epoch)
                self._close_epoch(epoch, totals, started)
                if self.stopped:
                    break
            return self._finish()
        finally:
            self._release()

    def _resume(self, start_step: int):
        """(step to start from, optimizer state, GradScaler state): a checkpoint's, loaded into the model and the
        callbacks, or none."""
        if not self.files.checkpoint.exists():
            return start_step, None, None
        model_state, optimizer_state, progress = read_checkpoint(self.files.checkpoint, self.settings)
        load_into(self.model, model_state, self.files.checkpoint)
        self.history, self.train_seconds = progress["history"], progress["train_seconds"]
        self.stopped = progress["stopped"]
        for callback in self.callbacks:
            if callback.state_key is not None:
                callback.load_state_dict(progress.get(callback.state_key))
        return progress["step"], optimizer_state, progress.get("scaler")

    def _prepare(self, step: int, optimizer_state: Optional[dict], scaler_state: Optional[dict]) -> None:
        model, cfg, accelerator = self.model, self.cfg, self.accelerator
        self.synced = convert_sync_batchnorm(model) if cfg.sync_bn else {}
        self.channels_last = _use_channels_last(cfg, model, accelerator.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.prepared, self.optimizer = accelerator.prepare(model, create_optimizer(model, cfg))
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        if scaler_state is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(scaler_state)
        self.scheduler = create_scheduler(self.optimizer, cfg, self.per_epoch)
        self.scheduler.step_update(num_updates=step)
        self.epoch_batches = (streamed_epochs if is_stream(self.train_set) else shuffled_epochs)(
            self.train_set, cfg, accelerator)
        self.normalize = DeviceNormalize(self.train_set, accelerator.device, self.channels_last)
        self.divergence = _DivergenceWatch(accelerator, self.desc, cfg.lr, self.per_epoch, step,
                                           lambda: self.state.step)
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        self.state = TrainState(model=model, optimizer=self.optimizer, accelerator=accelerator,
                                run_dir=self.files.root, step=step, epoch=step // self.per_epoch, lr=self.lr_used,
                                ensure_finite=self.divergence.check,
                                write_weights=lambda path, metadata: save_weights(accelerator, model, path, metadata),
                                validate=self._validation)

    def _train_epoch(self, epoch: int) -> tuple:
        """The epoch's steps from where the run is; (loss sum, correct predictions, samples) of this process, the
        first two on the device: a step reads nothing back from it."""
        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        state.epoch = epoch
        set_seed(epoch_seed(cfg.seed, epoch), device_specific=True)  # dropout/augmentation, resumable
        batches = self.epoch_batches(epoch, done_batches=(state.step - epoch * self.per_epoch) * cfg.grad_accum_steps)
        self.prepared.train()
        loss_sum = self.divergence.watch(torch.zeros((), dtype=torch.float64, device=accelerator.device))
        correct = torch.zeros((), dtype=torch.int64, device=accelerator.device)
        seen = 0
        progress_bar = tqdm(batches, desc=f"[{self.desc}] epoch {epoch + 1}/{cfg.epochs}", leave=False,
                            disable=not accelerator.is_local_main_process)
        for inputs, targets in progress_bar:
            inputs = self.normalize(inputs)
            with accelerator.accumulate(self.prepared):
                outputs = self.prepared(inputs)
                loss = F.cross_entropy(outputs, targets)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    self._before_step()
                    self._optimizer_step()
            loss_sum.add_(loss.detach(), alpha=len(targets))  # a NaN or infinite loss leaves it so: the watch reads it
            correct.add_((outputs.argmax(dim=1) == targets).sum())
            seen += len(targets)
            if accelerator.sync_gradients and self._after_step():
                break
        progress_bar.close()
        return loss_sum, correct, seen

    def _before_step(self) -> None:
        if self.accelerator.scaler is not None:  # fp16: the callbacks see, and add to, the true gradients
            self.accelerator.scaler.unscale_(self.optimizer.optimizer)
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        for callback in self.callbacks:
            callback.before_optimizer_step(self.state)

    def _optimizer_step(self) -> None:
        """The optimizer step and the gradients cleared. Without a GradScaler that is the torch optimizer's own step:
        Accelerate's wrapper adds only what a scaler or XLA needs, and looks up optional packages at every step
        (a tenth of a LeNet-300-100 step on a CPU)."""
        if self.accelerator.scaler is not None:
            self.optimizer.step()
            self.optimizer.zero_grad()
        else:
            self.optimizer.optimizer.step()
            self.optimizer.optimizer.zero_grad(set_to_none=True)

    def _after_step(self) -> bool:
        """Count the step, move the schedule on, call the callbacks; whether training ends here (on every process)."""
        state = self.state
        state.step += 1
        self.scheduler.step_update(num_updates=state.step)
        state.lr = self.optimizer.param_groups[0]["lr"]
        if state.step % DIVERGENCE_CHECK_STEPS == 0:
            self.divergence.check()
        decisions = [callback.after_optimizer_step(state) for callback in self.callbacks]
        decided = [decision for decision in decisions if decision is not None]
        if decided:
            self.stopped = _any_process(self.accelerator, any(decided))
        return self.stopped

    def _validation(self) -> Dict[str, float]:
        """{"accuracy", "loss"} on the validation split at this step (scored once a step; every callback's
        `on_validation` sees it): after a divergence check, with rank 0's BatchNorm statistics on every rank."""
        step = self.state.step
        if self.validated is not None and self.validated[0] == step:
            return self.validated[1]
        self.divergence.check()
        # DDP broadcast rank 0's buffers before each forward, so after the last one every rank's BatchNorm
        # statistics moved on its own shard: take rank 0's, so all ranks evaluate and save the same model.
        broadcast(list(self.model.buffers()))
        scores = validate(self.model, self.val_set, self.accelerator, self.cfg.eval_batch_size, self.cfg.num_workers)
        self.validated = (step, scores)
        for callback in self.callbacks:
            callback.on_validation(self.state, scores)
        self.prepared.train()
        return scores

    def _close_epoch(self, epoch: int, totals: tuple, started: float) -> None:
        """Validate, checkpoint and log the epoch, with the statistics of every process; a diverged epoch is not
        saved."""
        accelerator, state = self.accelerator, self.state
        scores = self._validation()
        loss_sum, correct, seen = totals
        sums = torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(float(seen))])
        loss_sum, correct, seen = accelerator.reduce(sums, reduction="sum").tolist()
        seconds = time.perf_counter() - started
        self.train_seconds += seconds
        metrics = {"epoch": epoch + 1, "step": state.step, "lr": self.lr_used, "train_loss": loss_sum / seen,
                   "train_accuracy": correct / seen, "val_accuracy": scores["accuracy"], "val_loss": scores["loss"],
                   "seconds": seconds}
        self.history.append(metrics)
        progress = {"epoch": epoch + 1, "step": state.step, "history": self.history,
                    "train_seconds": self.train_seconds, "stopped": self.stopped}
        progress.update({c.state_key: c.state_dict() for c in self.callbacks if c.state_key is not None})
        if accelerator.is_main_process:
            save_checkpoint(self.files.checkpoint, self.model, self.optimizer, progress, self.settings,
                            accelerator.scaler)
            write_metrics(self.files.metrics, self.history)
        for callback in self.callbacks:
            callback.on_checkpoint(state)
        accelerator.wait_for_everyone()
        accelerator.print(f"[{self.desc}] epoch {epoch + 1}/{self.cfg.epochs}  loss {metrics['train_loss']:.3f}  "
                          f"train {metrics['train_accuracy']:.1%}  val {scores['accuracy']:.1%}  lr "
                          f"{self.lr_used:.4f}  {seconds:.1f}s")
        accelerator.log({k: v for k, v in metrics.items() if k != "epoch"}, step=state.step)

    def _finish(self) -> TrainResult:
        """model.safetensors with the result; the checkpoint is no longer needed."""
        for callback in self.callbacks:
            callback.on_train_end(self.state)
        if self.history:
            val_accuracy = self.history[-1]["val_accuracy"]
        else:  # rewound to the very end of the schedule: nothing to train
            val_accuracy, _ = evaluate(self.model, self.val_set, self.accelerator, self.cfg.eval_batch_size,
                                       self.cfg.num_workers)
        best = self.early_stopping.best if self.early_stopping is not None else None
        result = TrainResult(model=self.model, val_accuracy=val_accuracy, train_seconds=self.train_seconds,
                             steps=self.state.step, history=self.history, early_stop=best)
        self.state.save_weights(self.files.model,
                                {"val_accuracy": val_accuracy, "train_seconds": self.train_seconds,
                                 "steps": self.state.step, "history": self.history, "settings": self.settings,
                                 "early_stop": best})
        if self.accelerator.is_main_process:
            self.files.checkpoint.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        return result

    def _release(self) -> None:
        """The model as the caller gave it, but for its weights: plain BatchNorm, its own forward, its memory format,
        and not marked as prepared (Accelerate would hand a model it marked back unwrapped, without DDP and without
        its precision, to the next `fit`)."""
        revert_sync_batchnorm(self.model, self.synced)
        for attribute in ("_original_forward", "_is_accelerate_prepared"):
            self.model.__dict__.pop(attribute, None)
        if self.own_forward is None:
            self.model.__dict__.pop("forward", None)
        else:
            self.model.forward = self.own_forward
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        _finish_trackers(self.accelerator)
        self.accelerator.free_memory()


def _use_channels_last(cfg: TrainConfig, model: nn.Module, device: torch.device) -> bool:
    if cfg.channels_last == "auto":  # what cuDNN's tensor-core convolutions take; on CPUs it does not pay
        return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    return cfg.channels_last == "yes"


class _DivergenceWatch:
    """Whether a loss was NaN or infinite, read from the epoch's running loss sum on the device (a step adds to it,
    reads nothing back, and a NaN or infinite loss leaves it so); `check` reads it (on every process, at the same
    step) and raises there, naming the steps since the last check."""

    def __init__(self, accelerator: Accelerator, desc: str, lr: float, per_epoch: int, start: int, step_of):
        self.accelerator, self.desc, self.lr, self.per_epoch, self.step_of = accelerator, desc, lr, per_epoch, step_of
        self.loss_sum: Optional[torch.Tensor] = None
        self.finite_at = start  # the last step known to have finite losses

    def watch(self, loss_sum: torch.Tensor) -> torch.Tensor:
        """The epoch's running loss sum, watched from now on."""
        self.loss_sum = loss_sum
        return loss_sum

    def check(self) -> None:
        step = self.step_of()
        if self.loss_sum is not None:
            bad = (~torch.isfinite(self.loss_sum)).reshape(1).int()
            if any(self.accelerator.gather(bad).tolist()):
                first, epoch = self.finite_at + 1, self.finite_at // self.per_epoch + 1
                raise DivergedError(
                    f"[{self.desc}] the loss became NaN or infinite between steps {first} and {step} (epoch "
                    f"{epoch}); the run folder keeps the last finished epoch. Lower the learning rate (now "
                    f"{self.lr}) or add warm-up, and rerun in a new folder")
        self.finite_at = step


def _any_process(accelerator: Accelerator, flag) -> bool:
    """True on every process if `flag` is true on any (so all processes stop at the same step)."""
    if accelerator.num_processes == 1:
        return bool(flag)
    flags = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flags, reduction="sum").item() > 0)
