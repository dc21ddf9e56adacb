"""Branches: work on a finished run, registered by name (`lt-plugin NAME --run RUN`): Lottery Pools, the
random-reinit and random-mask controls, instability of the run's tickets, export.

`base` holds `Branch`, `FinishedRun` (the read-only view of a run a branch reads) and the registry. The built-in
branches are named in `lt_plugin.commands.BRANCHES`; each module registers its branch with the
`@register_branch(name)` decorator when the branch is first asked for, so importing this package imports none of
them.
"""

import importlib

_NAMES = ("Branch", "FinishedRun", "register_branch", "create_branch", "list_branches", "get_branch_class",
          "command_class", "ENTRY_POINT_GROUP")

__all__ = list(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.base"), name)
