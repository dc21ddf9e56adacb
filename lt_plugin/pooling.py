"""Averaging tickets in the dense space: the arithmetic that Lottery Pools, Sparse Model Soups and instability
analysis share, and Lottery Pools' search as a function over tickets you hold.

Every ticket is (a dense-space state dict, a Mask), so averaging is arithmetic on state dicts; what differs between
the methods is how a blend returns to a sparsity (`reprune`), how its BatchNorm statistics are recomputed
(`recalibrate`) and how it is scored (`evaluate`), which the caller passes as functions: a strategy passes its run's,
a user with an own training loop passes their own.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .acceptance import SIGNIFICANCE, Rule, as_scores
from .errors import UserError
from .masks import Mask, magnitude_mask, named_tensors, snapshot

State = Dict[str, torch.Tensor]
DEFAULT_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # the paper's grid


def adjacency_order(target, keys: Sequence) -> List:
    """The keys other than `target`, nearest first and the lower one first at equal distance: t-1, t+1, t-2, ...
    (the paper's Algorithm 2 orders an IMP run's levels by adjacency to the target)."""
    return sorted((key for key in keys if key != target), key=lambda key: (abs(key - target), key))


def blend(current: State, candidate: State, alpha: float) -> State:
    """alpha * candidate + (1 - alpha) * current for every floating tensor; counters stay the current's."""
    return {name: alpha * candidate[name] + (1 - alpha) * value if value.is_floating_point() else value
            for name, value in current.items()}


def average(states: Iterable[State]) -> State:
    """The uniform average of state dicts (a uniform soup, SWAMP's particle average), read one at a time into a
    running sum (at least float32), so that only the sum and the state being read are held: `states` may be a
    generator that loads each from its file. Counters (BatchNorm's num_batches_tracked) stay the first's."""
    total: Optional[State] = None
    dtypes: Dict[str, torch.dtype] = {}
    count = 0
    for state in states:
        if total is None:
            dtypes = {name: value.dtype for name, value in state.items()}
            total = {name: value.to(torch.promote_types(value.dtype, torch.float32), copy=True)
                     if value.is_floating_point() else value for name, value in state.items()}
        else:
            for name, value in total.items():
                if value.is_floating_point():
                    value.add_(state[name].to(value.device, value.dtype))
        count += 1
    if total is None:
        raise UserError("nothing to average")
    return {name: (value / count).to(dtypes[name]) if value.is_floating_point() else value
            for name, value in total.items()}


@torch.no_grad()
def magnitude_mask_like(model: nn.Module, target: Mask, scope: str = "global", separate: Sequence[str] = ()) -> Mask:
    """The magnitude criterion on `model`'s weights, keeping exactly as many weights as `target` (in all, or in each
    tensor when layer-wise; the tensors in `separate`, pruned at rates of their own, each on its own).
    `magnitude_mask` prunes every entry tied at its threshold, so ties are taken back, first index first, until the
    count is exact."""
    tensors = named_tensors(model)
    rest = [name for name in target.prunable if name not in separate]
    groups = [[name] for name in target.prunable if name in separate]
    groups += [rest] if scope == "global" and rest else [[name] for name in rest]
    keep = {}
    for names in groups:
        count = sum(int(target.tensors[n].sum()) for n in names)
        total = sum(target.tensors[n].numel() for n in names)
        mask = magnitude_mask(model, count / total, names, "global")
        kept = torch.cat([mask.tensors[n].reshape(-1) for n in names])
        missing = count - int(kept.sum())
        if missing > 0:
            scores = torch.cat([tensors[n].detach().abs().float().cpu().reshape(-1) for n in names])
            tied = (~kept & (scores == scores[~kept].max())).nonzero().reshape(-1)
            kept[tied[:missing]] = True
        for name, part in zip(names, kept.split([target.tensors[n].numel() for n in names])):
            keep[name] = part.reshape(target.tensors[name].shape)
    return Mask(keep, target.prunable, "weight")


def keep_target_mask(model: nn.Module, target: Mask) -> Mask:
    """A `reprune` that keeps the target's own mask (Lottery Pools' variant that never moves the sparsity)."""
    return target


def sweep_order(alphas: Sequence[float], patience: Optional[int]):
    """The alphas to try for one candidate, in order; send each one's validation accuracy back.

    patience None (the reference protocol): every alpha, in the order given. Otherwise the grid is walked from both
    ends inward (0.05, 0.95, 0.1, 0.9, ...): at one end the blend is near the current model, at the other near the
    candidate, and between them lies the loss barrier of tickets that are not linearly connected. A side stops after
    `patience` alphas in a row that do not beat its own best, taken to be past its peak: a heuristic, which the
    reference protocol does without.
    """
    if patience is None:
        for alpha in alphas:  # not `yield from`: it would pass the accuracies sent on to the list's iterator
            yield alpha
        return
    grid = sorted(alphas)
    low, high = 0, len(grid) - 1
    best, misses = [None, None], [0, 0]
    side = 0
    while low <= high and min(misses) < patience:
        if misses[side] >= patience:
            side = 1 - side
        if side == 0:
            alpha, low = grid[low], low + 1
        else:
            alpha, high = grid[high], high - 1
        accuracy = yield alpha
        if best[side] is None or accuracy > best[side]:
            best[side], misses[side] = accuracy, 0
        else:
            misses[side] += 1
        side = 1 - side


@dataclasses.dataclass
class PooledTicket:
    """Lottery Pools' result: the pooled ticket (state, mask) and the record of its search."""

    state: State
    mask: Mask
    val_accuracy: float
    accepted: list        # [candidate, alpha] of each accepted blend, in order
    sweeps: list          # per candidate: {"candidate", "scores": [[alpha, accuracy], ...], and what the rule's
                          # decision rests on: "gained", "lost" and "p_value" (paired), "loss_difference" and
                          # "p_value" (loss)}
    val_passes: int
    recalibrations: int
    confirmation: Optional[dict] = None  # the confirm rule's test of the final blend on its held-out half


class _Blender:
    """The working model every blend is loaded into, and how a blend returns to the target's sparsity."""

    def __init__(self, model, tickets, target, reprune, recalibrate):
        self.model, self.tickets, self.target = model, tickets, target
        self.target_mask = tickets[target][1]
        # The dense target is never re-pruned (the paper's pooled dense network).
        self.reprune = keep_target_mask if self.target_mask.num_pruned() == 0 else reprune
        self.recalibrate = recalibrate
        self.recalibrations = 0

    def load(self, state: State, mask: Mask) -> None:
        self.model.load_state_dict(state)
        mask.apply(self.model)

    def load_blend(self, current: State, candidate, alpha: float) -> Mask:
        """`alpha * candidate + (1 - alpha) * current` in the working model at the target's sparsity."""
        self.model.load_state_dict(blend(current, self.tickets[candidate][0], alpha))
        mask = self.reprune(self.model, self.target_mask)
        mask.apply(self.model)
        return mask

    def finish(self, mask: Mask) -> None:
        """BatchNorm statistics of the blend recomputed (the pruned entries stay zero)."""
        if self.recalibrate is not None:
            self.recalibrate(self.model, mask)
            mask.apply(self.model)
            self.recalibrations += 1


def _default_reprune(mask: Mask):
    if mask.granularity == "weight":
        return magnitude_mask_like
    raise UserError("channel tickets need reprune=ChannelStructure(model, example_inputs).ranked_like (a channel "
                    "blend returns to the target's channel counts) or reprune=keep_target_mask")


def lottery_pool(model: nn.Module, tickets: Mapping[Hashable, Tuple[State, Mask]], target: Hashable, *,
                 evaluate: Callable[[nn.Module, Mask], object],
                 recalibrate: Optional[Callable[[nn.Module, Mask], None]] = None,
                 reprune: Optional[Callable[[nn.Module, Mask], Mask]] = None, candidates: Optional[Sequence] = None,
                 alphas: Sequence[float] = DEFAULT_ALPHAS, patience: Optional[int] = None,
                 acceptance: str = "paper", significance: float = SIGNIFICANCE,
                 selection: Optional[torch.Tensor] = None) -> PooledTicket:
    """Lottery Pools' greedy search (Yin, Liu et al., AAAI 2023, Algorithm 2) over tickets you hold.

    `model` is a model of the tickets' architecture, the working copy every blend is loaded into (its weights are
    overwritten); `tickets` maps keys (an IMP run's levels) to (dense-space state dict, mask), `target` among them.
    From the target, each candidate (default: the other tickets by adjacency, `adjacency_order`) is blended in at
    every alpha `sweep_order(alphas, patience)` gives; each blend is returned to the target's sparsity by
    `reprune(model, target_mask)` (default for weight tickets: global magnitude to the target's count; a dense target
    is never re-pruned), its BatchNorm statistics are recomputed by `recalibrate(model, mask)` (None: kept; the
    target's are recomputed the same way before it is scored, so a blend never wins or loses on the recalibration
    alone, and a search that accepts nothing returns the target recalibrated) and it is scored by
    `evaluate(model, mask)`: your validation accuracy, a bool tensor of each validation image's correctness, or
    (correctness, per-image cross-entropy). A candidate's best alpha (the highest accuracy, the smallest alpha on a
    tie) replaces the running best only if the `acceptance` rule (lt_plugin.acceptance) says so, over the search's
    `tries` = alphas x candidates comparisons: "paper" (the paper's rule) for any gain, "paired" (needs the
    correctness) if McNemar's exact test gives p < significance / tries, "loss" (needs the cross-entropy too) if a
    paired t test on the per-image losses does, the accuracy not lower, "confirm" (needs `selection`, the images the
    search selects on: `acceptance.confirmation_split`) searching on the selection images with the paper's rule and
    keeping the final blend only if one McNemar test on the others gives p < significance. Under "paired", "loss"
    and "confirm" the chance of keeping a blend no better than the target is at most `significance`; many blends
    compared on a few hundred images pick noise otherwise.
    """
    target_state, target_mask = tickets[target]
    blender = _Blender(model, tickets, target, reprune or _default_reprune(target_mask), recalibrate)
    candidates = adjacency_order(target, list(tickets)) if candidates is None else list(candidates)
    rule = Rule(acceptance, len(alphas) * len(candidates), significance, selection)  # the family, fixed first
    blender.load(target_state, target_mask)
    blender.finish(target_mask)  # the target's statistics recomputed as every blend's are: one treatment for all
    current = target_scores = as_scores(evaluate(model, target_mask), acceptance)  # the running best's
    found = PooledTicket(snapshot(model), target_mask, rule.accuracy(current), [], [], 1, 0)
    target_state = found.state
    for candidate in candidates:
        best = None  # (accuracy, alpha, state, mask, scores): the highest accuracy, the smallest alpha on a tie
        scores, order, accuracy = [], sweep_order(alphas, patience), None
        while True:
            try:
                alpha = order.send(accuracy)
            except StopIteration:
                break
            mask = blender.load_blend(found.state, candidate, alpha)
            blender.finish(mask)
            scored = as_scores(evaluate(model, mask), acceptance)
            accuracy = rule.accuracy(scored)
            scores.append([alpha, accuracy])
            if best is None or (accuracy, -alpha) > (best[0], -best[1]):
                best = (accuracy, alpha, snapshot(model), mask, scored)
        found.val_passes += len(scores)
        sweep = {"candidate": candidate, "scores": scores}
        accept = False
        if best is not None:
            accept, reasons = rule.accepts(best[4], current)
            sweep.update(reasons)
        found.sweeps.append(sweep)
        if accept:
            found.val_accuracy, _, found.state, found.mask, current = best
            found.accepted.append([candidate, best[1]])
    if found.accepted:
        kept, found.confirmation = rule.confirms(current, target_scores)
        if not kept:  # the held-out half does not confirm the search: the target stands
            found.state, found.mask, found.val_accuracy = target_state, target_mask, rule.accuracy(target_scores)
            found.accepted = []
    found.recalibrations = blender.recalibrations
    return found


def swa_alphas(count: int) -> List[float]:
    """The SWA baseline's alphas for `count` candidates: the i-th (from 0) enters the running blend at 1 / (i + 2),
    so that, re-pruning aside, the blend is the uniform mean of the target and the candidates so far."""
    return [1 / (i + 2) for i in range(count)]


def running_blend(model: nn.Module, tickets: Mapping[Hashable, Tuple[State, Mask]], target: Hashable,
                  candidates: Sequence, alphas: Sequence[float], *,
                  reprune: Optional[Callable[[nn.Module, Mask], Mask]] = None,
                  recalibrate: Optional[Callable[[nn.Module, Mask], None]] = None) -> Tuple[State, Mask]:
    """A blend with a fixed alpha per candidate, returned to the target's sparsity after each, BatchNorm statistics
    recomputed at the end: the SWA (`swa_alphas`) and EMA (a fixed alpha) baselines as the Lottery Pools reference
    makes them; no candidates gives the target recalibrated. Returns (state, mask)."""
    target_state, target_mask = tickets[target]
    blender = _Blender(model, tickets, target, reprune or _default_reprune(target_mask), recalibrate)
    state, mask = target_state, target_mask
    for candidate, alpha in zip(candidates, alphas):
        mask = blender.load_blend(state, candidate, alpha)
        state = snapshot(model)
    blender.load(state, mask)
    blender.finish(mask)
    return snapshot(model), mask
