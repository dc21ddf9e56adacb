"""Masks in the dense parameter space of a model.

A `Mask` maps parameter/buffer names to boolean tensors of the same shape (True = kept). Weight (unstructured)
and channel (structured) masks share this representation, so rewinding is a masked copy, mask distance is a
comparison and interpolating tickets is arithmetic on state dicts. A channel mask also carries its *plan*: the
Torch-Pruning groups it removes, as `[root module name, is_out_channel_fn, [channel indices]]` entries (the format of
Torch-Pruning's pruning history), which is what physical export replays.
"""

from __future__ import annotations

import json
import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Set

import torch
from torch import nn

from .errors import UserError
from .store import atomic_save_safetensors, read_safetensors

GRANULARITIES = ("weight", "channel")
SCOPES = ("global", "layerwise")


def named_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Parameters and buffers of `model` by their state-dict names."""
    tensors = dict(model.named_buffers())
    tensors.update(model.named_parameters())
    return tensors


def snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    """A copy of the model's state, where it lives."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module a wrapper trains: DataParallel's and DistributedDataParallel's `.module` (also after
    `accelerator.prepare`), torch.compile's `_orig_mod` (Accelerate's extract_model_from_parallel), so that layer
    names, the classifier and state-dict names are the model's own."""
    from accelerate.utils import extract_model_from_parallel  # Accelerate loads only where a model comes in
    return extract_model_from_parallel(model, keep_fp32_wrapper=True, keep_torch_compile=False)


def classifier_modules(model: nn.Module) -> List[nn.Module]:
    """The classifier head of a timm model (ignored by default, as in the reference setups)."""
    model = unwrap_model(model)
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return []
    head = get_classifier()
    return [head] if isinstance(head, nn.Module) else list(head)


def classifier_weight_names(model: nn.Module) -> Set[str]:
    """The state-dict names of the classifier head's weights (`classifier_modules`)."""
    heads = {id(m) for m in classifier_modules(model)}
    return {f"{name}.weight" for name, m in model.named_modules() if id(m) in heads}


def resolve_ignored(model: nn.Module, ignored_layers: Optional[Iterable] = None,
                    ignore_classifier: bool = True) -> List[nn.Module]:
    """Modules to leave unpruned, with their submodules. Accepts modules, parameters (Torch-Pruning's
    ignored_layers takes them) and their names in `model`: the weight or bias of a layer stands for the layer; a
    parameter a module holds beside its submodules (timm's cls_token, pos_embed) stays a parameter, which
    Torch-Pruning's dependency graph leaves whole."""
    named = dict(model.named_modules())
    named_parameters = dict(model.named_parameters())
    owners = {id(p): named[name.rpartition(".")[0]] for name, p in named_parameters.items()}
    roots: List[nn.Module] = classifier_modules(model) if ignore_classifier else []
    parameters: List[nn.Parameter] = []
    for layer in ignored_layers or ():
        if isinstance(layer, str):
            if layer not in named and layer not in named_parameters:
                raise UserError(f"ignored layer {layer!r} is not a module of {type(model).__name__}")
            layer = named[layer] if layer in named else named_parameters[layer]
        if isinstance(layer, nn.Parameter):
            owner = owners.get(id(layer))
            if owner is None:
                raise UserError(f"an ignored parameter of shape {tuple(layer.shape)} is not a parameter of "
                                f"{type(model).__name__}")
            if next(owner.children(), None) is None:  # a layer's own weight or bias: the layer
                roots.append(owner)
            else:
                parameters.append(layer)
            continue
        if not isinstance(layer, nn.Module):
            raise UserError(f"ignored_layers takes modules, their names or parameters, not {type(layer).__name__}")
        roots.append(layer)
    return [sub for root in roots for sub in root.modules()] + parameters


def prunable_weight_names(model: nn.Module, ignored: Sequence[nn.Module] = ()) -> List[str]:
    """Names of the Conv and Linear weights whose kept fraction is a ticket's density."""
    ignored_ids = {id(m) for m in ignored}
    return [f"{name}.weight" if name else "weight" for name, m in model.named_modules()
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and id(m) not in ignored_ids]


class Mask:
    """Boolean keep-masks by tensor name, the ticket's sparsity pattern in the dense model's space.

    `prunable` names the weights whose kept fraction is `density`; every one of them has an entry in `tensors`.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], prunable: Sequence[str], granularity: str = "weight",
                 plan: Optional[list] = None):
        if granularity not in GRANULARITIES:
            raise UserError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
        missing = [n for n in prunable if n not in tensors]
        if missing:
            raise ValueError(f"mask has no entry for prunable tensors {missing[:3]}")
        self.tensors = {name: t.detach().to(torch.bool) for name, t in tensors.items()}
        self.prunable = list(prunable)
        self.granularity = granularity
        self.plan = plan or []

    @classmethod
    def ones(cls, model: nn.Module, prunable: Sequence[str], granularity: str = "weight") -> "Mask":
        tensors = named_tensors(model)
        return cls({n: torch.ones_like(tensors[n], dtype=torch.bool) for n in prunable}, prunable, granularity)

    # ---- what a mask says ----
    @property
    def density(self) -> float:
        """Kept fraction of the prunable weights."""
        kept = sum(int(torch.count_nonzero(self.tensors[n])) for n in self.prunable)
        total = sum(self.tensors[n].numel() for n in self.prunable)
        return kept / total if total else 1.0

    def layer_densities(self) -> Dict[str, float]:
        return {n: self.tensors[n].float().mean().item() for n in self.prunable}

    def num_pruned(self) -> int:
        """Entries the mask removes, over every tensor it covers (weights, biases, norm parameters, buffers)."""
        return sum(m.numel() - int(torch.count_nonzero(m)) for m in self.tensors.values())

    @torch.no_grad()
    def regrown(self, model: nn.Module) -> int:
        """Entries of `model` the mask prunes that are not zero (a training that did not keep the mask enforced)."""
        tensors = named_tensors(model)
        return sum(int(torch.count_nonzero(tensors[name][~keep.to(tensors[name].device)]))
                   for name, keep in self.tensors.items() if keep.shape == tensors[name].shape)

    def distance(self, other: "Mask") -> float:
        """Normalised Hamming distance over the prunable weights: the fraction of entries the masks disagree on
        (compared where this mask's tensors are: a mask loaded from a file meets one made on a GPU)."""
        if self.prunable != other.prunable:
            raise ValueError("masks cover different weights")
        differ = sum(int(torch.count_nonzero(keep != other.tensors[n].to(keep.device)))
                     for n, keep in ((n, self.tensors[n]) for n in self.prunable))
        return differ / sum(self.tensors[n].numel() for n in self.prunable)

    def channel_flags(self) -> torch.Tensor:
        """Whether each output channel of each prunable weight is kept (any entry kept), in one flat bool tensor.

        For convolutions followed by BatchNorm these are the BatchNorm channels that Early-Bird compares.
        """
        return torch.cat([self.tensors[n].reshape(self.tensors[n].shape[0], -1).any(dim=1) for n in self.prunable])

    def __and__(self, other: "Mask") -> "Mask":
        names = set(self.tensors) | set(other.tensors)
        tensors = {}
        for n in names:
            a, b = self.tensors.get(n), other.tensors.get(n)
            tensors[n] = a & b.to(a.device) if a is not None and b is not None else (a if b is None else b)
        return Mask(tensors, self.prunable, self.granularity, _merge_plans(self.plan, other.plan))

    # ---- acting on a model ----
    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the pruned entries of `model` in place (parameters and buffers); returns `model`."""
        tensors = named_tensors(model)
        for name, keep in self.tensors.items():
            target = tensors[name]
            if keep.shape != target.shape:
                raise UserError(f"mask for {name} has shape {tuple(keep.shape)}, the model's is {tuple(target.shape)}"
                                " (an exported model takes no dense-space mask)")
            if not bool(keep.all()):
                target.mul_(keep.to(target.device))
        return model

    def enforcer(self, model: nn.Module):
        """A cheap callable that re-zeros the pruned entries of `model`, for use after every optimizer step.

        It binds the tensors once and skips masks with nothing pruned. Rebuild it if the model's parameters are
        replaced (e.g. after a physical prune).
        """
        tensors = named_tensors(model)
        # Multiplying by a bool tensor converts it on every call; a mask in the tensor's dtype is used as it is.
        pairs = [(tensors[n], keep.to(device=tensors[n].device, dtype=tensors[n].dtype))
                 for n, keep in self.tensors.items() if not bool(keep.all())]

        @torch.no_grad()
        def enforce():
            for target, keep in pairs:
                target.mul_(keep)
        return enforce

    def to_dense(self, small_state: Mapping[str, torch.Tensor],
                 dense_like: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Map the state of a physically pruned model back into the dense space (zeros where pruned), on the device
        of the small model's tensors; `dense_like` gives only the shapes and dtypes."""
        dense = {}
        for name, template in dense_like.items():
            value = small_state[name].detach()
            keep = self.tensors.get(name)
            if keep is None or value.shape == template.shape:
                dense[name] = value.clone()
                continue
            full = value.new_zeros(template.shape, dtype=template.dtype)
            dense[name] = full.masked_scatter_(keep.to(full.device), value.to(full.dtype))
        return dense

    # ---- files: tensors in safetensors, metadata in JSON ----
    def metadata(self) -> dict:
        return {"granularity": self.granularity, "prunable": self.prunable, "plan": self.plan,
                "density": self.density}

    def save(self, path) -> None:
        atomic_save_safetensors({f"mask/{n}": t for n, t in self.tensors.items()}, path,
                                {"lt_plugin.mask": json.dumps(self.metadata())})

    @classmethod
    def load(cls, path) -> "Mask":
        tensors, meta = read_safetensors(path)
        if "lt_plugin.mask" not in meta:
            raise UserError(f"{path} is not an lt_plugin mask file")
        return cls.from_parts(tensors, json.loads(meta["lt_plugin.mask"]))

    @classmethod
    def from_parts(cls, tensors: Mapping[str, torch.Tensor], meta: dict) -> "Mask":
        masks = {n[len("mask/"):]: t for n, t in tensors.items() if n.startswith("mask/")}
        return cls(masks, meta["prunable"], meta["granularity"], meta.get("plan"))

    def __repr__(self):
        return f"Mask(granularity={self.granularity!r}, density={self.density:.4f}, tensors={len(self.tensors)})"


def _merge_plans(a: list, b: list) -> list:
    """Union of two channel plans, entry by entry (same root module and pruning function)."""
    merged: Dict[tuple, set] = {}
    for root, is_out, idxs in list(a) + list(b):
        merged.setdefault((root, bool(is_out)), set()).update(int(i) for i in idxs)
    return [[root, is_out, sorted(idxs)] for (root, is_out), idxs in merged.items()]


_SAMPLE = 65_536  # entries sampled to bracket the k-th smallest value of a large tensor
_BRACKET = 0.005  # the bracket: this fraction of the entries on each side of k, as the sample estimates it


def kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """torch.kthvalue(flat, k).values, exactly, in about a third of the time on tensors of millions of entries:
    a fixed sample brackets the k-th value, and kthvalue runs only on the entries inside the bracket (the whole
    tensor when the bracket misses, which the count below detects)."""
    n = flat.numel()
    if n <= 16 * _SAMPLE:
        return torch.kthvalue(flat, k).values
    sample = flat[torch.randint(n, (_SAMPLE,), generator=torch.Generator().manual_seed(0))]
    q = torch.tensor([max(k / n - _BRACKET, 0.0), min(k / n + _BRACKET, 1.0)], dtype=sample.dtype)
    low, high = torch.quantile(sample, q, interpolation="lower")
    below = int((flat < low).sum())
    inside = flat[(flat >= low) & (flat <= high)]
    if below < k <= below + inside.numel():
        return torch.kthvalue(inside, k - below).values
    return torch.kthvalue(flat, k).values


def _n_keep(numel: int, density: float) -> int:
    return int(round(density * numel))


@torch.no_grad()
def magnitude_mask(model: nn.Module, density: float, prunable: Sequence[str], scope: str = "global",
                   previous: Optional[Mask] = None, layer_densities: Optional[Mapping[str, float]] = None) -> Mask:
    """Unstructured mask keeping the largest |w|, computed on the CPU (the same mask whatever device the model is on).

    Global scope ranks every unpruned weight of every prunable tensor against one threshold; layer-wise keeps the
    same fraction of each tensor. `layer_densities` gives tensors of their own density, each pruned on its own (as
    Torch-Pruning's pruning_ratio_dict gives layers their own ratio); the others follow `scope` at `density`.
    Entries at the threshold are pruned too, and entries `previous` pruned stay pruned.
    """
    if scope not in SCOPES:
        raise UserError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    tensors = named_tensors(model)
    scores = {}
    for n in prunable:
        s = tensors[n].detach().abs().float().cpu()
        if previous is not None:
            s = s.masked_fill(~previous.tensors[n].cpu(), -math.inf)
        scores[n] = s

    def keep_above(flat: torch.Tensor, n_keep: int) -> torch.Tensor:
        n_prune = flat.numel() - n_keep
        if n_prune <= 0:
            return torch.tensor(-math.inf)
        return kth_smallest(flat, n_prune)

    def layer_keep(s: torch.Tensor, d: float) -> torch.Tensor:  # the tensor's own largest `d` of its entries
        return s > keep_above(s.reshape(-1), _n_keep(s.numel(), d))

    own = dict(layer_densities or {})
    unknown = sorted(set(own) - set(prunable))
    if unknown:
        raise UserError(f"layer densities name tensors that are not prunable: {', '.join(unknown[:3])}")
    keep = {n: layer_keep(scores[n], d) for n, d in own.items()}
    rest = {n: s for n, s in scores.items() if n not in own}
    if scope == "global" and rest:
        flat = torch.cat([s.reshape(-1) for s in rest.values()])
        threshold = keep_above(flat, _n_keep(flat.numel(), density))
        keep.update({n: s > threshold for n, s in rest.items()})
    else:
        keep.update({n: layer_keep(s, density) for n, s in rest.items()})
    return Mask({n: keep[n] for n in prunable}, prunable, "weight")
