"""`lt-plugin check MODEL`: whether lt_plugin can make tickets of a timm model, learnt in seconds, before a run.

The model is built as a run builds it (`Experiment.create_model`, so at the image size), traced by Torch-Pruning,
and a mask is drawn at a few densities. Channel masks are exported, the small model runs a forward pass, and its
output is compared with the masked dense model's. A model that cannot be pruned raises the same error a run would.
"""

from __future__ import annotations

import copy
import time
from typing import Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn

from .experiment import Experiment
from .masks import classifier_modules, resolve_ignored
from .model_checks import check_forward, check_round_to
from .report import format_table
from .structure import ChannelStructure, create_mask, export

DENSITIES = (0.75, 0.5, 0.25)
NUM_CLASSES = 10  # the classifier is never pruned, so its width does not matter
_COLUMNS = (("target", "target density", "{:.2f}"), ("density", "density", "{:.3f}"),
            ("macs", "MACs (of dense)", "{:.3f}"), ("params", "params (of dense)", "{:.3f}"),
            ("difference", "max |masked - exported|", "{:.1e}"))


def check_model(model: str, image_size: int = 32, granularity: str = "channel", model_kwargs: Optional[dict] = None,
                densities: Sequence[float] = DENSITIES, round_to: Optional[int] = None) -> dict:
    """Masks of `model` at `densities`: achieved density, MACs and params of the exported model (fractions of the
    dense model's) and the largest output difference between the masked and the exported model, per density;
    the layers left unpruned and the seconds it took. Raises UnsupportedModelError where a run would."""
    started = time.perf_counter()
    experiment = Experiment(model=model, image_size=image_size, model_kwargs=dict(model_kwargs or {}))
    dense = experiment.create_model(NUM_CLASSES, seed=0).eval()
    example = experiment.example_inputs()
    ignored = resolve_ignored(dense)
    dense_macs, dense_params = tp.utils.count_ops_and_params(dense, example)
    inputs = torch.randn(2, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    check_round_to(round_to)
    structure = ChannelStructure(dense, example, ignored, round_to=round_to) if granularity == "channel" else None
    rows, mask = [], None
    for density in densities:
        if structure is not None:
            mask = structure.select(density)
            ticket = export(dense, mask, example)
            macs, params = tp.utils.count_ops_and_params(ticket, example)
            with torch.no_grad():
                difference = (mask.apply(copy.deepcopy(dense))(inputs) - ticket(inputs)).abs().max().item()
        else:
            mask = create_mask(dense, example, density, "weight", ignored_layers=ignored)
            check_forward(mask.apply(copy.deepcopy(dense)), example, f"the masked {type(dense).__name__}")
            macs, params, difference = dense_macs, dense_params - mask.num_pruned(), None
        rows.append({"target": density, "density": mask.density, "macs": macs / dense_macs,
                     "params": params / dense_params, "difference": difference})
    names = {id(m): name for name, m in dense.named_modules()}
    kept_whole = [name[: -len(".weight")] for name in mask.prunable if bool(mask.tensors[name].all())]
    return {"model": model, "image_size": image_size, "granularity": granularity, "rows": rows,
            "classifier": [names[id(m)] for m in classifier_modules(dense)], "unpruned": kept_whole,
            "layer_norm": any(isinstance(m, (nn.LayerNorm, nn.GroupNorm)) for m in dense.modules()),
            "seconds": time.perf_counter() - started}


def format_check(report: dict) -> str:
    size = report["image_size"]
    lines = [f"{report['model']} at {size}x{size}: {report['granularity']} tickets work "
             f"({len(report['rows'])} masks{' exported' if report['granularity'] == 'channel' else ''}, "
             f"{report['seconds']:.1f} s)",
             format_table(report["rows"], _COLUMNS),
             f"ignored: {', '.join(report['classifier']) or 'nothing'} (the classifier is never pruned)"]
    if report["unpruned"]:
        shown = ", ".join(report["unpruned"][:6]) + (", ..." if len(report["unpruned"]) > 6 else "")
        lines.append(f"kept whole at density {report['rows'][-1]['density']:.3f}: {len(report['unpruned'])} "
                     f"layers ({shown})")
    if report["granularity"] == "channel" and report["layer_norm"]:
        lines.append("LayerNorm/GroupNorm network: masked and exported outputs differ by design (the norm's "
                     "statistics count zeroed channels); the exported model is the ticket a run trains")
    return "\n".join(lines)
