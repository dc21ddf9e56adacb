"""Training engine: one seeded, resumable, mask-aware training loop on Accelerate, shared by every strategy.

The same code runs on one CPU, one GPU or `accelerate launch` over N processes. Batches are global
(split_batches=True), the data order depends only on (seed, epoch) and the learning rate only on the global
optimizer step, so a run resumed from its per-epoch checkpoint, or started rewound at step k, follows the schedule
and data order of an uninterrupted run.

Datasets read in order through their own `loader` (`data.IterableImages`, the `--streaming` path) are read
differently: each process reads its own share of the stream, in batches of its share of the global batch, shuffled
by (seed, epoch); an epoch has as many steps as an indexable dataset of the same size, and a resumed or rewound epoch
reads its first batches again and drops them. Evaluation sums each process's counts.

Run folder written by `fit` (safetensors metadata values are JSON strings):
    checkpoint.safetensors   "model/*" and "optimizer/*" tensors at the end of the last finished epoch, metadata
                             epoch, step, history, train_seconds, stopped, optimizer (the rest of its state),
                             settings; deleted on success
    metrics.jsonl            one JSON line per finished epoch
    step_{k}.safetensors     weights after k optimizer steps, for each k in `snapshot_steps`; metadata step, lr
                             (the learning rate of the next step)
    model.safetensors        final weights; metadata val_accuracy, train_seconds, steps, history, settings
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from itertools import islice
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

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
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .errors import DivergedError, RunFolderError, UserError
from .masks import Mask
from .store import atomic_save_safetensors, atomic_write, read_safetensors

SCHEDULES = ("cosine", "step", "multistep", "constant")
# Settings that cannot change the trained weights of indexable data: a run folder may be resumed or reused with
# other values. ORDER_OF_A_STREAM among them set the order in which a stream is read, so a streamed run keeps them.
SETTINGS_WITHOUT_EFFECT = ("eval_batch_size", "log_with", "num_workers", "recipe", "data_in_memory", "shuffle_buffer")
ORDER_OF_A_STREAM = ("num_workers", "shuffle_buffer")
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
    sched: str = "cosine"            # cosine | step | multistep | constant (no decay)
    decay_milestones: tuple = (0.5, 0.75)  # fractions of training: multistep decays at each, step every first one
    decay_rate: float = 0.1
    warmup_epochs: float = 0.0
    grad_accum_steps: int = 1
    mixed_precision: str = "no"      # passed to Accelerator
    seed: int = 0
    log_with: Optional[str] = None   # an Accelerate tracker name, e.g. "tensorboard"; None = no trackers
    num_workers: int = 0
    sync_bn: bool = False            # BatchNorm statistics over the global batch on N processes (GPUs only)


MIXED_PRECISIONS = ("no", "fp16", "bf16", "fp8")


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
    need(cfg.sched in SCHEDULES, "sched", f"one of {', '.join(SCHEDULES)}", cfg.sched)
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
    need(cfg.mixed_precision in MIXED_PRECISIONS, "mixed-precision", f"one of {', '.join(MIXED_PRECISIONS)}",
         cfg.mixed_precision)
    need(cfg.num_workers >= 0, "num-workers", "0 or more", cfg.num_workers)
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


@dataclass
class TrainResult:
    model: nn.Module      # the trained model: the object passed to `fit`, unwrapped
    val_accuracy: float   # fraction in [0, 1] after the last epoch
    train_seconds: float  # wall time of the epochs (training + validation), summed over resumed pieces
    steps: int            # global optimizer step reached
    history: list         # per-epoch metric dicts, as in metrics.jsonl


def make_accelerator(cfg: TrainConfig, project_dir=None) -> Accelerator:
    """The Accelerator `fit` expects: global batches split over processes, accumulation and precision from `cfg`.

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
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            gradient_accumulation_steps=cfg.grad_accum_steps,
            mixed_precision=cfg.mixed_precision,
            log_with=cfg.log_with,
            project_config=ProjectConfiguration(project_dir=project_dir, logging_dir=logging_dir),
        )
    except ValueError as exc:
        raise UserError(f"cannot set up Accelerate: {exc}") from None
    _check_sync_bn(cfg, accelerator)
    return accelerator


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


class _EpochShuffle(Sampler):
    """A permutation of range(n) that depends only on (seed, epoch): the same in every process and after a resume.

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
             batch_size: int = 256) -> Tuple[float, int]:
    """Top-1 accuracy over `dataset` and the number of samples counted (each exactly once, on 1 or N processes).

    `model` may be a list of models: their mean softmax is the prediction (a naive output ensemble).
    Leaves the model(s) in eval mode.
    """
    if len(dataset) == 0:
        raise UserError("cannot evaluate on an empty dataset")
    if isinstance(model, (list, tuple)):
        members = [accelerator.unwrap_model(m).to(accelerator.device).eval() for m in model]
        model = lambda inputs: torch.stack([m(inputs).softmax(dim=1) for m in members]).mean(dim=0)  # noqa: E731
    else:
        model = accelerator.unwrap_model(model).to(accelerator.device).eval()
    if _is_stream(dataset):  # each process counts its own share of the stream
        loader = dataset.loader(batch_size, process_index=accelerator.process_index,
                                num_processes=accelerator.num_processes)
        correct = counted = 0
        for inputs, targets in loader:
            inputs, targets = inputs.to(accelerator.device), targets.to(accelerator.device)
            correct += int((model(inputs).argmax(dim=1) == targets).sum())
            counted += targets.numel()
        totals = torch.tensor([correct, counted], dtype=torch.float64, device=accelerator.device)
        correct, counted = accelerator.reduce(totals, reduction="sum").tolist()
        return correct / counted, int(counted)
    processes = accelerator.num_processes
    batch_size = math.ceil(batch_size / processes) * processes  # split_batches needs a multiple of the processes
    loader = accelerator.prepare_data_loader(DataLoader(dataset, batch_size=batch_size, shuffle=False))
    correct = counted = 0
    for inputs, targets in loader:
        predictions = model(inputs).argmax(dim=1)
        predictions, targets = accelerator.gather_for_metrics((predictions, targets))
        correct += int((predictions == targets).sum())
        counted += targets.numel()
    return correct / counted, counted


def _is_stream(dataset) -> bool:
    """Whether `dataset` is read in order through its own `loader` (data.IterableImages), not by index."""
    return isinstance(dataset, torch.utils.data.IterableDataset) and hasattr(dataset, "loader")


def _on_device(loader: DataLoader, accelerator: Accelerator) -> DataLoader:
    """`loader`, already one process's share, with its batches put on the device and its end known to gradient
    accumulation (Accelerate's loader wrapper, told not to shard it again; it reads one batch ahead)."""
    return prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0, put_on_device=True,
                               dispatch_batches=False)


def recalibrate_bn(model: nn.Module, dataset, accelerator: Accelerator, num_batches: Optional[int] = None,
                   batch_size: int = 256) -> None:
    """Recompute BatchNorm running statistics as a cumulative average over `num_batches` batches (all if None).

    Every process runs the same batches (a fixed shuffle, not a shard), so all end with identical statistics.
    Only BatchNorm buffers change; the model is left in eval mode.
    """
    model = accelerator.unwrap_model(model)
    # A fixed shuffle, so a few batches of a class-sorted dataset still cover all classes.
    if _is_stream(dataset):
        loader = dataset.loader(batch_size, seed=0)
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    update_bn(islice(loader, num_batches), model, device=accelerator.device)
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
    """Put back the layers `convert_sync_batchnorm` replaced: plain BatchNorm with the trained (shared) tensors."""
    for name, layer in originals.items():
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


def _save_checkpoint(path: Path, model: nn.Module, optimizer, progress: dict, settings: dict) -> None:
    """Model and optimizer state without pickle: tensors as safetensors entries, the rest as JSON metadata."""
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
    atomic_save_safetensors(tensors, path, metadata)


def _read_checkpoint(path: Path, settings: dict) -> Tuple[Dict[str, torch.Tensor], dict, dict]:
    """(model state, optimizer state dict, progress) from a file written by `_save_checkpoint`."""
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
                       history=json.loads(metadata["history"]))


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
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=milestones[0] if milestones else None,
        decay_milestones=milestones, decay_rate=cfg.decay_rate, warmup_epochs=cfg.warmup_epochs,
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
        mask: Optional[Mask] = None, start_step: int = 0, snapshot_steps: Iterable[int] = (),
        regularizer: Optional[Callable[[nn.Module], None]] = None,
        on_step: Optional[Callable[[int, nn.Module], bool]] = None, desc: str = "train") -> TrainResult:
    """Train `model` in place from global step `start_step` to the end of the schedule; see the module docstring.

    `start_step=k` means rewound to step k: the LR schedule and data order continue as an uninterrupted run's would
    at step k, with a fresh optimizer. A finished run folder is loaded, not retrained; a checkpoint is resumed.
    `mask` is applied before training and re-applied after every optimizer step. `regularizer(model)` runs after
    backward and before each optimizer step (e.g. to add a penalty's subgradient). `on_step(step, model)` runs after
    every optimizer step (the mask enforced, `step` the global step reached) and may end training there by returning
    True: the epoch is closed (validation, checkpoint) and the run is finished at that step. It must decide the
    same way when a resumed run replays the step. The Accelerator's references to what fit prepared are released
    at the end (`accelerator.free_memory()`).
    """
    run_dir = Path(run_dir)
    final_path, checkpoint_path = run_dir / "model.safetensors", run_dir / "checkpoint.safetensors"
    settings = _result_settings(cfg, accelerator.num_processes if _is_stream(train_set) else None)
    accelerator.wait_for_everyone()
    if final_path.exists():
        return _load_result(model, final_path, settings)
    _check_can_train(model, train_set, cfg, accelerator)
    _check_sync_bn(cfg, accelerator)
    per_epoch = steps_per_epoch(cfg, len(train_set))
    last_step = cfg.epochs * per_epoch
    if not 0 <= start_step <= last_step:
        raise UserError(f"start_step {start_step} is outside the schedule's 0..{last_step} steps")

    step, history, train_seconds, optimizer_state, stopped = start_step, [], 0.0, None, False
    if checkpoint_path.exists():
        model_state, optimizer_state, progress = _read_checkpoint(checkpoint_path, settings)
        _load_into(model, model_state, checkpoint_path)
        step, history, train_seconds = progress["step"], progress["history"], progress["train_seconds"]
        stopped = progress["stopped"]
    if mask is not None:
        mask.apply(model)

    # `model` stays the unwrapped module (DDP wraps it, never copies it): masks, regularizer and files use it.
    synced_batchnorms = convert_sync_batchnorm(model) if cfg.sync_bn else {}
    prepared_model, optimizer = accelerator.prepare(model, _create_optimizer(model, cfg))
    epoch_batches = (_streamed_epochs if _is_stream(train_set) else _shuffled_epochs)(train_set, cfg, accelerator)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    scheduler = _create_scheduler(optimizer, cfg, per_epoch)
    scheduler.step_update(num_updates=step)
    enforce_mask = mask.enforcer(model) if mask is not None else None
    snapshot_steps = set(snapshot_steps)

    def snapshot():
        _save_weights(accelerator, model, run_dir / f"step_{step}.safetensors",
                      {"step": step, "lr": optimizer.param_groups[0]["lr"]})

    try:
        if cfg.log_with:
            accelerator.init_trackers("_".join(desc.split()), config=_tracker_config(cfg))  # a folder name
        if step in snapshot_steps:
            snapshot()
        for epoch in range(step // per_epoch, cfg.epochs if not stopped else 0):
            started = time.perf_counter()
            set_seed(_epoch_seed(cfg.seed, epoch), device_specific=True)  # dropout/augmentation, resumable
            batches = epoch_batches(epoch, done_batches=(step - epoch * per_epoch) * cfg.grad_accum_steps)
            prepared_model.train()
            loss_sum = correct = seen = 0.0  # over the samples this process saw
            progress_bar = tqdm(batches, desc=f"[{desc}] epoch {epoch + 1}/{cfg.epochs}", leave=False,
                                disable=not accelerator.is_local_main_process)
            for inputs, targets in progress_bar:
                with accelerator.accumulate(prepared_model):
                    outputs = prepared_model(inputs)
                    loss = F.cross_entropy(outputs, targets)
                    loss_value = loss.item()  # one device sync per step, for the check and the epoch's mean
                    if _any_process(accelerator, not math.isfinite(loss_value)):  # every process stops together
                        raise DivergedError(
                            f"[{desc}] the loss became NaN or infinite at step {step + 1} (epoch {epoch + 1}); the run "
                            f"folder keeps the last finished epoch. Lower the learning rate (now {cfg.lr}) or add "
                            "warm-up, and rerun in a new folder")
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if regularizer is not None:
                            regularizer(model)
                        lr = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    optimizer.zero_grad()
                if accelerator.sync_gradients:
                    step += 1
                    if enforce_mask is not None:
                        enforce_mask()
                    scheduler.step_update(num_updates=step)
                    if step in snapshot_steps:
                        snapshot()
                    if on_step is not None:
                        stopped = _any_process(accelerator, on_step(step, model))
                loss_sum += loss_value * len(targets)
                correct += int((outputs.argmax(dim=1) == targets).sum())
                seen += len(targets)
                if stopped:
                    break
            progress_bar.close()

            # DDP broadcast rank 0's buffers before each forward, so after the last one every rank's BatchNorm
            # statistics moved on its own shard: take rank 0's, so all ranks evaluate and save the same model.
            broadcast(list(model.buffers()))
            totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=accelerator.device)
            loss_sum, correct, seen = accelerator.reduce(totals, reduction="sum").tolist()
            val_accuracy, _ = evaluate(model, val_set, accelerator, cfg.eval_batch_size)
            seconds = time.perf_counter() - started
            train_seconds += seconds
            history.append({"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": loss_sum / seen,
                            "train_accuracy": correct / seen, "val_accuracy": val_accuracy, "seconds": seconds})
            if accelerator.is_main_process:
                _save_checkpoint(checkpoint_path, model, optimizer,
                                 {"epoch": epoch + 1, "step": step, "history": history,
                                  "train_seconds": train_seconds, "stopped": stopped}, settings)
                _write_metrics(run_dir / "metrics.jsonl", history)
            accelerator.wait_for_everyone()
            m = history[-1]
            accelerator.print(f"[{desc}] epoch {epoch + 1}/{cfg.epochs}  loss {m['train_loss']:.3f}  "
                              f"train {m['train_accuracy']:.1%}  val {val_accuracy:.1%}  lr {lr:.4f}  {seconds:.1f}s")
            accelerator.log({k: v for k, v in m.items() if k != "epoch"}, step=step)
            if stopped:
                break

        if history:
            val_accuracy = history[-1]["val_accuracy"]
        else:  # rewound to the very end of the schedule: nothing to train
            val_accuracy, _ = evaluate(model, val_set, accelerator, cfg.eval_batch_size)
        result = TrainResult(model=model, val_accuracy=val_accuracy, train_seconds=train_seconds, steps=step,
                             history=history)
        _save_weights(accelerator, model, final_path,
                      {"val_accuracy": val_accuracy, "train_seconds": train_seconds, "steps": step,
                       "history": history, "settings": settings})
        if accelerator.is_main_process:
            checkpoint_path.unlink(missing_ok=True)
        accelerator.wait_for_everyone()
        return result
    finally:
        revert_sync_batchnorm(model, synced_batchnorms)
        _finish_trackers(accelerator)
        accelerator.free_memory()


def _shuffled_epochs(train_set, cfg: TrainConfig, accelerator: Accelerator) -> Callable[..., Iterable]:
    """epoch_batches(epoch, done_batches): an epoch's batches from its `done_batches`-th on, in the (seed, epoch)
    order of `_EpochShuffle`, each process reading its share of every global batch."""
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=_EpochShuffle(len(train_set), cfg.seed),
                        drop_last=True, num_workers=cfg.num_workers)
    loader = accelerator.prepare_data_loader(loader)

    def epoch_batches(epoch: int, done_batches: int) -> Iterable:
        loader.set_epoch(epoch)
        return accelerator.skip_first_batches(loader, done_batches) if done_batches else loader
    return epoch_batches


def _streamed_epochs(train_set, cfg: TrainConfig, accelerator: Accelerator) -> Callable[..., Iterable]:
    """epoch_batches(epoch, done_batches) of a streamed training set: each process reads its own share of the
    stream, shuffled by (seed, epoch), in batches of its share of the global batch; as many as an epoch has."""
    def epoch_batches(epoch: int, done_batches: int) -> Iterable:
        loader = train_set.loader(cfg.batch_size // accelerator.num_processes,
                                  num_batches=_batches_per_epoch(cfg, len(train_set)), skip_batches=done_batches,
                                  seed=cfg.seed, epoch=epoch, process_index=accelerator.process_index,
                                  num_processes=accelerator.num_processes, num_workers=cfg.num_workers)
        return _on_device(loader, accelerator)
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
