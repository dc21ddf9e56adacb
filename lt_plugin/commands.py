"""lt-plugin's commands by name, known without importing them: the built-in strategies and branches, each with its
module and one line, and those that installed packages add through entry points.

`lt-plugin --help`, `strategies` and `branches` list them from here without importing torch, timm or scipy; a
command's module is imported when its class is first asked for, and registers it there with its decorator
(`register_strategy`, `register_branch`). A built-in strategy is one line of `STRATEGIES` and its module:

    "swamp": Command("swamp", "SWAMP: IMP whose levels average particles trained with SWA (Choi et al.)"),

    @register_strategy("swamp")             # in lt_plugin/strategies/swamp.py
    @dataclasses.dataclass
    class Swamp(LevelTickets, Strategy, ...):
        ...                                 # its description is the table's

This module imports nothing of lt_plugin's but `errors`: the registries' type checks are the callers'.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Dict, List, NamedTuple, Optional

from .errors import UserError, first_line


class Command(NamedTuple):
    module: str        # under its package: lt_plugin.strategies.<module> or lt_plugin.branches.<module>
    description: str   # one line, for listings and --help


STRATEGIES = {
    "imp": Command("imp", "iterative magnitude pruning with rewinding (Frankle & Carbin; Frankle et al.)"),
    "early-bird": Command("early_bird", "Early-Bird channel tickets: found early from normalisation scales, retrained "
                                        "small (You et al.)"),
    "sparse-model-soups": Command("soups", "Sparse Model Soups: each level's retrained copies averaged into its soup "
                                           "(Zimmer et al.)"),
    "prune-at-init": Command("baselines", "pruning at initialisation (SNIP, GraSP, SynFlow, magnitude, random), "
                                          "trained like an IMP level"),
    "gradual": Command("baselines", "gradual magnitude pruning during training, on Zhu & Gupta's cubic schedule "
                                    "(or fasterai's others)"),
    "swamp": Command("swamp", "SWAMP: IMP whose levels train N particles with SWA from the rewound ticket and average "
                              "them (Choi, Lee, Nam, Lee)"),
    "instant-soup": Command("instant_soup", "Instant Soup Pruning: one training per density, each pruning's mask "
                                            "merged from denoisers' look-ahead masks (Jaiswal et al.)"),
}

BRANCHES = {
    "lottery-pools": Command("lottery_pools", "stronger tickets from an IMP run by greedy interpolation, no training "
                                              "(Yin, Liu et al.)"),
    "random-reinit": Command("controls", "control: each level's ticket mask with a fresh random initialisation "
                                         "(Frankle & Carbin)"),
    "random-mask": Command("controls", "control: each level's per-layer (per-group) counts at random positions, the "
                                       "run's rewind weights"),
    "instability": Command("instability", "instability analysis: the error barrier between copies trained from each "
                                          "rewind point, of a dense network or of an IMP run's tickets (Frankle et "
                                          "al.)"),
    "export": Command("export", "write one ticket of a run as a loadable file (safetensors; a Hugging Face Hub folder "
                                "timm loads; ONNX checked with ONNX Runtime)"),
}

CONTROLS = ("random-reinit", "random-mask")  # the branches `lt-plugin STRATEGY --control NAME --run RUN` runs


class Registry:
    """Classes registered by name, of one kind ("strategy" or "branch"): the built-in ones imported from
    `package.<module>` when first asked for, an installed package's through its entry point in `group`."""

    def __init__(self, kind: str, package: str, builtin: Dict[str, Command], group: str):
        self.kind, self.package, self.builtin, self.group = kind, package, builtin, group
        self.classes: Dict[str, type] = {}
        self.others: List["Registry"] = []  # registries whose names this one may not take
        self._entry_points: Optional[Dict[str, EntryPoint]] = None

    def entry_points(self) -> Dict[str, EntryPoint]:
        """The installed packages' entry points of this kind, by name (their metadata, read once: nothing is
        imported)."""
        if self._entry_points is None:
            self._entry_points = {ep.name: ep for ep in entry_points(group=self.group) if ep.name not in self.builtin}
        return self._entry_points

    def __contains__(self, name: str) -> bool:
        return name in self.builtin or name in self.classes or name in self.entry_points()

    def names(self) -> List[str]:
        """Every name, built-in, registered and installed, sorted."""
        return sorted({*self.builtin, *self.classes, *self.entry_points()})

    def descriptions(self) -> Dict[str, str]:
        """{name: one line} for every name, without importing a command's module: the table's line, a registered
        class's description, an entry point's package and object."""
        lines = {name: command.description for name, command in self.builtin.items()}
        lines.update({name: cls.description for name, cls in self.classes.items() if name not in self.builtin})
        for name, ep in self.entry_points().items():
            if name not in self.classes:
                package = f"{ep.dist.name} {ep.dist.version}: " if ep.dist is not None else ""
                lines[name] = f"from {package}{ep.value} (lt-plugin {name} --help describes it)"
        return dict(sorted(lines.items()))

    def taken_by(self, name: str) -> Optional[str]:
        """The kind of another registry that has `name`, or None."""
        return next((other.kind for other in self.others if name in other), None)

    def add(self, name: str, cls: type) -> type:
        """Register `cls` under `name` (what the decorators do once they have checked its type). A built-in class
        takes its description from the table."""
        if name in self.classes and self.classes[name] is not cls:
            raise ValueError(f"a {self.kind} named {name!r} is already registered ({self.classes[name].__module__})")
        taken = self.taken_by(name)
        if taken is not None:
            raise ValueError(f"{name!r} is already the name of a {taken}")
        if name in self.builtin:
            own = vars(cls).get("description")
            if own is not None and own != self.builtin[name].description:
                raise ValueError(f"the built-in {self.kind} {name!r} has its one line in lt_plugin.commands; its "
                                 f"class says another: {own!r}")
            cls.description = self.builtin[name].description
        cls.name = name
        self.classes[name] = cls
        return cls

    def get(self, name: str, check) -> type:
        """The class registered under `name`: a built-in one's module imported, an installed one's entry point
        loaded and passed to `check(name, cls)` (the registering decorator), on first use."""
        if name not in self.classes:
            if name in self.builtin:
                importlib.import_module(f"{self.package}.{self.builtin[name].module}")
            elif name in self.entry_points():
                ep = self.entry_points()[name]
                try:
                    cls = ep.load()
                except Exception as exc:  # the installed package's own import fails: any type
                    raise UserError(f"entry point {name!r} ({ep.value}) cannot be imported: {type(exc).__name__}: "
                                    f"{first_line(exc)}") from None
                try:
                    check(name, cls)
                except TypeError:
                    raise UserError(f"entry point {name!r} ({ep.value}) is not an lt_plugin.{self.kind.title()} "
                                    "subclass") from None
            else:
                taken = self.taken_by(name)
                if taken is not None:
                    raise UserError(f"{name!r} is a {taken}, not a {self.kind}: lt_plugin.create_{taken}({name!r}, "
                                    "...)")
                raise UserError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names()) or 'none'}")
        return self.classes[name]


strategies = Registry("strategy", "lt_plugin.strategies", STRATEGIES, "lt_plugin.strategies")
branches = Registry("branch", "lt_plugin.branches", BRANCHES, "lt_plugin.branches")
strategies.others, branches.others = [branches], [strategies]
