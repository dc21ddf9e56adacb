"""Training engine: one seeded, resumable training loop on Accelerate, shared by every strategy.

The same code runs on one CPU, one GPU or `accelerate launch` over N processes. Batches are global
(split_batches=True), the data order depends only on (seed, epoch) and the learning rate only on the global
optimizer step, so a run resumed from its per-epoch checkpoint, or started rewound at step k, follows the schedule
and data order of an uninterrupted run. What a strategy adds to the training (a mask kept enforced, snapshots, a
penalty, a rule that stops it) comes as `callbacks` (lt_plugin.callbacks).

Datasets read in order through their own `loader` (`data.IterableImages`, the `--streaming` path) are read
differently: each process reads its own share of the stream, in batches of its share of the global batch, shuffled
by (seed, epoch); an epoch has as many steps as an indexable dataset of the same size, and a resumed or rewound epoch
reads its first batches again and drops them. Evaluation sums each process's counts.

Precision: one policy for training, evaluation and BatchNorm statistics, the Accelerator's (`--mixed-precision`, or
when unset what `accelerate launch --mixed_precision` or its config file says): the model runs under
`accelerator.autocast()` in all three, so a ticket is scored in the precision it was trained in. A step reads
nothing back from the device: the loss, the accuracy and a NaN/inf check accumulate there, read every
DIVERGENCE_CHECK_STEPS steps, before files are written and at the end of each epoch.

Run folder written by `fit` (safetensors metadata values are JSON strings):
    checkpoint.safetensors   "model/*" and "optimizer/*" tensors at the end of the last finished epoch, metadata
                             epoch, step, history, train_seconds, stopped, optimizer (the rest of its state),
                             scaler (fp16's GradScaler), settings; deleted on success
    metrics.jsonl            one JSON line per finished epoch
    step_{k}.safetensors     weights after k optimizer steps (callbacks.Snapshots); metadata step, lr
    evals.jsonl              with eval_every: one line per validation (step, val_loss, val_accuracy)
    early_stop.safetensors   with eval_every: the weights at the lowest validation loss; metadata its evals line
    model.safetensors        final weights; metadata val_accuracy, train_seconds, steps, history, settings
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields
from itertools import islice
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.data_loader import prepare_data_loader
from accelerate.tracking import filter_trackers
from accelerate.utils import LoggerType, ProjectConfiguration, broadcast, set_seed
from timm.layers import convert_sync_batchnorm as timm_convert_sync_batchnorm
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from .callbacks import Callback, TrainState
from .errors import DivergedError, LtPluginWarning, RunFolderError, UserError
from .loaders import DeviceNormalize, default_num_workers, is_stream, make_loader, on_device, process_share
from .options import check_choices
from .store import atomic_save_safetensors, atomic_write, read_safetensors

SCHEDULES = ("cosine", "step", "multistep", "constant", "linear")
MIXED_PRECISIONS = ("no", "fp16", "bf16", "fp8")
CHANNELS_LAST = ("auto", "yes", "no")
# Settings that cannot change the trained weights of indexable data: a run folder may be resumed or reused with
# other values. ORDER_OF_A_STREAM among them set the order in which a stream is read, so a streamed run keeps them.
SETTINGS_WITHOUT_EFFECT = ("eval_batch_size", "log_with", "num_workers", "recipe", "data_in_memory", "shuffle_buffer",
                           "channels_last", "deterministic", "tf32", "eval_every")
ORDER_OF_A_STREAM = ("num_workers", "shuffle_buffer")
DIVERGENCE_CHECK_STEPS = 50  # optimizer steps between two reads of the device's NaN/inf flag
# Optimizer-state tensors are stored under this prefix in checkpoint.safetensors, model tensors under "model/".
_OPTIMIZER_PREFIX = "optimizer/"
_MODEL_PREFIX = "model/"


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


@dataclass
class TrainResult:
    model: nn.Module      # the trained model: the object passed to `fit`, unwrapped
    val_accuracy: float   # fraction in [0, 1] after the last epoch
    train_seconds: float  # wall time of the epochs (training + validation), summed over resumed pieces
    steps: int            # global optimizer step reached
    history: list         # per-epoch metric dicts, as in metrics.jsonl
    # With eval_every: {"step", "val_loss", "val_accuracy"} of the lowest validation loss seen (LTH's early-stopping
    # iteration), whose weights are <run folder>/early_stop.safetensors; None without eval_every.
    early_stop: Optional[dict] = None


def make_accelerator(cfg: TrainConfig, project_dir=None) -> Accelerator:
    """The Accelerator `fit` expects: global batches split over processes, accumulation and precision from `cfg`
    (None: Accelerate's choice); on a GPU also cuDNN's autotuning, TF32 and determinism as `cfg` says.

    Trackers write into `<project_dir>/logs/<name of the fit>`, so that the curves of a run's fits overlay.
    """
    check_train_config(cfg)
    if cfg.log_with and project_dir is None:
        raise UserError(f"log_with={cfg.log_with!r} needs a project_dir for the tracker's files")
    logging_dir = Path(project_dir) / "logs" if project_dir is not None else None
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
    _check_sync_bn(cfg, accelerator)
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


def _check_sync_bn(cfg: TrainConfig, accelerator: Accelerator) -> None:
    if cfg.sync_bn and accelerator.device.type == "cpu":
        raise UserError("--sync-bn needs GPUs: torch's SyncBatchNorm runs on accelerators only")


def _batches_per_epoch(cfg: TrainConfig, num_train_samples: int) -> int:
    # The last incomplete batch is dropped, so every step sees the same global batch on 1 or N processes.
    return num_train_samples // cfg.batch_size


def steps_per_epoch(cfg: TrainConfig, num_train_samples: int) -> int:
    """Optimizer steps per epoch (a last, shorter accumulation group still makes a step)."""
    return math.ceil(_batches_per_epoch(cfg, num_train_samples) / cfg.grad_accum_steps)


def total_steps(cfg: TrainConfig, num_train_samples: int) -> int:
    return cfg.epochs * steps_per_epoch(cfg, num_train_samples)


def _epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run (a valid seed for torch, numpy and random alike)."""
    return (seed * 100_003 + epoch) % 2**31


class EpochShuffle(Sampler):
    """A permutation of range(n) that depends only on (seed, epoch): the same in every process and after a resume.
    `fit`'s data order; an own training loop that samples with it (`set_epoch` each epoch, as a DistributedSampler)
    reads the batches `fit` reads.

    Not Accelerate's seedable sampler, whose seed is part of the Accelerator's configuration: the data order must
    follow `TrainConfig.seed` whatever Accelerator the caller made.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=generator).tolist())


# ---------------------------------------------------------------- evaluation and BatchNorm statistics

@torch.no_grad()
def evaluate(model: Union[nn.Module, Sequence[nn.Module]], dataset, accelerator: Accelerator,
             batch_size: int = 256, num_workers: int = 0) -> Tuple[float, int]:
    """Top-1 accuracy over `dataset` and the number of samples counted (each exactly once, on 1 or N processes:
    each process counts its own share, the counts are summed), in the Accelerator's precision.

    `model` may be a list of models: their mean softmax is the prediction (a naive output ensemble).
    Leaves the model(s) in eval mode.
    """
    correct, counted, _ = _score(model, dataset, accelerator, batch_size, num_workers)
    return correct / counted, int(counted)


def validate(model: nn.Module, dataset, accelerator: Accelerator, batch_size: int = 256,
             num_workers: int = 0) -> Dict[str, float]:
    """{"accuracy", "loss"}: `evaluate`'s accuracy and the mean cross-entropy over the same samples (LTH stops
    early at the lowest validation loss)."""
    correct, counted, loss = _score(model, dataset, accelerator, batch_size, num_workers)
    return {"accuracy": correct / counted, "loss": loss / counted}


def correctness(model: nn.Module, dataset, accelerator: Accelerator, batch_size: int = 256,
                num_workers: int = 0) -> torch.Tensor:
    """Whether each sample of `dataset` is predicted right, a bool tensor on the CPU in the dataset's order (a
    stream's: each process's share in turn), the same on every process: what a paired comparison of two models
    on the same samples needs."""
    flags = torch.cat([outputs.argmax(dim=1) == targets for outputs, targets, _ in
                       _predictions(model, dataset, accelerator, batch_size, num_workers)] or
                      [torch.zeros(0, dtype=torch.bool, device=accelerator.device)])
    if accelerator.num_processes == 1:
        return flags.cpu()
    processes, width = accelerator.num_processes, math.ceil(len(dataset) / accelerator.num_processes)
    padded = torch.zeros(width, dtype=torch.bool, device=flags.device)
    padded[:len(flags)] = flags
    rows = accelerator.gather(padded[None]).reshape(processes, width).cpu()
    lengths = [len(range(i, len(dataset), processes)) for i in range(processes)]
    if is_stream(dataset):
        return torch.cat([row[:n] for row, n in zip(rows, lengths)])
    everything = torch.zeros(len(dataset), dtype=torch.bool)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        everything[i::processes] = row[:n]
    return everything


@torch.no_grad()
def _predictions(model, dataset, accelerator: Accelerator, batch_size: int, num_workers: int):
    """(outputs, targets, summed cross-entropy) of this process's share of `dataset`, batch by batch, in the
    Accelerator's precision; a list of models predicts their mean softmax."""
    if len(dataset) == 0:
        raise UserError("cannot evaluate on an empty dataset")
    device = accelerator.device
    if isinstance(model, (list, tuple)):
        members = [accelerator.unwrap_model(m).to(device).eval() for m in model]
        predict = lambda inputs: torch.stack([m(inputs).softmax(dim=1) for m in members]).mean(dim=0)  # noqa: E731
        loss = lambda probs, targets: F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="sum")  # noqa: E731
    else:
        predict = accelerator.unwrap_model(model).to(device).eval()
        loss = lambda logits, targets: F.cross_entropy(logits.float(), targets, reduction="sum")  # noqa: E731
    batches = process_share(dataset, math.ceil(batch_size / accelerator.num_processes), device,
                            accelerator.process_index, accelerator.num_processes, num_workers)
    with accelerator.autocast():
        for inputs, targets in batches:
            outputs = predict(inputs)
            yield outputs, targets, loss(outputs, targets)


def _score(model, dataset, accelerator: Accelerator, batch_size: int, num_workers: int) -> Tuple[float, float, float]:
    """(correct, counted, summed cross-entropy) over every process's share, read back once at the end."""
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # correct, counted, loss
    for outputs, targets, loss in _predictions(model, dataset, accelerator, batch_size, num_workers):
        sums[0] += (outputs.argmax(dim=1) == targets).sum()
        sums[1] += targets.numel()
        sums[2] += loss
    correct, counted, loss_sum = accelerator.reduce(sums, reduction="sum").tolist()
    return correct, counted, loss_sum


def recalibrate_bn(model: nn.Module, dataset, accelerator: Accelerator, num_batches: Optional[int] = None,
                   batch_size: int = 256, num_workers: int = 0) -> None:
    """Recompute BatchNorm running statistics as a cumulative average over `num_batches` batches (all if None), in
    the Accelerator's precision (torch's `update_bn`).

    Every process runs the same batches (a fixed shuffle, not a shard), so all end with identical statistics.
    Only BatchNorm buffers change; the model is left in eval mode.
    """
    device = accelerator.device
    model = accelerator.unwrap_model(model).to(device)
    # A fixed shuffle, so a few batches of a class-sorted dataset still cover all classes.
    if is_stream(dataset):
        loader = dataset.loader(batch_size, seed=0, num_workers=num_workers, normalise=False,
                                pin_memory=device.type == "cuda")
    else:
        loader = make_loader(dataset, batch_size, device, num_workers=num_workers, shuffle=True,
                             generator=torch.Generator().manual_seed(0))
    batches = on_device(islice(loader, num_batches), device, DeviceNormalize(dataset, device))
    with accelerator.autocast():
        update_bn((inputs for inputs, _ in batches), model)
    model.eval()


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


# ---------------------------------------------------------------- files

def _result_settings(cfg: TrainConfig, stream_processes: Optional[int] = None) -> dict:
    """The settings a result depends on; for a training set streamed over `stream_processes` processes also those
    that set its order."""
    settings = {k: v for k, v in asdict(cfg).items()
                if k not in SETTINGS_WITHOUT_EFFECT or (stream_processes and k in ORDER_OF_A_STREAM)}
    if stream_processes:
        settings["stream_processes"] = stream_processes
    return json.loads(json.dumps(settings))  # tuples become lists, as after reading the file back


def _check_settings(path: Path, metadata: Dict[str, str], settings: dict) -> None:
    stored = json.loads(metadata.get("settings", "null"))
    if stored != settings:
        differing = sorted(k for k in settings if (stored or {}).get(k) != settings[k])
        raise RunFolderError(f"{path} was made with other training settings ({', '.join(differing)}); "
                             "use another run folder or the same settings")


def _load_into(model: nn.Module, state: Dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunFolderError(f"{path} does not fit this model: {exc}") from None


def _save_checkpoint(path: Path, model: nn.Module, optimizer, progress: dict, settings: dict, scaler=None) -> None:
    """Model and optimizer state without pickle: tensors as safetensors entries, the rest as JSON metadata; with an
    fp16 GradScaler, its state too (a resumed run goes on with the loss scale it had reached)."""
    tensors = {_MODEL_PREFIX + name: t for name, t in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    other_state: Dict[str, dict] = {}
    for param_id, entries in optimizer_state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{_OPTIMIZER_PREFIX}{param_id}/{key}"] = value
            else:
                other_state.setdefault(str(param_id), {})[key] = value
    metadata = {key: json.dumps(value) for key, value in progress.items()}
    metadata["optimizer"] = json.dumps({"state": other_state, "param_groups": optimizer_state["param_groups"]})
    metadata["settings"] = json.dumps(settings)
    if scaler is not None:
        metadata["scaler"] = json.dumps(scaler.state_dict())
    atomic_save_safetensors(tensors, path, metadata)


def _read_checkpoint(path: Path, settings: dict) -> Tuple[Dict[str, torch.Tensor], dict, dict]:
    """(model state, optimizer state dict, progress) from a file written by `_save_checkpoint`; progress has the
    GradScaler's state under "scaler" when the file has one."""
    tensors, metadata = read_safetensors(path)
    _check_settings(path, metadata, settings)
    optimizer_meta = json.loads(metadata["optimizer"])
    optimizer_state = {int(param_id): entries for param_id, entries in optimizer_meta["state"].items()}
    model_state = {}
    for name, tensor in tensors.items():
        if name.startswith(_MODEL_PREFIX):
            model_state[name[len(_MODEL_PREFIX):]] = tensor
        else:
            param_id, key = name[len(_OPTIMIZER_PREFIX):].split("/", 1)
            optimizer_state.setdefault(int(param_id), {})[key] = tensor
    progress = {key: json.loads(metadata[key]) for key in ("epoch", "step", "history", "train_seconds")}
    progress["stopped"] = json.loads(metadata.get("stopped", "false"))
    for optional in ("scaler", "early_stop"):
        if optional in metadata:
            progress[optional] = json.loads(metadata[optional])
    return model_state, {"state": optimizer_state, "param_groups": optimizer_meta["param_groups"]}, progress


def _write_metrics(path: Path, history: List[dict]) -> None:
    """metrics.jsonl rewritten whole from the history, so a resumed run never repeats a line."""
    text = "".join(json.dumps(epoch_metrics) + "\n" for epoch_metrics in history)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _load_result(model: nn.Module, path: Path, settings: dict) -> TrainResult:
    tensors, metadata = read_safetensors(path)
    _check_settings(path, metadata, settings)
    _load_into(model, tensors, path)
    return TrainResult(model=model, val_accuracy=json.loads(metadata["val_accuracy"]),
                       train_seconds=json.loads(metadata["train_seconds"]), steps=json.loads(metadata["steps"]),
                       history=json.loads(metadata["history"]),
                       early_stop=json.loads(metadata.get("early_stop", "null")))


# ---------------------------------------------------------------- training

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


def _create_optimizer(model: nn.Module, cfg: TrainConfig):
    try:
        return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum)
    except ValueError as exc:
        raise UserError(f"cannot create optimizer {cfg.opt!r}: {exc}") from None


def _create_scheduler(optimizer, cfg: TrainConfig, updates_per_epoch: int):
    """A timm scheduler stepped per optimizer update, so its state is just the global step."""
    milestones = [fraction * cfg.epochs for fraction in cfg.decay_milestones]
    linear = cfg.sched == "linear"  # timm's polynomial decay of power 1, to a learning rate of 0
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="poly" if linear else cfg.sched, num_epochs=cfg.epochs,
        decay_epochs=milestones[0] if milestones else None, decay_milestones=milestones,
        decay_rate=1.0 if linear else cfg.decay_rate, warmup_epochs=cfg.warmup_epochs, min_lr=0.0,
        step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    return scheduler


def _save_weights(accelerator: Accelerator, model: nn.Module, path: Path, metadata: dict) -> None:
    if accelerator.is_main_process:
        atomic_save_safetensors(model.state_dict(), path, {key: json.dumps(v) for key, v in metadata.items()})
    accelerator.wait_for_everyone()


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
    `cfg.eval_every` N the validation split is also scored every N steps and the weights at its lowest loss are
    kept (TrainResult.early_stop, early_stop.safetensors, evals.jsonl). At the end the
    Accelerator's references to what fit prepared are released (`accelerator.free_memory()`) and the model keeps
    its own forward (without Accelerate's autocast patch) and memory format.
    """
    run_dir = Path(run_dir)
    cfg = resolve_train_config(cfg, accelerator)
    settings = _result_settings(cfg, accelerator.num_processes if is_stream(train_set) else None)
    accelerator.wait_for_everyone()
    if (run_dir / "model.safetensors").exists():
        return _load_result(model, run_dir / "model.safetensors", settings)
    _check_can_train(model, train_set, cfg, accelerator)
    _check_sync_bn(cfg, accelerator)
    last_step = cfg.epochs * steps_per_epoch(cfg, len(train_set))
    if not 0 <= start_step <= last_step:
        raise UserError(f"start_step {start_step} is outside the schedule's 0..{last_step} steps")
    return _Training(model, train_set, val_set, cfg, run_dir, accelerator, list(callbacks), desc, settings).run(
        start_step)


class _Training:
    """The work of one `fit` that trains: resume, prepare, then epoch after epoch (train, close), finish, release."""

    def __init__(self, model, train_set, val_set, cfg: TrainConfig, run_dir: Path, accelerator: Accelerator,
                 callbacks: List[Callback], desc: str, settings: dict):
        self.model, self.train_set, self.val_set, self.cfg = model, train_set, val_set, cfg
        self.run_dir, self.accelerator, self.callbacks, self.desc = run_dir, accelerator, callbacks, desc
        self.settings = settings
        self.per_epoch = steps_per_epoch(cfg, len(train_set))
        self.checkpoint_path = run_dir / "checkpoint.safetensors"
        self.history: List[dict] = []
        self.train_seconds, self.stopped = 0.0, False
        self.own_forward = model.__dict__.get("forward")  # Accelerate's autocast patch goes in its place
        self.early_stop = _EarlyStop(run_dir, accelerator) if cfg.eval_every else None
        self.synced: Dict[str, nn.Module] = {}
        self.channels_last = False

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
        """(step to start from, optimizer state, GradScaler state): a checkpoint's, loaded into the model, or none."""
        if not self.checkpoint_path.exists():
            if self.early_stop is not None:
                self.early_stop.resume(None)
            return start_step, None, None
        model_state, optimizer_state, progress = _read_checkpoint(self.checkpoint_path, self.settings)
        _load_into(self.model, model_state, self.checkpoint_path)
        self.history, self.train_seconds = progress["history"], progress["train_seconds"]
        self.stopped = progress["stopped"]
        if self.early_stop is not None:
            self.early_stop.resume(progress)
        return progress["step"], optimizer_state, progress.get("scaler")

    def _prepare(self, step: int, optimizer_state: Optional[dict], scaler_state: Optional[dict]) -> None:
        model, cfg, accelerator = self.model, self.cfg, self.accelerator
        self.synced = convert_sync_batchnorm(model) if cfg.sync_bn else {}
        self.channels_last = _use_channels_last(cfg, model, accelerator.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.prepared, self.optimizer = accelerator.prepare(model, _create_optimizer(model, cfg))
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        if scaler_state is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(scaler_state)
        self.scheduler = _create_scheduler(self.optimizer, cfg, self.per_epoch)
        self.scheduler.step_update(num_updates=step)
        self.epoch_batches = (_streamed_epochs if is_stream(self.train_set) else _shuffled_epochs)(
            self.train_set, cfg, accelerator)
        self.normalize = DeviceNormalize(self.train_set, accelerator.device, self.channels_last)
        self.divergence = _DivergenceWatch(accelerator, self.desc, cfg.lr, self.per_epoch)
        self.lr_used = self.optimizer.param_groups[0]["lr"]
        self.state = TrainState(model=model, optimizer=self.optimizer, accelerator=accelerator, run_dir=self.run_dir,
                                step=step, epoch=step // self.per_epoch, lr=self.lr_used,
                                ensure_finite=self.divergence.check,
                                write_weights=lambda path, metadata: _save_weights(accelerator, model, path, metadata))

    def _train_epoch(self, epoch: int) -> tuple:
        """The epoch's steps from where the run is; (loss sum, correct predictions, samples) of this process, the
        first two on the device: a step reads nothing back from it."""
        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        state.epoch = epoch
        set_seed(_epoch_seed(cfg.seed, epoch), device_specific=True)  # dropout/augmentation, resumable
        batches = self.epoch_batches(epoch, done_batches=(state.step - epoch * self.per_epoch) * cfg.grad_accum_steps)
        self.prepared.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
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
                self.optimizer.step()
                self.optimizer.zero_grad()
            loss = loss.detach()
            self.divergence.record(loss, state.step + 1)
            loss_sum += loss * len(targets)
            correct += (outputs.argmax(dim=1) == targets).sum()
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

    def _after_step(self) -> bool:
        """Count the step, move the schedule on, call the callbacks; whether training ends here (on every process)."""
        state = self.state
        state.step += 1
        self.scheduler.step_update(num_updates=state.step)
        state.lr = self.optimizer.param_groups[0]["lr"]
        validating = self.early_stop is not None and state.step % self.cfg.eval_every == 0
        if validating or state.step % DIVERGENCE_CHECK_STEPS == 0:
            self.divergence.check()
        if validating:
            broadcast(list(self.model.buffers()))  # rank 0's BatchNorm statistics, as DDP's next forward would take
            self._validate_now()
        decisions = [callback.after_optimizer_step(state) for callback in self.callbacks]
        decided = [decision for decision in decisions if decision is not None]
        if decided:
            self.stopped = _any_process(self.accelerator, any(decided))
        return self.stopped

    def _validate_now(self) -> Dict[str, float]:
        """Validation at this step, recorded for early stopping (a new lowest loss keeps its weights). The caller
        has checked for divergence and given every rank rank 0's BatchNorm statistics."""
        scores = validate(self.model, self.val_set, self.accelerator, self.cfg.eval_batch_size, self.cfg.num_workers)
        self.early_stop.record(self.state, scores)
        self.prepared.train()
        return scores

    def _close_epoch(self, epoch: int, totals: tuple, started: float) -> None:
        """Validate, checkpoint and log the epoch, with the statistics of every process; a diverged epoch is not
        saved."""
        accelerator, state = self.accelerator, self.state
        self.divergence.check()
        # DDP broadcast rank 0's buffers before each forward, so after the last one every rank's BatchNorm
        # statistics moved on its own shard: take rank 0's, so all ranks evaluate and save the same model.
        broadcast(list(self.model.buffers()))
        loss_sum, correct, seen = totals
        sums = torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(float(seen))])
        loss_sum, correct, seen = accelerator.reduce(sums, reduction="sum").tolist()
        if self.early_stop is not None and self.early_stop.last_step == state.step:
            scores = self.early_stop.evals[-1]  # validated at this very step already
            scores = {"accuracy": scores["val_accuracy"], "loss": scores["val_loss"]}
        elif self.early_stop is not None:
            scores = self._validate_now()
        else:
            scores = validate(self.model, self.val_set, accelerator, self.cfg.eval_batch_size, self.cfg.num_workers)
        val_accuracy = scores["accuracy"]
        seconds = time.perf_counter() - started
        self.train_seconds += seconds
        metrics = {"epoch": epoch + 1, "step": state.step, "lr": self.lr_used, "train_loss": loss_sum / seen,
                   "train_accuracy": correct / seen, "val_accuracy": val_accuracy, "val_loss": scores["loss"],
                   "seconds": seconds}
        self.history.append(metrics)
        progress = {"epoch": epoch + 1, "step": state.step, "history": self.history,
                    "train_seconds": self.train_seconds, "stopped": self.stopped}
        if self.early_stop is not None:
            progress["early_stop"] = self.early_stop.best
        if accelerator.is_main_process:
            _save_checkpoint(self.checkpoint_path, self.model, self.optimizer, progress, self.settings,
                             accelerator.scaler)
            _write_metrics(self.run_dir / "metrics.jsonl", self.history)
        if self.early_stop is not None:
            self.early_stop.commit()  # after the checkpoint that names it
        accelerator.wait_for_everyone()
        accelerator.print(f"[{self.desc}] epoch {epoch + 1}/{self.cfg.epochs}  loss {metrics['train_loss']:.3f}  "
                          f"train {metrics['train_accuracy']:.1%}  val {val_accuracy:.1%}  lr {self.lr_used:.4f}  "
                          f"{seconds:.1f}s")
        accelerator.log({k: v for k, v in metrics.items() if k != "epoch"}, step=state.step)

    def _finish(self) -> TrainResult:
        """model.safetensors with the result; the checkpoint is no longer needed."""
        if self.early_stop is not None:
            self.early_stop.commit()
        if self.history:
            val_accuracy = self.history[-1]["val_accuracy"]
        else:  # rewound to the very end of the schedule: nothing to train
            val_accuracy, _ = evaluate(self.model, self.val_set, self.accelerator, self.cfg.eval_batch_size,
                                       self.cfg.num_workers)
        best = self.early_stop.best if self.early_stop is not None else None
        result = TrainResult(model=self.model, val_accuracy=val_accuracy, train_seconds=self.train_seconds,
                             steps=self.state.step, history=self.history, early_stop=best)
        self.state.save_weights(self.run_dir / "model.safetensors",
                                {"val_accuracy": val_accuracy, "train_seconds": self.train_seconds,
                                 "steps": self.state.step, "history": self.history, "settings": self.settings,
                                 "early_stop": best})
        if self.accelerator.is_main_process:
            self.checkpoint_path.unlink(missing_ok=True)
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


class _EarlyStop:
    """Validations every --eval-every steps (evals.jsonl) and the weights at the lowest validation loss
    (early_stop.safetensors). A new best is written as early_stop.pending.safetensors and becomes the best once the
    next checkpoint, which names its step, is written: a resumed run keeps the best of the part it resumes."""

    def __init__(self, run_dir: Path, accelerator: Accelerator):
        self.path, self.pending = run_dir / "early_stop.safetensors", run_dir / "early_stop.pending.safetensors"
        self.evals_path, self.accelerator = run_dir / "evals.jsonl", accelerator
        self.evals: List[dict] = []
        self.best: Optional[dict] = None

    @property
    def last_step(self) -> Optional[int]:
        return self.evals[-1]["step"] if self.evals else None

    def resume(self, progress: Optional[dict]) -> None:
        """The record as of the checkpoint `progress` (none: a fresh start), stale files removed."""
        step = progress["step"] if progress else -1
        self.best = progress.get("early_stop") if progress else None
        if self.evals_path.exists():
            self.evals = [e for e in map(json.loads, self.evals_path.read_text().splitlines()) if e["step"] <= step]
        if self.accelerator.is_main_process:
            pending_step = json.loads(read_safetensors(self.pending)[1]["step"]) if self.pending.exists() else None
            if self.best is not None and pending_step == self.best["step"]:
                self.pending.replace(self.path)  # the checkpoint was written, the promotion was not
            self.pending.unlink(missing_ok=True)
            if self.best is None:
                self.path.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()

    def record(self, state: TrainState, scores: Dict[str, float]) -> None:
        entry = {"step": state.step, "val_loss": scores["loss"], "val_accuracy": scores["accuracy"]}
        self.evals.append(entry)
        if self.best is None or entry["val_loss"] < self.best["val_loss"]:
            self.best = entry
            state.save_weights(self.pending, entry)
        if self.accelerator.is_main_process:
            atomic_write(self.evals_path, lambda tmp: Path(tmp).write_text(
                "".join(json.dumps(e) + "\n" for e in self.evals)))

    def commit(self) -> None:
        if self.accelerator.is_main_process and self.pending.exists():
            self.pending.replace(self.path)


def _use_channels_last(cfg: TrainConfig, model: nn.Module, device: torch.device) -> bool:
    if cfg.channels_last == "auto":  # what cuDNN's tensor-core convolutions take; on CPUs it does not pay
        return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
    return cfg.channels_last == "yes"


class _DivergenceWatch:
    """The first optimizer step whose loss was NaN or infinite, kept on the device so that a step reads nothing back;
    `check` reads it (on every process, at the same step) and raises there."""

    def __init__(self, accelerator: Accelerator, desc: str, lr: float, per_epoch: int):
        self.accelerator, self.desc, self.lr, self.per_epoch = accelerator, desc, lr, per_epoch
        self.first = torch.full((), -1, dtype=torch.int64, device=accelerator.device)

    def record(self, loss: torch.Tensor, step: int) -> None:
        self.first = torch.where((self.first < 0) & ~torch.isfinite(loss), step, self.first)

    def check(self) -> None:
        bad = [step for step in self.accelerator.gather(self.first.reshape(1)).tolist() if step >= 0]
        if bad:
            step = min(bad)
            epoch = (step - 1) // self.per_epoch + 1
            raise DivergedError(
                f"[{self.desc}] the loss became NaN or infinite at step {step} (epoch {epoch}); the run folder keeps "
                f"the last finished epoch. Lower the learning rate (now {self.lr}) or add "
                "warm-up, and rerun in a new folder")


def _shuffled_epochs(train_set, cfg: TrainConfig, accelerator: Accelerator):
    """epoch_batches(epoch, done_batches): an epoch's batches from its `done_batches`-th on, in the (seed, epoch)
    order of `EpochShuffle`, each process reading its share of every global batch."""
    loader = make_loader(train_set, cfg.batch_size, accelerator.device, num_workers=cfg.num_workers,
                         sampler=EpochShuffle(len(train_set), cfg.seed), drop_last=True)
    loader = accelerator.prepare_data_loader(loader)

    def epoch_batches(epoch: int, done_batches: int) -> Iterable:
        loader.set_epoch(epoch)
        return accelerator.skip_first_batches(loader, done_batches) if done_batches else loader
    return epoch_batches


def _streamed_epochs(train_set, cfg: TrainConfig, accelerator: Accelerator):
    """epoch_batches(epoch, done_batches) of a streamed training set: each process reads its own share of the
    stream, shuffled by (seed, epoch), in batches of its share of the global batch; as many as an epoch has. The
    loader, already one process's share, is given to Accelerate only to put its batches on the device and to end
    gradient accumulation at its end (it reads one batch ahead)."""
    def epoch_batches(epoch: int, done_batches: int) -> Iterable:
        loader = train_set.loader(cfg.batch_size // accelerator.num_processes,
                                  num_batches=_batches_per_epoch(cfg, len(train_set)), skip_batches=done_batches,
                                  seed=cfg.seed, epoch=epoch, process_index=accelerator.process_index,
                                  num_processes=accelerator.num_processes, num_workers=cfg.num_workers,
                                  normalise=False, pin_memory=accelerator.device.type == "cuda")
        return prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0, put_on_device=True,
                                   dispatch_batches=False, non_blocking=True)
    return epoch_batches


def _any_process(accelerator: Accelerator, flag) -> bool:
    """True on every process if `flag` is true on any (so all processes stop at the same step)."""
    if accelerator.num_processes == 1:
        return bool(flag)
    flags = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flags, reduction="sum").item() > 0)


def final_lr(cfg: TrainConfig, num_train_samples: int) -> float:
    """The learning rate of the schedule's last optimizer step (what fine-tuning trains at)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = _create_scheduler(optimizer, cfg, steps_per_epoch(cfg, num_train_samples))
    scheduler.step_update(num_updates=max(total_steps(cfg, num_train_samples) - 1, 0))
    return optimizer.param_groups[0]["lr"]
