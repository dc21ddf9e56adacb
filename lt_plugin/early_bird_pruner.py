"""Early-Bird tickets (You et al., ICLR 2020) as a piece for your own training loop, in Torch-Pruning's slimming
words:

    pruner = EarlyBirdPruner(model, example_inputs, pruning_ratio=0.5)  # draws the initialisation's mask
    for epoch in ...:
        ...; loss.backward(); pruner.regularize(model, loss); optimizer.step()
        if pruner.update(epoch): break            # the Early-Bird rule held: the ticket has emerged
    small = pruner.step()                         # physically pruned, with the weights at emergence

The built-in `early-bird` strategy is made of the same pieces: the EarlyBirdDetector, the SlimmingPenalty and the
channel masks drawn by `draw_channel_flags`.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .callbacks import SlimmingPenalty
from .early_bird_rule import (DISTANCES, EarlyBirdDetector, draw_channel_flags, early_bird_importance, norm_scales,
                              resolve_score)
from .errors import UserError
from .masks import Mask, resolve_ignored, snapshot, unwrap_model
from .model_checks import device_of, inputs_on
from .pruner_arguments import refuse_interactive, refuse_options
from .structure import ChannelStructure, export

# Torch-Pruning arguments an Early-Bird ticket does not take (BNScalePruner's), beside pruner_arguments.NOT_TAKEN.
_NOT_TAKEN = {
    "reg": "the slimming penalty's strength is penalty= here (Torch-Pruning's BNScalePruner calls it reg)",
    "group_lasso": "Early-Bird's penalty is network slimming's L1 on each scale, not a group lasso",
    "global_pruning": "Early-Bird draws one threshold over all channels (the reference's): drop it",
    "pruning_ratio_dict": "Early-Bird draws one threshold over all channels (the reference's): use ignored_layers to "
                          "keep layers whole",
    "iterative_steps": "an Early-Bird ticket is drawn once, when the rule holds: drop it (IMPPruner prunes in steps)",
    "iterative_pruning_ratio_scheduler": "an Early-Bird ticket is drawn once, when the rule holds: drop it",
    "max_pruning_ratio": "Early-Bird draws one threshold over all channels (the reference's): use ignored_layers to "
                         "keep layers whole",
    "isomorphic": "Early-Bird draws one threshold over all channels (the reference's): drop it",
}


class EarlyBirdPruner:
    """Early-Bird tickets (You et al., ICLR 2020) for your own loop, in Torch-Pruning's slimming words.

    `regularize(model)` after `backward()` adds the network-slimming penalty (`penalty * sign(gamma)` on every
    BatchNorm scale, or LayerNorm/GroupNorm scale on a model without BatchNorm), as Torch-Pruning's BNScalePruner
    (`reg` overrides the strength for that call; a loss passed as Torch-Pruning's generic `regularize(model, loss)`
    is not needed: the penalty goes on the gradients); `update(epoch_or_step)` draws the channel mask at
    `pruning_ratio` (a fraction of channels, as Torch-Pruning's) from the current weights and returns whether the
    ticket has emerged: the newest of the last `window` masks is within `epsilon` of every older one
    (EarlyBirdDetector). As the reference, the first mask is the initialisation's, drawn when the pruner is built.
    `step()` returns the ticket physically pruned, with the weights it had when it emerged (a new model: the one
    trained is left as it is). `model` may be wrapped (DataParallel, DDP, Accelerate, torch.compile). `score`
    "auto" ranks channels by |gamma| on BatchNorm models (one global threshold) and by Torch-Pruning's group
    magnitude otherwise; `importance`, any `tp.importance.Importance`, ranks them instead. `distance` "norm"
    compares masks over every normalisation-layer channel (the reference's BatchNorm channels), "outputs" over the
    prunable layers' output channels. `forward_fn` and `output_transform` are Torch-Pruning's, for a model that
    takes or returns something other than a tensor. `state_dict()`/`load_state_dict()` (tensors and plain values)
    carry the masks seen, the distances and the ticket: `accelerator.register_for_checkpointing(pruner)` resumes
    the search where it was.
    """

    def __init__(self, model: nn.Module, example_inputs, importance=None, *, pruning_ratio: float = 0.5,
                 penalty: float = 1e-4, epsilon: float = 0.1, window: int = 5, score: str = "auto",
                 ignored_layers: Optional[Sequence] = None, round_to: Optional[int] = None, distance: str = "norm",
                 forward_fn=None, output_transform=None, **torch_pruning_options):
        refuse_options("EarlyBirdPruner", torch_pruning_options, _NOT_TAKEN)
        if not 0.0 < pruning_ratio < 1.0:
            raise UserError(f"pruning_ratio must be in (0, 1) (the fraction of channels removed), not {pruning_ratio}")
        if distance not in DISTANCES:
            raise UserError(f"distance must be one of {', '.join(DISTANCES)}, not {distance!r}")
        if importance is not None and score != "auto":
            raise UserError("score and importance both rank the channels: give one")
        model = unwrap_model(model)
        self.model, self.example_inputs, self.pruning_ratio = model, example_inputs, pruning_ratio
        self.forward_fn, self.output_transform = forward_fn, output_transform
        self.ignored = resolve_ignored(model, ignored_layers)
        self.score = "importance" if importance is not None else resolve_score(score, model)
        self.structure = ChannelStructure(model, example_inputs, self.ignored,
                                          importance=early_bird_importance(self.score) if importance is None else importance,
                                          scope="global", round_to=round_to, forward_fn=forward_fn,
                                          output_transform=output_transform)
        self.norms = norm_scales(model, self.ignored) if distance == "norm" else None
        self.penalty = SlimmingPenalty(norm_scales(model, self.ignored).values(), penalty)
        self.window, self.epsilon = window, epsilon
        self.reset()

    def reset(self) -> None:
        """The search starts again (Torch-Pruning's reset): no mask seen but the current weights', drawn now."""
        self.detector = EarlyBirdDetector(self.window, self.epsilon)
        self.checks: List[Union[int, float, None]] = []  # what each update was called with (None at the start)
        self.found_at: Union[int, float, None] = None     # ... at the update where the ticket emerged
        self._ticket: Optional[Tuple[list, Dict[str, torch.Tensor]]] = None
        self.update(None)

    def regularize(self, model: Optional[nn.Module] = None, reg=None, bias: bool = False, loss=None) -> None:
        """Add the slimming penalty to the scales' gradients of `model` (default: the pruner's; call it between
        `backward()` and `optimizer.step()`); `reg` is the strength of this call (default: `penalty`)."""
        if isinstance(reg, torch.Tensor):  # Torch-Pruning's generic regularize(model, loss): the loss is not needed
            reg = None
        if bias:
            raise UserError("Early-Bird's penalty is on the normalisation scales only (network slimming): drop bias")
        model = self.model if model is None else unwrap_model(model)
        scales = self.penalty.scales if model is self.model else list(norm_scales(model, self.ignored).values())
        SlimmingPenalty(scales, self.penalty.strength if reg is None else reg).add_to_gradients()

    def update_regularizer(self) -> None:
        """Nothing: the slimming penalty keeps its scales (Torch-Pruning's update_regularizer, for generic loops)."""

    def update(self, epoch_or_step: Union[int, float, None] = None) -> bool:
        """Draw the mask from the current weights; True once the ticket has emerged (and from then on)."""
        plan, flags = draw_channel_flags(self.structure, [self.pruning_ratio], self.norms)[self.pruning_ratio]
        self.checks.append(epoch_or_step)
        emerged = self.detector.update(flags)
        if emerged and self.found_at is None:
            self.found_at = epoch_or_step
            self._ticket = (plan, snapshot(self.model))
        return self.found_at is not None

    @property
    def mask(self) -> Optional[Mask]:
        """The emerged ticket's channel mask in the dense space (None before it emerged)."""
        return None if self._ticket is None else self.structure.mask_from_plan(self._ticket[0])

    def step(self, interactive: bool = False) -> nn.Module:
        """The emerged ticket physically pruned (Torch-Pruning's dependency graph), with its weights at emergence."""
        refuse_interactive("EarlyBirdPruner", interactive)
        if self._ticket is None:
            raise UserError("the Early-Bird ticket has not emerged yet: call update() at each check until it returns "
                            "True (pruner.found_at is then set)")
        plan, state = self._ticket
        dense = copy.deepcopy(self.model)
        dense.load_state_dict(state)
        return export(dense, self.structure.mask_from_plan(plan), inputs_on(self.example_inputs, device_of(dense)),
                      self.forward_fn, self.output_transform)

    def state_dict(self) -> dict:
        """The masks in the detector's window, the distances, the checks and the ticket (its plan and weights at
        emergence): tensors on the CPU and plain values."""
        plan, state = self._ticket if self._ticket is not None else (None, None)
        return {"pruner": "EarlyBirdPruner", "pruning_ratio": self.pruning_ratio, "detector": self.detector.state_dict(),
                "checks": list(self.checks), "found_at": self.found_at,
                "ticket_plan": None if plan is None else [list(entry) for entry in plan],
                "ticket_state": None if state is None else {k: v.detach().cpu().clone() for k, v in state.items()}}

    def load_state_dict(self, state: dict) -> None:
        if (state.get("pruner"), state.get("pruning_ratio")) != ("EarlyBirdPruner", self.pruning_ratio):
            raise UserError("the state is not of an EarlyBirdPruner of this pruning_ratio: build the pruner as the "
                            "saved one was built")
        self.detector.load_state_dict(state["detector"])
        self.checks, self.found_at = list(state["checks"]), state["found_at"]
        plan = state["ticket_plan"]
        self._ticket = None if plan is None else ([list(e) for e in plan], dict(state["ticket_state"]))
