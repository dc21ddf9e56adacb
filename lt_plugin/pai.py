"""Pruning at initialisation (SNIP, GraSP, SynFlow, magnitude, random) and the gradual magnitude schedule.

These are the baselines the lottery-ticket papers compare against. The procedures follow the reference code of
Tanaka et al. 2020, ganguli-lab/Synaptic-Flow (`Pruners/pruners.py`, `prune.py`):

* Scores are taken with the model in eval mode (`prune_loop`'s default, ``--prune-train-mode False``), so BatchNorm
  uses its running statistics and dropout is off; the model's own train/eval flags are restored afterwards.
* Data-dependent scores sum the gradients of the per-batch mean cross-entropy over every batch given (the reference
  back-propagates each batch of its prune loader, 10 samples per class in batches of 256: one batch on CIFAR-10).
* The reference divides SNIP's and GraSP's scores by their sum; a positive factor does not change the mask, so the
  scores here are left unnormalised.
* Several rounds score the model with the current mask multiplied into the weights (the reference's masked
  forward), so pruned entries score zero; here they are also never chosen again.
* The kept count is the reference's: ``count - int((1 - density) * count)`` (its Pruner.mask), ties broken by index.
  Layers on their own rate get their quota inside the same round, from the same scores.
* Scored: the weights of Conv and Linear layers, no bias and no normalisation layer (the reference's defaults,
  --prune-bias and --prune-batchnorm off). Unlike the references (SNIP's, GraSP's and Synaptic-Flow's code score the
  classifier too), the classifier is left out unless a layer rate names it, so that every baseline prunes the
  weights IMP prunes (open_lth ignores `fc.weight`) and densities compare one for one.

Nothing here changes the model: scores come from `torch.func.functional_call` with detached copies of the weights
(SynFlow's |w| included). Scores are float64 tensors on the CPU, so that a mask does not depend on the device the
model is on.
"""

from __future__ import annotations

import contextlib
import math
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .errors import UserError
from .masks import SCOPES, Mask, kth_smallest, named_tensors, prunable_weight_names, resolve_ignored

CRITERIA = ("snip", "grasp", "synflow", "magnitude", "random")
GRASP_TEMPERATURE = 200.0  # the reference divides the logits by 200 in both of GraSP's passes
SYNFLOW_ITERATIONS = 100  # Tanaka et al. 2020: 100 rounds on the exponential schedule

Batch = Tuple[torch.Tensor, torch.Tensor]


# ---- saliency scores: name -> float64 CPU tensor of the weight's shape, larger = more important (GraSP aside) ----

@contextlib.contextmanager
def _scoring_mode(model: nn.Module):
    """Eval mode and gradients on for the duration; every module's own train/eval flag is restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training


def _weights(model: nn.Module, names: Sequence[str], mask: Optional[Mask] = None) -> Dict[str, torch.Tensor]:
    """Detached copies of the named weights with the mask multiplied in, as leaves that require grad."""
    tensors = named_tensors(model)
    out = {}
    for n in names:
        w = tensors[n].detach().clone()
        if mask is not None:
            w.mul_(mask.tensors[n].to(device=w.device, dtype=w.dtype))
        out[n] = w.requires_grad_()
    return out


def _to_cpu(scores: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {n: s.detach().to(device="cpu", dtype=torch.float64) for n, s in scores.items()}


def _loss_grads(model, weights, batches, temperature=1.0, create_graph=False):
    """Per batch, the gradient of the mean cross-entropy of ``model(x) / temperature`` w.r.t. `weights`."""
    leaves = list(weights.values())
    for inputs, targets in batches:
        loss = F.cross_entropy(functional_call(model, weights, (inputs,)) / temperature, targets)
        yield torch.autograd.grad(loss, leaves, create_graph=create_graph)


def snip_scores(model: nn.Module, batches: Iterable[Batch], names: Sequence[str],
                mask: Optional[Mask] = None) -> Dict[str, torch.Tensor]:
    """SNIP (Lee et al. 2019): |g * w|, g the gradient of the cross-entropy summed over `batches`."""
    weights = _weights(model, names, mask)
    total = None
    with _scoring_mode(model):
        for grads in _loss_grads(model, weights, batches):
            total = list(grads) if total is None else [t + g for t, g in zip(total, grads)]
    if total is None:
        raise UserError("SNIP needs at least one batch")
    return _to_cpu({n: (g * w).abs() for (n, w), g in zip(weights.items(), total)})


def grasp_scores(model: nn.Module, batches: Iterable[Batch], names: Sequence[str], mask: Optional[Mask] = None,
                 temperature: float = GRASP_TEMPERATURE) -> Dict[str, torch.Tensor]:
    """GraSP (Wang et al. 2020): -w * (H g), in the paper's sign: GraSP removes the weights with the LARGEST score.

    As the reference: the logits are divided by `temperature` (200) in both passes; g is the gradient summed over
    all batches, taken without a graph; then per batch, the gradient is taken with a graph and (g . grad) is
    back-propagated, which sums H g over the batches (double backward). H is the Hessian block of the scored
    weights. The reference keeps the largest w * (H g), the same mask. `batches` is read twice, so it is listed.
    """
    batches = list(batches)
    if not batches:
        raise UserError("GraSP needs at least one batch")
    weights = _weights(model, names, mask)
    leaves = list(weights.values())
    with _scoring_mode(model):
        g = [torch.zeros_like(w) for w in leaves]
        for grads in _loss_grads(model, weights, batches, temperature):
            g = [a + b for a, b in zip(g, grads)]
        hg = [torch.zeros_like(w) for w in leaves]
        for grads in _loss_grads(model, weights, batches, temperature, create_graph=True):
            z = sum((a * b).sum() for a, b in zip(g, grads))
            hg = [a + b for a, b in zip(hg, torch.autograd.grad(z, leaves, allow_unused=True, materialize_grads=True))]
    return _to_cpu({n: -(w.detach() * h) for (n, w), h in zip(weights.items(), hg)})


def synflow_scores(model: nn.Module, example_inputs: torch.Tensor, names: Sequence[str],
                   mask: Optional[Mask] = None) -> Dict[str, torch.Tensor]:
    """SynFlow (Tanaka et al. 2020), data-free: |dR/dw * w| with R the summed output for an all-ones input.

    As the reference, every floating-point entry of the state dict (weights, biases, BatchNorm's affine parameters
    and running statistics) is replaced by its absolute value, the model is in eval mode (BatchNorm uses the
    running statistics) and the input is ones of `example_inputs`' shape with batch 1. The pass runs in float32 (the
    reference's last commit) and again in double precision where float32 overflows (the paper's fix for deep
    networks, whose R is a product over every layer): a double-precision convolution is ~10x slower on a CPU.
    The model itself is not touched: the |w| live in copies.
    """
    for dtype in (torch.float32, torch.float64):
        scores = _synflow_pass(model, example_inputs, names, mask, dtype)
        if all(bool(torch.isfinite(s).all()) for s in scores.values()):
            break
    return _to_cpu(scores)


def _synflow_pass(model, example_inputs, names, mask, dtype) -> Dict[str, torch.Tensor]:
    persistent = set(model.state_dict())
    linear = {}
    for n, t in named_tensors(model).items():
        if t.is_floating_point():
            v = t.detach().to(dtype)
            linear[n] = v.abs() if n in persistent else v
    for n in names:
        w = linear[n]
        if mask is not None:
            w = w * mask.tensors[n].to(device=w.device, dtype=w.dtype)
        linear[n] = w.requires_grad_()
    ones = torch.ones((1, *example_inputs.shape[1:]), dtype=dtype, device=example_inputs.device)
    with _scoring_mode(model):
        r = functional_call(model, linear, (ones,)).sum()
        grads = torch.autograd.grad(r, [linear[n] for n in names], allow_unused=True, materialize_grads=True)
    return {n: (g * linear[n].detach()).abs() for n, g in zip(names, grads)}


def magnitude_scores(model: nn.Module, names: Sequence[str], mask: Optional[Mask] = None) -> Dict[str, torch.Tensor]:
    """|w| (masked entries score zero)."""
    return _to_cpu({n: w.detach().abs() for n, w in _weights(model, names, mask).items()})


def random_scores(model: nn.Module, names: Sequence[str], generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """Uniform random scores from a CPU generator, tensor by tensor in the order of `names`."""
    tensors = named_tensors(model)
    return {n: torch.rand(tensors[n].shape, generator=generator, dtype=torch.float64) for n in names}


# ---- masks from scores ----

def _keep_largest(flat: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask of the `n_keep` largest entries of `flat`; among equal scores the lower index is kept."""
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    if n_keep <= 0:
        return keep
    if n_keep >= flat.numel():
        return ~keep
    cut = kth_smallest(flat, flat.numel() - n_keep + 1)  # the n_keep-th largest score
    keep = flat > cut
    ties = torch.nonzero(flat == cut).flatten()[: n_keep - int(keep.sum())]
    keep[ties] = True
    return keep


def _select(scores: Sequence[torch.Tensor], allowed: Sequence[torch.Tensor], n_keep: int) -> list:
    """Keep the `n_keep` best entries of `scores` among the `allowed` ones, as masks of the scores' shapes."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    ok = torch.cat([a.reshape(-1) for a in allowed])
    if n_keep > int(ok.sum()):
        raise ValueError(f"cannot keep {n_keep} entries: the previous mask keeps only {int(ok.sum())}")
    if bool(ok.all()):
        keep = _keep_largest(flat, n_keep)
    else:
        keep = torch.zeros_like(ok)
        keep[ok] = _keep_largest(flat[ok], n_keep)
    return list(keep.split([s.numel() for s in scores]))


ROUNDINGS = ("round", "prune-floor")


def kept_count(count: int, density: float, rounding: str = "round") -> int:
    """How many of `count` entries a mask of `density` keeps: ``round(density * count)`` (Zhu & Gupta's pruning
    code), or ``count - int((1 - density) * count)`` ("prune-floor": Synaptic-Flow's Pruner.mask prunes the int() of
    the pruned share, for SNIP, GraSP, SynFlow, magnitude and random alike). The pruned share is rounded to 6
    decimals before its int(), so that a density that is an exact fraction of the count (IMP's levels) keeps exactly
    that many, whatever the float error of the product."""
    if rounding not in ROUNDINGS:
        raise UserError(f"rounding must be one of {', '.join(ROUNDINGS)}, not {rounding!r}")
    if rounding == "round":
        return round(density * count)
    return count - math.floor(round((1.0 - density) * count, 6))


def mask_from_scores(scores: Mapping[str, torch.Tensor], density: float, scope: str = "global",
                     previous: Optional[Mask] = None, layer_densities: Optional[Mapping[str, float]] = None,
                     rounding: str = "round") -> Mask:
    """A weight mask keeping the highest scores: exactly `kept_count` entries (`rounding`), counted over all the
    scored tensors (global) or per tensor (layerwise), ties broken by index (in the order of `scores`).

    `layer_densities` {name: density} gives tensors their own quota, kept within the tensor; the others follow
    `scope` at `density`. Entries `previous` pruned stay pruned and are never chosen. The mask is on the CPU;
    `prunable` = the scored names.
    """
    if scope not in SCOPES:
        raise UserError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    own = dict(layer_densities or {})
    for name, d in {"": density, **own}.items():
        if not 0.0 <= d <= 1.0:
            raise UserError(f"density{' of ' + name if name else ''} must be in [0, 1], not {d}")
    unknown = sorted(set(own) - set(scores))
    if unknown:
        raise UserError(f"layer densities name tensors that are not scored: {', '.join(unknown[:3])}")
    names = list(scores)
    values = {n: scores[n].detach().cpu() for n in names}
    if any(bool(torch.isnan(v).any()) for v in values.values()):
        raise ValueError("scores contain NaN")
    allowed = {n: previous.tensors[n].cpu() if previous is not None else torch.ones_like(v, dtype=torch.bool)
               for n, v in values.items()}

    def select(group: Sequence[str], d: float) -> Dict[str, torch.Tensor]:
        count = sum(values[n].numel() for n in group)
        kept = _select([values[n] for n in group], [allowed[n] for n in group], kept_count(count, d, rounding))
        return dict(zip(group, kept))

    rest = [n for n in names if n not in own]
    keep = {}
    for name, d in own.items():
        keep.update(select([name], d))
    if scope == "global" and rest:
        keep.update(select(rest, density))
    else:
        for name in rest:
            keep.update(select([name], density))
    return Mask({n: keep[n].reshape(values[n].shape) for n in names}, names, "weight")


# ---- pruning at initialisation ----

def prune_at_init(model: nn.Module, batches: Optional[Iterable[Batch]], criterion: str, density: float, *,
                  prunable: Optional[Sequence[str]] = None, ignored_layers: Optional[Iterable] = None,
                  scope: str = "global", iterations: Optional[int] = None,
                  example_inputs: Optional[torch.Tensor] = None, seed: int = 0,
                  layer_densities: Optional[Mapping[str, float]] = None) -> Mask:
    """A weight mask of `density` chosen by `criterion` (one of `CRITERIA`), without changing `model`.

    `batches` yields (inputs, targets) on the model's device, for snip and grasp (grasp reads them twice, each
    round). `prunable` defaults to the Conv/Linear weights outside `ignored_layers` and the classifier. `iterations`
    rounds (default 100 for synflow, 1 otherwise) prune to ``density ** (k / iterations)``, k = 1..iterations,
    rescoring each round with the current mask multiplied into the weights, as the reference's prune_loop, and
    keeping Synaptic-Flow's count (`kept_count`, "prune-floor"). `layer_densities` {weight name: its final density}
    gives layers their own quota, ``d ** (k / iterations)`` within the layer in round k, from the same scores as the
    rest: one scoring of the whole network per round. synflow needs no data, only the input shape:
    `example_inputs`, or the first batch's inputs. GraSP keeps the entries with the smallest -w * (H g). `seed`
    seeds the random criterion (one stream for the whole mask).
    """
    if criterion not in CRITERIA:
        raise UserError(f"criterion must be one of {', '.join(CRITERIA)}, not {criterion!r}")
    if scope not in SCOPES:
        raise UserError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    if not 0.0 <= density <= 1.0:
        raise UserError(f"density must be in [0, 1], not {density}")
    iterations = iterations if iterations is not None else (SYNFLOW_ITERATIONS if criterion == "synflow" else 1)
    if iterations < 1:
        raise UserError(f"iterations must be at least 1, not {iterations}")
    names = list(prunable) if prunable is not None else prunable_weight_names(model,
                                                                                resolve_ignored(model, ignored_layers))
    own = dict(layer_densities or {})
    names += [n for n in own if n not in names]
    if criterion in ("snip", "grasp"):
        if batches is None:
            raise UserError(f"{criterion} needs batches of (inputs, targets)")
        batches = list(batches)
    if criterion == "synflow" and example_inputs is None:
        first = next(iter(batches or ()), None)
        if first is None:
            raise UserError("synflow needs example_inputs (or a batch) for the input shape")
        example_inputs = first[0]
    generator = torch.Generator().manual_seed(seed)

    mask = None
    for k in range(1, iterations + 1):
        if criterion == "snip":
            scores = snip_scores(model, batches, names, mask)
        elif criterion == "grasp":
            scores = {n: -s for n, s in grasp_scores(model, batches, names, mask).items()}
        elif criterion == "synflow":
            scores = synflow_scores(model, example_inputs, names, mask)
        elif criterion == "magnitude":
            scores = magnitude_scores(model, names, mask)
        else:
            scores = random_scores(model, names, generator)
        fraction = k / iterations
        mask = mask_from_scores(scores, density ** fraction, scope, previous=mask, rounding="prune-floor",
                                layer_densities={n: d ** fraction for n, d in own.items()})
    return mask


# ---- gradual magnitude pruning (Zhu & Gupta 2017) ----

def gradual_density(step: int, start_step: int, end_step: int, frequency: int, final_density: float,
                    initial_density: float = 1.0) -> float:
    """Density at `step` on the cubic schedule of Zhu & Gupta 2017.

    Sparsity s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 with pruning at t0, t0 + dt, ..., t0 + n dt =
    `end_step` (t0 = `start_step`, dt = `frequency`), evaluated at the last pruning step t <= `step` (the step is
    rounded down to it); density = 1 - s, computed as d_f + (d_i - d_f) (1 - (t - t0) / (n dt))^3, the same
    formula. Before t0 and at t0 it is `initial_density`, at and after `end_step` exactly `final_density`. The
    density is not rounded: a mask keeps round(density * count) entries (`mask_from_scores`). It is
    `lt_plugin.schedules.scheduled_density("cubic", ...)`, where the other named schedules are.
    """
    from .schedules import scheduled_density
    return scheduled_density("cubic", step, start_step, end_step, frequency, final_density, initial_density)
