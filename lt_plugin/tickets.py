"""A ticket on disk: weights and mask as safetensors, everything needed to rebuild it as JSON metadata."""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional

import timm
import torch
from torch import nn

from ._version import __version__
from .errors import UserError
from .masks import Mask, unwrap_model
from .store import atomic_save_safetensors, read_safetensors
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
    model = unwrap_model(model)
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


@dataclasses.dataclass
class ExportJob:
    """What a format writes: the ticket of a run, as its model and as the dense model it comes from."""

    ticket: nn.Module        # physically pruned for a channel ticket, else the masked dense model
    dense_masked: nn.Module  # the dense model with the ticket's weights and mask
    mask: Mask
    experiment: object       # the run's strategy: builds the model (model name, timm_kwargs, image size)
    example: torch.Tensor
    num_classes: int
    metadata: dict           # where it came from (run, ticket, test accuracy, latency): stored in the file


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """A file format `lt-plugin export` writes. `write(job, path)` writes it whole or not at all and returns the
    largest output difference between the file's runtime and PyTorch when it checks one (else None); `check()`
    raises a UserError saying what to install, before any work; `benchmark(job, dense, device)` is what
    `--benchmark` measures (default: PyTorch's latency of the ticket against the dense model)."""

    suffix: str
    write: Callable[[ExportJob, Path], Optional[float]]
    description: str
    check: Callable[[], None] = lambda: None
    benchmark: Optional[Callable[[ExportJob, nn.Module, Optional[str]], dict]] = None


EXPORT_FORMATS: Dict[str, ExportFormat] = {}


def register_export_format(name: str, export_format: ExportFormat) -> None:
    """Add a format to `lt-plugin export --format` (and to the --out suffixes it recognises)."""
    if name in EXPORT_FORMATS:
        raise ValueError(f"an export format named {name!r} is already registered")
    EXPORT_FORMATS[name] = export_format


def format_of(out_path, name: Optional[str] = None) -> str:
    """The format named, or the one whose suffix the file has (safetensors when none does)."""
    if name is not None:
        if name not in EXPORT_FORMATS:
            raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {name!r}")
        return name
    suffix = Path(out_path).suffix
    return next((n for n, f in EXPORT_FORMATS.items() if f.suffix == suffix), "safetensors")


def _write_safetensors(job: ExportJob, path: Path) -> None:
    save_ticket(path, job.dense_masked, job.mask, model_name=job.experiment.model,
                model_kwargs=job.experiment.timm_kwargs(job.num_classes), input_size=tuple(job.example.shape[1:]),
                extra=job.metadata)


def _write_onnx(job: ExportJob, path: Path) -> float:
    from .deploy import export_onnx
    return export_onnx(job.ticket, job.example, path, metadata={
        "model": job.experiment.model, "model_kwargs": job.experiment.timm_kwargs(job.num_classes),
        "density": job.mask.density, "granularity": job.mask.granularity, "lt_plugin_version": __version__,
        **job.metadata})


def torch_latency(job: ExportJob, dense: nn.Module, device: Optional[str]) -> dict:
    from .deploy import latency_report
    return latency_report(job.ticket, dense, job.example, device=device)


def _onnx_latency(job: ExportJob, dense: nn.Module, device: Optional[str]) -> dict:
    """PyTorch's latency and ONNX Runtime's, of the ticket's and the dense model's ONNX files."""
    from .deploy import export_onnx, latency_report
    with tempfile.TemporaryDirectory() as scratch:
        files = {name: Path(scratch) / f"{name}.onnx" for name in ("ticket", "dense")}
        for name, net in (("ticket", job.ticket), ("dense", dense)):
            export_onnx(net, job.example, files[name])
        return latency_report(job.ticket, dense, job.example, onnx_files=files, device=device)


def _require_onnx() -> None:
    from .deploy import require_onnx
    require_onnx()


register_export_format("safetensors", ExportFormat(".safetensors", _write_safetensors,
                                                   "a ticket file for lt_plugin.load_ticket (no pickle)"))
register_export_format("onnx", ExportFormat(".onnx", _write_onnx, "checked with ONNX Runtime against PyTorch; needs "
                                            "lt-plugin[onnx]", check=_require_onnx, benchmark=_onnx_latency))
