"""Instant Soup Pruning's mask step (Jaiswal, Liu, Chen, Ding, Wang, ICML 2023; code VITA-Group/instant_soup): before
each pruning of one training pass, N "denoisers" copy the model and its mask, each trains a few look-ahead steps
on its own random subset of the training data with a fresh optimizer, and is magnitude-pruned by a share of the
weights that remain; their masks are merged (union, or intersection) and brought to the round's exact count.

`InstantSoupRounds` is the schedule of those mask steps in the form `gradual.GradualPruning` takes (the callback
that prunes during `fit`, kill -9 safe), so Instant Soup is gradual pruning whose mask step is made of denoisers:
rounds every `every` optimizer steps, each keeping (1 - `fraction`) of the weights that remain (never below the
final density), and one more step that prunes the rest at once by the model's own magnitudes; the training then
fine-tunes to its end.

Each denoiser's mask is a file of the training folder (`denoiser_{k}_{j}`), read back instead of trained again
when a killed run replays the round; on several processes denoiser j trains on process j % P, each on its own
device with no gradient all-reduce, and every process merges the same masks.
"""

from __future__ import annotations

import dataclasses
from typing import List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .layout import FitFolder
from .loaders import DeviceNormalize, make_loader, on_device
from .masks import Mask, unwrap_model
from .pai import magnitude_scores, mask_from_scores
from .train.config import TrainConfig, create_optimizer, create_scheduler

MERGES = ("union", "intersection")
Densities = tuple  # (density of the weights ranked together, {weight name: its own density})


def exact_mask(scores: Mapping[str, torch.Tensor], allowed: Mask, densities: Densities, scope: str) -> Mask:
    """The highest `scores` among the entries `allowed` keeps, exactly round(density * size) of them: over the
    weights ranked together (global or per layer, `scope`), and in each weight of its own density on its own."""
    rest_density, own = densities
    rest = [n for n in allowed.prunable if n not in own]
    keep = {}
    if rest:
        keep.update(mask_from_scores({n: scores[n] for n in rest}, rest_density, scope, previous=allowed).tensors)
    for name, density in own.items():
        keep.update(mask_from_scores({name: scores[name]}, density, "layerwise", previous=allowed).tensors)
    return Mask({n: keep[n] for n in allowed.prunable}, allowed.prunable, "weight")


def merge_masks(masks: Sequence[Mask], merge: str, model_scores: Mapping[str, torch.Tensor], current: Mask,
                densities: Densities, scope: str) -> Mask:
    """The denoisers' masks merged and brought to the round's exact count in one step: `union` keeps what any
    denoiser keeps, then drops the union's smallest weights of the model (`model_scores`, |w|) until the count is
    the round's; `intersection` keeps what every denoiser keeps, then adds the largest weights of the model the
    current mask keeps until it is. Each denoiser's mask has the round's count, so a union is never short of it
    and an intersection never over it."""
    if merge not in MERGES:
        raise UserError(f"merge must be one of {', '.join(MERGES)}, not {merge!r}")
    if merge == "union":
        union = {n: torch.stack([m.tensors[n].cpu() for m in masks]).any(dim=0) for n in current.prunable}
        return exact_mask(model_scores, Mask(union, current.prunable), densities, scope)
    common = {n: torch.stack([m.tensors[n].cpu() for m in masks]).all(dim=0) for n in current.prunable}
    ranked = {n: model_scores[n].masked_fill(common[n], float("inf")) for n in current.prunable}
    return exact_mask(ranked, current, densities, scope)


def round_count(final: Densities, fraction: float) -> int:
    """The denoiser rounds a training needs: each keeps (1 - fraction) of what remains, while that stays above the
    final density of some weights (the step after them prunes the rest at once)."""
    rest, own = final
    finals = [rest, *own.values()]
    rounds = 0
    while any((1.0 - fraction) ** (rounds + 1) > density for density in finals):
        rounds += 1
    return rounds


def round_densities(final: Densities, fraction: float, round_index: int) -> Densities:
    """The densities after round `round_index` (from 1): (1 - fraction)^r of every weight, never below its final."""
    rest, own = final
    kept = (1.0 - fraction) ** round_index
    return max(kept, rest), {name: max(kept, density) for name, density in own.items()}


def lr_at(cfg: TrainConfig, per_epoch: int, step: int) -> float:
    """The learning rate of the optimizer step after `step` in a training of `cfg` (what `fit` runs at)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = create_scheduler(optimizer, cfg, per_epoch)
    scheduler.step_update(num_updates=step)
    return optimizer.param_groups[0]["lr"]


class Denoisers:
    """The denoisers of one training: `template` is a model of the trainee's architecture each is loaded into;
    denoiser j of the round at step k trains `steps` optimizer steps of `cfg.batch_size` images drawn from its own
    random `subset_fraction` of `train`, with a fresh optimizer of `cfg.opt` at `lr_scales[j]` times the training's
    rate at step k and weight decay `weight_decays[j]`; then it is pruned to the round's densities by its own |w|
    (never reviving what the current mask pruned). Its mask is written to the training folder `run_dir`."""

    def __init__(self, template: nn.Module, train, cfg: TrainConfig, per_epoch: int, accelerator, run_dir,
                 count: int, steps: int, subset_fraction: float, lr_scales: Sequence[float],
                 weight_decays: Sequence[float], seed: int, scope: str):
        self.template, self.train, self.cfg, self.per_epoch = template, train, cfg, per_epoch
        self.accelerator, self.files = accelerator, FitFolder(run_dir)
        self.count, self.steps, self.subset_fraction = count, steps, subset_fraction
        self.lr_scales, self.weight_decays, self.seed, self.scope = list(lr_scales), list(weight_decays), seed, scope
        self.trained_steps = 0  # denoiser optimizer steps this process ran (read-back masks cost none)

    def seed_of(self, step: int, j: int) -> int:
        return (self.seed * 100_003 + step * 1_009 + j) % 2**31

    def subset_order(self, seed: int) -> List[int]:
        """The indices denoiser j reads, in order: its random subset, reshuffled each time it is used up."""
        n = len(self.train)
        size = min(n, max(self.cfg.batch_size, round(self.subset_fraction * n)))
        generator = torch.Generator().manual_seed(seed)
        subset = torch.randperm(n, generator=generator)[:size]
        order: List[int] = []
        while len(order) < self.steps * self.cfg.batch_size:
            order += subset[torch.randperm(size, generator=generator)].tolist()
        return order[: self.steps * self.cfg.batch_size]

    def train_one(self, model: nn.Module, current: Mask, step: int, j: int, densities: Densities) -> Mask:
        """Denoiser j of the round at `step`: trained from `model`'s weights, pruned; its mask."""
        device, accelerator = self.accelerator.device, self.accelerator
        denoiser = self.template.to(device)
        denoiser.load_state_dict(unwrap_model(model).state_dict())
        current.apply(denoiser)
        enforce = current.enforcer(denoiser)
        lr = self.lr_scales[j] * lr_at(self.cfg, self.per_epoch, step)
        optimizer = create_optimizer(denoiser, dataclasses.replace(self.cfg, lr=lr, weight_decay=self.weight_decays[j]))
        scaler = torch.amp.GradScaler(device.type) if accelerator.scaler is not None else None
        seed = self.seed_of(step, j)
        loader = make_loader(self.train, self.cfg.batch_size, device, num_workers=self.cfg.num_workers,
                             sampler=self.subset_order(seed), drop_last=True)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)  # dropout and augmentation of this denoiser, the training's own left untouched
            denoiser.train()
            for inputs, targets in on_device(loader, device, DeviceNormalize(self.train, device)):
                with accelerator.autocast():
                    loss = F.cross_entropy(denoiser(inputs), targets)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                enforce()
        self.trained_steps += self.steps
        return exact_mask(magnitude_scores(denoiser, current.prunable), current, densities, self.scope)

    def masks(self, model: nn.Module, current: Mask, step: int, densities: Densities) -> List[Mask]:
        """Every denoiser's mask of the round at `step`: this process trains its own (j % P), or reads back one
        a killed run had finished; then every process reads all of them."""
        accelerator = self.accelerator
        for j in range(accelerator.process_index, self.count, accelerator.num_processes):
            path = self.files.denoiser_mask(step, j)
            if not path.exists():
                self.train_one(model, current, step, j, densities).save(path)
        accelerator.wait_for_everyone()
        masks = [Mask.load(self.files.denoiser_mask(step, j)) for j in range(self.count)]
        accelerator.wait_for_everyone()
        return masks

    def forget(self, step: int) -> None:
        """The round's denoiser files, once its merged mask is decided (a replay trains them again, identically)."""
        if self.accelerator.is_main_process:
            for j in range(self.count):
                self.files.denoiser_mask(step, j).unlink(missing_ok=True)


class InstantSoupRounds:
    """Instant Soup's prunings, as a schedule `gradual.GradualPruning` runs: at step r * `every` for r = 1..rounds
    the denoisers' merged mask (`round_densities`), at step (rounds + 1) * `every` the rest pruned at once to
    `final` by the model's own |w|."""

    start_step = 0  # no pruning before the first round

    def __init__(self, every: int, final: Densities, fraction: float, merge: str, scope: str,
                 denoisers: Optional[Denoisers]):
        self.every, self.final, self.fraction, self.merge, self.scope = every, final, fraction, merge, scope
        self.rounds = round_count(final, fraction)
        self.denoisers = denoisers

    @property
    def end_step(self) -> int:
        """The step of the last pruning (the rest pruned at once)."""
        return (self.rounds + 1) * self.every

    def is_pruning_step(self, step: int) -> bool:
        return step % self.every == 0 and 1 <= step // self.every <= self.rounds + 1

    def mask_at(self, model: nn.Module, step: int, previous: Mask) -> Mask:
        scores = magnitude_scores(unwrap_model(model), previous.prunable)
        index = step // self.every
        if index > self.rounds:
            return exact_mask(scores, previous, self.final, self.scope)
        densities = round_densities(self.final, self.fraction, index)
        masks = self.denoisers.masks(model, previous, step, densities)
        merged = merge_masks(masks, self.merge, scores, previous, densities, self.scope)
        self.denoisers.forget(step)
        return merged
