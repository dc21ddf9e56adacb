"""Strategies: what trains from nothing and writes a run folder (`imp`, `early-bird`, `sparse-model-soups`,
`swamp`, `instant-soup`, `prune-at-init`, `gradual`, ...).

The registry is `strategies.registry`; importing this package registers the built-in strategies, each with the
`@register_strategy(name)` decorator its module applies. Work on a finished run is a branch (lt_plugin.branches).
"""

from . import baselines, early_bird, imp, instant_soup, soups, swamp  # noqa: F401  (each registers its strategy)
from .base import Strategy
from .registry import ENTRY_POINT_GROUP, create_strategy, get_strategy_class, list_strategies, register_strategy

__all__ = ["Strategy", "register_strategy", "create_strategy", "list_strategies", "get_strategy_class",
           "ENTRY_POINT_GROUP"]
