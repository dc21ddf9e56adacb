"""Instability analysis (Frankle, Dziugaite, Roy, Carbin, ICML 2020, "Linear Mode Connectivity and the Lottery
Ticket Hypothesis"): which rewind point gives a network, or a ticket, that trains to the same linearly connected
minimum whatever the SGD noise.

A parent run trains the dense network from theta_0 and keeps its weights at every point of `rewind_points`. From
each point k, two copies train to the end of the schedule (the learning rate continuing from step k) under
different SGD noise (data order and augmentation: seeds --seed + 1 and + 2). The test error is measured at
`points` evenly spaced alphas on the straight line between the two results, `(1 - alpha) * a + alpha * b` over
every tensor, BatchNorm statistics included; the instability (the error barrier) is the highest error on that path
minus the mean of the two ends' errors. As we read the paper, it evaluates the interpolated networks as they are
(running statistics interpolated too, not recomputed); the barrier with the statistics recomputed on training
batches is reported beside it, since interpolated statistics alone can make a barrier. With `run` (a finished IMP
run, its levels in `targets`), the same for its tickets: both copies keep the level's mask and start from the parent's theta_k
under it (Frankle et al.'s Figure 5); the parent is the IMP run's dense training (its options and seed).

Run folder:
    config.json, init.safetensors      hyperparameters; theta_0 (the IMP run's, with --run)
    parent/                            the dense training up to the last rewind point, step_K.safetensors for each
    level_L/rewind_R/copy_a|copy_b/    the two copies (the per-ticket pipeline), L = 0 for the dense network
    level_L/rewind_R/path.json         the errors along the path, with and without recomputed statistics
    results.json, instability.png
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, List, Sequence

from ..callbacks import Lambda, Snapshots
from ..errors import UserError
from ..experiment import Experiment
from ..masks import Mask, prunable_weight_names, resolve_ignored
from ..pipeline import train_ticket
from ..pooling import blend
from ..report import plot_instability
from ..scoring import Scorer
from ..store import atomic_write_json, load_weights, read_json
from ..train import TrainConfig, fit, steps_per_epoch
from .base import Strategy, start_training_run
from .imp import IMP, check_finished, parse_rewind

COPIES = ("a", "b")


def barrier(errors: Sequence[float]) -> float:
    """The error barrier of a path: its highest error minus the mean of its two ends' (0 on a flat path)."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def error_path(a: dict, b: dict, alphas: Sequence[float], error: Callable[[dict], float]) -> List[float]:
    """`error` at each state (1 - alpha) * a + alpha * b."""
    return [error(blend(a, b, alpha)) for alpha in alphas]


@dataclasses.dataclass
class Instability(Strategy, TrainConfig, Experiment):
    """The error barrier between two copies trained from each rewind point (Frankle et al. 2020)."""

    description = "instability analysis: the error barrier between copies trained from each rewind point " \
                  "(Frankle et al.)"
    out_required = True

    rewind_points: list = dataclasses.field(default_factory=lambda: ["0it", "100it", "1ep", "2ep"], metadata={
        "help": "where the copies start: <N>it (iterations) or <N>ep (epochs) of the dense training, init for 0"})
    points: int = dataclasses.field(default=30, metadata={"help": "alphas on each path, its two ends included "
                                                                  "(the paper's 30)"})
    run_dir: str = dataclasses.field(default="", metadata={
        "flags": ["--run"], "help": "a finished IMP run: analyse its levels' tickets, with its model, data and "
                                    "training (the options of this command's own model, data and training are then "
                                    "not read)"})
    targets: list = dataclasses.field(default_factory=lambda: ["all"], metadata={
        "help": "with --run: the IMP levels whose tickets to analyse (all, or level numbers; 0 is the dense "
                "network)"})
    bn_batches: int = dataclasses.field(default=4, metadata={
        "help": "batches of 256 training images the recomputed-statistics path recomputes BatchNorm on"})

    def __post_init__(self):
        super().__post_init__()
        if not self.rewind_points:
            raise UserError("--rewind-points needs at least one point")
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
        if self.run_dir:
            self.run_dir = str(Path(self.run_dir).resolve())

    def _source(self) -> Experiment:
        """What trains: the IMP run's strategy with --run (its model, data, schedule, seed), else these options."""
        if not self.run_dir:
            return self
        imp = IMP.from_run(self.run_dir)
        check_finished(self.run_dir, imp)
        return imp

    def run(self, out_dir) -> List[dict]:
        source = self._source()
        run = start_training_run(source, out_dir)
        cfg, folder, data = run.cfg, run.folder, run.data
        per_epoch = steps_per_epoch(cfg, len(data.train))
        steps = {point: _rewind_step(point, per_epoch) for point in map(str, self.rewind_points)}
        last = cfg.epochs * per_epoch
        late = [point for point, step in steps.items() if step >= last]
        if late:
            raise UserError(f"--rewind-points {' '.join(late)} are at or past the end of training ({last} steps)")
        levels = self._levels(source)
        self.check_run_folder(folder)
        init = (load_weights(Path(self.run_dir) / "init.safetensors") if self.run_dir else
                source.create_model(data.num_classes, seed=source.seed).state_dict())
        folder.save_weights_once("init.safetensors", init)
        self._parent(run, source, sorted(set(steps.values())))
        scorer = Scorer(data, run.accelerator, cfg, run.example,
                        source.create_model(data.num_classes, seed=0, pretrained=False), source.seed, self.bn_batches)
        alphas = [i / (self.points - 1) for i in range(self.points)]
        results, template = [], scorer.template
        for level in levels:
            mask = (Mask.load(Path(self.run_dir) / f"level_{level}" / "mask.safetensors") if self.run_dir else
                    Mask.ones(template, prunable_weight_names(template, resolve_ignored(template))))
            for point, step in steps.items():
                results.append(self._pair(run, source, scorer, level, point, step, mask, alphas))
        run.folder.write_results(results, columns=_TABLE, plots={"instability.png": lambda path: plot_instability(
            results, path)})
        return results

    def _levels(self, source) -> List[int]:
        if not self.run_dir:
            if self.targets != ["all"] and self.targets != [0]:
                raise UserError("--targets names levels of an IMP run: add --run")
            return [0]
        every = list(range(source.levels + 1))
        unknown = [str(level) for level in self.targets if level != "all" and level not in every]
        if unknown:
            raise UserError(f"--targets {' '.join(unknown)}: the run has levels 0 to {every[-1]}")
        return every if self.targets == ["all"] else list(self.targets)

    def _parent(self, run, source, steps: List[int]) -> None:
        """The dense training from theta_0 up to the last rewind point, its weights kept at each."""
        model = source.create_model(run.data.num_classes, seed=source.seed, pretrained=False)
        model.load_state_dict(load_weights(run.folder.path / "init.safetensors"))
        stop = Lambda(after_optimizer_step=lambda state: state.step >= steps[-1])
        fit(model, run.data.train, run.data.val, run.cfg, run.folder.path / "parent", accelerator=run.accelerator,
            callbacks=[Snapshots(steps), stop], desc="parent")

    def _pair(self, run, source, scorer: Scorer, level: int, point: str, step: int, mask: Mask, alphas) -> dict:
        where = run.folder.path / f"level_{level}" / f"rewind_{point}"
        if (where / "path.json").exists():
            return read_json(where / "path.json")
        start = load_weights(run.folder.path / "parent" / f"step_{step}.safetensors")
        copies = {}
        for copy_name, seed in zip(COPIES, (source.seed + 1, source.seed + 2)):
            ticket = train_ticket(run, source, where / f"copy_{copy_name}", mask, start, start_step=step,
                                  cfg=dataclasses.replace(run.cfg, seed=seed),
                                  desc=f"level {level} rewind {point} copy {copy_name}")
            copies[copy_name] = ticket
        a, b = (load_weights(where / f"copy_{name}" / "weights.safetensors") for name in COPIES)
        device = run.accelerator.device
        a, b = ({k: v.to(device) for k, v in state.items()} for state in (a, b))

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
            atomic_write_json(result, where / "path.json")
        run.accelerator.wait_for_everyone()
        return result


def _rewind_step(point: str, per_epoch: int) -> int:
    kind, amount = parse_rewind(point)
    return {"init": 0, "it": amount, "ep": amount * per_epoch}[kind]


_TABLE = (("level", "level", "{}"), ("density", "density", "{:.4f}"), ("rewind_point", "rewind", "{}"),
          ("rewind_step", "step", "{}"), ("barrier", "barrier", "{:.2%}"),
          ("barrier_recomputed_bn", "barrier (BN recomputed)", "{:.2%}"))
