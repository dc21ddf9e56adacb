"""A strategy's run folder: config check, atomic files written by the main process, resume by existence."""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import platform
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch

from .errors import RunFolderError
from .layout import RunLayout, TicketFolder
from .masks import Mask
from .report import COLUMNS, LATENCY_NOTE, format_table
from .sparsity import sparsity_report
from .store import atomic_save_safetensors, atomic_write_json, read_json
from .train.config import ORDER_OF_A_STREAM, SETTINGS_WITHOUT_EFFECT


def package_versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    versions = {"python": platform.python_version()}
    for name in ("lt-plugin", "torch", "torchvision", "torch-pruning", "timm", "accelerate", "datasets"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


# Run folders this process holds the lock of (path -> open lock file); the OS drops a lock when its process dies,
# and the files are closed when the interpreter exits.
_held_locks: Dict[Path, object] = {}
atexit.register(lambda: [handle.close() for handle in _held_locks.values()])


def lock_run_folder(path: Path) -> None:
    """Refuse to go on if another live process writes `path`; a killed run leaves no stale lock."""
    path = path.resolve()
    if path in _held_locks:
        return
    path.mkdir(parents=True, exist_ok=True)
    handle = open(RunLayout(path).lock, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderError(f"{path} is being written by a live run ({owner}); wait for it to finish or choose "
                             "another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    _held_locks[path] = handle


class RunFolder:
    """Files of one run. Only the main process writes; every process waits until a file is complete."""

    def __init__(self, path, accelerator):
        self.path = Path(path)
        self.layout = RunLayout(self.path)
        self.accelerator = accelerator
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} exists and is not a folder")

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _sync(self) -> None:
        self.accelerator.wait_for_everyone()

    def check_config(self, strategy: str, hparams: dict, before: Optional[dict] = None,
                     records: Optional[dict] = None) -> None:
        """Write config.json, or check that an existing run was made with the same settings. The main process
        takes the folder's lock first: a second run on a folder that a live run writes is refused. An option the
        folder's config does not have (newer than the run) must hold what runs did before it existed: `before`'s
        value (Strategy.implicit_values), else None or False. `records` (e.g. the optimizer the options build) are
        written beside the options and must match where the folder recorded them."""
        if self.is_main:
            lock_run_folder(self.path)
        self._sync()
        hparams, records = json.loads(json.dumps(hparams)), json.loads(json.dumps(records or {}))
        config_path = self.layout.config
        if config_path.exists():
            old = read_json(config_path)
            if old.get("strategy") != strategy:
                raise RunFolderError(f"{self.path} holds a {old.get('strategy')!r} run, not {strategy!r}; "
                                     "choose another --out")
            before = json.loads(json.dumps(before or {}))  # as a config.json holds them
            made_with = old.get("hparams", {})
            if bool(made_with.get("seeds")) != bool(hparams.get("seeds")):  # more seeds may join a replicated run
                held = "replicates (seed_S folders)" if made_with.get("seeds") else "a run of one seed"
                raise RunFolderError(f"{self.path} holds {held}; rerun it as it was made, or choose another --out")
            for key in sorted(set(hparams) | set(made_with)):
                if key in SETTINGS_WITHOUT_EFFECT and not (hparams.get("streaming") and key in ORDER_OF_A_STREAM):
                    continue
                value = hparams.get(key)
                if key in made_with:
                    made = made_with[key]
                elif key in before:
                    made = before[key]  # an option newer than the folder: what the run did before it existed
                elif value in (None, False):
                    continue  # an option newer than the folder, and off
                else:
                    made = None
                if made != value:
                    raise RunFolderError(
                        f"{self.path} was made with {key}={made!r}, not {value!r}; "
                        "rerun with the same settings to resume, or choose another --out")
            for key, value in records.items():
                if key in old and old[key] != value:
                    raise RunFolderError(f"{self.path} was made with the {key} {old[key]}, these options build "
                                         f"{value}; rerun with the same settings to resume, or choose another --out")
            if hparams.get("streaming") and old.get("world_size") != self.accelerator.num_processes:
                raise RunFolderError(f"{self.path} streamed its data over {old.get('world_size')} processes, which "
                                     "sets its data order; resume it with as many, or choose another --out")
        elif self.is_main:
            atomic_write_json({"strategy": strategy, "hparams": hparams, **records, "versions": package_versions(),
                               "world_size": self.accelerator.num_processes}, config_path)
        self._sync()

    def save_weights_once(self, path: Path, state: Dict[str, torch.Tensor]) -> None:
        """`state` written to `path` (e.g. `layout.init`) unless it is there already."""
        if self.is_main and not path.exists():
            atomic_save_safetensors(state, path)
        self._sync()

    @staticmethod
    def read_result(ticket: TicketFolder) -> Optional[dict]:
        """A finished ticket's result; None while it is unfinished."""
        return read_json(ticket.result) if ticket.finished else None

    def load_or_make_mask(self, ticket: TicketFolder, make: Callable[[], Mask]) -> Mask:
        """The ticket's mask: decided once by the main process and read back by every process."""
        if self.is_main and not ticket.mask.exists():
            make().save(ticket.mask)
        self._sync()
        return Mask.load(ticket.mask)

    def finish_ticket(self, ticket: TicketFolder, dense_state: Dict[str, torch.Tensor], result: dict,
                      mask: Optional[Mask] = None) -> None:
        """The ticket's dense-space weights (and `mask`, when given), its sparsity layer by layer, then its result,
        last: its presence marks the ticket finished."""
        if self.is_main:
            if mask is not None:
                mask.save(ticket.mask)
            atomic_save_safetensors(dense_state, ticket.weights)
            if mask is not None or ticket.mask.exists():
                report = sparsity_report(dense_state, mask if mask is not None else Mask.load(ticket.mask))
                atomic_write_json(report.as_dict(), ticket.sparsity)
            atomic_write_json(result, ticket.result)
        self._sync()

    def write_results(self, results: List[dict], plots: Mapping[str, Callable[[Path], object]],
                      columns: Sequence[tuple] = COLUMNS, rows: Optional[List[dict]] = None) -> None:
        """The one results writer of every strategy: results.json, each plot (file name -> a function drawing
        into that path) and the table (`columns` of `rows`, by default the results) printed, by the main
        process."""
        if self.is_main:
            atomic_write_json(results, self.layout.results)
            for name, draw in plots.items():
                draw(self.layout.plot(name))
            print(format_table(rows if rows is not None else results, columns))
            if any(c[0] == "latency_ms" for c in columns) and any(
                    "latency_ms" in r and r["latency_ms"] is None for r in results):
                print(LATENCY_NOTE)
            shown = "  ".join(f"plot: {self.layout.plot(name)}" for name in plots)
            print(f"results: {self.layout.results}  {shown}")
        self._sync()
