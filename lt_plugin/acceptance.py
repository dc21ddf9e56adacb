"""Lottery Pools' acceptance rules: when the greedy search keeps a blend over the running best.

The search compares many blends (alphas x candidates) on one validation split; on a few hundred images the best of
them wins by noise alone. Each rule decides on the same per-image scores (`SampleScores`: right or wrong, the
cross-entropy) and is safe in its own way:

- `paper`: any gain in validation accuracy (Yin, Liu et al., Algorithm 2): no protection against picking noise.
- `paired`: McNemar's exact test on the images the blend and the running best disagree on, at significance /
  tries (Bonferroni over every blend the search may compare): a search accepts a no-better blend with chance at
  most `significance`; it needs a gain of log2(tries / significance) images, losing none.
- `loss`: the same Bonferroni level for a one-sided paired t test on the per-image cross-entropy differences, with
  the accuracy not lower: every image counts (a prediction that grows surer of the right class too), not only the
  few whose prediction flips.
- `confirm`: select, then confirm (sample splitting, as in honest model selection: Cox 1975, "A note on
  data-splitting for the evaluation of significance levels"; the held-out confirmation of model-soup recipes,
  Wortsman et al. 2022, picks ingredients on one split and reports another). The validation images are split in two
  (stratified, seeded); the paper's search runs on the selection half; its final blend is kept only if one
  McNemar test on the confirmation half, at `significance` with no correction, says it beats the target.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple, Union

import torch

from .errors import UserError
from .stats import mcnemar_exact, paired_loss_test

ACCEPTANCE = ("paired", "loss", "confirm", "paper")
SIGNIFICANCE = 0.05


@dataclasses.dataclass
class SampleScores:
    """A model's scores on the validation images: each image right or wrong, and its cross-entropy when known."""

    correct: torch.Tensor
    loss: Optional[torch.Tensor] = None

    def accuracy(self, where: Optional[torch.Tensor] = None) -> float:
        flags = self.correct if where is None else self.correct[where]
        return int(flags.sum()) / max(flags.numel(), 1)


Scored = Union[float, torch.Tensor, Tuple[torch.Tensor, torch.Tensor], SampleScores]


def as_scores(scored: Scored, acceptance: str) -> Union[float, SampleScores]:
    """What an `evaluate` returned, as the rule needs it: an accuracy for `paper`, else per-image scores (a bool
    tensor of each image's correctness; for `loss`, with each image's cross-entropy: a (correct, loss) pair)."""
    if isinstance(scored, tuple):
        scored = SampleScores(*scored)
    elif torch.is_tensor(scored):
        scored = SampleScores(scored.bool())
    if acceptance == "paper":
        return scored.accuracy() if isinstance(scored, SampleScores) else float(scored)
    if not isinstance(scored, SampleScores):
        raise UserError(f"acceptance={acceptance!r} needs evaluate(model, mask) to return each image's correctness "
                        "(a bool tensor), not an accuracy")
    if acceptance == "loss" and scored.loss is None:
        raise UserError("acceptance='loss' needs evaluate(model, mask) to return (correctness, per-image "
                        "cross-entropy)")
    return scored


def smallest_gain(tries: int, significance: float = SIGNIFICANCE) -> int:
    """The fewest images a blend must gain, losing none, to pass McNemar's test at significance / tries: what a
    split of n images can resolve is this / n."""
    return max(1, math.ceil(math.log2(tries / significance)))


def confirmation_split(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """True for the images the `confirm` rule selects on, False for those it confirms on: half of every class (the
    odd one of a class to selection), drawn with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    selection = torch.zeros(len(labels), dtype=torch.bool)
    for label in labels.unique():
        members = (labels == label).nonzero().reshape(-1)
        chosen = members[torch.randperm(len(members), generator=generator)[: (len(members) + 1) // 2]]
        selection[chosen] = True
    return selection


class Rule:
    """One acceptance rule over a search of `tries` blends; `selection` (the confirm rule) marks the images the
    search compares on."""

    def __init__(self, acceptance: str, tries: int, significance: float = SIGNIFICANCE,
                 selection: Optional[torch.Tensor] = None):
        if acceptance not in ACCEPTANCE:
            raise UserError(f"acceptance must be one of {', '.join(ACCEPTANCE)}, not {acceptance!r}")
        if not 0 < significance < 1:
            raise UserError(f"significance must be strictly between 0 and 1, not {significance}")
        if acceptance == "confirm" and selection is None:
            raise UserError("acceptance='confirm' needs selection: the images the search selects on "
                            "(lt_plugin.acceptance.confirmation_split(labels, seed))")
        self.acceptance, self.tries, self.significance, self.selection = acceptance, tries, significance, selection

    def accuracy(self, scores) -> float:
        """What the search compares blends on: the validation accuracy, on the selection half for `confirm`."""
        if isinstance(scores, float):
            return scores
        return scores.accuracy(self.selection if self.acceptance == "confirm" else None)

    def accepts(self, blend, current) -> Tuple[bool, dict]:
        """Whether a candidate's best blend replaces the running best (it already scores higher on `accuracy`, or
        for `loss` not lower), with what the decision rests on."""
        if self.acceptance in ("paper", "confirm"):
            return self.accuracy(blend) > self.accuracy(current), {}
        level = self.significance / self.tries
        if self.acceptance == "paired":
            gained, lost = _disagreements(blend, current)
            p = mcnemar_exact(gained, lost)
            return self.accuracy(blend) > self.accuracy(current) and p < level, \
                {"gained": gained, "lost": lost, "p_value": p}
        p = paired_loss_test(blend.loss, current.loss, method="t")
        difference = float((blend.loss - current.loss).mean())
        return self.accuracy(blend) >= self.accuracy(current) and p < level, \
            {"loss_difference": difference, "p_value": p}

    def confirms(self, final, target) -> Tuple[bool, Optional[dict]]:
        """At the end of a search that accepted blends: whether its final blend is kept (only `confirm` tests it
        again, once, on the images it did not select on)."""
        if self.acceptance != "confirm":
            return True, None
        held_out = ~self.selection
        gained, lost = _disagreements(final, target, held_out)
        p = mcnemar_exact(gained, lost)
        return p < self.significance, {"gained": gained, "lost": lost, "p_value": p,
                                       "images": int(held_out.sum())}

    def detectable_gain(self, images: int) -> Optional[float]:
        """The smallest gain, as a fraction of the validation images, this rule can accept (None: it depends on the
        spread of the per-image losses)."""
        if self.acceptance == "paper":
            return 1 / images
        if self.acceptance == "paired":
            return smallest_gain(self.tries, self.significance) / images
        if self.acceptance == "confirm":
            return smallest_gain(1, self.significance) / int((~self.selection).sum())
        return None


def _disagreements(new: SampleScores, old: SampleScores, where: Optional[torch.Tensor] = None) -> Tuple[int, int]:
    """(images the new model gets right and the old wrong, and the reverse), among `where`."""
    a, b = (new.correct, old.correct) if where is None else (new.correct[where], old.correct[where])
    return int((a & ~b).sum()), int((~a & b).sum())
