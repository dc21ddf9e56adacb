"""The strategies' mechanics as pieces for your own training loop, in Torch-Pruning's words.

Torch-Pruning users build a pruner, call `pruner.step()` between rounds of fine-tuning and, for slimming,
`pruner.regularize(model)` between `backward()` and `optimizer.step()`. The same words give lottery tickets:

    pruner = IMPPruner(model, example_inputs, pruning_ratio=0.8, iterative_steps=3)   # density 0.2 after 3 steps
    train(model)                                  # level 0: dense
    for _ in range(pruner.iterative_steps):
        model = pruner.step(model)                # prune the trained weights, rewind the survivors (theta_0)
        pruner.mask_after_steps(optimizer_of(model))  # weight tickets: keep the pruned entries zero
        train(model)                              # a channel ticket comes back physically small

    pruner = EarlyBirdPruner(model, example_inputs, pruning_ratio=0.5)  # draws the initialisation's mask
    for epoch in ...:
        ...; loss.backward(); pruner.regularize(model); optimizer.step()
        if pruner.update(epoch): break            # the Early-Bird rule held: the ticket has emerged
    small = pruner.step()                         # physically pruned, with the weights at emergence

`lt_plugin.lottery_pool` (lt_plugin.pooling) pools the tickets you hold. The built-in strategies are made of the
same pieces: `create_mask` and the rewinding of IMPPruner, the EarlyBirdDetector, the SlimmingPenalty and the
channel masks drawn by `draw_channel_flags`.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch_pruning as tp
from torch import nn

from .callbacks import Callback, TrainState
from .errors import UserError
from .masks import (GRANULARITIES, Mask, classifier_weight_names, named_tensors, prunable_weight_names,
                    resolve_ignored, snapshot)
from .structure import IMPORTANCES, ChannelStructure, create_mask, export

EARLY_BIRD_SCORES = ("auto", "bn-scale", "magnitude")


def level_density(level: int, levels: int, total_weights: int, target_density: Optional[float] = None,
                  prune_fraction: float = 0.2) -> float:
    """The kept fraction of the prunable weights at IMP level `level` of `levels`: target_density^(level/levels)
    (a constant fraction of what is left), or, without a target, `prune_fraction` of the remaining weights pruned
    per level, counted in whole weights as open_lth counts them."""
    if target_density is not None:
        return target_density ** (level / levels) if levels else 1.0
    remaining = total_weights
    for _ in range(level):
        remaining -= math.ceil(prune_fraction * remaining)
    return remaining / total_weights


# ---------------------------------------------------------------- Early-Bird: the rule, the penalty, the score

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


def norm_scales(model: nn.Module, ignored: Sequence[nn.Module] = ()) -> Dict[str, nn.Parameter]:
    """The normalisation scales the penalty and the `bn-scale` score act on: every BatchNorm weight, or on a model
    without BatchNorm every LayerNorm/GroupNorm weight."""
    ignored_ids = {id(m) for m in ignored}
    norms = {name: m for name, m in model.named_modules() if id(m) not in ignored_ids}
    batch_norms = {n: m for n, m in norms.items() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    chosen = batch_norms or {n: m for n, m in norms.items() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))}
    return {f"{n}.weight": m.weight for n, m in chosen.items() if isinstance(getattr(m, "weight", None), nn.Parameter)}


class SlimmingPenalty(Callback):
    """Network slimming's L1 penalty: `strength * sign(gamma)` added to each scale's gradient (its subgradient),
    after backward and before the optimizer step (`fit` calls it on unscaled gradients under fp16)."""

    def __init__(self, scales: Sequence[nn.Parameter], strength: float):
        self.scales, self.strength = list(scales), strength

    @torch.no_grad()
    def add_to_gradients(self) -> None:
        for gamma in self.scales:
            if gamma.grad is not None:
                gamma.grad.add_(torch.sign(gamma), alpha=self.strength)

    def before_optimizer_step(self, state: TrainState) -> None:
        self.add_to_gradients()


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


def draw_channel_flags(structure: ChannelStructure, ratios: Sequence[float]) -> Dict[float, Tuple[list, torch.Tensor]]:
    """For each ratio, the channel plan removing that fraction of channels by the structure's importance on the
    model's current weights, and its channel flags (what Early-Bird's rule compares)."""
    plans = structure.plans_at_ratios(ratios)
    return {ratio: (plan, structure.mask_from_plan(plan).channel_flags()) for ratio, plan in plans.items()}


# ---------------------------------------------------------------- the pruners

class IMPPruner:
    """Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020) for your own loop.

    Arguments Torch-Pruning's pruners have keep their names and meaning, but for `pruning_ratio`: here it is the
    fraction of the prunable (Conv/Linear) *weights* removed after all `iterative_steps` steps, for weight and for
    channel tickets alike (Torch-Pruning's is a fraction of channels), reached as a constant fraction of what is
    left per step: the density after step k is (1 - pruning_ratio)^(k / iterative_steps), as `lt-plugin imp
    --target-density 1-r --levels n` prunes. Without `pruning_ratio`, each step prunes `prune_fraction` of the
    remaining weights (IMP's 20%, open_lth's counting). `importance` is any `tp.importance.Importance` or a name in
    IMPORTANCES (channel tickets; weight tickets rank |w|), `global_pruning` one threshold over all layers,
    `ignored_layers` modules or names left unpruned (the classifier always is), `round_to` channel counts rounded,
    `pruning_ratio_dict` {module or its name: the fraction of that layer's weights removed after all steps} for
    layers pruned at their own rate, each on its own (weight tickets; naming the classifier prunes it).

    The rewind point is the model's weights when the pruner is built (theta_0); `rewind_point()` takes the current
    weights instead (late rewinding, e.g. at iteration k); `rewind=False` keeps the trained weights (learning-rate
    rewinding and fine-tuning, whose schedule is your loop's). `step(trained)` prunes the trained weights to the
    next level, never reviving what earlier levels removed, rewinds the survivors and returns the model to train:
    the pruner's dense model for weight tickets (keep its pruned entries zero with `apply_mask()` or
    `mask_after_steps(optimizer)`), a physically smaller copy for channel tickets (pass it back to the next
    `step`, which maps its weights into the dense space).
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, importance=None,
                 pruning_ratio: Optional[float] = None, iterative_steps: int = 1, global_pruning: bool = True,
                 ignored_layers: Optional[Sequence] = None, round_to: Optional[int] = None,
                 granularity: str = "weight", rewind: bool = True, prune_fraction: float = 0.2,
                 pruning_ratio_dict: Optional[Dict[Union[nn.Module, str], float]] = None):
        if granularity not in GRANULARITIES:
            raise UserError(f"granularity must be one of {', '.join(GRANULARITIES)}, not {granularity!r}")
        if pruning_ratio is not None and not 0.0 <= pruning_ratio < 1.0:
            raise UserError(f"pruning_ratio must be in [0, 1) (the fraction of weights removed), not {pruning_ratio}")
        if not (isinstance(iterative_steps, int) and iterative_steps >= 1):
            raise UserError(f"iterative_steps must be 1 or more, not {iterative_steps}")
        self.model, self.example_inputs = model, example_inputs
        self.importance, self.granularity, self.round_to = importance, granularity, round_to
        self.scope = "global" if global_pruning else "layerwise"
        self.ignored_layers = list(ignored_layers or [])
        self.iterative_steps, self.prune_fraction, self.rewind = iterative_steps, prune_fraction, rewind
        self.target_density = None if pruning_ratio is None else 1.0 - pruning_ratio
        names = {id(m): n for n, m in model.named_modules()}
        self.own_ratios = {f"{layer if isinstance(layer, str) else names[id(layer)]}.weight": float(ratio)
                           for layer, ratio in (pruning_ratio_dict or {}).items()}
        if self.own_ratios and granularity != "weight":
            raise UserError("pruning_ratio_dict applies to weight tickets; channel tickets follow Torch-Pruning's "
                            "groups")
        self._prune_classifier = bool(classifier_weight_names(model) & set(self.own_ratios))
        prunable = prunable_weight_names(model, resolve_ignored(model, self.ignored_layers,
                                                                ignore_classifier=not self._prune_classifier))
        self._total = sum(named_tensors(model)[n].numel() for n in prunable if n not in self.own_ratios)
        self.mask = Mask.ones(model, prunable, granularity)
        self.current_step = 0
        self._history: List[dict] = []
        self._rewind_state = snapshot(model) if rewind else None
        self._enforce, self._enforced_on = None, None

    def rewind_point(self) -> None:
        """The model's current weights become the point survivors are rewound to (late rewinding)."""
        self._rewind_state = snapshot(self.model)

    def density(self, step: int) -> float:
        """The kept fraction of the prunable weights (but those of pruning_ratio_dict) after `step` steps."""
        return level_density(step, self.iterative_steps, self._total, self.target_density, self.prune_fraction)

    def _absorb(self, trained: Optional[nn.Module]) -> None:
        """The weights of the model trained at the current step, in the pruner's dense model."""
        if trained is None or trained is self.model:
            return
        dense = self.mask.to_dense(trained.state_dict(), self.model.state_dict())
        self.model.load_state_dict(dense)

    def step(self, trained: Optional[nn.Module] = None) -> nn.Module:
        """Prune the trained weights to the next level's density and rewind the survivors; returns the model to
        train at that level. `trained`: the model trained at the current level (what the last step returned;
        default: the pruner's model)."""
        if self.current_step >= self.iterative_steps:
            raise UserError(f"the pruner has taken its {self.iterative_steps} iterative steps")
        self._absorb(trained)
        step = self.current_step + 1
        own = {name: (1.0 - ratio) ** (step / self.iterative_steps) for name, ratio in self.own_ratios.items()}
        mask = create_mask(self.model, self.example_inputs, self.density(step), self.granularity,
                           importance=self.importance, scope=self.scope, ignored_layers=self.ignored_layers,
                           previous=self.mask, round_to=self.round_to, layer_densities=own,
                           ignore_classifier=not self._prune_classifier)
        if self._rewind_state is not None:
            self.model.load_state_dict(self._rewind_state)
        self.mask = mask
        mask.apply(self.model)
        self.current_step += 1
        self._history.append({"step": self.current_step, "density": mask.density, "plan": mask.plan})
        self._enforce = None
        return export(self.model, mask, self.example_inputs) if self.granularity == "channel" else self.model

    def apply_mask(self) -> None:
        """Zero the pruned entries of the pruner's model again (after an optimizer step of a weight ticket); bound
        to the model's tensors where they are, and rebound when the model moves. A channel ticket trains physically
        small: there is nothing to zero."""
        if self.granularity == "channel":
            return
        device = next(self.model.parameters()).device
        if self._enforce is None or self._enforced_on != device:
            self._enforce, self._enforced_on = self.mask.enforcer(self.model), device
        self._enforce()

    def mask_after_steps(self, optimizer: torch.optim.Optimizer):
        """Keep the mask enforced after every `optimizer.step()` (a torch step post-hook); returns its handle."""
        return optimizer.register_step_post_hook(lambda *_: self.apply_mask())

    def pruning_history(self) -> list:
        """Torch-Pruning's pruning history of the current channel ticket, [[root module, is_out_channel_fn,
        [indices]], ...], which replays the export on a fresh model; empty for weight tickets."""
        return [list(entry) for entry in self.mask.plan]

    def levels(self) -> List[dict]:
        """Each step taken: {"step", "density", "plan"}."""
        return list(self._history)

    def save_level(self, run_dir, trained: Optional[nn.Module] = None, metrics: Optional[dict] = None,
                   model_name: Optional[str] = None) -> Path:
        """The current ticket as a level of an IMP run folder (config.json, level_K/mask, weights and result.json),
        so that `lt-plugin export --run RUN_DIR --level K` ships it and `lt-plugin lottery-pools` can pool the
        levels. `metrics` (e.g. {"test_accuracy": ...}) go into its result; `model_name` is the timm name of the
        model (default: the one timm recorded when it built it)."""
        from .strategies.imp import IMP  # the run folder's layout is the strategy's
        from .store import atomic_save_safetensors, atomic_write_json
        self._absorb(trained)
        run_dir = Path(run_dir)
        model_name = model_name or getattr(self.model, "pretrained_cfg", {}).get("architecture")
        if model_name is None:
            raise UserError("save_level needs model_name: the timm name that builds this model")
        names = {id(m): n for n, m in self.model.named_modules()}
        ignore = [layer if isinstance(layer, str) else names[id(layer)] for layer in self.ignored_layers]
        imp = IMP(model=model_name, image_size=int(self.example_inputs.shape[-1]), levels=self.iterative_steps,
                  granularity=self.granularity, scope=self.scope, ignore=ignore, round_to=self.round_to,
                  importance=self.importance if isinstance(self.importance, str) else "magnitude")
        config = {"strategy": "imp", "hparams": imp.hparams(), "world_size": 1, "written_by": "IMPPruner"}
        atomic_write_json(config, run_dir / "config.json")
        level_dir = run_dir / f"level_{self.current_step}"
        self.mask.save(level_dir / "mask.safetensors")
        atomic_save_safetensors(self.model.state_dict(), level_dir / "weights.safetensors")
        classifier = self.model.get_classifier() if hasattr(self.model, "get_classifier") else None
        result = {"level": self.current_step, "density": self.mask.density,
                  "num_classes": getattr(self.model, "num_classes", getattr(classifier, "out_features", None)),
                  **(metrics or {})}
        atomic_write_json(result, level_dir / "result.json")
        return level_dir

    def export(self, trained: Optional[nn.Module] = None) -> nn.Module:
        """The ticket as it ships: physically pruned for channel tickets, a masked dense copy for weight tickets."""
        self._absorb(trained)
        if self.granularity == "channel":
            return export(self.model, self.mask, self.example_inputs)
        return self.mask.apply(copy.deepcopy(self.model))


class EarlyBirdPruner:
    """Early-Bird tickets (You et al., ICLR 2020) for your own loop, in Torch-Pruning's slimming words.

    `regularize(model)` after `backward()` adds the network-slimming penalty (`penalty * sign(gamma)` on every
    BatchNorm scale, or LayerNorm/GroupNorm scale on a model without BatchNorm); `update(epoch_or_step)` draws the
    channel mask at `pruning_ratio` (a fraction of channels, as Torch-Pruning's) from the current weights and
    returns whether the ticket has emerged: the newest of the last `window` masks is within `epsilon` of every
    older one (EarlyBirdDetector). As the reference, the first mask is the initialisation's, drawn when the pruner
    is built. `step()` returns the ticket physically pruned, with the weights it had when it emerged.
    `score` "auto" ranks channels by |gamma| on BatchNorm models (one global threshold) and by Torch-Pruning's
    group magnitude otherwise.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor, pruning_ratio: float = 0.5,
                 penalty: float = 1e-4, epsilon: float = 0.1, window: int = 5, score: str = "auto",
                 ignored_layers: Optional[Sequence] = None, round_to: Optional[int] = None):
        if not 0.0 < pruning_ratio < 1.0:
            raise UserError(f"pruning_ratio must be in (0, 1) (the fraction of channels removed), not {pruning_ratio}")
        self.model, self.example_inputs, self.pruning_ratio = model, example_inputs, pruning_ratio
        ignored = resolve_ignored(model, ignored_layers)
        self.score = resolve_score(score, model)
        self.structure = ChannelStructure(model, example_inputs, ignored, importance=early_bird_importance(self.score),
                                          scope="global", round_to=round_to)
        self.penalty = SlimmingPenalty(norm_scales(model, ignored).values(), penalty)
        self.detector = EarlyBirdDetector(window, epsilon)
        self.checks: List[Union[int, float, None]] = []  # what each update was called with (None at the start)
        self.found_at: Union[int, float, None] = None     # ... at the update where the ticket emerged
        self._ticket: Optional[Tuple[list, Dict[str, torch.Tensor]]] = None
        self.update(None)

    def regularize(self, model: Optional[nn.Module] = None) -> None:
        """Add the slimming penalty to the scales' gradients (call it between `backward()` and `optimizer.step()`)."""
        self.penalty.add_to_gradients()

    def update(self, epoch_or_step: Union[int, float, None] = None) -> bool:
        """Draw the mask from the current weights; True once the ticket has emerged (and from then on)."""
        plan, flags = draw_channel_flags(self.structure, [self.pruning_ratio])[self.pruning_ratio]
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

    def step(self) -> nn.Module:
        """The emerged ticket physically pruned (Torch-Pruning's dependency graph), with its weights at emergence."""
        if self._ticket is None:
            raise UserError("the Early-Bird ticket has not emerged yet: call update() at each check until it does")
        plan, state = self._ticket
        dense = copy.deepcopy(self.model)
        dense.load_state_dict(state)
        return export(dense, self.structure.mask_from_plan(plan), self.example_inputs)
