"""Torch-Pruning's pruner arguments in lt_plugin's own-loop pruners (IMPPruner, EarlyBirdPruner, GradualPruner):
what each means for a ticket, and one line for those that mean nothing here, saying what to do instead.

A Torch-Pruning user brings `tp.pruner.BasePruner`'s words. Those that mean something for a ticket are taken with
Torch-Pruning's meaning: `pruning_ratio_dict` with a module, its name or a tuple of modules as a key (a tuple is
one ranking scope under `global_pruning`, as Torch-Pruning's), `ignored_layers` with modules, names or
parameters, `forward_fn` and `output_transform` for channel tickets of models that take or return something other
than a tensor. The others are refused by `refuse_options`, with the reason docs/own-loop.md's table gives.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

from torch import nn

from .errors import UserError

_OWN_GROUPS = ("lt_plugin finds timm's attention heads and Torch-Pruning finds grouped convolutions itself; "
               "other models: `lt-plugin check MODEL` says whether they give channel tickets as they are")
_HEADS = ("a channel ticket removes head dimensions, the same in every head (Torch-Pruning's default); whole "
          "heads are not removed")
_GRAPH = ("the dependency graph is built as Torch-Pruning builds it by default; `lt-plugin check MODEL` says "
          "whether a model gives channel tickets as it is")

# BasePruner's arguments the ticket pruners do not take, and what to do instead.
NOT_TAKEN: Dict[str, str] = {
    "max_pruning_ratio": "a ticket ranks layers by its own rule; keep a layer denser with pruning_ratio_dict, or "
                         "prune every layer alike with global_pruning=False",
    "iterative_pruning_ratio_scheduler": "IMP removes a constant fraction of what is left at each step (density "
                                         "(1 - pruning_ratio)^(k / iterative_steps)); for another curve use "
                                         "GradualPruner(schedule=...)",
    "isomorphic": "isomorphic ranking (Torch-Pruning's ECCV 2024 method) is not a lottery-ticket method; use "
                  "global_pruning=True or False",
    "in_channel_groups": _OWN_GROUPS,
    "out_channel_groups": _OWN_GROUPS,
    "channel_groups": _OWN_GROUPS,
    "num_heads": _OWN_GROUPS,
    "prune_num_heads": _HEADS,
    "prune_head_dims": _HEADS,
    "head_pruning_ratio": _HEADS,
    "head_pruning_ratio_dict": _HEADS,
    "customized_pruners": _GRAPH,
    "unwrapped_parameters": _GRAPH + " (it finds parameters such as timm's cls_token itself)",
    "root_module_types": _GRAPH + " (Conv and Linear layers are its roots)",
    "ch_sparsity": "Torch-Pruning's name before 1.3 of pruning_ratio: pass pruning_ratio",
    "ch_sparsity_dict": "Torch-Pruning's name before 1.3 of pruning_ratio_dict: pass pruning_ratio_dict",
}

INTERACTIVE = ("step(interactive=True) hands out Torch-Pruning's groups for you to prune; a ticket's pruner prunes, "
               "rewinds and keeps its mask itself: call step() (pruning_history() lists what it removed)")


def refuse_options(pruner: str, options: Mapping[str, object], own: Optional[Mapping[str, str]] = None) -> None:
    """One line for the first argument of `options` the pruner does not take (a Torch-Pruning argument: why, and
    what to do instead; `own` has the pruner's own reasons, before NOT_TAKEN's)."""
    reasons = {**NOT_TAKEN, **(own or {})}
    for name in options:
        if name in reasons:
            raise UserError(f"{pruner} does not take {name}: {reasons[name]}")
        raise UserError(f"{pruner} has no argument {name!r}")


def refuse_interactive(pruner: str, interactive) -> None:
    """`step(True)` / `step(interactive=True)`, Torch-Pruning's interactive pruning, in one line."""
    if interactive is True:
        raise UserError(f"{pruner}: {INTERACTIVE}")


def refuse_tracing(pruner: str, forward_fn, output_transform, why: str) -> None:
    """forward_fn and output_transform mean nothing where no graph is traced (`why` says so)."""
    if forward_fn is not None or output_transform is not None:
        raise UserError(f"{pruner}: forward_fn and output_transform run the model for Torch-Pruning's dependency "
                        f"graph, which {why}; drop them")


def ratio_scopes(model: nn.Module, pruning_ratio_dict: Optional[Mapping], joint: bool) -> Dict[Tuple[str, ...], float]:
    """Torch-Pruning's pruning_ratio_dict as ranking scopes of weight names: {names ranked together: the fraction of
    their weights removed by the end}. A key is a module, its name in `model` or a tuple of them, and stands for
    the Conv and Linear layers in it; with `joint` (global_pruning) a key's layers are ranked together, as
    Torch-Pruning ranks a tuple under global pruning, else each layer on its own."""
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    scopes: Dict[Tuple[str, ...], float] = {}
    seen: Dict[str, object] = {}
    for key, ratio in (pruning_ratio_dict or {}).items():
        ratio = float(ratio)
        if not 0.0 <= ratio < 1.0:
            raise UserError(f"pruning_ratio_dict: the ratio of {_said(key)} must be in [0, 1), not {ratio}")
        weights = []
        for root in (key if isinstance(key, (tuple, list)) else (key,)):
            if isinstance(root, str):
                if root not in modules:
                    raise UserError(f"pruning_ratio_dict: {root!r} is not a module of {type(model).__name__}")
                root = modules[root]
            if not isinstance(root, nn.Module) or id(root) not in names:
                raise UserError(f"pruning_ratio_dict: {_said(root)} is not a module of {type(model).__name__}")
            weights += [_weight_name(names[id(m)]) for m in root.modules()
                        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
        if not weights:
            raise UserError(f"pruning_ratio_dict: {_said(key)} holds no Conv or Linear layer")
        for name in weights:
            if name in seen:
                raise UserError(f"pruning_ratio_dict: {name} is in two keys ({_said(seen[name])} and {_said(key)})")
            seen[name] = key
        if joint:
            scopes[tuple(dict.fromkeys(weights))] = ratio
        else:
            scopes.update({(name,): ratio for name in weights})
    return scopes


def _weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def _said(key) -> str:
    if isinstance(key, (tuple, list)):
        return "(" + ", ".join(map(_said, key)) + ")"
    return repr(key) if isinstance(key, str) else type(key).__name__
