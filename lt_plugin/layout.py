"""The run-folder layout: every file and folder name of a run folder, in one place (open_lth's
foundations/paths.py). No other module spells a name of the layout; they ask these objects.

    RUN/                                  a RunLayout
      config.json  init.safetensors  results.json  <plot>.png  .lock  logs/
      level_L/                            a TicketFolder (IMP, Sparse Model Soups, Lottery Pools, the controls)
        mask.safetensors  weights.safetensors  sparsity.json  result.json (written last: finished)
        train/                            a FitFolder: what `fit` writes
          checkpoint.safetensors  metrics.jsonl  evals.jsonl  step_K.safetensors  model.safetensors
          early_stop.safetensors  early_stop.pending.safetensors
          swa_step_K.safetensors  swa_average.safetensors          SWAMP: a particle's running SWA average
          mask_step_K.safetensors  denoiser_K_J.safetensors         gradual pruning, Instant Soup's rounds
        ingredient_I/  soup_NAME/         Sparse Model Soups: TicketFolders
        start.safetensors  particle_P/    SWAMP: the rewound ticket the particles start from; each particle
        rewind_P/copy_a/  rewind_P/path.json                  instability analysis
      ratio_R/  (+ emergence.safetensors)  search/train/  search/checks/step_K.safetensors
      baseline/dense/  baseline/ratio_R/                      Early-Bird
      parent/                                                 instability analysis of a dense network
      source_config: imp_config.json  ensemble.json           a branch's folder (Lottery Pools)
      pools/  controls/NAME/  instability/  exports/          branches of the run (their default folders)
      seed_S/                             one replicate: a run folder of its own

    TICKET/                               a HubFolder: one ticket as `lt-plugin export --format hf` writes it
      config.json  model.safetensors  README.md    timm's save_for_hf folder and its model card
      mask.safetensors  pruning_history.json       lt_plugin's: the mask, Torch-Pruning's history (channel)
      figures/<plot>.png                           the run's plots, which the card shows
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

CONFIG = "config.json"
RESULT = "result.json"
# The folder a branch of a run writes into, unless told otherwise (a branch not named here: its name).
BRANCH_FOLDERS = {"lottery-pools": "pools", "random-reinit": "controls/random-reinit",
                  "random-mask": "controls/random-mask", "export": "exports"}
_STEP = re.compile(r"^step_(\d+)\.safetensors$")


def _numbered(root: Path, prefix: str, marker: str) -> List[int]:
    """The N of every `root/<prefix>N/<marker>` that exists, sorted."""
    found = (p.parent.name[len(prefix):] for p in root.glob(f"{prefix}*/{marker}"))
    return sorted(int(n) for n in found if n.isdigit())


class FitFolder:
    """The folder of one `fit`: its checkpoint, metrics, snapshots and final weights."""

    def __init__(self, root):
        self.root = Path(root)

    checkpoint = property(lambda self: self.root / "checkpoint.safetensors")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    evals = property(lambda self: self.root / "evals.jsonl")
    early_stop = property(lambda self: self.root / "early_stop.safetensors")
    early_stop_pending = property(lambda self: self.root / "early_stop.pending.safetensors")
    model = property(lambda self: self.root / "model.safetensors")

    def step(self, k: int) -> Path:
        """The weights after k optimizer steps (0: before the first)."""
        return self.root / f"step_{k}.safetensors"

    def pruned_mask(self, k: int) -> Path:
        """Gradual pruning: the mask drawn at optimizer step k."""
        return self.root / f"mask_step_{k}.safetensors"

    def pruned_masks(self) -> List[Path]:
        """Gradual pruning: every step's mask the folder holds."""
        return sorted(self.root.glob("mask_step_*.safetensors"))

    def denoiser_mask(self, k: int, j: int) -> Path:
        """Instant Soup: the mask denoiser j drew at optimizer step k."""
        return self.root / f"denoiser_{k}_{j}.safetensors"

    def denoiser_masks(self) -> List[Path]:
        """Instant Soup: every denoiser's mask the folder holds."""
        return sorted(self.root.glob("denoiser_*_*.safetensors"))

    def swa_step(self, k: int) -> Path:
        """SWA: the running average as of its update at optimizer step k."""
        return self.root / f"swa_step_{k}.safetensors"

    def swa_steps(self) -> List[Path]:
        """SWA: every running average the folder holds."""
        return sorted(self.root.glob("swa_step_*.safetensors"))

    swa_average = property(lambda self: self.root / "swa_average.safetensors")  # SWA: the final average

    def steps(self) -> List[int]:
        """The steps whose weights the folder keeps, sorted."""
        return sorted(int(m.group(1)) for m in (_STEP.match(p.name) for p in self.root.glob("step_*.safetensors"))
                      if m)


class TicketFolder:
    """One ticket: its mask and dense-space weights, its result (written last), the training that made it."""

    def __init__(self, root):
        self.root = Path(root)

    mask = property(lambda self: self.root / "mask.safetensors")
    weights = property(lambda self: self.root / "weights.safetensors")
    result = property(lambda self: self.root / RESULT)
    sparsity = property(lambda self: self.root / "sparsity.json")  # the mask's density layer by layer
    train = property(lambda self: FitFolder(self.root / "train"))
    emergence = property(lambda self: self.root / "emergence.safetensors")  # Early-Bird: the weights at emergence
    start = property(lambda self: self.root / "start.safetensors")  # SWAMP: the rewound ticket particles start from

    @property
    def finished(self) -> bool:
        return self.result.exists()

    def ingredient(self, i: int) -> "TicketFolder":
        return TicketFolder(self.root / f"ingredient_{i}")

    def soup(self, name: str) -> "TicketFolder":
        return TicketFolder(self.root / f"soup_{name}")

    def particle(self, p: int) -> "TicketFolder":
        """SWAMP: particle p of the level."""
        return TicketFolder(self.root / f"particle_{p}")

    def rewind(self, point: str) -> "RewindFolder":
        return RewindFolder(self.root / f"rewind_{point}")


class RewindFolder:
    """Instability analysis from one rewind point: two copies trained from it and the path between them."""

    def __init__(self, root):
        self.root = Path(root)

    path = property(lambda self: self.root / "path.json")

    def copy(self, name: str) -> TicketFolder:
        return TicketFolder(self.root / f"copy_{name}")


class RunLayout:
    """A run folder: the files every run has, and the folders of its tickets, stages, branches and replicates."""

    def __init__(self, root):
        self.root = Path(root)

    config = property(lambda self: self.root / CONFIG)
    init = property(lambda self: self.root / "init.safetensors")
    results = property(lambda self: self.root / "results.json")
    lock = property(lambda self: self.root / ".lock")
    logs = property(lambda self: self.root / "logs")
    source_config = property(lambda self: self.root / "imp_config.json")  # a branch's copy of its run's config
    ensemble = property(lambda self: self.root / "ensemble.json")
    compare = property(lambda self: self.root / "compare.json")  # lt-plugin compare's report
    search = property(lambda self: FitFolder(self.root / "search" / "train"))
    baseline_dense = property(lambda self: FitFolder(self.root / "baseline" / "dense"))
    parent = property(lambda self: FitFolder(self.root / "parent"))

    def plot(self, name: str) -> Path:
        return self.root / name

    def plots(self) -> List[Path]:
        """The plots the run folder holds, sorted."""
        return sorted(self.root.glob("*.png"))

    def level(self, level: int) -> TicketFolder:
        return TicketFolder(self.root / f"level_{level}")

    def finished_levels(self) -> List[int]:
        return _numbered(self.root, "level_", RESULT)

    def ratio(self, name: str) -> TicketFolder:
        return TicketFolder(self.root / f"ratio_{name}")

    def finished_ratios(self) -> List[str]:
        return sorted((p.parent.name[len("ratio_"):] for p in self.root.glob(f"ratio_*/{RESULT}")), key=float)

    def baseline_ratio(self, name: str) -> TicketFolder:
        return TicketFolder(self.root / "baseline" / f"ratio_{name}")

    def check(self, step: int) -> Path:
        """Early-Bird: the channel flags drawn at a global step."""
        return self.root / "search" / "checks" / f"step_{step}.safetensors"

    def checks(self) -> List[Path]:
        return sorted((self.root / "search" / "checks").glob("step_*.safetensors"))

    def branch(self, name: str) -> Path:
        """Where the branch `name` of this run writes unless told otherwise."""
        return self.root / BRANCH_FOLDERS.get(name, name)

    def export(self, key: str, suffix: str) -> Path:
        """Where `lt-plugin export` writes ticket `key` unless told otherwise."""
        return self.branch("export") / f"ticket_{key}{suffix}"

    def seed(self, seed: int) -> "RunLayout":
        return RunLayout(self.root / f"seed_{seed}")

    def seeds(self) -> List[int]:
        """The replicates this folder holds (seed_S folders with a config), sorted."""
        return _numbered(self.root, "seed_", CONFIG)


class HubFolder:
    """A ticket as a Hugging Face Hub folder: timm's `save_for_hf` files (what `timm.create_model("local-dir:...")`
    and `"hf-hub:..."` read), its model card, and lt_plugin's own files."""

    def __init__(self, root):
        self.root = Path(root)

    config = property(lambda self: self.root / CONFIG)
    weights = property(lambda self: self.root / "model.safetensors")  # timm's name for safetensors weights
    card = property(lambda self: self.root / "README.md")
    mask = property(lambda self: self.root / "mask.safetensors")
    pruning_history = property(lambda self: self.root / "pruning_history.json")

    def figure(self, name: str) -> Path:
        return self.root / "figures" / name
