"""The Strategy base class: hyperparameters as dataclass fields, one `run(out_dir)`, and where its tickets are;
and the start that training strategies share (`start_training_run`)."""

from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import ClassVar, List, NamedTuple

import torch
from accelerate import Accelerator

from ..data import DataSplits
from ..errors import RunFolderError, UserError
from ..experiment import Experiment
from ..layout import RunLayout
from ..options import check_choices, default_of, upgrade
from ..pipeline import train_ticket
from ..run_folder import RunFolder
from ..store import read_json
from ..train.config import (TrainConfig, check_training_data, make_accelerator, optimizer_record, resolve_train_config,
                            train_config_of)


@dataclasses.dataclass
class TicketFiles:
    """One finished ticket of a run: its dense-space weights and mask, its result, and the model it belongs to."""

    weights: Path            # safetensors state dict in the dense model's space
    mask: Path               # lt_plugin mask file
    result: dict             # the ticket's result entry (has num_classes)
    experiment: Experiment   # model name, model kwargs, image size: how to build the dense model


@dataclasses.dataclass
class Strategy(abc.ABC):
    """A lottery-ticket strategy. Subclasses are dataclasses whose fields are the hyperparameters
    (the `lt-plugin <name>` command makes a flag of each).

    `run(out_dir)` does the work in a run folder, resuming whatever is already there, and returns one result
    dict per ticket it produced. Each strategy lays out its own run folder, so it alone says where a run's tickets
    are (`ticket_keys`, `locate_ticket`): `lt-plugin export` asks the strategy named in the run's config.json.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    out_required: ClassVar[bool] = True   # False: `run(None)` writes to a place of the strategy's own choosing

    @abc.abstractmethod
    def run(self, out_dir) -> List[dict]:
        """Find tickets in the run folder `out_dir`; returns one result dict per ticket."""

    def __post_init__(self):
        check_choices(self)

    def hparams(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def implicit_values(cls) -> dict:
        """Each option's value in runs made before it existed: its field's metadata "before", else its default
        (what RunFolder.check_config holds an older run folder to)."""
        return {f.name: f.metadata.get("before", default_of(f)) for f in dataclasses.fields(cls)}

    def check_run_folder(self, folder: RunFolder) -> None:
        """config.json written, or an existing one checked against these options (RunFolder.check_config)."""
        folder.check_config(self.name, self.hparams(), self.implicit_values(), self.records())

    def records(self) -> dict:
        """What the options resolve to, beyond their values, that a run folder records and a rerun must agree with:
        a training strategy's optimizer (its class and Nesterov flag: an option name does not say them)."""
        return {"optimizer": optimizer_record(train_config_of(self))} if isinstance(self, TrainConfig) else {}

    @classmethod
    def from_hparams(cls, hparams: dict) -> "Strategy":
        """The strategy with a run's recorded hyperparameters (config.json's "hparams"); options newer than the run
        keep their defaults, options it no longer has are left out."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        return cls(**{name: upgrade(fields[name], value) for name, value in hparams.items() if name in fields})

    @classmethod
    def from_run(cls, run_dir) -> "Strategy":
        """The strategy that made the run folder `run_dir`, rebuilt from its config.json."""
        layout = RunLayout(run_dir)
        if not layout.config.is_file():
            raise RunFolderError(f"--run {run_dir}: not a run folder (no config.json)")
        config = read_json(layout.config)
        if config.get("strategy") != cls.name:
            raise RunFolderError(f"--run {run_dir} holds a {config.get('strategy')!r} run, not a {cls.name} run")
        return cls.from_hparams(config["hparams"])

    @classmethod
    def ticket_keys(cls, run_dir) -> List[str]:
        """Keys of the finished tickets in a run folder of this strategy (none by default)."""
        return []

    def expected_ticket_keys(self) -> List[str]:
        """Keys of the tickets a finished run of these options holds (what a branch needs before it starts)."""
        return []

    @classmethod
    def locate_ticket(cls, run_dir, key: str) -> TicketFiles:
        """Where the finished ticket `key` of a run folder of this strategy lies."""
        raise UserError(f"{cls.name or cls.__name__} runs hold no tickets to export")

    def ticket_start(self, run_dir, key: str):
        """(dense-space weights, global step) that ticket `key` of a run of these options was trained from before
        its mask was applied: what the controls restart it from. A strategy whose tickets have no such point says
        so in a UserError."""
        raise UserError(f"{self.name or type(self).__name__} tickets have no rewind point to train a control from")

    def train_level_ticket(self, run, ticket, mask, start_state, *, level=None, **options) -> dict:
        """Train the ticket (`start_state`, `mask`) of `level` into the folder `ticket` as this strategy trains a
        level (what a control of its run trains): by default one training, `pipeline.train_ticket` with `options`
        (start_step, snapshot_steps, desc, describe)."""
        return train_ticket(run, self, ticket, mask, start_state, **options)


def level_ticket(run_dir, key: str, experiment: Experiment) -> TicketFiles:
    """The finished level `key` of a folder laid out in levels (IMP, Sparse Model Soups, a branch that writes levels),
    whose model `experiment` builds."""
    layout = RunLayout(run_dir)
    finished = [str(level) for level in layout.finished_levels()]
    if key not in finished:
        raise UserError(f"{run_dir} has no finished level {key}; finished: {', '.join(finished) or 'none'}")
    ticket = layout.level(int(key))
    return TicketFiles(weights=ticket.weights, mask=ticket.mask, result=read_json(ticket.result),
                       experiment=experiment)


class LevelTickets:
    """Where the tickets of a strategy laid out in levels 0..levels lie (IMP, Sparse Model Soups, the baselines): a
    ticket per finished level, keyed by its number. Put before `Strategy` in the bases."""

    @classmethod
    def ticket_keys(cls, run_dir) -> List[str]:
        return [str(level) for level in RunLayout(run_dir).finished_levels()]

    def expected_ticket_keys(self) -> List[str]:
        return [str(level) for level in range(self.levels + 1)]

    @classmethod
    def locate_ticket(cls, run_dir, key: str) -> TicketFiles:
        return level_ticket(run_dir, key, cls.from_run(run_dir))


class TrainingRun(NamedTuple):
    cfg: TrainConfig
    accelerator: Accelerator
    folder: RunFolder
    data: DataSplits
    example: torch.Tensor   # one input of the experiment's shape, for tracing


def start_training_run(hparams, out_dir) -> TrainingRun:
    """The start every training strategy shares, with nothing written yet: its training options checked
    (make_accelerator), the run folder opened, the data loaded and checked against the batch size and the processes.
    `hparams` is a strategy that is both an Experiment and a TrainConfig; its own checks follow, then the folder's
    config check writes the first file. What the options leave to the machine (the precision Accelerate chose, the
    DataLoader workers) is decided here and written into `hparams`, so that config.json records it."""
    accelerator = make_accelerator(train_config_of(hparams), project_dir=out_dir)
    cfg = resolve_train_config(train_config_of(hparams), accelerator)
    hparams.mixed_precision, hparams.num_workers = cfg.mixed_precision, cfg.num_workers
    folder = RunFolder(out_dir, accelerator)
    data = hparams.load_data()
    check_training_data(cfg, len(data.train), accelerator.num_processes)
    return TrainingRun(cfg, accelerator, folder, data, hparams.example_inputs())
