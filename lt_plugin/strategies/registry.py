"""The strategy registry, in timm's style: `register_strategy`, `create_strategy`, `list_strategies`.

The built-in strategies are named in `lt_plugin.commands.STRATEGIES` (their module and one line each); a module is
imported when its strategy is first asked for, and registers it with the decorator users register theirs with.
Third-party packages add strategies through the entry-point group `lt_plugin.strategies`:

    [project.entry-points."lt_plugin.strategies"]
    my-strategy = "my_package.module:MyStrategy"
"""

from __future__ import annotations

from typing import Callable, List, Type

from .. import commands
from ..recipes import recipe_options
from .base import Strategy

ENTRY_POINT_GROUP = commands.strategies.group


def register_strategy(name: str) -> Callable[[Type[Strategy]], Type[Strategy]]:
    """Class decorator that registers a Strategy subclass under `name`."""
    def decorator(cls: Type[Strategy]) -> Type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"{cls!r} is not a subclass of lt_plugin.Strategy")
        return commands.strategies.add(name, cls)
    return decorator


def list_strategies() -> List[str]:
    """Names of every strategy, built-in, registered and installed through entry points, sorted (none is imported)."""
    return commands.strategies.names()


def get_strategy_class(name: str) -> Type[Strategy]:
    """The class of strategy `name`, its module imported (or its entry point loaded) on first use."""
    return commands.strategies.get(name, lambda found, cls: register_strategy(found)(cls))


def create_strategy(name: str, **hparams) -> Strategy:
    """Build a registered strategy from its hyperparameters (keyword arguments with defaults).

    `recipe="lth-cifar"` (see lt_plugin.recipes) fills the options the keyword arguments do not give.
    """
    cls = get_strategy_class(name)
    if hparams.get("recipe"):
        hparams = {**recipe_options(hparams["recipe"], cls), **hparams}
    return cls(**hparams)
