"""Strategies: what trains from nothing and writes a run folder (`imp`, `early-bird`, `sparse-model-soups`,
`swamp`, `instant-soup`, `prune-at-init`, `gradual`, ...).

The built-in strategies are named in `lt_plugin.commands.STRATEGIES`; each module registers its strategy with the
`@register_strategy(name)` decorator (`registry`) when the strategy is first asked for, so importing this package
imports none of them. Work on a finished run is a branch (lt_plugin.branches).
"""

import importlib

_OWNERS = {"base": ("Strategy",),
           "registry": ("register_strategy", "create_strategy", "list_strategies", "get_strategy_class",
                        "ENTRY_POINT_GROUP")}
_OWNER_OF = {name: module for module, names in _OWNERS.items() for name in names}

__all__ = list(_OWNER_OF)


def __getattr__(name: str):
    if name not in _OWNER_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_OWNER_OF[name]}"), name)
