"""A ticket on disk: weights and mask as safetensors, everything needed to rebuild it as JSON metadata; or a Hugging
Face Hub folder (timm's `save_for_hf` files, a model card, the mask and Torch-Pruning's pruning history) that timm
loads as `local-dir:`/`hf-hub:` (a weight ticket) or `load_ticket` rebuilds (a channel ticket). The export formats
of `lt-plugin export`, by name."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import timm
import torch
from torch import nn

from ._version import __version__
from .errors import UserError, first_line
from .layout import HubFolder
from .masks import Mask, unwrap_model
from .store import atomic_save_safetensors, atomic_write, atomic_write_folder, atomic_write_json, load_weights
from .store import read_json, read_safetensors
from .structure import ChannelStructure, export

META_KEY = "lt_plugin.ticket"
HUB_KEY = "lt_plugin"  # the config.json entry of a Hub folder that holds the ticket's metadata


@dataclasses.dataclass
class Ticket:
    model: nn.Module     # physically pruned for an exported channel ticket, else dense with zeros
    mask: Mask           # in the dense model's space
    metadata: dict


def ticket_metadata(mask: Mask, *, model_name: str, model_kwargs: Optional[dict], input_size, physical: bool,
                    extra: Optional[dict] = None) -> dict:
    """What rebuilds a ticket (the timm name and arguments, the input size, whether it is physically pruned) and
    what it is (density, granularity, mask, lt_plugin's version), with `extra` (where it came from)."""
    return {"model": model_name, "model_kwargs": model_kwargs or {}, "input_size": list(input_size),
            "physical": physical, "density": mask.density, "granularity": mask.granularity,
            "mask": mask.metadata(), "lt_plugin_version": __version__, **(extra or {})}


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
    metadata = ticket_metadata(mask, model_name=model_name, model_kwargs=model_kwargs, input_size=input_size,
                               physical=physical, extra=extra)
    tensors = {f"weight/{k}": v for k, v in weights.state_dict().items()}
    tensors.update({f"mask/{k}": v for k, v in mask.tensors.items()})
    atomic_save_safetensors(tensors, path, {META_KEY: json.dumps(metadata)})


def rebuild(metadata: dict, pruning_history: Optional[list]) -> nn.Module:
    """A fresh timm model of a ticket's architecture: the dense model by name, made physically smaller for a channel
    ticket by replaying Torch-Pruning's `pruning_history` through its dependency graph."""
    model = timm.create_model(metadata["model"], pretrained=False, **metadata["model_kwargs"])
    if pruning_history is not None:
        ChannelStructure(model, torch.zeros(1, *metadata["input_size"]), ignored=[]).replay(pruning_history)
    return model


def load_ticket(source, map_location: str = "cpu") -> Ticket:
    """Rebuild a saved ticket as a fresh timm model with its weights (and its mask): a ticket file (`save_ticket`,
    `lt-plugin export`), or a Hub folder (`lt-plugin export --format hf`) as "local-dir:FOLDER" (or the folder's
    path) or "hf-hub:USER/NAME[@REVISION]", which huggingface_hub downloads."""
    folder = hub_folder(source)
    if folder is not None:
        return _load_hub_folder(folder, map_location)
    tensors, meta = read_safetensors(source)
    if META_KEY not in meta:
        raise UserError(f"{source} is not an lt_plugin ticket")
    metadata = json.loads(meta[META_KEY])
    mask = Mask.from_parts(tensors, metadata["mask"])
    model = rebuild(metadata, mask.plan if metadata["physical"] else None)
    state = {k[len("weight/"):]: v for k, v in tensors.items() if k.startswith("weight/")}
    model.load_state_dict(state, strict=True)
    return Ticket(model.to(map_location).eval(), mask, metadata)


def hub_folder(source) -> Optional[Path]:
    """The local folder of a Hub ticket source ("local-dir:FOLDER", "hf-hub:USER/NAME[@REVISION]", downloaded, or a
    folder's path); None for a ticket file."""
    text = str(source)
    if text.startswith("local-dir:"):
        return Path(text[len("local-dir:"):])
    if text.startswith("hf-hub:"):
        from huggingface_hub import snapshot_download
        repo_id, _, revision = text[len("hf-hub:"):].partition("@")
        try:
            return Path(snapshot_download(repo_id, revision=revision or None, library_name="lt_plugin",
                                          library_version=__version__))
        except Exception as exc:  # offline, no such repository, no network: huggingface_hub has many error types
            raise UserError(f"{text}: cannot download it from the Hugging Face Hub ({first_line(exc)})") from None
    return Path(text) if Path(text).is_dir() else None


def _load_hub_folder(folder: Path, map_location: str) -> Ticket:
    files = HubFolder(folder)
    if not files.config.is_file():
        raise UserError(f"{folder}: not a ticket folder (no config.json)")
    metadata = read_json(files.config).get(HUB_KEY)
    if metadata is None:
        raise UserError(f"{folder} holds a timm model, not an lt_plugin ticket: timm.create_model("
                        f"'local-dir:{folder}', pretrained=True) loads it")
    history = read_json(files.pruning_history) if metadata["physical"] else None
    model = rebuild(metadata, history)
    model.load_state_dict(load_weights(files.weights), strict=True)
    return Ticket(model.to(map_location).eval(), Mask.load(files.mask), metadata)


def save_hub_folder(folder, ticket: nn.Module, mask: Mask, *, model_name: str, model_kwargs: dict, input_size,
                    extra: Optional[dict] = None, card: str = "", figures: Sequence[Path] = ()) -> None:
    """Write a ticket as a Hugging Face Hub folder through timm's `save_for_hf`: config.json and model.safetensors,
    README.md (the model card `card`), the `figures` it shows (copied into figures/), the mask, and for a channel
    ticket Torch-Pruning's pruning history (pruning_history.json).

    `ticket` is the dense model with the pruned weights at zero for a weight ticket, which timm loads as it is
    (`timm.create_model("local-dir:FOLDER", pretrained=True)`); the physically pruned model for a channel ticket,
    whose config names `lt_plugin.load_ticket` in place of an architecture, so that timm refuses it instead of
    loading the wrong shapes. The data settings are the run's: `input_size`, no crop, bicubic, the mean and std of
    the model's pretrained config. The folder is written whole or not at all; an existing folder is replaced only
    if it is a ticket folder."""
    from timm.models import save_for_hf

    folder = Path(folder)
    if folder.exists() and not (HubFolder(folder).config.is_file()
                                and HUB_KEY in read_json(HubFolder(folder).config)):
        raise UserError(f"--out {folder} exists and is not a ticket folder lt-plugin export wrote: choose another --out")
    physical = mask.granularity == "channel"
    metadata = ticket_metadata(mask, model_name=model_name, model_kwargs=model_kwargs, input_size=input_size,
                               physical=physical, extra=extra)
    model_config = {HUB_KEY: metadata}
    if physical:
        model_config["architecture"] = f"{model_name} channel ticket: load it with lt_plugin.load_ticket"
    saved = copy.copy(unwrap_model(ticket))  # shares the weights; its own pretrained config
    # The ticket was trained from scratch: not the weights of the architecture's pretrained tag, nor under its license.
    saved.pretrained_cfg = {k: v for k, v in saved.pretrained_cfg.items() if k not in ("tag", "license")}
    data_config = {"input_size": tuple(input_size), "crop_pct": 1.0, "interpolation": "bicubic"}

    def write(tmp: Path) -> None:
        files = HubFolder(tmp)
        save_for_hf(saved, tmp, model_config=model_config, safe_serialization=True, data_config=data_config)
        mask.save(files.mask)
        if physical:
            atomic_write_json(mask.plan, files.pruning_history)
        atomic_write(files.card, lambda path: Path(path).write_text(card, encoding="utf-8"))
        for figure in figures:
            files.figure(figure.name).parent.mkdir(exist_ok=True)
            shutil.copyfile(figure, files.figure(figure.name))

    atomic_write_folder(folder, write)


def push_to_hub(folder, repo_id: str, private: bool = False) -> str:
    """Upload a ticket folder to the Hugging Face Hub repository `repo_id` (created when missing) with
    huggingface_hub; returns the commit's URL. Offline, without a token, or refused: a UserError in one line."""
    import huggingface_hub
    from huggingface_hub import HfApi

    later = f"the folder {folder} is written: upload it later with huggingface_hub (hf upload {repo_id} {folder})"
    if huggingface_hub.constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON",
                                                                                                     "YES", "TRUE"):
        raise UserError(f"--push-to-hub {repo_id}: the Hugging Face Hub is offline (HF_HUB_OFFLINE); {later}")
    if huggingface_hub.get_token() is None:
        raise UserError(f"--push-to-hub {repo_id}: no Hugging Face token (hf auth login, or HF_TOKEN); {later}")
    try:
        api = HfApi(library_name="lt_plugin", library_version=__version__)
        repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder), commit_message="Add a lottery ticket")
    except Exception as exc:  # the network and the Hub raise many types
        raise UserError(f"--push-to-hub {repo_id}: {first_line(exc)}; {later}") from None
    return commit.commit_url


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
    card: str = ""           # the model card, for a format that ships one (ExportFormat.with_card)
    figures: Sequence[Path] = ()  # the run's plots the card shows


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """A file format `lt-plugin export` writes. `write(job, path)` writes it whole or not at all and returns the
    largest output difference between the file's runtime and PyTorch when it checks one (else None); `check()`
    raises a UserError saying what to install, before any work; `benchmark(job, dense, device)` is what
    `--benchmark` measures (default: PyTorch's latency of the ticket against the dense model). `with_card`: the
    format ships a model card, which the export renders from the run into the job. A format of folders has no
    suffix ("")."""

    suffix: str
    write: Callable[[ExportJob, Path], Optional[float]]
    description: str
    check: Callable[[], None] = lambda: None
    benchmark: Optional[Callable[[ExportJob, nn.Module, Optional[str]], dict]] = None
    with_card: bool = False


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
    return next((n for n, f in EXPORT_FORMATS.items() if f.suffix and f.suffix == suffix), "safetensors")


def _write_safetensors(job: ExportJob, path: Path) -> None:
    save_ticket(path, job.dense_masked, job.mask, model_name=job.experiment.model,
                model_kwargs=job.experiment.timm_kwargs(job.num_classes), input_size=tuple(job.example.shape[1:]),
                extra=job.metadata)


def _write_hub_folder(job: ExportJob, path: Path) -> None:
    save_hub_folder(path, job.ticket, job.mask, model_name=job.experiment.model,
                    model_kwargs=job.experiment.timm_kwargs(job.num_classes), input_size=tuple(job.example.shape[1:]),
                    extra=job.metadata, card=job.card, figures=job.figures)


def _require_timm_hub() -> None:
    """The timm this folder is for: one whose save_for_hf records the data settings (and which reads local-dir:)."""
    import inspect

    from timm.models import save_for_hf
    if "data_config" not in inspect.signature(save_for_hf).parameters:
        raise UserError(f"--format hf needs a newer timm than {timm.__version__} (its save_for_hf records no data "
                        "settings): pip install -U timm")


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
register_export_format("hf", ExportFormat("", _write_hub_folder, "a Hugging Face Hub folder (timm's save_for_hf, a "
                                          "model card): timm.create_model('local-dir:DIR', pretrained=True) loads a "
                                          "weight ticket, lt_plugin.load_ticket('local-dir:DIR') a channel ticket",
                                          check=_require_timm_hub, with_card=True))
register_export_format("onnx", ExportFormat(".onnx", _write_onnx, "checked with ONNX Runtime against PyTorch; needs "
                                            "lt-plugin[onnx]", check=_require_onnx, benchmark=_onnx_latency))
