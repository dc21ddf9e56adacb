"""How to train: the training options (`TrainConfig`), their checks, and what they become: the Accelerator, the
optimizer, the learning-rate schedule and the schedule's length in optimizer steps.

Batches are global (split_batches=True): `batch_size` is the same whatever the number of processes. The learning rate
depends only on the global optimizer step, so a run resumed or rewound to step k follows an uninterrupted run's
schedule.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass, fields
from typing import Optional

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.tracking import filter_trackers
from accelerate.utils import LoggerType, ProjectConfiguration
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn

from ..errors import LtPluginWarning, UserError
from ..layout import RunLayout
from ..loaders import default_num_workers
from ..options import check_choices

SCHEDULES = ("cosine", "step", "multistep", "constant", "linear")
MIXED_PRECISIONS = ("no", "fp16", "bf16", "fp8")
CHANNELS_LAST = ("auto", "yes", "no")
# Settings that cannot change the trained weights of indexable data: a run folder may be resumed or reused with
# other values. ORDER_OF_A_STREAM among them set the order in which a stream is read, so a streamed run keeps them.
SETTINGS_WITHOUT_EFFECT = ("eval_batch_size", "log_with", "num_workers", "recipe", "data_in_memory", "shuffle_buffer",
                           "channels_last", "deterministic", "tf32", "eval_every", "seeds", "parallel")
ORDER_OF_A_STREAM = ("num_workers", "shuffle_buffer")
# Settings added after run folders were written, with the value those runs trained with: a result's settings leave
# them out at that value, so the files of earlier runs still match.
NEWER_SETTINGS = {"wd_norm_bias": False}


@dataclass
class TrainConfig:
    """How to train. `batch_size` is global: the same whatever the number of processes."""

    epochs: int = 3
    batch_size: int = 128
    eval_batch_size: int = 256
    opt: str = "sgd"                 # any timm optimizer name (timm.optim.create_optimizer_v2)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # True: every parameter decays (open_lth, Early-Bird, Lottery Pools); False: timm's filter_bias_and_bn, which
    # exempts normalisation scales and biases (every 1-D parameter)
    wd_norm_bias: bool = dataclasses.field(default=False, metadata={"before": False})
    # constant: no decay; linear: to zero at the end (Sparse Model Soups' retraining, after --warmup-epochs)
    sched: str = dataclasses.field(default="cosine", metadata={"choices": SCHEDULES})
    decay_milestones: tuple = (0.5, 0.75)  # fractions of training: multistep decays at each, step every first one
    decay_rate: float = 0.1
    warmup_epochs: float = 0.0
    grad_accum_steps: int = 1
    # None: Accelerate's own choice (`accelerate launch --mixed_precision`, its config file; else "no")
    mixed_precision: Optional[str] = dataclasses.field(default=None, metadata={"type": str,
                                                                               "choices": MIXED_PRECISIONS})
    seed: int = 0
    log_with: Optional[str] = None   # an Accelerate tracker name, e.g. "tensorboard"; None = no trackers
    num_workers: Optional[int] = dataclasses.field(default=None, metadata={"type": int})  # None: default_num_workers
    sync_bn: bool = False            # BatchNorm statistics over the global batch on N processes (GPUs only)
    channels_last: str = dataclasses.field(default="auto", metadata={"choices": CHANNELS_LAST})  # auto: on GPUs
    deterministic: bool = False      # GPUs: deterministic kernels, no cuDNN autotuning (slower)
    tf32: bool = True                # GPUs: float32 matmuls and convolutions may use TF32 tensor cores
    eval_every: int = 0              # validate every N optimizer steps as well, keeping the early-stopping weights


def check_train_config(cfg: TrainConfig) -> None:
    """Every training option that cannot work, as a UserError naming its flag (before anything is written)."""
    def need(ok: bool, flag: str, what: str, value) -> None:
        if not ok:
            raise UserError(f"--{flag} must be {what}, not {value!r}")

    need(isinstance(cfg.epochs, int) and cfg.epochs >= 1, "epochs", "1 or more", cfg.epochs)
    need(isinstance(cfg.batch_size, int) and cfg.batch_size >= 1, "batch-size", "1 or more", cfg.batch_size)
    need(cfg.eval_batch_size >= 1, "eval-batch-size", "1 or more", cfg.eval_batch_size)
    need(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", "a positive number", cfg.lr)
    need(0.0 <= cfg.momentum < 1.0, "momentum", "in [0, 1)", cfg.momentum)
    need(math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0, "weight-decay", "0 or more", cfg.weight_decay)
    need(cfg.opt.lower() in list_optimizers(), "opt", "a timm optimizer name (e.g. sgd, adamw, lamb; see "
         "timm.optim.list_optimizers())", cfg.opt)
    check_choices(cfg)
    milestones = list(cfg.decay_milestones)
    need(all(0 < m < 1 for m in milestones) and milestones == sorted(milestones), "decay-milestones",
         "increasing fractions of training in (0, 1), e.g. 0.5 0.75", milestones)
    need(cfg.sched not in ("step", "multistep") or bool(milestones), "decay-milestones",
         f"at least one fraction with --sched {cfg.sched}", milestones)
    need(0 < cfg.decay_rate <= 1, "decay-rate", "in (0, 1]", cfg.decay_rate)
    need(0 <= cfg.warmup_epochs < cfg.epochs, "warmup-epochs", f"0 or more and fewer than --epochs ({cfg.epochs})",
         cfg.warmup_epochs)
    need(isinstance(cfg.grad_accum_steps, int) and cfg.grad_accum_steps >= 1, "grad-accum-steps", "1 or more",
         cfg.grad_accum_steps)
    need(cfg.num_workers is None or cfg.num_workers >= 0, "num-workers", "0 or more", cfg.num_workers)
    need(isinstance(cfg.eval_every, int) and cfg.eval_every >= 0, "eval-every", "0 (epoch ends only) or a number of "
         "optimizer steps", cfg.eval_every)
    need(0 <= cfg.seed < 2**31, "seed", "in [0, 2**31)", cfg.seed)
    trackers = [t.value for t in LoggerType if t.value != "all"]
    need(cfg.log_with is None or cfg.log_with in trackers, "log-with", f"one of {', '.join(trackers)}", cfg.log_with)


def check_training_data(cfg: TrainConfig, num_train_samples: int, num_processes: int) -> None:
    """The options that depend on the data and the processes: at least one global batch, split evenly."""
    if num_train_samples < cfg.batch_size * cfg.grad_accum_steps:
        raise UserError(f"--batch-size {cfg.batch_size} x --grad-accum-steps {cfg.grad_accum_steps} needs more "
                        f"training samples than the {num_train_samples} there are; lower them")
    if cfg.batch_size % num_processes:
        raise UserError(f"--batch-size {cfg.batch_size} must be a multiple of the {num_processes} processes")


def train_config_of(hparams) -> TrainConfig:
    """The TrainConfig among a strategy's hyperparameters (any object with TrainConfig's fields)."""
    return TrainConfig(**{f.name: getattr(hparams, f.name) for f in fields(TrainConfig)})


def resolve_train_config(cfg: TrainConfig, accelerator: Accelerator) -> TrainConfig:
    """`cfg` with what it leaves to the machine decided: the precision the Accelerator trains in and the number of
    DataLoader workers (what a run folder records, so that a resume on the same set-up agrees with it)."""
    workers = default_num_workers(accelerator.device) if cfg.num_workers is None else cfg.num_workers
    return dataclasses.replace(cfg, mixed_precision=accelerator.mixed_precision, num_workers=workers)


def make_accelerator(cfg: TrainConfig, project_dir=None) -> Accelerator:
    """The Accelerator `fit` expects: global batches split over processes, accumulation and precision from `cfg`
    (None: Accelerate's choice); on a GPU also cuDNN's autotuning, TF32 and determinism as `cfg` says.

    Trackers write into `<project_dir>/logs/<name of the fit>`, so that the curves of a run's fits overlay.
    """
    check_train_config(cfg)
    if cfg.log_with and project_dir is None:
        raise UserError(f"log_with={cfg.log_with!r} needs a project_dir for the tracker's files")
    logging_dir = RunLayout(project_dir).logs if project_dir is not None else None
    try:
        if cfg.log_with and not filter_trackers(cfg.log_with, logging_dir):  # Accelerate would drop it silently
            raise UserError(f"log_with={cfg.log_with!r}: that tracker's package is not installed "
                            "(for TensorBoard: pip install 'lt-plugin[tensorboard]')")
        accelerator = Accelerator(
            dataloader_config=DataLoaderConfiguration(split_batches=True, non_blocking=True),
            gradient_accumulation_steps=cfg.grad_accum_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=cfg.log_with,
            project_config=ProjectConfiguration(project_dir=project_dir, logging_dir=logging_dir),
        )
    except ValueError as exc:
        raise UserError(f"cannot set up Accelerate: {exc}") from None
    check_sync_bn(cfg, accelerator)
    if accelerator.mixed_precision == "fp16" and accelerator.scaler is None:
        warnings.warn(f"fp16 mixed precision needs a GPU; on {accelerator.device.type} Accelerate trains in float32 "
                      "(bf16 runs on CPUs)", LtPluginWarning, stacklevel=2)
    _configure_gpu_kernels(cfg, accelerator.device)
    return accelerator


def _configure_gpu_kernels(cfg: TrainConfig, device: torch.device) -> None:
    """cuDNN autotuning (the inputs keep one shape, so it pays from the second step) unless deterministic kernels are
    asked for; TF32 for float32 matmuls and convolutions as `cfg.tf32` says. Nothing changes on a CPU."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.backends.cudnn.deterministic = cfg.deterministic
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to be deterministic
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32


def check_sync_bn(cfg: TrainConfig, accelerator: Accelerator) -> None:
    if cfg.sync_bn and accelerator.device.type == "cpu":
        raise UserError("--sync-bn needs GPUs: torch's SyncBatchNorm runs on accelerators only")


def batches_per_epoch(cfg: TrainConfig, num_train_samples: int) -> int:
    # The last incomplete batch is dropped, so every step sees the same global batch on 1 or N processes.
    return num_train_samples // cfg.batch_size


def steps_per_epoch(cfg: TrainConfig, num_train_samples: int) -> int:
    """Optimizer steps per epoch (a last, shorter accumulation group still makes a step)."""
    return math.ceil(batches_per_epoch(cfg, num_train_samples) / cfg.grad_accum_steps)


def total_steps(cfg: TrainConfig, num_train_samples: int) -> int:
    return cfg.epochs * steps_per_epoch(cfg, num_train_samples)


def create_optimizer(model: nn.Module, cfg: TrainConfig):
    """timm's optimizer `cfg.opt`; weight decay on every parameter with `cfg.wd_norm_bias`, else on all but the
    normalisation scales and biases (timm's default)."""
    try:
        return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, filter_bias_and_bn=not cfg.wd_norm_bias)
    except ValueError as exc:
        raise UserError(f"cannot create optimizer {cfg.opt!r}: {exc}") from None


def optimizer_record(cfg: TrainConfig) -> dict:
    """The optimizer `cfg` builds, as a run folder records it: its class and whether it uses Nesterov momentum
    (timm's `sgd` is SGD with Nesterov momentum, its `momentum` the plain SGD with momentum of the papers' code)."""
    optimizer = create_optimizer(nn.Linear(1, 1), cfg)
    record = {"class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}"}
    if "nesterov" in optimizer.defaults:
        record["nesterov"] = bool(optimizer.defaults["nesterov"])
    return record


def create_scheduler(optimizer, cfg: TrainConfig, updates_per_epoch: int):
    """A timm scheduler stepped per optimizer update, so its state is just the global step."""
    milestones = [fraction * cfg.epochs for fraction in cfg.decay_milestones]
    if cfg.sched == "multistep":
        # The papers' code decays from update round(m * updates_per_epoch) on; timm's multistep applies a milestone
        # one update earlier (its t + 1 convention): half an update later lands on the papers' update.
        milestones = [(round(m * updates_per_epoch) + 0.5) / updates_per_epoch for m in milestones]
    linear = cfg.sched == "linear"  # timm's polynomial decay of power 1, to a learning rate of 0
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="poly" if linear else cfg.sched, num_epochs=cfg.epochs,
        decay_epochs=milestones[0] if milestones else None, decay_milestones=milestones,
        decay_rate=1.0 if linear else cfg.decay_rate, warmup_epochs=cfg.warmup_epochs, min_lr=0.0,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    return scheduler


def final_lr(cfg: TrainConfig, num_train_samples: int) -> float:
    """The learning rate of the schedule's last optimizer step (what fine-tuning trains at)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = create_scheduler(optimizer, cfg, steps_per_epoch(cfg, num_train_samples))
    scheduler.step_update(num_updates=max(total_steps(cfg, num_train_samples) - 1, 0))
    return optimizer.param_groups[0]["lr"]
