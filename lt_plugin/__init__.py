"""lt_plugin: lottery tickets for timm models, on Torch-Pruning.

    import lt_plugin
    mask = lt_plugin.create_mask(model, example_inputs, density=0.25, granularity="channel")
    small = lt_plugin.export(model, mask, example_inputs)
    imp = lt_plugin.create_strategy("imp", model="resnet18", dataset="digits", levels=3)
    imp.run("runs/imp")
    lt_plugin.create_branch("lottery-pools", run_dir="runs/imp").run()   # work on the finished run

Your own training loop: `lt_plugin.IMPPruner`, `lt_plugin.EarlyBirdPruner`, `lt_plugin.GradualPruner`,
`lt_plugin.lottery_pool`, `lt_plugin.prune_at_init`, and SWAMP's pieces `lt_plugin.MaskedSWA` (SWA under a mask) and
`lt_plugin.average_under_mask` (the particle average).

Importing the package registers the papers' networks with timm (`lt_plugin.networks`) and nothing else: every other
name is imported from the module that holds it when it is first used, so that `import lt_plugin.data` or
`import lt_plugin.masks` does not load the strategies, and `import lt_plugin` does not load `datasets`.
"""

import importlib

from . import networks  # noqa: F401  (registers the papers' networks with timm)
from ._version import __version__
from .errors import DataError, RunFolderError, UnsupportedModelError, UserError

_OWNERS = {
    "masks": ("Mask",),
    "structure": ("create_mask", "export", "IMPORTANCES"),
    "tickets": ("Ticket", "save_ticket", "load_ticket"),
    "strategies": ("Strategy", "register_strategy", "create_strategy", "list_strategies", "get_strategy_class"),
    "branches": ("Branch", "FinishedRun", "register_branch", "create_branch", "list_branches", "get_branch_class"),
    "pruners": ("IMPPruner", "EarlyBirdPruner"),
    "early_bird_rule": ("EarlyBirdDetector",),
    "pooling": ("lottery_pool",),
    "pai": ("prune_at_init",),
    "gradual": ("GradualPruner",),
    "swa": ("MaskedSWA", "average_under_mask"),
}
_OWNER_OF = {name: module for module, names in _OWNERS.items() for name in names}

__all__ = ["__version__", "UserError", "DataError", "UnsupportedModelError", "RunFolderError", *_OWNER_OF]


def __getattr__(name: str):
    if name not in _OWNER_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_OWNER_OF[name]}"), name)


def __dir__():
    return sorted({*globals(), *__all__})
