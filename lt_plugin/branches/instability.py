"""Instability analysis (Frankle, Dziugaite, Roy, Carbin, ICML 2020, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis"): which rewind point gives a network, or a ticket, that trains to the same linearly connected
minimum whatever the SGD noise.

From each rewind point k, two copies train to the end of the schedule (the learning rate continuing from step k)
under different SGD noise (data order and augmentation: seeds --seed + 1 and + 2). The test error is measured at
`points` evenly spaced alphas on the straight line between the two results, `(1 - alpha) * a + alpha * b` over
every tensor, BatchNorm statistics included; the instability (the error barrier) is the highest error on that path
minus the mean of the two ends' errors. As we read the paper, it evaluates the interpolated networks as they are
(running statistics interpolated too, not recomputed); the barrier with the statistics recomputed on training
batches is reported beside it, since interpolated statistics alone can make a barrier.

Two uses, one command:
- a dense network (no --run): a parent trains the dense network from theta_0 and keeps its weights at every rewind
  point; the copies start there (the paper's Figure 1-3 instability of dense networks).
- the tickets of a finished IMP run (--run, a branch of the run): level L's subnetwork is the run's level-L mask
  applied to theta_k of the run's own dense training (level 0's kept weights), k the run's rewind point by default:
  the subnetwork the run trained, as the paper's Figure 5 analyses it (one IMP run per rewind point). Other points
  the run kept (`imp --keep-steps`) give the run's mask applied to theta_k: a different experiment, marked in each
  result (`mask_rewind_step`).

Folder (lt_plugin.layout; with --run, RUN/instability unless --out):
    config.json                        hyperparameters
    init.safetensors, parent/          without --run: theta_0 and the dense training up to the last rewind point
    level_L/rewind_R/copy_a|copy_b/    the two copies (the per-ticket pipeline), L = 0 for the dense network
    level_L/rewind_R/path.json         the errors along the path, with and without recomputed statistics
    results.json, instability.png
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..callbacks import Lambda, Snapshots
from ..errors import RunFolderError, UserError
from ..experiment import Experiment
from ..layout import RunLayout
from ..levels import parse_rewind, rewind_point_step
from ..masks import Mask, prunable_weight_names, resolve_ignored
from ..pipeline import train_ticket
from ..pooling import blend
from ..replicates import Replicates, run_replicates
from ..report import plot_instability
from ..scoring import Scorer
from ..store import atomic_write_json, load_weights, read_json
from ..strategies.base import start_training_run
from ..train.config import TrainConfig, steps_per_epoch
from ..train.loop import fit
from .base import Branch, FinishedRun
from .base import register_branch

DENSE_REWIND_POINTS = ["0it", "100it", "1ep", "2ep"]  # without --run, when none are given

COPIES = ("a", "b")


def barrier(errors: Sequence[float]) -> float:
    """The error barrier of a path: its highest error minus the mean of its two ends' (0 on a flat path)."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def error_path(a: dict, b: dict, alphas: Sequence[float], error: Callable[[dict], float]) -> List[float]:
    """`error` at each state (1 - alpha) * a + alpha * b."""
    return [error(blend(a, b, alpha)) for alpha in alphas]


@register_branch("instability")
@dataclasses.dataclass
class Instability(Branch, Replicates, TrainConfig, Experiment):
    """The error barrier between two copies trained from each rewind point (Frankle et al. 2020)."""

    run_dir: str = dataclasses.field(default="", metadata={
        "flags": ["--run"], "help": "a finished IMP run: analyse its levels' tickets, with its model, data and "
                                    "training (the options of this command's own model, data and training are then "
                                    "not read); results go to RUN/instability unless --out"})
    rewind_points: list = dataclasses.field(default_factory=list, metadata={
        "help": "where the copies start: <N>it (iterations) or <N>ep (epochs) of the dense training, init for 0; "
                f"default: the --run's own rewind point, without --run {' '.join(DENSE_REWIND_POINTS)}"})
    points: int = dataclasses.field(default=30, metadata={"help": "alphas on each path, its two ends included "
                                                                  "(the paper's 30)"})
    targets: list = dataclasses.field(default_factory=lambda: ["all"], metadata={
        "help": "with --run: the IMP levels whose tickets to analyse (all, or level numbers; 0 is the dense "
                "network)"})
    bn_batches: int = dataclasses.field(default=4, metadata={
        "help": "batches of 256 training images the recomputed-statistics path recomputes BatchNorm on"})

    def __post_init__(self):
        super().__post_init__()
        self.check_replicates()
        if self.seeds and self.run_dir:
            raise UserError("--seeds trains dense networks; with --run the run's own seeds are analysed")
        if not self.rewind_points and not self.run_dir:
            self.rewind_points = list(DENSE_REWIND_POINTS)
        for point in self.rewind_points:
            kind, _ = parse_rewind(str(point))
            if kind not in ("init", "it", "ep"):
                raise UserError(f"--rewind-points are init, <N>it or <N>ep, not {point!r}")
        if self.points < 2:
            raise UserError(f"--points must be 2 or more (the two ends), not {self.points}")
        targets = [str(level) for level in self.targets]
        if targets != ["all"] and not all(level.isdigit() for level in targets):
            raise UserError(f"--targets must be 'all' or level numbers, not {' '.join(targets)}")
        self.targets = targets if targets == ["all"] else sorted({int(level) for level in targets})

    def run(self, out_dir=None) -> List[dict]:
        if self.run_dir:
            return super().run(out_dir)
        if out_dir is None:
            raise UserError("--out is required without --run: the folder of the dense network's analysis")
        if self.seeds:
            return run_replicates(self, out_dir)
        if self.targets not in (["all"], [0]):
            raise UserError("--targets names levels of an IMP run: add --run")
        return self._analyse(None, self, Path(out_dir), [0])

    def run_branch(self, source: FinishedRun, out: Path) -> List[dict]:
        if RunLayout(out).parent.root.exists():
            raise RunFolderError(f"{out} was made by an earlier lt_plugin, whose copies started from a second dense "
                                 "training instead of the run's own; analyse the run again in a new --out")
        every = list(range(source.strategy.levels + 1))
        unknown = [str(level) for level in self.targets if level != "all" and level not in every]
        if unknown:
            raise UserError(f"--targets {' '.join(unknown)}: the run has levels 0 to {every[-1]}")
        return self._analyse(source, source.strategy, out, every if self.targets == ["all"] else list(self.targets))

    def _analyse(self, source: Optional[FinishedRun], trainer, out: Path, levels: List[int]) -> List[dict]:
        """The copies and paths of every level and rewind point; `trainer` (this analysis, or the IMP run's
        strategy) gives the model, data and training."""
        run = start_training_run(trainer, out)
        cfg, folder, data = run.cfg, run.folder, run.data
        per_epoch = steps_per_epoch(cfg, len(data.train))
        points = list(map(str, self.rewind_points))
        own_step = None
        if source is not None and parse_rewind(trainer.rewind)[0] in ("init", "it", "ep"):
            own_step = rewind_point_step(trainer.rewind, per_epoch)
            points = points or [trainer.rewind]
        if not points:
            raise UserError(f"--run {source.path} rewinds by {trainer.rewind!r}, not to a point of training: name "
                            "the points with --rewind-points")
        steps = {point: rewind_point_step(point, per_epoch) for point in points}
        last = cfg.epochs * per_epoch
        late = [point for point, step in steps.items() if step >= last]
        if late:
            raise UserError(f"--rewind-points {' '.join(late)} are at or past the end of training ({last} steps)")
        if source is not None:
            for step in steps.values():
                source.weights_at_step(step)  # refuses, in one line, a point the run did not keep
        self.check_run_folder(folder)
        if source is None:
            folder.save_weights_once(folder.layout.init, trainer.create_model(data.num_classes,
                                                                              seed=trainer.seed).state_dict())
            self._parent(run, trainer, sorted(set(steps.values())))
        scorer = Scorer(data, run.accelerator, cfg, run.example,
                        trainer.create_model(data.num_classes, seed=0, pretrained=False), trainer.seed,
                        self.bn_batches)
        alphas = [i / (self.points - 1) for i in range(self.points)]
        results, template = [], scorer.template
        for level in levels:
            mask = (source.mask(level) if source is not None else
                    Mask.ones(template, prunable_weight_names(template, resolve_ignored(template))))
            for point, step in steps.items():
                start = (source.weights_at_step(step) if source is not None else
                         load_weights(folder.layout.parent.step(step)))
                result = self._pair(run, trainer, scorer, level, point, step, mask, start, alphas)
                results.append({**result, "mask_rewind_step": own_step} if source is not None else result)
        folder.write_results(results, columns=_TABLE, plots={"instability.png": lambda path: plot_instability(
            results, path)})
        return results

    def _parent(self, run, trainer, steps: List[int]) -> None:
        """The dense training from theta_0 up to the last rewind point, its weights kept at each."""
        model = trainer.create_model(run.data.num_classes, seed=trainer.seed, pretrained=False)
        model.load_state_dict(load_weights(run.folder.layout.init))
        stop = Lambda(after_optimizer_step=lambda state: state.step >= steps[-1])
        fit(model, run.data.train, run.data.val, run.cfg, run.folder.layout.parent.root, accelerator=run.accelerator,
            callbacks=[Snapshots(steps), stop], desc="parent")

    def _pair(self, run, trainer, scorer: Scorer, level: int, point: str, step: int, mask: Mask,
              start: Dict, alphas) -> dict:
        where = run.folder.layout.level(level).rewind(point)
        if where.path.exists():
            return read_json(where.path)
        copies = {}
        for copy_name, seed in zip(COPIES, (trainer.seed + 1, trainer.seed + 2)):
            copies[copy_name] = train_ticket(run, trainer, where.copy(copy_name), mask, start, start_step=step,
                                             cfg=dataclasses.replace(run.cfg, seed=seed),
                                             desc=f"level {level} rewind {point} copy {copy_name}")
        device = run.accelerator.device
        a, b = ({k: v.to(device) for k, v in load_weights(where.copy(name).weights).items()} for name in COPIES)

        def error(state, recompute: bool) -> float:
            model = scorer.template
            model.load_state_dict(state)
            mask.apply(model)
            if recompute:
                scorer.recalibrate(model, mask)
            return 1.0 - scorer.accuracy(scorer.materialise(model.state_dict(), mask), run.data.test)

        interpolated = error_path(a, b, alphas, lambda state: error(state, False))
        recomputed = error_path(a, b, alphas, lambda state: error(state, True))
        result = {"level": level, "density": mask.density, "rewind_point": point, "rewind_step": step,
                  "alphas": alphas, "test_error_interpolated_bn": interpolated,
                  "test_error_recomputed_bn": recomputed, "barrier": barrier(interpolated),
                  "barrier_recomputed_bn": barrier(recomputed),
                  "copies_test_accuracy": [copies[name]["test_accuracy"] for name in COPIES]}
        if run.folder.is_main:
            atomic_write_json(result, where.path)
        run.accelerator.wait_for_everyone()
        return result


_TABLE = (("level", "level", "{}"), ("density", "density", "{:.4f}"), ("rewind_point", "rewind", "{}"),
          ("rewind_step", "step", "{}"), ("barrier", "barrier", "{:.2%}"),
          ("barrier_recomputed_bn", "barrier (BN recomputed)", "{:.2%}"))
