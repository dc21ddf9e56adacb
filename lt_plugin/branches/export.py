"""`lt-plugin export`: one ticket of a finished run written as a file that ships it (a branch of the run).

Any run with tickets can be exported (IMP, Early-Bird, Sparse Model Soups, Lottery Pools, the controls): the
strategy or branch that made it says where its tickets lie. Channel tickets are written physically pruned. The
formats are registered by name (lt_plugin.tickets.register_export_format): safetensors for `load_ticket`, a Hugging
Face Hub folder with its model card (`--push-to-hub` uploads it), ONNX.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Tuple

import timm
import torch
import torch_pruning as tp

from ..errors import UserError
from ..layout import RunLayout
from ..masks import Mask
from ..model_card import TicketFacts, render
from ..pipeline import ticket_cost
from ..replicates import KEY_FIELDS
from ..store import load_weights, read_json
from ..structure import export
from ..tickets import EXPORT_FORMATS, ExportJob, format_of, push_to_hub, torch_latency
from .base import Branch, FinishedRun
from .base import register_branch


def load_run_ticket(run_dir, key):
    """(model, mask, experiment, result) of the finished ticket `key` of a run (a level, a ratio...: the strategy
    that made the run says where it is): the dense-space model with the ticket's weights, masked, in eval mode."""
    files = FinishedRun(run_dir).ticket(key)
    model = files.experiment.create_model(files.result["num_classes"], seed=0, pretrained=False)
    model.load_state_dict(load_weights(files.weights))
    mask = Mask.load(files.mask)
    return mask.apply(model).eval(), mask, files.experiment, files.result


def replicated_parent(run_dir) -> Optional[RunLayout]:
    """The replicated run whose seed_S folder `run_dir` is, or None."""
    parent = RunLayout(Path(run_dir).resolve().parent)
    seeds = [parent.seed(seed).root for seed in parent.seeds()]
    return parent if Path(run_dir).resolve() in seeds and parent.results.exists() else None


def _hub_dataset(name: str) -> Optional[str]:
    """The Hugging Face Hub name of a run's dataset, when it has one: not the digits, a local folder or a source."""
    from ..data.sources import FASHION_MNIST_HUB_NAME, list_sources  # `datasets` loads for the card alone
    if name == "fashion-mnist":
        return FASHION_MNIST_HUB_NAME
    return None if name in list_sources() or Path(name).expanduser().exists() else name


def model_card(run_dir, key: str, job: ExportJob, dense: torch.nn.Module, load_as: str) -> Tuple[str, List[Path]]:
    """The model card of ticket `key` of a run, and the plots it shows (for a seed of a replicated run, the
    replicated run's, with its aggregate over the seeds in the card)."""
    source = FinishedRun(run_dir)
    parent = replicated_parent(run_dir)
    over_seeds = next((row for row in read_json(parent.results) if str(key) in
                       [str(row.get(field)) for field in KEY_FIELDS]), None) if parent else None
    results = [source.result(k) for k in source.keys()]
    macs, params = ticket_cost(job.ticket, job.mask, job.example)
    dense_macs, dense_params = tp.utils.count_ops_and_params(dense.eval(), job.example)
    figures = (parent or source.layout).plots()
    facts = TicketFacts(
        key=str(key), made_by=source.name, trainer=source.trainer_config, result=source.result(key),
        dense=next((r for r in results if r.get("density") == 1.0), None), over_seeds=over_seeds,
        costs={"ticket": {"params": params, "macs": macs}, "dense": {"params": int(dense_params),
                                                                      "macs": int(dense_macs)}},
        granularity=job.mask.granularity, input_size=tuple(job.example.shape[1:]),
        figures=[figure.name for figure in figures],
        registered_by_lt_plugin=timm.models.model_entrypoint(job.experiment.model).__module__.startswith("lt_plugin"),
        load_as=load_as, hub_dataset=_hub_dataset(job.experiment.dataset))
    return render(facts), figures


def export_run_ticket(run_dir, key, out_path, fmt: Optional[str] = None, benchmark: bool = False,
                      device: Optional[str] = None, push: Optional[str] = None) -> Tuple[Path, dict]:
    """Write the finished ticket `key` of a run in format `fmt` (EXPORT_FORMATS; default: by the file's suffix),
    physically pruned for channel tickets; with its model card for a format that ships one ("hf"). `benchmark` also
    measures the ticket's latency against the dense model (the format's `benchmark`: PyTorch timed on `device`,
    default the GPU when there is one, and the format's own runtime if it has one) and stores the figures in the
    file's metadata. `push` (a Hugging Face Hub repository, "hf" only) then uploads the folder. Returns (path,
    {"latency": the report, "max_difference": the format's runtime against PyTorch, each None when not measured,
    "pushed": the commit's URL or None})."""
    name = format_of(out_path, fmt)
    export_format = EXPORT_FORMATS[name]
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: this machine has no CUDA GPU")
    if push is not None and name != "hf":
        raise UserError(f"--push-to-hub uploads a Hugging Face Hub folder: export with --format hf, not {name}")
    export_format.check()  # before any work: say what to install
    model, mask, experiment, result = load_run_ticket(run_dir, key)
    example = experiment.example_inputs()
    ticket = export(model, mask, example) if mask.granularity == "channel" else model
    job = ExportJob(ticket, model, mask, experiment, example, result["num_classes"],
                    {"run": str(run_dir), "ticket": str(key), "test_accuracy": result.get("test_accuracy")})
    dense = experiment.create_model(job.num_classes, seed=0, pretrained=False).eval() \
        if benchmark or export_format.with_card else None
    report = None
    if benchmark:
        report = (export_format.benchmark or torch_latency)(job, dense, device)
        job.metadata["latency"] = report
    if export_format.with_card:
        job.card, job.figures = model_card(run_dir, str(key), job, dense,
                                           f"hf-hub:{push}" if push else f"local-dir:{out_path}")
    difference = export_format.write(job, Path(out_path))
    pushed = push_to_hub(out_path, push) if push else None
    return Path(out_path), {"latency": report, "max_difference": difference, "pushed": pushed}


@register_branch("export")
@dataclasses.dataclass
class Export(Branch):
    """One ticket of a finished run as a file (safetensors for lt_plugin.load_ticket, a Hugging Face Hub folder, or
    ONNX)."""

    reads = ()  # any run with tickets

    ticket: str = dataclasses.field(default="", metadata={
        "flags": ["--ticket", "--level", "--ratio"],
        "help": "the ticket: a level (imp, lottery-pools, sparse-model-soups, the controls) or a ratio (early-bird)"})
    format: Optional[str] = dataclasses.field(default=None, metadata={
        "type": str, "help": "; ".join(f"{name}: {f.description}" for name, f in EXPORT_FORMATS.items())
                             + "; default: from the --out suffix"})
    benchmark: bool = dataclasses.field(default=False, metadata={
        "help": "also measure params, MACs and median latency at batch 1 and 64 against the dense model (PyTorch, "
                "and ONNX Runtime for --format onnx); stored in the file"})
    device: Optional[str] = dataclasses.field(default=None, metadata={
        "type": str, "help": "where --benchmark times PyTorch: cpu, cuda or cuda:N (default: cuda when there is a "
                             "GPU, else cpu); ONNX Runtime runs on the CPU"})
    push_to_hub: Optional[str] = dataclasses.field(default=None, metadata={
        "type": str, "help": "with --format hf: upload the folder to this Hugging Face Hub repository (USER/NAME, "
                             "created when missing) with huggingface_hub, after writing it"})

    def __post_init__(self):
        super().__post_init__()
        if not self.ticket:
            raise UserError("--ticket (or --level, --ratio) is required: which ticket of the run to write")
        if self.format is not None and self.format not in EXPORT_FORMATS:
            raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {self.format!r}")
        if self.device is not None and self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {self.device}: this machine has no CUDA GPU")
        if self.push_to_hub is not None and self.format != "hf":
            raise UserError("--push-to-hub uploads a Hugging Face Hub folder: add --format hf")

    def source(self) -> FinishedRun:
        """The run; only the ticket exported needs to be finished."""
        if not self.run_dir:
            raise UserError("--run DIR is required: the run whose ticket to write")
        return FinishedRun(self.run_dir)

    def default_out(self, source: FinishedRun) -> Path:
        return source.layout.export(self.ticket, EXPORT_FORMATS[self.format or "safetensors"].suffix)

    def seed_out(self, out: Path, seed: int) -> Path:
        """A replicated run's ticket of one seed: `ticket_K_seedS.safetensors` beside `out`."""
        return out.with_name(f"{out.stem}_seed{seed}{out.suffix}")

    def run_replicates(self, source: FinishedRun, out: Path) -> List[dict]:
        """One file per seed: there is no aggregate of files."""
        if self.push_to_hub is not None:
            raise UserError(f"--push-to-hub uploads one ticket, and {source.path} holds seeds "
                            f"{', '.join(map(str, source.replicates))}: export one of them (--run "
                            f"{source.layout.seed(source.replicates[0]).root})")
        return [row for seed in source.replicates
                for row in self.run_branch(source.replicate(seed), self.seed_out(out, seed))]

    def run_branch(self, source: FinishedRun, out: Path) -> List[dict]:
        path, details = export_run_ticket(source.path, self.ticket, out, fmt=self.format, benchmark=self.benchmark,
                                          device=self.device, push=self.push_to_hub)
        if details["latency"] is not None:
            from ..deploy import format_latency  # ONNX and timing code load only when asked for
            print(format_latency(details["latency"]))
        if details["max_difference"] is not None:
            print(f"the file's runtime against PyTorch on random inputs: max |difference| "
                  f"{details['max_difference']:.1e}")
        print(f"wrote {path}")
        if details["pushed"] is not None:
            print(f"pushed to {details['pushed']}")
        return [{"ticket": self.ticket, "path": str(path), **details}]
