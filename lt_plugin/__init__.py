"""lt_plugin: lottery tickets for timm models, on Torch-Pruning.

    import lt_plugin
    mask = lt_plugin.create_mask(model, example_inputs, density=0.25, granularity="channel")
    small = lt_plugin.export(model, mask, example_inputs)
    imp = lt_plugin.create_strategy("imp", model="resnet18", dataset="digits", levels=3)
    imp.run("runs/imp")
"""

from ._version import __version__
from .errors import DataError, RunFolderError, UnsupportedModelError, UserError
from .masks import Mask
from .strategies import Strategy, create_strategy, get_strategy_class, list_strategies, register_strategy
from .strategies import imp as _imp  # noqa: F401  (registers "imp")
from .strategies import lottery_pools as _lottery_pools  # noqa: F401  (registers "lottery-pools")
from .strategies.early_bird import EarlyBirdDetector
from .structure import IMPORTANCES, create_mask, export
from .tickets import Ticket, load_ticket, save_ticket
from . import networks  # noqa: F401  (registers the papers' networks with timm)

__all__ = [
    "__version__", "Mask", "create_mask", "export", "IMPORTANCES", "Ticket", "save_ticket", "load_ticket",
    "EarlyBirdDetector", "Strategy", "register_strategy", "create_strategy", "list_strategies", "get_strategy_class",
    "UserError", "DataError", "UnsupportedModelError", "RunFolderError",
]
