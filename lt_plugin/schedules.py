"""Sparsity schedules by name, as fasterai's SparsifyCallback knows them, and points of training given as steps or
as fractions of the training: the words `GradualPruner`, the `gradual` strategy and `IMPPruner`'s rewind point
share.

A schedule takes the density from `initial` at the start to `final` at the end, `pos` in [0, 1] being the way
through. The formulas are fasterai's (`sched_oneshot`, `sched_iterative`, `sched_agp`) and fastai's (`sched_cos`,
`sched_lin`), written in density, which they map to the same curve as in sparsity (each is start + g(pos) * (end -
start)); "cubic" is Zhu & Gupta's (fasterai's AGP, automated gradual pruning).
"""

from __future__ import annotations

import math
import re
from typing import Optional, Tuple, Union

from .errors import UserError

SCHEDULES = ("cubic", "agp", "one-shot", "iterative", "cosine", "linear")
_POINT = re.compile(r"^(\d+)(it|ep)$")

Point = Union[int, float, str]


def check_schedule(name: str, iterative_steps: int = 3) -> None:
    if name not in SCHEDULES:
        raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, not {name!r}")
    if not (isinstance(iterative_steps, int) and iterative_steps >= 1):
        raise UserError(f"iterative_steps must be 1 or more, not {iterative_steps!r}")


def schedule_density(name: str, initial: float, final: float, pos: float, iterative_steps: int = 3) -> float:
    """The density `pos` of the way through schedule `name`: exactly `initial` where the schedule has not moved yet
    (pos 0, but one-shot's), exactly `final` at pos 1."""
    if name == "one-shot" or pos >= 1.0:
        return float(final)
    if pos <= 0.0:
        return float(initial)
    if name in ("cubic", "agp"):
        return final + (initial - final) * (1.0 - pos) ** 3
    if name == "iterative":
        return initial + (final - initial) / iterative_steps * math.ceil(pos * iterative_steps)
    if name == "cosine":
        return initial + (1 + math.cos(math.pi * (1 - pos))) * (final - initial) / 2
    if name == "linear":
        return initial + pos * (final - initial)
    raise UserError(f"schedule must be one of {', '.join(SCHEDULES)}, not {name!r}")


def scheduled_density(name: str, step: int, start_step: int, end_step: int, frequency: int, final_density: float,
                      initial_density: float = 1.0, iterative_steps: int = 3) -> float:
    """The density at optimizer step `step` of schedule `name` pruning at start_step + k * frequency up to
    `end_step`: evaluated at the last pruning step t <= `step`, pos = (t - start_step) / (end_step - start_step).
    Before `start_step` it is `initial_density`, from `end_step` on exactly `final_density`. Not rounded: a mask
    keeps round(density * count) entries."""
    check_schedule(name, iterative_steps)
    if frequency < 1:
        raise UserError(f"frequency must be at least 1, not {frequency}")
    if end_step < start_step or (end_step - start_step) % frequency:
        raise UserError(f"end_step - start_step must be a non-negative multiple of frequency ({frequency}), "
                        f"not {end_step} - {start_step}")
    for what, density in (("final_density", final_density), ("initial_density", initial_density)):
        if not 0.0 <= density <= 1.0:
            raise UserError(f"{what} must be in [0, 1], not {density}")
    if step >= end_step:
        return float(final_density)
    if step < start_step:
        return float(initial_density)
    t = start_step + (step - start_step) // frequency * frequency
    return schedule_density(name, initial_density, final_density, (t - start_step) / (end_step - start_step),
                            iterative_steps)


def said(name: str, value) -> str:
    """An option as the user wrote it: `--start 0.25` on the command line, `start=0.25` in Python."""
    return f"{name} {value}" if name.startswith("--") else f"{name}={value!r}"


def training_step(point: Point, what: str, total_steps: Optional[int] = None,
                  steps_per_epoch: Optional[int] = None) -> int:
    """A point of training as an optimizer step: an int is a step, a float in [0, 1] a fraction of `total_steps`
    (rounded down), a string `<N>it`, `<N>ep` (N epochs of `steps_per_epoch`) or a fraction. `what` names the
    option in the one-line errors (`--start`, or `start` for a Python argument)."""
    if isinstance(point, bool):
        raise UserError(f"{what} is a step (an int) or a fraction of the training (a float), not {point!r}")
    if isinstance(point, str):
        match = _POINT.match(point)
        if match and match.group(2) == "it":
            return int(match.group(1))
        if match:
            if steps_per_epoch is None:
                raise UserError(f"{said(what, point)} counts epochs: give steps_per_epoch, or the point as a step")
            return int(match.group(1)) * steps_per_epoch
        try:
            fraction = float(point)
        except ValueError:
            fraction = -1.0
        if not 0.0 <= fraction <= 1.0:
            raise UserError(f"{what} is <N>it, <N>ep or a fraction of the training in [0, 1], not {point!r}")
        point = fraction
    if isinstance(point, int):
        if point < 0:
            raise UserError(f"{said(what, point)} is before the first step: a step is 0 or later")
        return point
    if not 0.0 <= point <= 1.0:
        raise UserError(f"{said(what, point)} is a fraction of the training: it must be in [0, 1] (an int is a step)")
    if total_steps is None:
        raise UserError(f"{said(what, point)} is a fraction of the training: give total_steps (the optimizer steps "
                        "of the whole training), or the point as a step (an int)")
    return int(point * total_steps)


def pruning_window(start: Point, end: Point, frequency: int, total_steps: Optional[int] = None,
                   steps_per_epoch: Optional[int] = None,
                   names: Tuple[str, str, str] = ("start", "end", "frequency")) -> Tuple[int, int]:
    """(start step, end step) of a pruning schedule: the points resolved (`training_step`), the end moved back to
    the last pruning step of the grid start + k * frequency; a window with no room for one pruning after its start
    is refused in one line, which calls the options `names`."""
    if isinstance(frequency, bool) or not (isinstance(frequency, int) and frequency >= 1):
        raise UserError(f"{said(names[2], frequency)}: it must be 1 or more optimizer steps")
    first = training_step(start, names[0], total_steps, steps_per_epoch)
    last = training_step(end, names[1], total_steps, steps_per_epoch)
    if total_steps is not None and last > total_steps:
        raise UserError(f"{said(names[1], end)} is step {last}, past the end of training ({total_steps} steps)")
    prunings = (last - first) // frequency
    if prunings < 1:
        where = f" (training has {total_steps} steps)" if total_steps is not None else ""
        raise UserError(f"{said(names[0], start)} to {said(names[1], end)} is steps {first} to {last}: no room for one "
                        f"pruning every {said(names[2], frequency)} steps{where}")
    return first, first + prunings * frequency
