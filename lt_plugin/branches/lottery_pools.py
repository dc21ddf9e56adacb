"""Lottery Pools (Yin, Liu et al., AAAI 2023): stronger tickets from a finished IMP run, with no training.

For a target level t the candidates are the run's other levels by adjacency (t-1, t+1, t-2, t+2, ...). Starting from
the target's own weights, each candidate is blended in at every alpha of a grid, `alpha * candidate + (1 - alpha) *
current` over the whole state; the blend is returned to the target's sparsity, its BatchNorm statistics are
recomputed on training data and it is scored on the validation split. A candidate's best alpha is kept only if it
beats the running best (the paper's Algorithm 2), so the pooled ticket is never worse on validation than the ticket.

Sparsity: weight tickets are re-pruned by the run's magnitude criterion (global or layer-wise) to exactly the
target's kept count; channel tickets remove, from every Torch-Pruning group, as many channels as the target does,
chosen by the run's importance on the blend, so they keep the ticket's density and MACs and export physically.
`keep_mask` keeps the target's own mask instead. The dense target (level 0) is never pruned.

Run folder (`<imp run>/pools` unless `out_dir` says otherwise):
    config.json                 this strategy's hyperparameters (the IMP run's folder among them)
    imp_config.json             the IMP run's config.json: how to build the model, without the IMP folder
    ensemble.json               the naive output ensemble of every ticket of the run (scored once)
    level_L/mask.safetensors    the pooled ticket's mask (dense space)
    level_L/weights.safetensors the pooled ticket's weights (dense space)
    level_L/result.json         written last: a target with it is finished and skipped on a rerun
    results.json, pools.png
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..errors import LtPluginWarning, RunFolderError, UserError
from ..layout import RunLayout
from ..masks import Mask, resolve_ignored
from ..pipeline import ticket_cost
from ..acceptance import ACCEPTANCE, SIGNIFICANCE, Rule, confirmation_split
from ..pooling import (DEFAULT_ALPHAS, adjacency_order, keep_target_mask, lottery_pool, magnitude_mask_like,
                       running_blend, swa_alphas)
from ..report import plot_accuracy_curves
from ..run_folder import RunFolder
from ..scoring import BN_BATCH_SIZE, Scorer
from ..store import atomic_write_json, read_json
from ..strategies.base import TicketFiles, level_ticket
from ..structure import ChannelStructure
from ..train.config import TrainConfig, make_accelerator, resolve_train_config, train_config_of
from .base import Branch, FinishedRun, trainer_of
from .base import register_branch

PROTOCOLS = ("fast", "reference")
TOO_COARSE = 0.01  # warn when the validation split cannot resolve gains below this fraction of its images

_TABLE = (("level", "level", "{}"), ("density", "density", "{:.4f}"), ("macs", "MACs", "{:,}"),
          ("ticket_val_accuracy", "ticket val", "{:.2%}"), ("ticket_bn_val_accuracy", "ticket+BN val", "{:.2%}"),
          ("pooled_val_accuracy", "pooled val", "{:.2%}"),
          ("ticket_test_accuracy", "ticket test", "{:.2%}"), ("ticket_bn_test_accuracy", "ticket+BN test", "{:.2%}"),
          ("pooled_test_accuracy", "pooled test", "{:.2%}"),
          ("ensemble_test_accuracy", "ensemble test", "{:.2%}"), ("swa_test_accuracy", "swa test", "{:.2%}"),
          ("ema_test_accuracy", "ema test", "{:.2%}"),
          ("ticket_corruption_accuracy", "ticket C", "{:.2%}"), ("pooled_corruption_accuracy", "pooled C", "{:.2%}"),
          ("ensemble_corruption_accuracy", "ensemble C", "{:.2%}"), ("accepted_text", "accepted (level@alpha)", "{}"),
          ("val_passes", "val passes", "{}"), ("recalibrations", "BN recals", "{}"), ("seconds", "seconds", "{:.1f}"))


@register_branch("lottery-pools")
@dataclasses.dataclass
class LotteryPools(Branch):
    """Greedy interpolation of an IMP run's tickets into a ticket of the same sparsity (no training)."""

    reads = ("imp", "swamp", "random-reinit", "random-mask")  # runs whose level L prunes level L-1

    targets: list = dataclasses.field(default_factory=lambda: ["all"], metadata={
        "help": "levels to pool: all, or level numbers (0, the dense level, too)"})
    alphas: list = dataclasses.field(default_factory=lambda: list(DEFAULT_ALPHAS), metadata={
        "help": "interpolation weights of a candidate, each in (0, 1)"})
    max_candidates: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "try at most this many candidates per target, in adjacency order; None: all"})
    acceptance: str = dataclasses.field(default="confirm", metadata={
        "before": "paper", "choices": ACCEPTANCE,
        "help": "when a candidate's best blend is kept (lt_plugin.acceptance): paired, McNemar's exact test on the "
                "images it and the running best disagree on at p < --significance / (alphas x candidates); loss, a "
                "paired t test on the per-image cross-entropy at that level, the accuracy not lower; confirm, the "
                "paper's search on half the validation images and one McNemar test of its result on the other half; "
                "paper, any gain (which on a few hundred images picks noise)"})
    significance: float = dataclasses.field(default=SIGNIFICANCE, metadata={
        "help": "with --acceptance paired, loss or confirm: the chance that a target's search keeps a blend that "
                "is no better"})
    keep_mask: bool = dataclasses.field(default=False, metadata={
        "help": "keep the target's own mask instead of re-pruning the blend"})
    protocol: str = dataclasses.field(default="fast", metadata={
        "choices": PROTOCOLS, "help": "fast: BatchNorm statistics from --bn-batches batches, alphas tried from both "
                                      "ends of the grid inward until each side stops improving; reference: the "
                                      "paper's, a full training pass per blend and every alpha"})
    bn_batches: int = dataclasses.field(default=2, metadata={
        "help": f"fast protocol: batches of {BN_BATCH_SIZE} training images for BatchNorm statistics"})
    patience: int = dataclasses.field(default=1, metadata={
        "help": "fast protocol: a side of a candidate's alpha grid stops after this many alphas in a row that do "
                "not beat its best"})
    ema_alpha: float = dataclasses.field(default=0.9, metadata={
        "help": "the EMA baseline's fixed weight of each new candidate (the reference code's 0.9)"})
    corruptions: bool = dataclasses.field(default=False, metadata={
        "help": "also score every model on corrupted copies of the test split (CIFAR-10-C style, 6 corruptions, "
                "severities 1-5)"})
    corruption_samples: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "with --corruptions: score the corrupted copies of this many test images, drawn with "
                             "--seed (default: the whole test split; 30 copies of it are scored per model)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of the corruptions and BatchNorm batches"})

    def __post_init__(self):
        super().__post_init__()
        if not self.alphas or not all(0.0 < float(a) < 1.0 for a in self.alphas):
            raise UserError("--alphas must be one or more values strictly between 0 and 1")
        self.alphas = [float(a) for a in self.alphas]
        if self.max_candidates is not None and self.max_candidates < 1:
            raise UserError("--max-candidates must be at least 1")
        if self.bn_batches < 1:
            raise UserError("--bn-batches must be at least 1")
        if self.patience < 1:
            raise UserError("--patience must be at least 1")
        if self.corruption_samples is not None and self.corruption_samples < 1:
            raise UserError("--corruption-samples must be at least 1")
        if self.corruption_samples is not None and not self.corruptions:
            raise UserError("--corruption-samples applies with --corruptions")
        if not 0.0 < self.ema_alpha < 1.0:
            raise UserError("--ema-alpha must be strictly between 0 and 1")
        if not 0.0 < self.significance < 1.0:
            raise UserError("--significance must be strictly between 0 and 1")
        targets = [str(t) for t in self.targets]
        if targets != ["all"]:
            if not targets or not all(t.isdigit() for t in targets):
                raise UserError(f"--targets must be 'all' or level numbers, not {' '.join(targets) or 'nothing'}")
            targets = sorted({int(t) for t in targets})
        self.targets = targets

    # ---- where the tickets are: the layout of an IMP run, the experiment of the IMP run pooled ----
    @classmethod
    def ticket_keys(cls, run_dir) -> List[str]:
        return [str(level) for level in RunLayout(run_dir).finished_levels()]

    @classmethod
    def locate_ticket(cls, run_dir, key: str) -> TicketFiles:
        return level_ticket(run_dir, key, trainer_of(read_json(RunLayout(run_dir).source_config)))

    # ---- the run ----
    def check_source(self, source: FinishedRun) -> None:
        if len(source.strategy.expected_ticket_keys() or source.keys()) < 2:
            raise RunFolderError(f"--run {source.path} has fewer than 2 levels; lottery-pools needs at least 2 levels")

    def run_branch(self, source: FinishedRun, out: Path) -> List[dict]:
        imp = source.trainer
        levels = [int(key) for key in source.keys()]
        targets = levels if self.targets == ["all"] else self.targets
        unknown = [str(t) for t in targets if t not in levels]
        if unknown:
            raise UserError(f"--targets {' '.join(unknown)}: the run has levels {', '.join(map(str, levels))}")
        # The run's evaluation, precision and Accelerate settings (no trackers: nothing is trained).
        cfg = dataclasses.replace(train_config_of(imp), log_with=None)
        accelerator = make_accelerator(cfg)
        folder = RunFolder(out, accelerator)
        pool = _Pool(self, source, levels, accelerator, resolve_train_config(cfg, accelerator))
        # Which levels are pooled changes no level's result: other --targets may reuse the folder; so may other
        # values of the options only the fast protocol reads.
        unused = {"targets"} | ({"bn_batches", "patience"} if self.protocol == "reference" else set())
        folder.check_config(self.name, {k: v for k, v in self.hparams().items() if k not in unused},
                            self.implicit_values())
        if folder.is_main and not folder.layout.source_config.exists():
            atomic_write_json(source.trainer_config, folder.layout.source_config)

        ensemble = self._ensemble(folder, pool)
        gain = pool.rule.detectable_gain(len(pool.data.val))
        # The images a gain is counted on: the confirmation half for `confirm`, else the whole split.
        judged = len(pool.data.val) if pool.rule.selection is None else int((~pool.rule.selection).sum())
        bar = (None if gain is None else f"{round(gain * judged)} of {judged} images ({gain:.2%}) or more, none lost"
               + (" (the search selects on the other half)" if judged < len(pool.data.val) else ""))
        if folder.is_main:
            print(f"[lottery-pools] validation split: {len(pool.data.val)} images; acceptance {self.acceptance}: "
                  + (f"a blend is kept only if it gains {bar}" if bar is not None
                     else "a blend is kept only if its per-image losses are lower by more than their spread allows"
                          " at this significance"))
        if gain is not None and gain > TOO_COARSE and self.acceptance != "paper":
            warnings.warn(f"the validation split has {len(pool.data.val)} images: a blend is kept only if it gains "
                          f"{bar} (fewer are noise at --significance {self.significance}), so few will be; hold out "
                          "more images (--val-fraction of the IMP run) for Lottery Pools to have a chance",
                          LtPluginWarning, stacklevel=2)
        results = []
        for level in targets:
            done = folder.read_result(folder.layout.level(level))
            if done is None:
                done = self._pool_target(folder, pool, level, ensemble)
            results.append(done)
        curves = {model: [(r["density"], r[f"{model}_test_accuracy"]) for r in results]
                  for model in ("ticket", "pooled")}
        if folder.is_main:
            changed = [r["level"] for r in results if r["accepted"]]
            print(f"[lottery-pools] the pooled ticket differs from the ticket at level "
                  f"{', '.join(map(str, changed))}" if changed else
                  "[lottery-pools] no blend was kept: every pooled ticket is its ticket (BatchNorm statistics "
                  "recomputed)")
        folder.write_results(results, columns=_columns(pool.selection is not None), rows=[{**r, "accepted_text": _accepted_text(r["accepted"])}
                                                            for r in results],
                             plots={"pools.png": lambda path: plot_accuracy_curves(
                                 curves, path, pool.results[0]["test_accuracy"] if 0 in pool.results else None,
                                 title="Lottery Pools: test accuracy against density")})
        return results

    def _ensemble(self, folder: RunFolder, pool: "_Pool") -> dict:
        """The naive output ensemble of every ticket of the run: scored once, the same for every target."""
        path = folder.layout.ensemble
        if not path.exists():
            members = [pool.materialise(*pool.tickets[level]) for level in pool.levels]
            scores = pool.scores({"ensemble": members}, self.corruptions)
            macs = [pool.results[level].get("macs") for level in pool.levels]  # an own loop's levels may have none
            entry = {"levels": pool.levels, "macs": sum(macs) if None not in macs else None,
                     **{key[len("ensemble_"):]: value for key, value in scores.items()}}
            if folder.is_main:
                atomic_write_json(entry, path)
            pool.accelerator.wait_for_everyone()
        return read_json(path)

    def _pool_target(self, folder: RunFolder, pool: "_Pool", level: int, ensemble: dict) -> dict:
        started = time.perf_counter()
        torch.manual_seed(self.seed * 1_000 + level)  # a random importance draws the same channels on a rerun
        candidates = adjacency_order(level, pool.levels)[: self.max_candidates]
        search = lottery_pool(pool.model, pool.tickets, level, evaluate=pool.val_scores, recalibrate=pool.recalibrate,
                              reprune=pool.reprune, candidates=candidates, alphas=self.alphas, patience=pool.patience,
                              acceptance=self.acceptance, significance=self.significance, selection=pool.selection)
        search_seconds = time.perf_counter() - started
        ticket_bn = pool.running_blend(level, [], [])  # the ticket with statistics recomputed as the blends' are
        swa = pool.running_blend(level, candidates, swa_alphas(len(candidates)))
        ema = pool.running_blend(level, candidates, [self.ema_alpha] * len(candidates))
        models = {"ticket": pool.materialise(*pool.tickets[level]),
                  "ticket_bn": pool.materialise(*ticket_bn), "pooled": pool.materialise(search.state, search.mask),
                  "swa": pool.materialise(*swa), "ema": pool.materialise(*ema)}
        scores = {**pool.scores(models, self.corruptions),
                  **pool.half_accuracies({name: models[name] for name in ("ticket_bn", "pooled")})}
        macs, params = ticket_cost(models["pooled"], search.mask, pool.example)
        result = {
            "level": level, "density": search.mask.density, "params": params, "macs": macs,
            "num_classes": pool.num_classes, "precision": pool.accelerator.mixed_precision,
            # what `lt-plugin export` writes and the generic tables show: the pooled ticket, its validation accuracy
            # on images the search did not choose it on (the confirmation half for `confirm`)
            "val_accuracy": scores.get("pooled_val_accuracy_confirmation", scores["pooled_val_accuracy"]),
            "test_accuracy": scores["pooled_test_accuracy"],
            **scores,
            **{f"ensemble_{key}": value for key, value in ensemble.items() if key != "levels"},
            "accepted": search.accepted, "candidates": candidates, "sweeps": search.sweeps,
            "mask_distance": search.mask.distance(pool.tickets[level][1]),
            "protocol": self.protocol, "acceptance": self.acceptance, "val_images": len(pool.data.val),
            "smallest_gain": pool.rule.detectable_gain(len(pool.data.val)), "confirmation": search.confirmation,
            "val_passes": search.val_passes, "recalibrations": search.recalibrations,
            "search_seconds": search_seconds, "seconds": time.perf_counter() - started,
        }
        folder.finish_ticket(folder.layout.level(level), {k: v.cpu() for k, v in search.state.items()}, result,
                             mask=search.mask)
        pool.accelerator.print(
            f"[lottery-pools] level {level}: val {result['ticket_bn_val_accuracy']:.2%} -> "
            f"{result['pooled_val_accuracy']:.2%}, test {result['ticket_bn_test_accuracy']:.2%} -> "
            f"{result['pooled_test_accuracy']:.2%}, accepted {_accepted_text(search.accepted)}"
            + (" (the pooled ticket is the ticket)" if not search.accepted else "")
            + f", {search.val_passes} val passes, {result['seconds']:.1f}s")
        return result

def _columns(confirm: bool) -> tuple:
    """The table's columns; with the confirm rule the validation accuracies are those of the half that did not
    choose the blend (the whole split's would flatter the pooled ticket)."""
    if not confirm:
        return _TABLE
    held_out = {"ticket_bn_val_accuracy": ("ticket_bn_val_accuracy_confirmation", "ticket+BN val (confirm half)"),
                "pooled_val_accuracy": ("pooled_val_accuracy_confirmation", "pooled val (confirm half)")}
    return tuple((*held_out[key], fmt) if key in held_out else (key, header, fmt) for key, header, fmt in _TABLE)


def _accepted_text(accepted: Sequence) -> str:
    return " ".join(f"{level}@{alpha:g}" for level, alpha in accepted) or "-"


class _Pool:
    """An IMP run's tickets held as tensors on the device, and the run's way to return a blend to a ticket's
    sparsity; the working model every blend is loaded into, the BatchNorm recalibration and the scores are the
    shared Scorer's (lt_plugin.scoring)."""

    def __init__(self, pools: LotteryPools, source: FinishedRun, levels: List[int], accelerator, cfg: TrainConfig):
        imp = source.trainer
        self.pools, self.levels, self.accelerator = pools, levels, accelerator
        self.granularity, self.scope = imp.granularity, imp.scope
        if pools.corruptions and imp.streaming:
            raise UserError("--corruptions corrupts the test images held in memory, but the IMP run streams its data "
                            "(--streaming)")
        self.data = imp.load_data()
        self.num_classes = self.data.num_classes
        device = accelerator.device
        self.scorer = Scorer(self.data, accelerator, cfg, imp.example_inputs(),
                             imp.create_model(self.num_classes, seed=0, pretrained=False), pools.seed,
                             pools.bn_batches if pools.protocol == "fast" else None)
        self.model, self.example = self.scorer.template, self.scorer.example
        self.separate = list(imp.own_rates(self.model))  # layers pruned at rates of their own stay so
        self.results = {level: source.result(level) for level in levels}
        self.tickets = {level: ({k: v.to(device) for k, v in source.weights(level).items()}, source.mask(level))
                        for level in levels}
        if pools.keep_mask:
            self.reprune = keep_target_mask
        elif self.granularity == "weight":
            self.reprune = self._magnitude_like
        else:
            # Traced once; its importance reads the working model's live weights, which each blend is loaded into.
            ignored = resolve_ignored(self.model, imp.ignore)
            structure = ChannelStructure(self.model, self.example, ignored, importance=imp.importance,
                                         scope=self.scope)
            self.reprune = lambda model, target: structure.ranked_like(target)
        self.patience = pools.patience if pools.protocol == "fast" else None
        candidates = min(len(levels) - 1, pools.max_candidates or len(levels))  # every target's search tries as many
        labels = getattr(self.data.val, "labels", None)  # a stream has none: its halves are drawn without them
        self.selection = (confirmation_split(labels if labels is not None else torch.zeros(len(self.data.val)),
                                             pools.seed) if pools.acceptance == "confirm" else None)
        self.rule = Rule(pools.acceptance, len(pools.alphas) * max(1, candidates), pools.significance, self.selection)

    def _magnitude_like(self, model: nn.Module, target: Mask) -> Mask:
        return magnitude_mask_like(model, target, self.scope, self.separate)

    def recalibrate(self, model: nn.Module, mask: Mask) -> None:
        self.scorer.recalibrate(model)

    def val_scores(self, model: nn.Module, mask: Mask):
        """The validation scores Lottery Pools compares: each image's correctness and cross-entropy (the paper's
        rule reads the accuracy of them)."""
        return self.scorer.sample_scores(self.scorer.as_scored(model, mask), self.data.val)

    def running_blend(self, level: int, candidates: Sequence[int], alphas: Sequence[float]):
        return running_blend(self.model, self.tickets, level, candidates, alphas, reprune=self.reprune,
                             recalibrate=self.recalibrate)

    def materialise(self, state: Dict[str, torch.Tensor], mask: Mask) -> nn.Module:
        return self.scorer.materialise(state, mask)

    def scores(self, models: Dict[str, object], corruptions: bool) -> dict:
        return self.scorer.scores(models, corruptions, self.pools.corruption_samples)

    def half_accuracies(self, models: Dict[str, nn.Module]) -> dict:
        """With the confirm rule, {name}_val_accuracy_selection and {name}_val_accuracy_confirmation: the validation
        accuracy on the half the search chose on, which flatters the pooled ticket, and on the half that only
        confirmed it (`confirmation_images` of them); nothing for the other rules, which choose on the whole
        split."""
        if self.selection is None:
            return {}
        out = {"confirmation_images": int((~self.selection).sum())}
        for name, model in models.items():
            correct = self.scorer.sample_scores(model, self.data.val)[0]
            for half, where in (("selection", self.selection), ("confirmation", ~self.selection)):
                out[f"{name}_val_accuracy_{half}"] = int(correct[where].sum()) / int(where.sum())
        return out
