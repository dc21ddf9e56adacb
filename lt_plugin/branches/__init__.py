"""Branches: work on a finished run, registered by name (`lt-plugin NAME --run RUN`): Lottery Pools, the
random-reinit and random-mask controls, instability of the run's tickets, export.

`base` holds `Branch`, `FinishedRun` (the read-only view of a run a branch reads) and the registry. Importing this
package registers the built-in branches, each with the `@register_branch(name)` decorator its module applies.
"""

from . import controls, export, instability, lottery_pools  # noqa: F401  (each registers its branch)
from .base import (ENTRY_POINT_GROUP, Branch, FinishedRun, command_class, create_branch, get_branch_class,
                   list_branches, register_branch)

__all__ = ["Branch", "FinishedRun", "register_branch", "create_branch", "list_branches", "get_branch_class",
           "command_class", "ENTRY_POINT_GROUP"]
