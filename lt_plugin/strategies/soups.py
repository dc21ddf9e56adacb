"""Sparse Model Soups (Zimmer, Spiegel, Pokutta, ICLR 2024; reference code github.com/ZIB-IOL/SMS): averaging during
IMP. Level 0 trains the dense model. Each level L prunes the previous level's soup (magnitude, global or layer-wise,
weight or channel tickets, as `imp` prunes), retrains `ingredients` copies of that one pruned model that differ in
what `vary` names (the seed, so data order and augmentation, by default; or weight decay, or the retraining length),
and averages them into the level's soup: uniform, and greedy (ingredients sorted by validation accuracy, each added
only if the soup's validation accuracy does not fall, as the reference's GreedySoup and Wortsman et al.'s greedy soup
do). Every soup has its BatchNorm statistics recomputed on `bn_fraction` of the training set (the reference's
bn_recalibration_frac). All ingredients share the mask, so a soup keeps the level's sparsity; the soup named by
`soup` is the level's ticket and what the next level prunes.

Retraining follows the reference's default (main.py: retrain_schedule 'LLR', runners/baseRunner.py): each cycle
restarts its own schedule, linear from the learning rate to zero with a 10% warm-up (here timm's linear warm-up).

Run folder:
    config.json, init.safetensors                 hyperparameters; theta_0
    level_0/                                      the dense training (train/, weights, mask, result.json)
    level_L/ingredient_I/                         each ingredient's retraining and result (the per-ticket pipeline)
    level_L/soup_uniform/, level_L/soup_greedy/   each soup's weights, mask and result.json
    level_L/mask, weights, result.json            the level's ticket: the soup named by --soup; result.json last
    results.json, soups.png
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import UserError
from ..experiment import Experiment
from ..layout import TicketFolder
from ..levels import PrunedLevels
from ..masks import Mask, snapshot
from ..pipeline import ticket_cost, train_ticket
from ..pooling import average
from ..replicates import Replicates, run_replicates
from ..report import plot_accuracy_curves
from ..scoring import BN_BATCH_SIZE, Scorer
from ..store import load_weights
from ..train.config import TrainConfig
from .base import LevelTickets, Strategy, start_training_run
from .registry import register_strategy

VARY = ("seed", "weight-decay", "epochs")
SOUPS = ("greedy", "uniform")
_TABLE = (("level", "level", "{}"), ("density", "density", "{:.4f}"), ("macs", "MACs", "{:,}"),
          ("test_accuracy", "ticket test", "{:.2%}"),
          ("best_ingredient_test_accuracy", "best ingredient", "{:.2%}"),
          ("ingredients_mean_test_accuracy", "ingredients' mean", "{:.2%}"),
          ("uniform_test_accuracy", "uniform soup", "{:.2%}"), ("greedy_test_accuracy", "greedy soup", "{:.2%}"),
          ("greedy_members_text", "greedy members", "{}"),
          ("best_ingredient_corruption_accuracy", "best C", "{:.2%}"), ("uniform_corruption_accuracy", "uniform C",
                                                                        "{:.2%}"),
          ("greedy_corruption_accuracy", "greedy C", "{:.2%}"))


@register_strategy("sparse-model-soups")
@dataclasses.dataclass
class SparseModelSoups(LevelTickets, Strategy, Replicates, PrunedLevels, TrainConfig, Experiment):
    """Sparse Model Soups: prune, retrain several copies of the pruned model, average them (Zimmer et al.)."""

    ingredients: int = dataclasses.field(default=3, metadata={"help": "copies retrained at each level, then averaged"})
    vary: str = dataclasses.field(default="seed", metadata={
        "choices": VARY, "help": "what differs between the copies: seed (data order, augmentation), weight-decay or "
                                 "epochs (the retraining length), the values in --vary-values"})
    vary_values: list = dataclasses.field(default_factory=list, metadata={
        "type": float, "help": "with --vary weight-decay or epochs: one value per ingredient"})
    retrain_epochs: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "epochs of each level's retraining (default: --epochs), linear to zero after a 10% "
                             "warm-up"})
    soup: str = dataclasses.field(default="greedy", metadata={
        "choices": SOUPS, "help": "the soup that is the level's ticket and what the next level prunes"})
    bn_fraction: float = dataclasses.field(default=0.2, metadata={
        "help": "fraction of the training set the soups' BatchNorm statistics are recomputed on (the reference's 0.2)"})
    corruptions: bool = dataclasses.field(default=False, metadata={
        "help": "also score the ingredients and soups on corrupted copies of the test split (CIFAR-10-C style)"})
    corruption_samples: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "with --corruptions: corrupt this many test images, drawn with --seed"})

    def __post_init__(self):
        super().__post_init__()
        self.check_replicates()
        if self.ingredients < 2:
            raise UserError(f"--ingredients must be 2 or more (a soup averages several), not {self.ingredients}")
        if self.vary == "seed" and self.vary_values:
            raise UserError("--vary-values applies to --vary weight-decay or epochs (--vary seed uses --seed + i)")
        if self.vary != "seed" and len(self.vary_values) != self.ingredients:
            raise UserError(f"--vary {self.vary} needs --vary-values, one per ingredient ({self.ingredients}), not "
                            f"{self.vary_values}")
        if self.vary == "epochs" and not all(float(v).is_integer() and v >= 1 for v in self.vary_values):
            raise UserError(f"--vary epochs needs whole numbers of epochs, not {self.vary_values}")
        if self.retrain_epochs is not None and self.retrain_epochs < 1:
            raise UserError(f"--retrain-epochs must be 1 or more, not {self.retrain_epochs}")
        if not 0.0 < self.bn_fraction <= 1.0:
            raise UserError(f"--bn-fraction must be in (0, 1], not {self.bn_fraction}")
        if self.corruption_samples is not None and not self.corruptions:
            raise UserError("--corruption-samples applies with --corruptions")

    # ---- the schedule of the copies ----
    def retrain_config(self, cfg: TrainConfig, ingredient: int) -> TrainConfig:
        """Ingredient `ingredient`'s retraining: its own linear schedule with a 10% warm-up, varied as --vary says."""
        epochs = self.retrain_epochs or cfg.epochs
        retrain = dataclasses.replace(cfg, epochs=epochs, sched="linear", warmup_epochs=0.1 * epochs,
                                      seed=cfg.seed + 1 + ingredient)
        if self.vary == "weight-decay":
            retrain = dataclasses.replace(retrain, weight_decay=float(self.vary_values[ingredient]), seed=cfg.seed + 1)
        elif self.vary == "epochs":
            epochs = int(self.vary_values[ingredient])
            retrain = dataclasses.replace(retrain, epochs=epochs, warmup_epochs=0.1 * epochs, seed=cfg.seed + 1)
        return retrain

    # ---- the run ----
    def run(self, out_dir) -> List[dict]:
        if self.seeds:
            return run_replicates(self, out_dir)
        run = start_training_run(self, out_dir)
        folder, data, example = run.folder, run.data, run.example
        dense = self.create_model(data.num_classes, seed=self.seed)
        prunable = self.prunable_of(dense)
        self.check_prunable(dense, example)
        self.check_run_folder(folder)
        folder.save_weights_once(folder.layout.init, dense.state_dict())
        bn_batches = max(1, round(self.bn_fraction * len(data.train) / BN_BATCH_SIZE))
        scorer = Scorer(data, run.accelerator, run.cfg, example,
                        self.create_model(data.num_classes, seed=0, pretrained=False), self.seed, bn_batches)
        results = []
        for level in range(self.levels + 1):
            ticket = folder.layout.level(level)
            done = folder.read_result(ticket)
            if done is None:
                mask = folder.load_or_make_mask(ticket, lambda: self.next_mask(folder.layout, level, dense, example,
                                                                               prunable))
                done = (self._dense_level(run, ticket, mask) if level == 0 else
                        self._soup_level(run, scorer, level, ticket, mask))
            results.append(done)
        rows = [{**r, "greedy_members_text": " ".join(map(str, r.get("greedy_members", []))) or "-"} for r in results]
        curves = {name: [(r["density"], r[f"{name}_test_accuracy"]) for r in results[1:]]
                  for name in ("best_ingredient", "ingredients_mean", "uniform", "greedy")}
        folder.write_results(results, columns=_TABLE, rows=rows, plots={"soups.png": lambda path: plot_accuracy_curves(
            curves, path, results[0]["test_accuracy"], title="Sparse Model Soups: test accuracy against density")})
        return results

    def _dense_level(self, run, level: TicketFolder, mask: Mask) -> dict:
        """Level 0: the dense model trained from theta_0 (what the reference's cycles start from)."""
        ticket = train_ticket(run, self, level.ingredient(0), mask, load_weights(run.folder.layout.init),
                              desc="level 0")
        result = {"level": 0, **ticket}
        run.folder.finish_ticket(level, load_weights(level.ingredient(0).weights), result)
        return result

    def _soup_level(self, run, scorer: Scorer, level: int, ticket: TicketFolder, mask: Mask) -> dict:
        """Level L: the previous soup pruned, its copies retrained, averaged; the soups scored and saved."""
        start = load_weights(run.folder.layout.level(level - 1).weights)
        ingredients = [train_ticket(run, self, ticket.ingredient(i), mask, start,
                                    cfg=self.retrain_config(run.cfg, i), desc=f"level {level} ingredient {i}")
                       for i in range(self.ingredients)]
        states = [{k: v.to(run.accelerator.device) for k, v in load_weights(ticket.ingredient(i).weights).items()}
                  for i in range(self.ingredients)]
        uniform = soup_of(scorer, states, mask)
        members, greedy = greedy_soup(scorer, states, [r["val_accuracy"] for r in ingredients], mask)
        best = max(range(self.ingredients), key=lambda i: ingredients[i]["val_accuracy"])
        models = {"best_ingredient": scorer.materialise(states[best], mask),
                  "uniform": scorer.materialise(uniform, mask), "greedy": scorer.materialise(greedy, mask)}
        scores = scorer.scores(models, self.corruptions, self.corruption_samples)
        macs, params = ticket_cost(models["greedy"], mask, scorer.example)
        result = {"level": level, "density": mask.density, "params": params, "macs": macs,
                  "num_classes": run.data.num_classes, "precision": run.accelerator.mixed_precision,
                  "soup": self.soup, **scores,
                  "ingredients_mean_test_accuracy": sum(r["test_accuracy"] for r in ingredients) / len(ingredients),
                  "ingredients": [{k: r[k] for k in ("val_accuracy", "test_accuracy", "train_seconds")}
                                  for r in ingredients],
                  "best_ingredient": best, "greedy_members": members,
                  "train_seconds": sum(r["train_seconds"] for r in ingredients)}
        result["val_accuracy"], result["test_accuracy"] = (result[f"{self.soup}_val_accuracy"],
                                                           result[f"{self.soup}_test_accuracy"])
        for name, state in (("uniform", uniform), ("greedy", greedy)):
            run.folder.finish_ticket(ticket.soup(name), {k: v.cpu() for k, v in state.items()},
                                     {"level": level, "soup": name, "density": mask.density,
                                      "num_classes": run.data.num_classes,
                                      "val_accuracy": scores[f"{name}_val_accuracy"],
                                      "test_accuracy": scores[f"{name}_test_accuracy"]}, mask=mask)
        chosen = uniform if self.soup == "uniform" else greedy
        run.folder.finish_ticket(ticket, {k: v.cpu() for k, v in chosen.items()}, result)
        return result


def recalibrated(scorer: Scorer, state: Dict[str, torch.Tensor], mask: Mask) -> Dict[str, torch.Tensor]:
    """`state` with the mask applied and BatchNorm statistics recomputed in the scorer's dense template."""
    model = scorer.template
    model.load_state_dict(state)
    mask.apply(model)
    scorer.recalibrate(model, mask)
    return snapshot(model)


def greedy_soup(scorer: Scorer, states: List[Dict[str, torch.Tensor]], val_accuracies: List[float],
                mask: Mask) -> Tuple[List[int], Dict[str, torch.Tensor]]:
    """The ingredients of the greedy soup (Wortsman et al. 2022; the Sparse Model Soups reference's GreedySoup): in
    order of validation accuracy, each added if the soup with it (averaged, BatchNorm statistics recomputed) scores
    at least as well on the validation split as the soup without it. Returns their indices, best first, and the
    soup as it was scored."""
    order = sorted(range(len(states)), key=lambda i: -val_accuracies[i])
    members = [order[0]]
    best, soup = _scored_soup(scorer, [states[order[0]]], mask)
    for i in order[1:]:
        accuracy, candidate = _scored_soup(scorer, [states[j] for j in members + [i]], mask)
        if accuracy >= best:
            members, best, soup = members + [i], accuracy, candidate
    return members, soup


def soup_of(scorer: Scorer, states: List[Dict[str, torch.Tensor]], mask: Mask) -> Dict[str, torch.Tensor]:
    """The states averaged, the mask applied and BatchNorm statistics recomputed."""
    return recalibrated(scorer, average(states), mask)


def _scored_soup(scorer: Scorer, states: List[Dict[str, torch.Tensor]], mask: Mask):
    soup = soup_of(scorer, states, mask)
    return scorer.accuracy(scorer.materialise(soup, mask), scorer.data.val), soup
