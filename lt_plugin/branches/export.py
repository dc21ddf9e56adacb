"""`lt-plugin export`: one ticket of a finished run written as a file that ships it (a branch of the run).

Any run with tickets can be exported (IMP, Early-Bird, Sparse Model Soups, Lottery Pools, the controls): the
strategy or branch that made it says where its tickets lie. Channel tickets are written physically pruned. The
formats are registered by name (lt_plugin.tickets.register_export_format): safetensors for `load_ticket`, ONNX.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional, Tuple

import torch

from ..errors import UserError
from ..masks import Mask
from ..store import load_weights
from ..structure import export
from ..tickets import EXPORT_FORMATS, ExportJob, format_of, torch_latency
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
        report = (export_format.benchmark or torch_latency)(job, dense, device)
        job.metadata["latency"] = report
    difference = export_format.write(job, Path(out_path))
    return Path(out_path), {"latency": report, "max_difference": difference}


@register_branch("export")
@dataclasses.dataclass
class Export(Branch):
    """One ticket of a finished run as a file (safetensors for lt_plugin.load_ticket, or ONNX)."""

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

    def __post_init__(self):
        super().__post_init__()
        if not self.ticket:
            raise UserError("--ticket (or --level, --ratio) is required: which ticket of the run to write")
        if self.format is not None and self.format not in EXPORT_FORMATS:
            raise UserError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {self.format!r}")
        if self.device is not None and self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {self.device}: this machine has no CUDA GPU")

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
        return [row for seed in source.replicates
                for row in self.run_branch(source.replicate(seed), self.seed_out(out, seed))]

    def run_branch(self, source: FinishedRun, out: Path) -> List[dict]:
        path, details = export_run_ticket(source.path, self.ticket, out, fmt=self.format, benchmark=self.benchmark,
                                          device=self.device)
        if details["latency"] is not None:
            from ..deploy import format_latency  # ONNX and timing code load only when asked for
            print(format_latency(details["latency"]))
        if details["max_difference"] is not None:
            print(f"the file's runtime against PyTorch on random inputs: max |difference| "
                  f"{details['max_difference']:.1e}")
        print(f"wrote {path}")
        return [{"ticket": self.ticket, "path": str(path), **details}]
