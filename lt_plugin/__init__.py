"""lt_plugin: lottery tickets for timm models, on Torch-Pruning.

    import lt_plugin
    mask = lt_plugin.create_mask(model, example_inputs, density=0.25, granularity="channel")
    small = lt_plugin.export(model, mask, example_inputs)
    imp = lt_plugin.create_strategy("imp", model="resnet18", dataset="digits", levels=3)
    imp.run("runs/imp")
    lt_plugin.create_branch("lottery-pools", run_dir="runs/imp").run()   # work on the finished run
    lt_plugin.export_run_ticket("runs/imp", "3", "hub/ticket", fmt="hf")  # a Hub folder timm (or load_ticket) loads

Your own training loop: `lt_plugin.IMPPruner`, `lt_plugin.EarlyBirdPruner`, `lt_plugin.GradualPruner`,
`lt_plugin.lottery_pool`, `lt_plugin.prune_at_init`, SWAMP's pieces `lt_plugin.MaskedSWA` (SWA under a mask) and
`lt_plugin.average_under_mask` (the particle average); `lt_plugin.sparsity_report(model)` layer by layer.

Importing the package imports no torch, timm or scipy: it registers the papers' networks with timm
(`lt_plugin.networks`) as timm is imported (at once if it already is), and every other name is imported from the
module that holds it when it is first used. So `import lt_plugin; timm.create_model("lenet_300_100")` works, the
command line answers `--help` without loading torch, `import lt_plugin.data` or `import lt_plugin.masks` does not
load the strategies, and `import lt_plugin` does not load `datasets`.
"""

import importlib

from wrapt import register_post_import_hook

from ._version import __version__
from .errors import DataError, RunFolderError, UnsupportedModelError, UserError

register_post_import_hook(lambda timm: importlib.import_module(f"{__name__}.networks"), "timm")

_OWNERS = {
    "masks": ("Mask",),
    "structure": ("create_mask", "export", "IMPORTANCES"),
    "tickets": ("Ticket", "save_ticket", "load_ticket", "save_hub_folder", "push_to_hub"),
    "strategies": ("Strategy", "register_strategy", "create_strategy", "list_strategies", "get_strategy_class"),
    "branches": ("Branch", "FinishedRun", "register_branch", "create_branch", "list_branches", "get_branch_class"),
    "branches.export": ("export_run_ticket",),
    "pruners": ("IMPPruner",),
    "early_bird_pruner": ("EarlyBirdPruner",),
    "sparsity": ("sparsity_report",),
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
