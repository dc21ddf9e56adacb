"""The Torch-Pruning adapter: channel masks from the dependency graph, and physical export.

Torch-Pruning's pruner chooses which channels to remove (importance, global or per-group ranking, grouped convs,
attention heads); instead of removing them we record each group as a plan entry and zero every tensor slice the
group touches. `export` replays the plan through the dependency graph on a copy, which gives a genuinely smaller
model whose weights are exactly the masked model's surviving slices.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function as tpf

from .errors import UnsupportedModelError, UserError, first_line
from .model_checks import check_forward, check_round_to, check_same_device
from .masks import (SCOPES, Mask, _merge_plans, magnitude_mask, named_tensors, prunable_weight_names,
                    resolve_ignored, unwrap_model)

# Which tensors, along which dimension, each Torch-Pruning handler removes. Dimensions of None mean "the node's
# pruning_dim" (LayerNorm, unwrapped parameters).
_HANDLER_SLICES = {
    (tpf.ConvPruner, "out"): (("weight", 0), ("bias", 0)),
    (tpf.ConvPruner, "in"): (("weight", 1),),
    (tpf.DepthwiseConvPruner, "out"): (("weight", 0), ("bias", 0)),
    (tpf.DepthwiseConvPruner, "in"): (("weight", 0), ("bias", 0)),
    (tpf.LinearPruner, "out"): (("weight", 0), ("bias", 0)),
    (tpf.LinearPruner, "in"): (("weight", 1),),
    (tpf.BatchnormPruner, "out"): (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
    (tpf.GroupNormPruner, "out"): (("weight", 0), ("bias", 0)),
    (tpf.InstanceNormPruner, "out"): (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
    (tpf.PReLUPruner, "out"): (("weight", 0),),
    (tpf.EmbeddingPruner, "out"): (("weight", 1),),
    (tpf.LayernormPruner, "out"): (("weight", None), ("bias", None)),
}
for (_cls, _direction), _slices in list(_HANDLER_SLICES.items()):
    if _direction == "out" and (_cls, "in") not in _HANDLER_SLICES:  # norms: in == out
        _HANDLER_SLICES[(_cls, "in")] = _slices


def _default_importance():
    return tp.importance.GroupMagnitudeImportance(p=2)


IMPORTANCES = {
    "magnitude": _default_importance,
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "bn-scale": lambda: tp.importance.BNScaleImportance(),
    "lamp": lambda: tp.importance.LAMPImportance(),
    "fpgm": lambda: tp.importance.FPGMImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}


def make_importance(name_or_obj=None) -> tp.importance.Importance:
    """A Torch-Pruning importance from a name in IMPORTANCES, or the object itself (default: group magnitude)."""
    if name_or_obj is None:
        return _default_importance()
    if isinstance(name_or_obj, str):
        if name_or_obj not in IMPORTANCES:
            raise UserError(f"unknown importance {name_or_obj!r}; choose from {', '.join(IMPORTANCES)}")
        return IMPORTANCES[name_or_obj]()
    if not callable(name_or_obj):
        raise UserError(f"importance must be a name or a tp.importance.Importance, not {type(name_or_obj).__name__}")
    return name_or_obj


def attention_heads(model: nn.Module) -> Dict[nn.Module, int]:
    """{qkv Linear: number of heads} for timm attention blocks (a fresh dict: Torch-Pruning mutates it)."""
    return {m.qkv: m.num_heads for m in model.modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear) and hasattr(m, "num_heads")}


def fix_attention_heads(model: nn.Module) -> None:
    """After qkv/proj lost channels, make timm attention modules agree with their new widths.

    The attention keeps the temperature the masked model computes with, `scale` = 1/sqrt(the original head width):
    PyTorch's fused attention, which timm calls without a scale, would divide by the new width instead, so a module
    whose heads narrowed computes its attention unfused (timm's own path, which multiplies by `scale`)."""
    for m in model.modules():
        qkv = getattr(m, "qkv", None)
        if isinstance(qkv, nn.Linear) and hasattr(m, "num_heads"):
            m.head_dim = qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim
            if getattr(m, "fused_attn", False) and getattr(m, "scale", None) not in (None, m.head_dim ** -0.5):
                m.fused_attn = False


class ChannelStructure:
    """The dependency graph of one model, and the channel groups Torch-Pruning may remove from it."""

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, ignored: Sequence[nn.Module],
                 importance=None, scope: str = "global", round_to: Optional[int] = None,
                 forward_fn: Optional[Callable] = None, output_transform: Optional[Callable] = None):
        if scope not in SCOPES:
            raise UserError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        check_same_device(model, example_inputs)
        if any(isinstance(layer, nn.Parameter) for layer in ignored):
            raise UserError("a channel ticket cannot keep a parameter outside a layer (timm's cls_token, pos_embed) "
                            "whole: Torch-Pruning would remove the channels it shares with the layers around it and "
                            "leave it out of step; weight tickets never prune it")
        self.model = model
        self.ignored = list(ignored)
        self.prunable = prunable_weight_names(model, self.ignored)
        self._names = {id(t): n for n, t in named_tensors(model).items()}
        self._module_names = {id(m): n for n, m in model.named_modules()}
        self._inner_importance = make_importance(importance)
        self._modules_by_name = dict(model.named_modules())
        self._slice_cache: dict = {}
        self._score_cache: dict = {}
        self._dead: Dict[Tuple[str, bool], torch.Tensor] = {}
        self._keep_best = False
        was_training = model.training
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TP warns about timm's cls_token/pos_embed, which it handles
                with torch.enable_grad():
                    self.pruner = tp.pruner.BasePruner(
                        model, example_inputs, importance=self._importance, global_pruning=scope == "global",
                        pruning_ratio=0.0, ignored_layers=self.ignored, round_to=round_to,
                        num_heads=attention_heads(model), in_channel_groups={}, out_channel_groups={},
                        forward_fn=forward_fn, output_transform=output_transform,
                    )
        except Exception as exc:
            raise UnsupportedModelError(
                f"Torch-Pruning cannot trace {type(model).__name__}: {type(exc).__name__}: {first_line(exc)}") from None
        finally:
            model.train(was_training)
        self.graph = self.pruner.DG

    # ---- group -> tensor slices ----
    def _tensor_dims(self, dep) -> List[Tuple[str, int, Optional[Tuple[int, int]]]]:
        """(tensor name, dim, grouped-conv info) for every tensor a dependency's handler slices."""
        handler = dep.handler
        pruner = getattr(handler, "__self__", None)
        direction = "out" if self.graph.is_out_channel_pruning_fn(handler) else "in"
        module = dep.target.module
        if isinstance(pruner, tp.ops.DummyPruner):
            return []  # concat/split/reshape/elementwise nodes own no tensors
        if isinstance(pruner, tpf.ParameterPruner):
            return [(self._names[id(module)], dep.target.pruning_dim, None)]
        name = self._module_names.get(id(module))
        slices = None
        for cls in type(pruner).__mro__:
            slices = _HANDLER_SLICES.get((cls, direction))
            if slices is not None:
                break
        if slices is None or name is None:
            raise UnsupportedModelError(
                f"layer {name or module} ({type(module).__name__}) is pruned by {type(pruner).__name__}, "
                "which lt_plugin cannot mask")
        if isinstance(pruner, tpf.PReLUPruner) and module.num_parameters == 1:
            return []
        out = []
        for attr, dim in slices:
            tensor = getattr(module, attr, None)
            if not isinstance(tensor, torch.Tensor):
                continue
            if dim is None:
                dim = dep.target.pruning_dim % tensor.dim()
            if isinstance(module, nn.modules.conv._ConvNd) and module.transposed and attr == "weight":
                dim = 1 - dim
            grouped = None
            if (isinstance(module, nn.modules.conv._ConvNd) and direction == "in" and module.groups > 1
                    and not isinstance(pruner, tpf.DepthwiseConvPruner)):
                grouped = (module.in_channels, module.groups)
            out.append((f"{name}.{attr}" if name else attr, dim, grouped))
        return out

    def _root_slices(self, root: str, is_out: bool):
        """For one plan root: [(tensor, dim, grouped, {root channel: [indices along dim]})], cached."""
        key = (root, bool(is_out))
        if key not in self._slice_cache:
            module, fn, n = self._root(root, is_out)
            entries = []
            for item in self.graph.get_pruning_group(module, fn, list(range(n))):
                by_root: Dict[int, List[int]] = {}
                for idx, root_idx in zip(item.idxs, item.root_idxs):
                    by_root.setdefault(int(root_idx), []).append(int(idx))
                entries += [(name, dim, grouped, by_root) for name, dim, grouped in self._tensor_dims(item.dep)]
            self._slice_cache[key] = entries
        return self._slice_cache[key]

    def _pruned_positions(self, plan: list) -> Dict[str, Dict[int, set]]:
        """{tensor name: {dim: positions removed}} for a plan. Channel masks are products of per-dim keeps."""
        raw: Dict[Tuple[str, int, Optional[tuple]], set] = {}
        for root, is_out, idxs in plan:
            for name, dim, grouped, by_root in self._root_slices(root, is_out):
                hit = raw.setdefault((name, dim, grouped), set())
                for i in idxs:
                    hit.update(by_root.get(int(i), ()))
        tensors = named_tensors(self.model)
        positions: Dict[str, Dict[int, set]] = {}
        for (name, dim, grouped), idxs in raw.items():
            if grouped is not None:
                # Grouped conv: Torch-Pruning keeps the first in_channels/groups of the kept input indices.
                in_channels, groups = grouped
                keep = sorted(set(range(in_channels)) - idxs)
                kept = set(keep[: len(keep) // groups])
                idxs = set(range(tensors[name].shape[dim])) - kept
            positions.setdefault(name, {}).setdefault(dim, set()).update(idxs)
        return positions

    def _density(self, positions: Dict[str, Dict[int, set]]) -> float:
        tensors = named_tensors(self.model)
        kept = total = 0
        for name in self.prunable:
            shape = tensors[name].shape
            fraction = 1.0
            for dim, idxs in positions.get(name, {}).items():
                fraction *= 1 - len(idxs) / shape[dim]
            kept += fraction * shape.numel()
            total += shape.numel()
        return kept / total

    def mask_from_plan(self, plan: list) -> Mask:
        tensors = named_tensors(self.model)
        try:
            positions = self._pruned_positions(plan)
        except (IndexError, KeyError, RuntimeError, ValueError) as exc:
            raise UnsupportedModelError(self._inconsistent(plan, exc)) from None
        keep = {n: torch.ones_like(tensors[n], dtype=torch.bool) for n in set(self.prunable) | set(positions)}
        for name, dims in positions.items():
            for dim, idxs in dims.items():
                index = torch.tensor(sorted(idxs), dtype=torch.long, device=keep[name].device)
                keep[name].index_fill_(dim, index, False)
        return Mask(keep, self.prunable, "channel", plan)

    # ---- choosing channels ----
    def _importance(self, group):
        key = self._root_key(group)
        if key not in self._score_cache:
            self._score_cache[key] = self._inner_importance(group)
        scores = self._score_cache[key]
        dead = self._dead.get(key)
        if scores is not None and dead is not None:
            scores = scores.clone()
            scores[dead.to(scores.device)] = -math.inf
        if scores is not None and self._keep_best:
            scores = scores.clone()
            scores[scores.argmax()] = math.inf
        return scores

    def _root_key(self, group):
        dep = group[0].dep
        return self._module_names[id(dep.target.module)], self.graph.is_out_channel_pruning_fn(dep.handler)

    def _plan_at(self, ratio: float) -> list:
        self.pruner.per_step_pruning_ratio = [0.0, ratio]
        self.pruner.reset()
        plan = []
        with torch.no_grad():
            for group in self.pruner.step(interactive=True):
                root, is_out = self._root_key(group)
                plan.append([root, is_out, sorted(int(i) for i in group[0].idxs)])
        return plan

    def plans_at_ratios(self, ratios: Sequence[float]) -> Dict[float, list]:
        """For each ratio, the plan removing that fraction of the channels (Torch-Pruning's pruning_ratio: one
        threshold over all groups in global scope), ranked on the model's current weights (scored once).

        Every group keeps its best channel: Torch-Pruning skips a group that would lose all its channels, which
        would make a larger ratio remove fewer channels than a smaller one.
        """
        self._score_cache, self._keep_best = {}, True
        try:
            return {ratio: self._plan_at(ratio) for ratio in ratios}
        finally:
            self._score_cache, self._keep_best = {}, False

    def select(self, density: float, previous: Optional[Mask] = None, tolerance: float = 1e-3) -> Mask:
        """The channel mask whose weight density is nearest to `density`, never reviving what `previous` pruned.

        Torch-Pruning prunes a fraction of *channels*; the weight density that gives is found by bisection
        on the channel ratio (importance is computed once per group).
        """
        if not 0.0 < density <= 1.0:
            raise UserError(f"density must be in (0, 1], not {density}")
        if previous is not None and previous.granularity != "channel":
            raise UserError("a channel mask cannot follow a weight mask")
        old_plan = previous.plan if previous is not None else []
        self._dead = self._dead_channels(old_plan)
        self._score_cache = {}
        best_plan, best_density = old_plan, self._density(self._pruned_positions(old_plan))
        lo, hi = 0.0, 1.0
        try:
            for _ in range(40):
                mid = (lo + hi) / 2
                plan = old_plan
                try:
                    plan = _merge_plans(self._plan_at(mid), old_plan)
                    achieved = self._density(self._pruned_positions(plan))
                except (AssertionError, IndexError, KeyError, RuntimeError, ValueError) as exc:
                    raise UnsupportedModelError(self._inconsistent(plan, exc)) from None
                if abs(achieved - density) < abs(best_density - density):
                    best_plan, best_density = plan, achieved
                if abs(achieved - density) <= tolerance or hi - lo < 1e-6:
                    break
                if achieved > density:
                    lo = mid
                else:
                    hi = mid
        finally:
            self._dead, self._score_cache = {}, {}
        return self.mask_from_plan(best_plan)

    def _inconsistent(self, plan: list, exc: Exception) -> str:
        where = f" (groups rooted at {', '.join(sorted({root for root, _, _ in plan})[:3])}...)" if plan else ""
        return (f"Torch-Pruning cannot group the channels of {type(self.model).__name__}{where}: "
                f"{type(exc).__name__}: {first_line(exc)}")

    def _channel_groups(self, root: str, is_out: bool) -> Tuple[object, int, int]:
        """(the Torch-Pruning group of a plan root with all its channels, its number of channel groups, its number
        of channels): grouped convolutions and attention heads remove the same positions in every channel group."""
        module, fn, n = self._root(root, is_out)
        group = self.graph.get_pruning_group(module, fn, list(range(n)))
        return group, self.pruner._get_channel_groups(group), n  # the one place that asks the pruner

    def _plan_like(self, target: Mask, choose: Callable[[str, bool, object, int, int, int], List[int]]) -> Mask:
        """A channel mask removing from every Torch-Pruning group of `target`'s plan as many channels as it does:
        `choose(root, is_out, group, groups, n, count)` gives the `count` positions removed in the first of the
        group's `groups` channel groups (of n channels in all), removed at the same place in every channel group."""
        plan = []
        for root, is_out, idxs in target.plan:
            group, groups, n = self._channel_groups(root, is_out)
            chosen = choose(root, is_out, group, groups, n, len(idxs) // groups)
            plan.append([root, is_out, sorted(c + g * (n // groups) for c in chosen for g in range(groups))])
        return self.mask_from_plan(plan)

    def ranked_like(self, target: Mask) -> Mask:
        """A channel mask removing from every Torch-Pruning group as many channels as `target` does (so the same
        density and MACs), the least important ones by this structure's importance on its model's current weights
        (what Lottery Pools re-prunes a blend of channel tickets with). Grouped channels are ranked by their mean
        score, as Torch-Pruning ranks them."""
        def least_important(root, is_out, group, groups, n, count):
            scores = self._inner_importance(group).detach().float().cpu().view(groups, -1).mean(dim=0)
            return torch.argsort(scores, stable=True)[:count].tolist()
        with torch.no_grad():
            return self._plan_like(target, least_important)

    def random_like(self, mask: Mask, previous: Optional[Mask], seed: int) -> Mask:
        """A random channel mask removing as many channels from every group as `mask` does (so every layer keeps
        the same density), drawn among the channels `previous` kept, and respecting Torch-Pruning's channel groups
        (grouped convs, attention heads: the same positions in every group)."""
        generator = torch.Generator().manual_seed(seed)
        dead = self._dead_channels(previous.plan if previous is not None else [])

        def at_random(root, is_out, group, groups, n, count):
            already = dead.get((root, bool(is_out)), torch.zeros(n, dtype=torch.bool))[:n // groups]
            free = (~already).nonzero().reshape(-1)
            chosen = already.nonzero().reshape(-1).tolist()
            return chosen + free[torch.randperm(len(free), generator=generator)[:max(count - len(chosen), 0)]].tolist()
        return self._plan_like(mask, at_random)

    def _dead_channels(self, plan: list) -> Dict[Tuple[str, bool], torch.Tensor]:
        """Per plan root, the channels already removed (boolean over the root's channel indices)."""
        dead = {}
        for root, is_out, idxs in plan:
            _, _, n = self._root(root, is_out)
            flags = torch.zeros(n, dtype=torch.bool)
            flags[list(idxs)] = True
            dead[(root, bool(is_out))] = flags
        return dead

    def _root(self, root: str, is_out: bool):
        """A plan root's module, its Torch-Pruning pruning function and its number of channels."""
        module = self._modules_by_name.get(root)
        if module is None:
            raise UserError(f"the mask's plan names module {root!r}, which this model does not have")
        pruner = self.graph.get_pruner_of_module(module)
        if is_out:
            return module, pruner.prune_out_channels, pruner.get_out_channels(module)
        return module, pruner.prune_in_channels, pruner.get_in_channels(module)

    # ---- physical pruning ----
    def export(self, mask: Mask) -> nn.Module:
        """Remove the mask's channels from `self.model` in place, through the dependency graph."""
        if mask.granularity != "channel":
            raise UserError("only channel tickets can be exported physically; a weight ticket stays dense")
        return self.replay(mask.plan)

    def replay(self, pruning_history: list) -> nn.Module:
        """Remove the channels of a plan (Torch-Pruning's pruning history: [module name, out channels?, indices])
        from `self.model` in place, with Torch-Pruning's `load_pruning_history` (each group through
        `get_pruning_group(...).prune()`)."""
        for root, is_out, _ in pruning_history:
            self._root(root, is_out)  # a plan naming a module the model lacks is one line, not an AttributeError
        with torch.no_grad():
            self.graph.load_pruning_history([[root, bool(is_out), [int(i) for i in idxs]]
                                             for root, is_out, idxs in pruning_history])  # a copy: TP keeps it
        fix_attention_heads(self.model)
        return self.model


def create_mask(model: nn.Module, example_inputs: torch.Tensor, density: float, granularity: str = "channel",
                importance=None, scope: str = "global", ignored_layers: Optional[Iterable] = None,
                previous: Optional[Mask] = None, ignore_classifier: bool = True, round_to: Optional[int] = None,
                layer_densities: Optional[Dict[str, float]] = None, forward_fn: Optional[Callable] = None,
                output_transform: Optional[Callable] = None) -> Mask:
    """A ticket mask for `model` keeping `density` of its prunable (Conv/Linear) weights.

    granularity "weight": the largest |w| (global threshold or the same fraction per layer).
    granularity "channel": Torch-Pruning channel groups ranked by `importance` (any tp.importance.Importance or a
    name in IMPORTANCES; default group magnitude); the density is the nearest reachable.
    The classifier head and `ignored_layers` (modules or names) are left alone; entries `previous` pruned stay pruned.
    `round_to` N (channel tickets): every pruned group keeps a multiple of N channels (Torch-Pruning's round_to),
    the density as near as the rounding allows. `layer_densities` (weight tickets): {weight name: density} for
    layers pruned at their own rate (LTH prunes LeNet's output layer at half the others' rate). `forward_fn` and
    `output_transform` are Torch-Pruning's (channel tickets): how the model runs on `example_inputs`, and the
    tensor its output is reduced to, for models that take or return something other than a tensor.
    """
    if not 0.0 < density <= 1.0:
        raise UserError(f"density must be in (0, 1], not {density}")
    model = unwrap_model(model)
    ignored = resolve_ignored(model, ignored_layers, ignore_classifier)
    if granularity == "weight":
        return magnitude_mask(model, density, prunable_weight_names(model, ignored), scope, previous,
                              layer_densities)
    if granularity != "channel":
        raise UserError(f"granularity must be 'weight' or 'channel', not {granularity!r}")
    if layer_densities:
        raise UserError("layer densities apply to weight tickets; channel tickets follow Torch-Pruning's groups")
    check_round_to(round_to)
    structure = ChannelStructure(model, example_inputs, ignored, importance, scope, round_to=round_to,
                                 forward_fn=forward_fn, output_transform=output_transform)
    mask = structure.select(density, previous)
    export(model, mask, example_inputs, forward_fn, output_transform)  # fails now, not in training, if it cannot
    return mask


def export(model: nn.Module, mask: Mask, example_inputs: torch.Tensor, forward_fn: Optional[Callable] = None,
           output_transform: Optional[Callable] = None) -> nn.Module:
    """A physically smaller copy of `model` with the mask's channels removed (the input model is not changed).

    The copy's surviving weights are the masked model's; on BatchNorm networks its outputs equal the masked
    model's, on LayerNorm networks they differ because LayerNorm's statistics count the zeroed channels.
    """
    small = copy.deepcopy(unwrap_model(model))
    mask.apply(small)
    ChannelStructure(small, example_inputs, ignored=[], forward_fn=forward_fn,
                     output_transform=output_transform).export(mask)
    check_forward(small, example_inputs, f"the pruned {type(model).__name__}", forward_fn)
    return small
