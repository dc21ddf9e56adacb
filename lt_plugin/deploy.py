"""Shipping tickets: ONNX files checked against PyTorch with ONNX Runtime, and latency measured against dense.

ONNX export goes through timm's own helper (`timm.utils.onnx.onnx_export`, TorchScript exporter, dynamic batch).
`onnx` and `onnxruntime` are an optional extra: `pip install 'lt-plugin[onnx]'`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, ContextManager, Dict, Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn

from .errors import UserError, first_line

ONNX_EXTRA = "pip install 'lt-plugin[onnx]'"
ONNX_TOLERANCE = 1e-4  # largest |ONNX Runtime - PyTorch| accepted, relative to the largest |output| (at least 1)
CHECK_BATCH = 4  # random inputs the exported file is checked on (not the export's batch of 2: the batch is dynamic)


def require_onnx():
    """The onnxruntime module; a UserError saying what to install when onnx or onnxruntime is missing."""
    try:
        import onnx  # noqa: F401  (timm's helper imports it)
        import onnxruntime
    except ImportError:
        raise UserError(f"ONNX export needs the onnx and onnxruntime packages: {ONNX_EXTRA}") from None
    return onnxruntime


def onnx_session(path, threads: int):
    """An ONNX Runtime CPU session of `path` using `threads` threads."""
    ort = require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle threads must not spin after a run: they would steal the cores of whatever runs next (PyTorch, in the
    # interleaved timings), and a shipped model shares its machine too.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_onnx(model: nn.Module, example_inputs: torch.Tensor, path, tolerance: float = ONNX_TOLERANCE,
                seed: int = 0, metadata: Optional[dict] = None) -> float:
    """Write `model` (eval mode) as an ONNX file with a dynamic batch dimension, run the file with ONNX Runtime on
    random inputs and compare with PyTorch. Returns the largest absolute difference; raises UserError (and writes
    nothing) if it exceeds `tolerance` times the largest |output| (at least 1). The file appears whole or not at all.
    `metadata` is stored as JSON in the file's metadata_props under "lt_plugin"."""
    require_onnx()
    from timm.utils.onnx import onnx_export

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    partial = path.with_name(f".{path.name}.partial")
    example = example_inputs[:1].cpu().expand(2, *example_inputs.shape[1:]).contiguous()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            onnx_export(model, str(partial), example_input=example, use_dynamo=False, check=True)
        inputs = torch.randn(CHECK_BATCH, *example.shape[1:], generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected = model(inputs)
        session = onnx_session(partial, torch.get_num_threads())
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0])
        difference = (got - expected).abs().max().item()
        scale = max(1.0, expected.abs().max().item())
        if not difference <= tolerance * scale:
            raise UserError(f"ONNX Runtime's outputs differ from PyTorch's by {difference:.2e} (tolerance "
                            f"{tolerance * scale:.1e}): {path} not written")
        if metadata is not None:
            import onnx
            proto = onnx.load(str(partial))
            onnx.helper.set_model_props(proto, {"lt_plugin": json.dumps(metadata)})
            onnx.save(proto, str(partial))
        os.replace(partial, path)
    except UserError:
        raise
    except Exception as exc:  # the exporter and the checker raise many types
        raise UserError(f"cannot export {type(model).__name__} to ONNX: {type(exc).__name__}: "
                        f"{first_line(exc)}") from None
    finally:
        partial.unlink(missing_ok=True)
    return difference


def interleaved_medians(runs: Dict[str, Callable[[], object]], rounds: int, warmup: int) -> Dict[str, float]:
    """Median seconds of each callable, timed in interleaved rounds (each round runs every callable once, so drift
    of a noisy machine hits all of them alike) after `warmup` untimed rounds."""
    times: Dict[str, list] = {name: [] for name in runs}
    for round_index in range(warmup + rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


LATENCY_BATCH = 64


def _synchronised(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor], object]:
    """`model` as a callable that returns once the device has finished (a GPU runs asynchronously: without the
    wait a timer measures how long the kernels took to queue)."""
    if device.type == "cuda":
        return lambda inputs: (model(inputs), torch.cuda.synchronize(device))
    return model


def forward_latency_ms(model: nn.Module, example_inputs: torch.Tensor, batch: int = LATENCY_BATCH, rounds: int = 10,
                       warmup: int = 3, autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> float:
    """Median milliseconds of one forward pass of `model` (eval mode, no autograd) on `batch` random inputs shaped
    like `example_inputs`, on the model's device, in the precision `autocast()` sets (the strategies pass their
    Accelerator's, the precision the ticket was trained and scored in): the latency column of the tables."""
    device = next(model.parameters()).device
    inputs = torch.randn(batch, *example_inputs.shape[1:], generator=torch.Generator().manual_seed(0)).to(device)
    run = _synchronised(model, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast():
            seconds = interleaved_medians({"model": lambda: run(inputs)}, rounds, warmup)["model"]
    finally:
        model.train(was_training)
    return seconds * 1e3


def default_device() -> torch.device:
    """Where latency is measured unless told: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def latency_report(ticket: nn.Module, dense: nn.Module, example_inputs: torch.Tensor,
                   batches: Sequence[int] = (1, 64), onnx_files: Optional[Dict[str, Path]] = None, rounds: int = 20,
                   warmup: int = 5, device=None) -> dict:
    """Params, MACs and median latency (seconds) of a ticket and its dense model at each batch size, in PyTorch on
    `device` (default_device(); float32, a GPU synchronised in each timing) and, for models given in `onnx_files`
    ({"ticket": path, "dense": path}), in ONNX Runtime on the CPU; device, threads and rounds stated."""
    device = torch.device(device) if device is not None else default_device()
    models = {"ticket": copy.deepcopy(ticket).to(device).eval(), "dense": copy.deepcopy(dense).to(device).eval()}
    threads = torch.get_num_threads()
    sessions = {name: onnx_session(file, threads) for name, file in (onnx_files or {}).items()}
    report = {"device": str(device), "onnx_device": "cpu", "precision": "fp32", "threads": threads,
              "rounds": rounds, "warmup": warmup, "batches": list(batches)}
    for name, model in models.items():
        macs, params = tp.utils.count_ops_and_params(model, example_inputs[:1].to(device))
        report[f"{name}_macs"], report[f"{name}_params"] = int(macs), int(params)
    for batch in batches:
        inputs = torch.randn(batch, *example_inputs.shape[1:], generator=torch.Generator().manual_seed(batch))
        on_device = inputs.to(device)
        runs = {f"torch_{name}": (lambda m=_synchronised(model, device): m(on_device))
                for name, model in models.items()}
        array = inputs.numpy()
        runs.update({f"onnx_{name}": (lambda s=session: s.run(None, {s.get_inputs()[0].name: array}))
                     for name, session in sessions.items()})
        with torch.inference_mode():
            medians = interleaved_medians(runs, rounds, warmup)
        for key, seconds in medians.items():
            report[f"{key}_seconds_batch_{batch}"] = seconds
    return report


def format_latency(report: dict) -> str:
    lines = [f"{'':8}{'params':>12}{'MACs':>15}" + "".join(
        f"{f'{runtime} b{batch} ms':>16}" for batch in report["batches"] for runtime in ("torch", "onnx")
        if f"{runtime}_dense_seconds_batch_{batch}" in report)]
    for name in ("dense", "ticket"):
        cells = [f"{name:8}{report[f'{name}_params']:>12,}{report[f'{name}_macs']:>15,}"]
        for batch in report["batches"]:
            for runtime in ("torch", "onnx"):
                key = f"{runtime}_{name}_seconds_batch_{batch}"
                if key in report:
                    speedup = report[f"{runtime}_dense_seconds_batch_{batch}"] / report[key]
                    cells.append(f"{report[key] * 1e3:>9.2f} x{speedup:<5.2f}")
        lines.append("".join(cells))
    lines.append(f"median of {report['rounds']} interleaved rounds after {report['warmup']} warm-up rounds; "
                 f"torch on {report.get('device', 'cpu')}, ONNX Runtime on the CPU, {report['threads']} CPU threads; "
                 "xN: speed-up over dense")
    return "\n".join(lines)
