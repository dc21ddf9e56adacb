"""Run-folder files: atomic writes (temp file + rename), safetensors for tensors, JSON for metadata.

Kill-and-resume tests stop a run at an exact file: with the environment variable LT_PLUGIN_PAUSE_AFTER set to a
path, the process that writes that file says so on stderr and sleeps, to be killed there (unset: no effect).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import RunFolderError, first_line

PAUSE_AFTER = "LT_PLUGIN_PAUSE_AFTER"
PAUSED = "lt_plugin: paused"  # what the pause says on stderr


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write(path, write) -> None:
    """Call `write(temp_path)` and rename the result to `path`: readers see the old file or the new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _pause_if_asked(path)


def _pause_if_asked(path: Path) -> None:
    """The kill point of a kill-and-resume test: a run on any machine stops right after writing this file."""
    wanted = os.environ.get(PAUSE_AFTER)
    if wanted and Path(wanted).resolve() == path.resolve():
        print(f"{PAUSED} after writing {path} ({PAUSE_AFTER})", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)


def atomic_write_folder(path, write) -> None:
    """Call `write(temp_folder)` and move the result to `path`, replacing a folder there: readers see the old folder
    or the new one, never half of one (for an instant between the two renames, none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        for made in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700 folders, some writers 0600 files: the usual ones
            os.chmod(made, (0o777 if made.is_dir() else 0o666) & ~_umask())
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old)  # onto the empty folder just made
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_save_safetensors(tensors: Mapping[str, torch.Tensor], path, metadata: Optional[Dict[str, str]] = None):
    """Write tensors (made contiguous, on the CPU) to `path` atomically."""
    flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def read_safetensors(path) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Tensors and string metadata of a safetensors file; a missing or damaged file is a RunFolderError."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except FileNotFoundError:
        raise RunFolderError(f"{path}: no such file") from None
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise RunFolderError(f"{path}: not a readable safetensors file ({first_line(exc)}); it is damaged: "
                             "restore it, or delete it to recompute that stage") from None


def load_weights(path) -> Dict[str, torch.Tensor]:
    """A state dict from a weights file (init, step_k, model or level weights; safetensors, no pickle)."""
    return read_safetensors(path)[0]


def atomic_write_json(obj, path) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False)
            f.write("\n")
    atomic_write(path, write)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunFolderError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc}); it is damaged: restore it, or delete it to recompute "
                             "that stage") from None
