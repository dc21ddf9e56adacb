"""The strategy registry, in timm's style: `register_strategy`, `create_strategy`, `list_strategies`.

The built-in strategies register with the decorator users register theirs with. Third-party packages add strategies
through the entry-point group `lt_plugin.strategies`:

    [project.entry-points."lt_plugin.strategies"]
    my-strategy = "my_package.module:MyStrategy"
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Dict, List, Type

from ..errors import UserError
from ..recipes import recipe_options
from .base import Strategy

ENTRY_POINT_GROUP = "lt_plugin.strategies"

_registry: Dict[str, Type[Strategy]] = {}
_entry_points_loaded = False
# Names taken by another registry of commands (the branches register theirs here): one name, one command.
reserved: Dict[str, str] = {}


def register_strategy(name: str) -> Callable[[Type[Strategy]], Type[Strategy]]:
    """Class decorator that registers a Strategy subclass under `name`."""
    def decorator(cls: Type[Strategy]) -> Type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"{cls!r} is not a subclass of lt_plugin.Strategy")
        if name in _registry and _registry[name] is not cls:
            raise ValueError(f"a strategy named {name!r} is already registered ({_registry[name].__module__})")
        if name in reserved:
            raise ValueError(f"{name!r} is already the name of a {reserved[name]}")
        cls.name = name
        _registry[name] = cls
        return cls
    return decorator


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _registry:
            continue
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise UserError(f"entry point {ep.name!r} ({ep.value}) is not an lt_plugin.Strategy subclass")
        register_strategy(ep.name)(cls)


def list_strategies() -> List[str]:
    """Names of every registered strategy, built-in and installed through entry points, sorted."""
    _load_entry_points()
    return sorted(_registry)


def get_strategy_class(name: str) -> Type[Strategy]:
    _load_entry_points()
    if name in reserved:
        raise UserError(f"{name!r} is a {reserved[name]}, not a strategy: lt_plugin.create_{reserved[name]}({name!r}, "
                        "...)")
    if name not in _registry:
        raise UserError(f"unknown strategy {name!r}; registered: {', '.join(sorted(_registry)) or 'none'}")
    return _registry[name]


def create_strategy(name: str, **hparams) -> Strategy:
    """Build a registered strategy from its hyperparameters (keyword arguments with defaults).

    `recipe="lth-cifar"` (see lt_plugin.recipes) fills the options the keyword arguments do not give.
    """
    cls = get_strategy_class(name)
    if hparams.get("recipe"):
        hparams = {**recipe_options(hparams["recipe"], cls), **hparams}
    return cls(**hparams)
