"""A ticket on disk: weights and mask as safetensors, everything needed to rebuild it as JSON metadata."""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import timm
import torch
from torch import nn

from ._version import __version__
from .errors import RunFolderError, UserError
from .masks import Mask
from .store import atomic_save_safetensors, load_weights, read_json, read_safetensors
from .structure import ChannelStructure, export

META_KEY = "lt_plugin.ticket"


@dataclasses.dataclass
class Ticket:
    model: nn.Module     # physically pruned for an exported channel ticket, else dense with zeros
    mask: Mask           # in the dense model's space
    metadata: dict


def save_ticket(path, model: nn.Module, mask: Mask, *, model_name: str, model_kwargs: Optional[dict] = None,
                input_size=(3, 224, 224), physical: Optional[bool] = None, extra: Optional[dict] = None) -> None:
    """Write `model` (dense, in the mask's space) with its mask to one safetensors file.

    Channel tickets are stored physically pruned (`physical` defaults to True for them), so the file holds the
    smaller model; `load_ticket` rebuilds its architecture from the timm name and the mask's plan. No pickle.
    """
    physical = mask.granularity == "channel" if physical is None else physical
    example = torch.zeros(1, *input_size)
    weights = export(model, mask, example) if physical else mask.apply(copy.deepcopy(model))
    metadata = {"model": model_name, "model_kwargs": model_kwargs or {}, "input_size": list(input_size),
                "physical": physical, "density": mask.density, "granularity": mask.granularity,
                "mask": mask.metadata(), "lt_plugin_version": __version__, **(extra or {})}
    tensors = {f"weight/{k}": v for k, v in weights.state_dict().items()}
    tensors.update({f"mask/{k}": v for k, v in mask.tensors.items()})
    atomic_save_safetensors(tensors, path, {META_KEY: json.dumps(metadata)})


def load_ticket(path, map_location: str = "cpu") -> Ticket:
    """Rebuild a saved ticket as a fresh timm model with its weights (and its mask)."""
    tensors, meta = read_safetensors(path)
    if META_KEY not in meta:
        raise UserError(f"{path} is not an lt_plugin ticket")
    metadata = json.loads(meta[META_KEY])
    mask = Mask.from_parts(tensors, metadata["mask"])
    model = timm.create_model(metadata["model"], pretrained=False, **metadata["model_kwargs"])
    if metadata["physical"]:
        example = torch.zeros(1, *metadata["input_size"])
        ChannelStructure(model, example, ignored=[]).export(mask)
    state = {k[len("weight/"):]: v for k, v in tensors.items() if k.startswith("weight/")}
    model.load_state_dict(state, strict=True)
    return Ticket(model.to(map_location).eval(), mask, metadata)


FORMATS = ("safetensors", "onnx")


def load_run_ticket(run_dir, key):
    """(model, mask, experiment, result) of the finished ticket `key` of a run (a level, a ratio...: the strategy
    that made the run says where it is): the dense-space model with the ticket's weights, masked."""
    from .strategies import get_strategy_class  # strategies import this module
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise RunFolderError(f"--run {run_dir}: not a run folder (no config.json)")
    config = read_json(run_dir / "config.json")
    files = get_strategy_class(config.get("strategy", "")).locate_ticket(run_dir, str(key))
    experiment = files.experiment
    model = experiment.create_model(files.result["num_classes"], seed=0, pretrained=False)
    model.load_state_dict(load_weights(files.weights))
    mask = Mask.load(files.mask)
    return mask.apply(model).eval(), mask, experiment, files.result


def export_run_ticket(run_dir, key, out_path, fmt: str = "safetensors", benchmark: bool = False,
                      device: Optional[str] = None) -> Tuple[Path, dict]:
    """Write the finished ticket `key` of a run as a ticket file (physically pruned for channel tickets): a
    safetensors ticket (`load_ticket`) or, `fmt="onnx"`, an ONNX file checked with ONNX Runtime against PyTorch.
    `benchmark` also measures the ticket's latency against the dense model (`deploy.latency_report`) and stores the
    figures in the file's metadata, PyTorch's timed on `device` (default: the GPU when there is one). Returns
    (path, {"latency": the report, "onnx_max_difference": the largest |ONNX Runtime - PyTorch| output difference},
    each None when not measured)."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA GPU")
    from .deploy import export_onnx, latency_report
    if fmt == "onnx":
        from .deploy import require_onnx
        require_onnx()  # before any work: say what to install
    model, mask, experiment, result = load_run_ticket(run_dir, key)
    example = experiment.example_inputs()
    num_classes = result["num_classes"]
    ticket = export(model, mask, example) if mask.granularity == "channel" else model
    extra = {"run": str(run_dir), "ticket": str(key), "test_accuracy": result.get("test_accuracy")}
    report, difference = None, None
    if benchmark:
        dense = experiment.create_model(num_classes, seed=0, pretrained=False).eval()
        onnx_files = {}
        with tempfile.TemporaryDirectory() as scratch:
            if fmt == "onnx":
                for name, net in (("ticket", ticket), ("dense", dense)):
                    onnx_files[name] = Path(scratch) / f"{name}.onnx"
                    export_onnx(net, example, onnx_files[name])
            report = latency_report(ticket, dense, example, onnx_files=onnx_files, device=device)
        extra["latency"] = report
    if fmt == "onnx":
        difference = export_onnx(ticket, example, out_path, metadata={
            "model": experiment.model, "model_kwargs": experiment.timm_kwargs(num_classes), "density": mask.density,
            "granularity": mask.granularity, "lt_plugin_version": __version__, **extra})
    else:
        save_ticket(out_path, model, mask, model_name=experiment.model,
                    model_kwargs=experiment.timm_kwargs(num_classes),
                    input_size=tuple(example.shape[1:]), extra=extra)
    return Path(out_path), {"latency": report, "onnx_max_difference": difference}
