"""A ticket's sparsity layer by layer, as fasterai's `print_sparsity` shows it: each layer's weight shape, the
entries kept and its density; the run folder writes it per ticket (`sparsity.json`)."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from .masks import Mask, named_tensors, prunable_weight_names
from .report import format_table

_COLUMNS = (("layer", "layer", "{}"), ("shape", "shape", "{}"), ("kept", "kept", "{:,}"), ("total", "total", "{:,}"),
            ("density", "density", "{:.4f}"), ("nonzero", "nonzero", "{:,}"))


class SparsityReport:
    """Rows of {layer, shape, kept, total, density} (and `nonzero` when a mask says what is kept), the totals, and
    the table as text (`str(report)`, `print(report)`)."""

    def __init__(self, rows: List[dict]):
        self.rows = rows
        self.kept = sum(row["kept"] for row in rows)
        self.total = sum(row["total"] for row in rows)
        self.density = self.kept / self.total if self.total else 1.0

    def as_dict(self) -> dict:
        return {"layers": self.rows, "kept": self.kept, "total": self.total, "density": self.density}

    def __str__(self) -> str:
        shown = [{**row, "shape": "x".join(map(str, row["shape"]))} for row in self.rows]
        total = {"layer": "total", "kept": self.kept, "total": self.total, "density": self.density}
        if any("nonzero" in row for row in self.rows):
            total["nonzero"] = sum(row["nonzero"] for row in self.rows)
        return format_table([*shown, total], _COLUMNS)


@torch.no_grad()
def sparsity_report(model: Union[nn.Module, Mapping[str, torch.Tensor]], mask: Optional[Mask] = None
                    ) -> SparsityReport:
    """The sparsity of `model` layer by layer. Without a mask: every Conv and Linear weight, `kept` its nonzero
    entries (fasterai's print_sparsity; a physically pruned model shows its own, smaller shapes). With a `mask`
    (a ticket's, in the dense model's space): the weights it prunes, `kept` the entries it keeps and `nonzero` the
    entries of `model` that are not zero (a state dict will do), which differ where training let pruned weights
    regrow or a kept weight is exactly zero."""
    tensors: Dict[str, torch.Tensor] = named_tensors(model) if isinstance(model, nn.Module) else dict(model)
    rows = []
    if mask is None:
        if not isinstance(model, nn.Module):
            raise TypeError("a state dict does not say which tensors are layers' weights: give the mask too")
        for name in prunable_weight_names(model):
            weight = tensors[name]
            rows.append(_row(name, weight.shape, int(torch.count_nonzero(weight))))
        return SparsityReport(rows)
    for name in mask.prunable:
        keep = mask.tensors[name]
        row = _row(name, keep.shape, int(torch.count_nonzero(keep)))
        weight = tensors.get(name)
        if weight is not None and weight.shape == keep.shape:
            row["nonzero"] = int(torch.count_nonzero(weight))
        rows.append(row)
    return SparsityReport(rows)


def _row(name: str, shape, kept: int) -> dict:
    total = int(torch.Size(shape).numel())
    return {"layer": name[:-len(".weight")] if name.endswith(".weight") else name, "shape": list(shape),
            "kept": kept, "total": total, "density": kept / total if total else 1.0}
