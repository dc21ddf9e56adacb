"""Branches: work on a finished run (open_lth's lottery branches), and their registry (`register_branch`,
`get_branch_class`...: `lt_plugin.commands` knows their names). A branch reads the run through a read-only view
(`FinishedRun`) and writes into its own folder, the run's `<branch folder>/` unless told otherwise: Lottery Pools,
the random-reinit and random-mask controls, instability of the run's tickets, export.

A branch is a dataclass like a strategy (its fields are its options, the command line makes a flag of each), with
the finished run as `run_dir` (`--run`). It refuses a run it cannot read, a run of a strategy it does not branch, and
an unfinished run, each in one line that says what is missing.
"""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Callable, ClassVar, Dict, List, Tuple, Type

import torch

from .. import commands
from ..errors import RunFolderError, UserError
from ..layout import RunLayout
from ..masks import Mask
from ..replicates import aggregate, write_aggregate
from ..run_folder import RunFolder
from ..store import atomic_write_json, load_weights, read_json
from ..strategies import registry as strategies
from ..strategies.base import Strategy, TicketFiles
from ..train.config import make_accelerator, train_config_of

ENTRY_POINT_GROUP = commands.branches.group


class FinishedRun:
    """A read-only view of a run folder: its config and the strategy that made it (its model, data and training
    options), its tickets' masks, weights and results, the weights its dense training kept (theta_k), its
    rewind points. Every read goes through the run's layout (lt_plugin.layout)."""

    def __init__(self, run_dir):
        self.path = Path(run_dir)
        self.layout = RunLayout(self.path)
        if not self.layout.config.is_file():
            raise RunFolderError(f"--run {run_dir}: not a run folder (no config.json)")
        self.config = read_json(self.layout.config)
        self.name = self.config.get("strategy")
        self.maker = command_class(self.name)
        self.strategy: Strategy = self.maker.from_hparams(self.config.get("hparams", {}))
        # What trained the tickets (their model, data, training): the strategy, or for a branch's folder (a
        # control, Lottery Pools) the strategy of the run it branched, whose config it keeps.
        self.trainer_config = (read_json(self.layout.source_config) if self.layout.source_config.exists() else
                               self.config)
        self.trainer = trainer_of(self.trainer_config)
        # a replicated run: its seeds, each a run folder of its own (lt_plugin.replicates)
        self.replicates: List[int] = self.layout.seeds()

    def replicate(self, seed: int) -> "FinishedRun":
        """The run of one seed of a replicated run."""
        return FinishedRun(self.layout.seed(seed).root)

    def __repr__(self):
        return f"FinishedRun({str(self.path)!r}, {self.name})"

    def keys(self) -> List[str]:
        """The keys of its finished tickets (levels, ratios...)."""
        return self.maker.ticket_keys(self.path)

    def require_finished(self) -> None:
        """A RunFolderError naming every ticket the run's options promise and the folder does not hold yet (for a
        replicated run: every seed it names, each finished)."""
        if self.config.get("hparams", {}).get("seeds"):
            absent = [str(s) for s in self.config["hparams"]["seeds"] if s not in self.replicates]
            if absent:
                raise RunFolderError(f"--run {self.path} is unfinished (seed {', '.join(absent)} has no run); rerun "
                                     f"its lt-plugin {self.name} command first")
            for seed in self.replicates:
                self.replicate(seed).require_finished()
            return
        missing = [key for key in self.strategy.expected_ticket_keys() if key not in self.keys()]
        if missing:
            raise RunFolderError(f"--run {self.path} is unfinished ({', '.join(missing)} of its tickets "
                                 f"{'has' if len(missing) == 1 else 'have'} no result); rerun its lt-plugin "
                                 f"{self.name} command first")

    def ticket(self, key) -> TicketFiles:
        return self.maker.locate_ticket(self.path, str(key))

    def mask(self, key) -> Mask:
        return Mask.load(self.ticket(key).mask)

    def weights(self, key) -> Dict[str, torch.Tensor]:
        return load_weights(self.ticket(key).weights)

    def result(self, key) -> dict:
        return self.ticket(key).result

    def start(self, key) -> Tuple[Dict[str, torch.Tensor], int]:
        """(dense weights, global step) ticket `key` was trained from before its mask: its rewind point."""
        return self.strategy.ticket_start(self.path, str(key))

    def kept_steps(self) -> List[int]:
        """The steps of the dense training (level 0) whose weights the run kept."""
        return self.layout.level(0).train.steps()

    def weights_at_step(self, step: int) -> Dict[str, torch.Tensor]:
        """The dense training's weights after `step` optimizer steps; a RunFolderError when the run did not keep
        them."""
        if step not in self.kept_steps():
            raise RunFolderError(f"--run {self.path} kept the dense training's weights at steps "
                                 f"{', '.join(map(str, self.kept_steps())) or 'none'}, not at step {step} (rerun "
                                 "its lt-plugin imp command with --keep-steps in a new folder to keep more)")
        return load_weights(self.layout.level(0).train.step(step))


@dataclasses.dataclass
class Branch(Strategy):
    """Work on the finished run `run_dir`. Subclasses set `reads` (the strategies whose runs they branch; empty: any)
    and implement `run_branch(source, out)`; `run(out_dir)` opens the run, checks it, and calls it with the branch's
    folder (`out_dir`, else the run's folder for the branch)."""

    reads: ClassVar[Tuple[str, ...]] = ("imp",)
    out_required = False

    run_dir: str = dataclasses.field(default="", metadata={
        "flags": ["--run", "--run-dir"], "help": "the finished run to branch; results go into a folder of it "
                                                 "unless --out"})

    def hparams(self) -> dict:
        """The options, the run as an absolute path (a folder's config.json names the run it branched)."""
        return {**super().hparams(), "run_dir": str(Path(self.run_dir).resolve()) if self.run_dir else ""}

    def source(self) -> FinishedRun:
        """The run to branch, checked: a run folder, of a strategy this branch reads, that can be branched
        (`check_source`), finished."""
        if not self.run_dir:
            raise UserError(f"--run DIR is required: the finished run {self.name} works on")
        source = FinishedRun(self.run_dir)
        if self.reads and source.name not in self.reads:
            raise RunFolderError(f"--run {self.run_dir} holds a {source.name!r} run; {self.name} works on "
                                 f"{' or '.join(self.reads)} runs")
        self.check_source(source)
        source.require_finished()
        return source

    def check_source(self, source: FinishedRun) -> None:
        """A RunFolderError or UserError if the options of `source` rule this branch out (none by default)."""

    def default_out(self, source: FinishedRun) -> Path:
        return source.layout.branch(self.name)

    def run(self, out_dir=None) -> List[dict]:
        source = self.source()
        out = Path(out_dir) if out_dir is not None else self.default_out(source)
        if source.replicates:
            return self.run_replicates(source, out)
        return self.run_branch(source, out)

    def seed_out(self, out: Path, seed: int) -> Path:
        """Where the branch of one seed of a replicated run writes: `out/seed_S`."""
        return RunLayout(out).seed(seed).root

    def run_replicates(self, source: FinishedRun, out: Path) -> List[dict]:
        """The branch of every seed of a replicated run, each into `seed_out`, and the aggregate over the seeds in
        `out` (lt_plugin.replicates): the mean, 95% interval and per-seed values of every number per ticket."""
        folder = RunFolder(out, make_accelerator(dataclasses.replace(train_config_of(source.trainer), log_with=None)))
        self.check_run_folder(folder)
        if folder.is_main and not folder.layout.source_config.exists():  # what trained the tickets, for its readers
            atomic_write_json(source.trainer_config, folder.layout.source_config)
        results = {seed: self.run_branch(source.replicate(seed), self.seed_out(out, seed))
                   for seed in source.replicates}
        rows = aggregate(results)
        write_aggregate(folder, rows, f"{self.name} of {source.path.name}, seeds "
                                      f"{', '.join(map(str, source.replicates))}")
        return rows

    @abc.abstractmethod
    def run_branch(self, source: FinishedRun, out: Path) -> List[dict]:
        """Do the branch's work on `source`, writing into `out`; one result dict per ticket it produced."""


def trainer_of(config: dict) -> Strategy:
    """The strategy a config.json (a run's, or the copy a branch's folder keeps of its run's) was written by."""
    return command_class(config.get("strategy")).from_hparams(config.get("hparams", {}))


def command_class(name: str):
    """The strategy or branch class registered under `name` (what a config.json's "strategy" names)."""
    if name in commands.branches:
        return get_branch_class(name)
    if name in commands.strategies:
        return strategies.get_strategy_class(name)
    raise RunFolderError(f"{name!r} is neither a registered strategy nor a branch (registered: "
                         f"{', '.join(strategies.list_strategies() + list_branches())})")


def register_branch(name: str) -> Callable[[Type["Branch"]], Type["Branch"]]:
    """Class decorator that registers a Branch subclass under `name`."""
    def decorator(cls: Type["Branch"]) -> Type["Branch"]:
        if not (isinstance(cls, type) and issubclass(cls, Branch)):
            raise TypeError(f"{cls!r} is not a subclass of lt_plugin.Branch")
        return commands.branches.add(name, cls)
    return decorator


def list_branches() -> List[str]:
    """Names of every branch, built-in, registered and installed through entry points, sorted (none is imported)."""
    return commands.branches.names()


def get_branch_class(name: str) -> Type["Branch"]:
    """The class of branch `name`, its module imported (or its entry point loaded) on first use."""
    return commands.branches.get(name, lambda found, cls: register_branch(found)(cls))


def create_branch(name: str, **hparams) -> "Branch":
    """Build a registered branch from its options, e.g. create_branch("lottery-pools", run_dir="runs/x")."""
    return get_branch_class(name)(**hparams)
