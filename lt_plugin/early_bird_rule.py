"""The Early-Bird rule (You et al., ICLR 2020): channel masks drawn from normalisation scales, their distance, and
the detector that declares the ticket found. The slimming penalty the search trains with is a callback
(lt_plugin.callbacks.SlimmingPenalty); the strategy (strategies.early_bird) and the own-loop pruner
(early_bird_pruner.EarlyBirdPruner) both use what is here.
"""

from __future__ import annotations

from collections import deque
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch_pruning as tp
from torch import nn

from .errors import UserError
from .masks import Mask
from .structure import IMPORTANCES, ChannelStructure

EARLY_BIRD_SCORES = ("auto", "bn-scale", "magnitude")
# What the mask distance compares: every normalisation-layer channel (the reference's: all BatchNorm channels), or
# every output channel of the prunable Conv/Linear weights (lt_plugin before 0.1.0's methods-exact release).
DISTANCES = ("norm", "outputs")


def mask_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normalised Hamming distance of two channel masks: 1 - (agreeing channels / all channels), compared on `a`'s
    device (the flags of a check read from its file meet those of a check made on a GPU)."""
    if a.shape != b.shape:
        raise ValueError(f"masks of {a.numel()} and {b.numel()} channels cannot be compared")
    return int(torch.count_nonzero(a != b.to(a.device))) / a.numel()  # exact: 1 of 10 channels is 0.1


class EarlyBirdDetector:
    """The Early-Bird rule: a FIFO of the last `window` channel masks; the ticket has emerged when the newest mask's
    distance to every older mask in it is at most `epsilon` (the reference's boundary: exactly epsilon counts).

    Drive it from any training loop: `if detector.update(mask): ...`, with a `Mask` (its channels are compared) or a
    bool tensor of channel flags (e.g. `|gamma| > threshold` over all BatchNorm layers).
    """

    def __init__(self, window: int = 5, epsilon: float = 0.1):
        if window < 2:
            raise UserError(f"window must be 2 or more (the newest mask and at least one older), not {window}")
        if not 0.0 <= epsilon <= 1.0:
            raise UserError(f"epsilon must be in [0, 1], not {epsilon}")
        self.window, self.epsilon = window, epsilon
        self._older: deque = deque(maxlen=window - 1)  # the masks before the newest
        self.distances: List[List[float]] = []   # per update: the newest mask's distance to each older, oldest first
        self.found_at: Optional[int] = None       # index of the first update at which the rule held

    def update(self, mask: Union[Mask, torch.Tensor]) -> bool:
        """Add the newest mask; True if the rule holds now."""
        flags = mask.channel_flags() if isinstance(mask, Mask) else torch.as_tensor(mask).reshape(-1).bool()
        distances = [mask_distance(flags, older) for older in self._older]
        self._older.append(flags)
        self.distances.append(distances)
        emerged = len(distances) == self.window - 1 and max(distances) <= self.epsilon
        if emerged and self.found_at is None:
            self.found_at = len(self.distances) - 1
        return emerged

    @property
    def found(self) -> bool:
        return self.found_at is not None

    def state_dict(self) -> dict:
        """The masks in the window and the distances seen: tensors and plain values, for a checkpoint."""
        return {"window": self.window, "epsilon": self.epsilon, "older": [flags.cpu() for flags in self._older],
                "distances": [list(d) for d in self.distances], "found_at": self.found_at}

    def load_state_dict(self, state: dict) -> None:
        if (state["window"], state["epsilon"]) != (self.window, self.epsilon):
            raise UserError(f"the detector's state is of window {state['window']} and epsilon {state['epsilon']}, "
                            f"not {self.window} and {self.epsilon}")
        self._older = deque((torch.as_tensor(flags).bool() for flags in state["older"]), maxlen=self.window - 1)
        self.distances = [list(d) for d in state["distances"]]
        self.found_at = state["found_at"]


def norm_scales(model: nn.Module, ignored: Sequence[nn.Module] = ()) -> Dict[str, nn.Parameter]:
    """The normalisation scales the penalty and the `bn-scale` score act on: every BatchNorm weight, or on a model
    without BatchNorm every LayerNorm/GroupNorm weight."""
    ignored_ids = {id(m) for m in ignored}
    norms = {name: m for name, m in model.named_modules() if id(m) not in ignored_ids}
    batch_norms = {n: m for n, m in norms.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    chosen = batch_norms or {n: m for n, m in norms.items() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))}
    return {f"{n}.weight": m.weight for n, m in chosen.items() if isinstance(getattr(m, "weight", None), nn.Parameter)}


def resolve_score(score: str, model: nn.Module) -> str:
    """The channel score of Early-Bird's masks: bn-scale (|gamma| of BatchNorm) for "auto" on a BatchNorm model,
    else magnitude (a model normalised by LayerNorm has no gamma to rank, You et al.'s score does not apply)."""
    if score not in EARLY_BIRD_SCORES:
        raise UserError(f"score must be one of {', '.join(EARLY_BIRD_SCORES)}, not {score!r}")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if score == "auto":
        return "bn-scale" if has_bn else "magnitude"
    if score == "bn-scale" and not has_bn:
        raise UserError(f"--score bn-scale needs BatchNorm layers; {type(model).__name__} has none (use magnitude)")
    return score


def early_bird_importance(score: str) -> tp.importance.Importance:
    """The Torch-Pruning importance of a score. The reference ranks raw |gamma| against one global threshold: no
    per-group normalisation. A channel that several BatchNorm layers share (a residual stream) scores its largest
    |gamma|: timm starts the last scale of each residual block at zero, which must not make the whole stream look
    unimportant."""
    if score == "bn-scale":
        return tp.importance.BNScaleImportance(group_reduction="max", normalizer=None)
    return IMPORTANCES["magnitude"]()


def channel_flags(mask: Mask, norms: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """What Early-Bird's distance compares, one flag per channel: whether each channel of the normalisation layers
    whose scales are `norms` ({name: scale}, `norm_scales`) is kept, as the reference compares every BatchNorm
    channel; without `norms` (a model with no normalisation layer), whether each output channel of each prunable
    weight is kept."""
    if not norms:
        return mask.channel_flags()
    return torch.cat([mask.tensors.get(name, torch.ones(scale.shape, dtype=torch.bool, device=scale.device))
                      .reshape(-1) for name, scale in norms.items()])


def draw_channel_flags(structure: ChannelStructure, ratios: Sequence[float],
                       norms: Optional[Dict[str, torch.Tensor]] = None) -> Dict[float, Tuple[list, torch.Tensor]]:
    """For each ratio, the channel plan removing that fraction of channels by the structure's importance on the
    model's current weights, and its channel flags (what Early-Bird's rule compares, `channel_flags`)."""
    plans = structure.plans_at_ratios(ratios)
    return {ratio: (plan, channel_flags(structure.mask_from_plan(plan), norms)) for ratio, plan in plans.items()}

