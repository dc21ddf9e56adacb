"""The files of a training run, without pickle: the per-epoch checkpoint (model and optimizer tensors as safetensors
entries, the rest as JSON metadata), metrics.jsonl, and the final weights with the result they were trained to.

A file records the training settings its tensors depend on (`result_settings`); a resume or a reread with other
settings is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from accelerate import Accelerator
from torch import nn

from ..errors import RunFolderError
from ..store import atomic_save_safetensors, atomic_write, read_safetensors
from .config import NEWER_SETTINGS, ORDER_OF_A_STREAM, SETTINGS_WITHOUT_EFFECT, TrainConfig

# Optimizer-state tensors are stored under this prefix in checkpoint.safetensors, model tensors under "model/".
_OPTIMIZER_PREFIX = "optimizer/"
_MODEL_PREFIX = "model/"


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


def result_settings(cfg: TrainConfig, stream_processes: Optional[int] = None) -> dict:
    """The settings a result depends on; for a training set streamed over `stream_processes` processes also those
    that set its order. A setting newer than the file format is left out at the value runs had before it existed."""
    settings = {k: v for k, v in asdict(cfg).items()
                if (k not in SETTINGS_WITHOUT_EFFECT or (stream_processes and k in ORDER_OF_A_STREAM))
                and not (k in NEWER_SETTINGS and v == NEWER_SETTINGS[k])}
    if stream_processes:
        settings["stream_processes"] = stream_processes
    return json.loads(json.dumps(settings))  # tuples become lists, as after reading the file back


def check_settings(path: Path, metadata: Dict[str, str], settings: dict) -> None:
    stored = json.loads(metadata.get("settings", "null"))
    if stored != settings:
        differing = sorted(k for k in settings if (stored or {}).get(k) != settings[k])
        raise RunFolderError(f"{path} was made with other training settings ({', '.join(differing)}); "
                             "use another run folder or the same settings")


def load_into(model: nn.Module, state: Dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunFolderError(f"{path} does not fit this model: {exc}") from None


def save_checkpoint(path: Path, model: nn.Module, optimizer, progress: dict, settings: dict, scaler=None) -> None:
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


def read_checkpoint(path: Path, settings: dict) -> Tuple[Dict[str, torch.Tensor], dict, dict]:
    """(model state, optimizer state dict, progress) from a file written by `save_checkpoint`; progress has the
    GradScaler's state under "scaler" when the file has one."""
    tensors, metadata = read_safetensors(path)
    check_settings(path, metadata, settings)
    optimizer_meta = json.loads(metadata["optimizer"])
    optimizer_state = {int(param_id): entries for param_id, entries in optimizer_meta["state"].items()}
    model_state = {}
    for name, tensor in tensors.items():
        if name.startswith(_MODEL_PREFIX):
            model_state[name[len(_MODEL_PREFIX):]] = tensor
        else:
            param_id, key = name[len(_OPTIMIZER_PREFIX):].split("/", 1)
            optimizer_state.setdefault(int(param_id), {})[key] = tensor
    # epoch, step, history, train_seconds, stopped, the GradScaler's state, the callbacks' states
    progress = {key: json.loads(value) for key, value in metadata.items() if key not in ("optimizer", "settings")}
    progress.setdefault("stopped", False)
    return model_state, {"state": optimizer_state, "param_groups": optimizer_meta["param_groups"]}, progress


def write_metrics(path: Path, history: List[dict]) -> None:
    """metrics.jsonl rewritten whole from the history, so a resumed run never repeats a line."""
    text = "".join(json.dumps(epoch_metrics) + "\n" for epoch_metrics in history)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_result(model: nn.Module, path: Path, settings: dict) -> TrainResult:
    tensors, metadata = read_safetensors(path)
    check_settings(path, metadata, settings)
    load_into(model, tensors, path)
    return TrainResult(model=model, val_accuracy=json.loads(metadata["val_accuracy"]),
                       train_seconds=json.loads(metadata["train_seconds"]), steps=json.loads(metadata["steps"]),
                       history=json.loads(metadata["history"]),
                       early_stop=json.loads(metadata.get("early_stop", "null")))



def save_weights(accelerator: Accelerator, model: nn.Module, path: Path, metadata: dict) -> None:
    if accelerator.is_main_process:
        atomic_save_safetensors(model.state_dict(), path, {key: json.dumps(v) for key, v in metadata.items()})
    accelerator.wait_for_everyone()

