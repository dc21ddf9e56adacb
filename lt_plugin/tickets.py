"""A ticket on disk: weights and mask as safetensors, everything needed to rebuild it as JSON metadata."""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

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


def _torch_latency(job: ExportJob, dense: nn.Module, device: Optional[str]) -> dict:
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


def export_run_ticket(run_dir, key, out_path, fmt: Optional[str] = None, benchmark: bool = False,
                      device: Optional[str] = None) -> Tuple[Path, dict]:
    """Write the finished ticket `key` of a run in format `fmt` (EXPORT_FORMATS; default: by the file's suffix),
    physically pruned for channel tickets. `benchmark` also measures the ticket's latency against the dense model
    (the format's `benchmark`: PyTorch timed on `device`, default the GPU when there is one, and the format's own
    runtime if it has one) and stores the figures in the file's metadata. Returns (path, {"latency": the report,
    "max_difference": the format's runtime against PyTorch}, each None when not measured)."""
    export_format = EXPORT_FORMATS[format_of(out_path, fmt)]
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA GPU")
    export_format.check()  # before any work: say what to install
    model, mask, experiment, result = load_run_ticket(run_dir, key)
    example = experiment.example_inputs()
    ticket = export(model, mask, example) if mask.granularity == "channel" else model
    job = ExportJob(ticket, model, mask, experiment, example, result["num_classes"],
                    {"run": str(run_dir), "ticket": str(key), "test_accuracy": result.get("test_accuracy")})
    report = None
    if benchmark:
        dense = experiment.create_model(job.num_classes, seed=0, pretrained=False).eval()
        report = (export_format.benchmark or _torch_latency)(job, dense, device)
        job.metadata["latency"] = report
    difference = export_format.write(job, Path(out_path))
    return Path(out_path), {"latency": report, "max_difference": difference}
