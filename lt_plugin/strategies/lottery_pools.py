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

import copy
import dataclasses
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch_pruning as tp
from accelerate.utils import set_seed
from torch import nn

from ..corruptions import corrupted_copies
from ..errors import RunFolderError, UserError
from ..masks import Mask, magnitude_mask, named_tensors, resolve_ignored
from ..report import format_table, plot_accuracy_curves
from ..run_folder import RunFolder
from ..store import atomic_write_json, load_weights, read_json
from ..structure import ChannelStructure, export
from ..train import TrainConfig, evaluate, make_accelerator, recalibrate_bn
from . import register_strategy
from .base import Strategy, TicketFiles, experiment_of
from .imp import IMP

PROTOCOLS = ("fast", "reference")
DEFAULT_ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
BN_BATCH_SIZE = 256

_TABLE = (("level", "level", "{}"), ("density", "density", "{:.4f}"), ("macs", "MACs", "{:,}"),
          ("ticket_val_accuracy", "ticket val", "{:.2%}"), ("pooled_val_accuracy", "pooled val", "{:.2%}"),
          ("ticket_test_accuracy", "ticket test", "{:.2%}"), ("ticket_bn_test_accuracy", "ticket+BN test", "{:.2%}"),
          ("pooled_test_accuracy", "pooled test", "{:.2%}"),
          ("ensemble_test_accuracy", "ensemble test", "{:.2%}"), ("swa_test_accuracy", "swa test", "{:.2%}"),
          ("ema_test_accuracy", "ema test", "{:.2%}"),
          ("ticket_corruption_accuracy", "ticket C", "{:.2%}"), ("pooled_corruption_accuracy", "pooled C", "{:.2%}"),
          ("ensemble_corruption_accuracy", "ensemble C", "{:.2%}"), ("accepted_text", "accepted (level@alpha)", "{}"),
          ("val_passes", "val passes", "{}"), ("recalibrations", "BN recals", "{}"), ("seconds", "seconds", "{:.1f}"))


def adjacency_order(target: int, levels: Sequence[int]) -> List[int]:
    """The levels other than `target`, nearest first and the lower one first at equal distance: t-1, t+1, t-2, ..."""
    return sorted((level for level in levels if level != target), key=lambda level: (abs(level - target), level))


def blend(current: Dict[str, torch.Tensor], candidate: Dict[str, torch.Tensor], alpha: float
          ) -> Dict[str, torch.Tensor]:
    """alpha * candidate + (1 - alpha) * current for every floating tensor; counters stay the current's."""
    return {name: alpha * candidate[name] + (1 - alpha) * value if value.is_floating_point() else value
            for name, value in current.items()}


@torch.no_grad()
def magnitude_mask_like(model: nn.Module, target: Mask, scope: str) -> Mask:
    """The run's magnitude criterion on `model`'s weights, keeping exactly as many weights as `target` (in all, or
    in each tensor when layer-wise). `magnitude_mask` prunes every entry tied at its threshold, so ties are taken
    back, first index first, until the count is exact."""
    tensors = named_tensors(model)
    groups = [target.prunable] if scope == "global" else [[name] for name in target.prunable]
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


@torch.no_grad()
def channels_like(structure: ChannelStructure, target: Mask) -> Mask:
    """A channel mask removing from every Torch-Pruning group as many channels as `target` does (so the same density
    and MACs), the least important ones by the structure's importance on its model's current weights."""
    plan = []
    for root, is_out, idxs in target.plan:
        module, fn, n = structure._root(root, is_out)
        group = structure.graph.get_pruning_group(module, fn, list(range(n)))
        ch_groups = structure.pruner._get_channel_groups(group)
        # Grouped channels (grouped convs, heads) are ranked by their mean score, as Torch-Pruning ranks them.
        scores = structure._inner_importance(group).detach().float().cpu().view(ch_groups, -1).mean(dim=0)
        group_size = n // ch_groups
        chosen = torch.argsort(scores, stable=True)[: len(idxs) // ch_groups].tolist()
        plan.append([root, is_out, sorted(c + g * group_size for c in chosen for g in range(ch_groups))])
    return structure.mask_from_plan(plan)


def read_imp_run(run_dir: Path) -> dict:
    """The config.json of a finished IMP run with at least two levels; anything else is a RunFolderError."""
    if not (run_dir / "config.json").is_file():
        raise RunFolderError(f"--run {run_dir}: not a run folder (no config.json)")
    config = read_json(run_dir / "config.json")
    if config.get("strategy") != "imp":
        raise RunFolderError(f"--run {run_dir} holds a {config.get('strategy')!r} run; lottery-pools pools the "
                             "tickets of an imp run")
    levels = int(config["hparams"]["levels"])
    if levels < 1:
        raise RunFolderError(f"--run {run_dir} has only the dense level; lottery-pools needs at least 2 levels")
    unfinished = [str(level) for level in range(levels + 1)
                  if not (run_dir / f"level_{level}" / "result.json").exists()]
    if unfinished:
        raise RunFolderError(f"--run {run_dir} is unfinished (level {', '.join(unfinished)} has no result); "
                             "rerun its lt-plugin imp command first")
    return config


@register_strategy("lottery-pools")
@dataclasses.dataclass
class LotteryPools(Strategy):
    """Greedy interpolation of an IMP run's tickets into a ticket of the same sparsity (no training)."""

    description = "stronger tickets from an IMP run by greedy interpolation, no training (Yin, Liu et al.)"
    out_required = False

    run_dir: str = dataclasses.field(default="", metadata={
        "help": "the finished IMP run folder (--run for short); results go to its pools/ unless --out"})
    targets: list = dataclasses.field(default_factory=lambda: ["all"], metadata={
        "help": "levels to pool: all, or level numbers (0, the dense level, too)"})
    alphas: list = dataclasses.field(default_factory=lambda: list(DEFAULT_ALPHAS), metadata={
        "help": "interpolation weights of a candidate, each in (0, 1)"})
    max_candidates: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "try at most this many candidates per target, in adjacency order; None: all"})
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
        if self.protocol not in PROTOCOLS:
            raise UserError(f"--protocol must be one of {', '.join(PROTOCOLS)}")
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
        targets = [str(t) for t in self.targets]
        if targets != ["all"]:
            if not targets or not all(t.isdigit() for t in targets):
                raise UserError(f"--targets must be 'all' or level numbers, not {' '.join(targets) or 'nothing'}")
            targets = sorted({int(t) for t in targets})
        self.targets = targets
        if self.run_dir:
            self.run_dir = str(Path(self.run_dir).resolve())

    # ---- where the tickets are: the layout of an IMP run, the experiment of the IMP run pooled ----
    @classmethod
    def ticket_keys(cls, run_dir) -> List[str]:
        return IMP.ticket_keys(run_dir)

    @classmethod
    def locate_ticket(cls, run_dir, key: str) -> TicketFiles:
        files = IMP.locate_ticket(run_dir, key)
        imp_hparams = read_json(Path(run_dir) / "imp_config.json")["hparams"]
        return dataclasses.replace(files, experiment=experiment_of(imp_hparams))

    # ---- the run ----
    def run(self, out_dir=None) -> List[dict]:
        if not self.run_dir:
            raise UserError("--run DIR is required: the finished IMP run whose tickets to pool")
        imp_dir = Path(self.run_dir)
        imp_config = read_imp_run(imp_dir)
        imp_hparams = imp_config["hparams"]
        levels = list(range(int(imp_hparams["levels"]) + 1))
        targets = levels if self.targets == ["all"] else self.targets
        unknown = [str(t) for t in targets if t not in levels]
        if unknown:
            raise UserError(f"--targets {' '.join(unknown)}: the run has levels 0 to {levels[-1]}")
        out = Path(out_dir) if out_dir is not None else imp_dir / "pools"
        # The run's evaluation and Accelerate settings (no trackers: nothing is trained); a setting newer than the
        # run keeps its default.
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"log_with"}
        cfg = TrainConfig(**{k: v for k, v in imp_hparams.items() if k in train_fields})
        accelerator = make_accelerator(cfg)
        folder = RunFolder(out, accelerator)
        pool = _Pool(self, imp_dir, imp_hparams, levels, accelerator, cfg.eval_batch_size)
        # Which levels are pooled changes no level's result: other --targets may reuse the folder; so may other
        # values of the options only the fast protocol reads.
        unused = {"targets"} | ({"bn_batches", "patience"} if self.protocol == "reference" else set())
        folder.check_config(self.name, {k: v for k, v in self.hparams().items() if k not in unused})
        if folder.is_main and not (out / "imp_config.json").exists():
            atomic_write_json(imp_config, out / "imp_config.json")

        ensemble = self._ensemble(folder, pool)
        results = []
        for level in targets:
            level_dir = out / f"level_{level}"
            done = folder.read_result(level_dir)
            if done is None:
                done = self._pool_target(folder, pool, level, ensemble)
            results.append(done)
        self._report(folder, results, pool)
        return results

    def _ensemble(self, folder: RunFolder, pool: "_Pool") -> dict:
        """The naive output ensemble of every ticket of the run: scored once, the same for every target."""
        path = folder.path / "ensemble.json"
        if not path.exists():
            members = [pool.materialise(pool.states[level], pool.masks[level]) for level in pool.levels]
            scores = pool.scores({"ensemble": members}, self.corruptions)
            entry = {"levels": pool.levels, "macs": sum(pool.results[level]["macs"] for level in pool.levels),
                     **{key[len("ensemble_"):]: value for key, value in scores.items()}}
            if folder.is_main:
                atomic_write_json(entry, path)
            pool.accelerator.wait_for_everyone()
        return read_json(path)

    def _pool_target(self, folder: RunFolder, pool: "_Pool", level: int, ensemble: dict) -> dict:
        started = time.perf_counter()
        torch.manual_seed(self.seed * 1_000 + level)  # a random importance draws the same channels on a rerun
        candidates = adjacency_order(level, pool.levels)[: self.max_candidates]
        search = pool.search(level, candidates)
        search_seconds = time.perf_counter() - started
        ticket_bn = pool.running_blend(level, [], [])  # the ticket with statistics recomputed as the blends' are
        swa = pool.running_blend(level, candidates, [1 / (i + 2) for i in range(len(candidates))])
        ema = pool.running_blend(level, candidates, [self.ema_alpha] * len(candidates))
        models = {"ticket": pool.materialise(pool.states[level], pool.masks[level]),
                  "ticket_bn": pool.materialise(*ticket_bn), "pooled": pool.materialise(search.state, search.mask),
                  "swa": pool.materialise(*swa), "ema": pool.materialise(*ema)}
        scores = pool.scores(models, self.corruptions)
        macs, params = pool.cost(models["pooled"], search.mask)
        result = {
            "level": level, "density": search.mask.density, "params": params, "macs": macs,
            "num_classes": pool.num_classes,
            # what `lt-plugin export` writes and the generic tables show: the pooled ticket
            "val_accuracy": scores["pooled_val_accuracy"], "test_accuracy": scores["pooled_test_accuracy"],
            **scores,
            **{f"ensemble_{key}": value for key, value in ensemble.items() if key != "levels"},
            "accepted": search.accepted, "candidates": candidates, "sweeps": search.sweeps,
            "mask_distance": search.mask.distance(pool.masks[level]),
            "protocol": self.protocol, "val_passes": search.val_passes, "recalibrations": search.recalibrations,
            "search_seconds": search_seconds, "seconds": time.perf_counter() - started,
        }
        level_dir = folder.path / f"level_{level}"
        if folder.is_main:
            search.mask.save(level_dir / "mask.safetensors")
        folder.finish_level(level_dir, {k: v.cpu() for k, v in search.state.items()}, result)
        pool.accelerator.print(
            f"[lottery-pools] level {level}: val {result['ticket_val_accuracy']:.2%} -> "
            f"{result['pooled_val_accuracy']:.2%}, test {result['ticket_test_accuracy']:.2%} -> "
            f"{result['pooled_test_accuracy']:.2%}, accepted {_accepted_text(search.accepted)}, "
            f"{search.val_passes} val passes, {result['seconds']:.1f}s")
        return result

    def _report(self, folder: RunFolder, results: List[dict], pool: "_Pool") -> None:
        if folder.is_main:
            atomic_write_json(results, folder.path / "results.json")
            curves = {model: [(r["density"], r[f"{model}_test_accuracy"]) for r in results]
                      for model in ("ticket", "pooled")}
            plot_accuracy_curves(curves, folder.path / "pools.png", pool.results[0]["test_accuracy"],
                                 title="Lottery Pools: test accuracy against density")
            print(format_table([{**r, "accepted_text": _accepted_text(r["accepted"])} for r in results], _TABLE))
            print(f"results: {folder.path / 'results.json'}  plot: {folder.path / 'pools.png'}")
        pool.accelerator.wait_for_everyone()


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


def _accepted_text(accepted: Sequence) -> str:
    return " ".join(f"{level}@{alpha:g}" for level, alpha in accepted) or "-"


@dataclasses.dataclass
class _Search:
    state: Dict[str, torch.Tensor]
    mask: Mask
    val_accuracy: float
    accepted: list
    sweeps: list
    val_passes: int
    recalibrations: int


class _Pool:
    """An IMP run's tickets held as tensors on the device, and one working model every blend is loaded into."""

    def __init__(self, hp: LotteryPools, imp_dir: Path, imp_hparams: dict, levels: List[int], accelerator,
                 eval_batch_size: int):
        self.hp, self.levels, self.accelerator = hp, levels, accelerator
        self.eval_batch_size = eval_batch_size
        self.experiment = experiment_of(imp_hparams)
        self.granularity, self.scope = imp_hparams["granularity"], imp_hparams["scope"]
        if hp.corruptions and self.experiment.streaming:
            raise UserError("--corruptions corrupts the test images held in memory, but the IMP run streams its data "
                            "(--streaming)")
        self.data = self.experiment.load_data()
        self.num_classes = self.data.num_classes
        device = accelerator.device
        self.example = self.experiment.example_inputs().to(device)
        self.model = self.experiment.create_model(self.num_classes, seed=0, pretrained=False).to(device)
        self.results = {level: read_json(imp_dir / f"level_{level}" / "result.json") for level in levels}
        self.masks = {level: Mask.load(imp_dir / f"level_{level}" / "mask.safetensors") for level in levels}
        self.states = {level: {k: v.to(device) for k, v in
                               load_weights(imp_dir / f"level_{level}" / "weights.safetensors").items()}
                       for level in levels}
        self.structure = None
        if self.granularity == "channel" and not hp.keep_mask:
            # Traced once; its importance reads the working model's live weights, which each blend is loaded into.
            ignored = resolve_ignored(self.model, imp_hparams["ignore"])
            self.structure = ChannelStructure(self.model, self.example, ignored,
                                              importance=imp_hparams["importance"], scope=self.scope)
        # LayerNorm counts zeroed channels: there a channel ticket is scored as the exported model it is.
        self.export_to_score = self.granularity == "channel" and any(
            isinstance(m, (nn.LayerNorm, nn.GroupNorm)) for m in self.model.modules())
        self.bn_batches = hp.bn_batches if hp.protocol == "fast" else None
        self.patience = hp.patience if hp.protocol == "fast" else None

    # ---- one blend: load, return to the target's sparsity, recalibrate, score ----
    def load(self, state: Dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def reprune(self, level: int) -> Mask:
        """The mask that returns the working model's weights to the target's sparsity."""
        target = self.masks[level]
        if level == 0 or self.hp.keep_mask:
            return target
        if self.granularity == "weight":
            return magnitude_mask_like(self.model, target, self.scope)
        return channels_like(self.structure, target)

    def load_blend(self, level: int, current: Dict[str, torch.Tensor], candidate: int, alpha: float) -> Mask:
        """Load `alpha * candidate + (1 - alpha) * current` into the working model at target `level`'s sparsity;
        returns the mask that put it there."""
        self.load(blend(current, self.states[candidate], alpha))
        mask = self.reprune(level)
        mask.apply(self.model)
        return mask

    def recalibrate(self, mask: Mask) -> None:
        set_seed(self.hp.seed)  # the same batches, and the same augmentation if any, on every process and rerun
        recalibrate_bn(self.model, self.data.train, self.accelerator, self.bn_batches, BN_BATCH_SIZE)
        mask.apply(self.model)

    def val_accuracy(self, mask: Mask) -> float:
        scored = export(self.model, mask, self.example) if self.export_to_score and mask.plan else self.model
        return evaluate(scored, self.data.val, self.accelerator, self.eval_batch_size)[0]

    def snapshot(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # ---- the search (Algorithm 2) ----
    def search(self, level: int, candidates: Sequence[int]) -> _Search:
        self.load(self.states[level])
        found = _Search(self.states[level], self.masks[level], self.val_accuracy(self.masks[level]), [], [], 1, 0)
        for candidate in candidates:
            best = None  # (accuracy, alpha, state, mask): the highest accuracy, the smallest alpha on a tie
            scores, order, accuracy = [], sweep_order(self.hp.alphas, self.patience), None
            while True:
                try:
                    alpha = order.send(accuracy)
                except StopIteration:
                    break
                mask = self.load_blend(level, found.state, candidate, alpha)
                self.recalibrate(mask)
                accuracy = self.val_accuracy(mask)
                scores.append([alpha, accuracy])
                if best is None or (accuracy, -alpha) > (best[0], -best[1]):
                    best = (accuracy, alpha, self.snapshot(), mask)
            found.val_passes += len(scores)
            found.recalibrations += len(scores)
            found.sweeps.append({"candidate": candidate, "scores": scores})
            if best[0] > found.val_accuracy:
                found.val_accuracy, _, found.state, found.mask = best
                found.accepted.append([candidate, best[1]])
        return found

    def running_blend(self, level: int, candidates: Sequence[int], alphas: Sequence[float]):
        """A blend with a fixed alpha per candidate, re-pruned after each, BatchNorm recomputed at the end (the SWA
        and EMA baselines, as the reference code makes them; no candidates: the ticket recalibrated). Returns (state,
        mask)."""
        state, mask = self.states[level], self.masks[level]
        for candidate, alpha in zip(candidates, alphas):
            mask = self.load_blend(level, state, candidate, alpha)
            state = self.snapshot()
        self.load(state)
        self.recalibrate(mask)
        return self.snapshot(), mask

    # ---- scoring the finished models ----
    def materialise(self, state: Dict[str, torch.Tensor], mask: Mask) -> nn.Module:
        """The model a (state, mask) ticket is: the masked dense model, or the exported one for a channel ticket."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(state)
        mask.apply(model)
        return export(model, mask, self.example) if mask.granularity == "channel" and mask.plan else model

    def scores(self, models: Dict[str, object], corruptions: bool) -> dict:
        """{name}_val_accuracy, {name}_test_accuracy and, when asked, {name}_corruption_accuracy (the mean over
        corruptions and severities) with the per-corruption accuracies, for models or lists of models (ensembles)."""
        out = {}
        for name, model in models.items():
            out[f"{name}_val_accuracy"] = evaluate(model, self.data.val, self.accelerator, self.eval_batch_size)[0]
            out[f"{name}_test_accuracy"] = evaluate(model, self.data.test, self.accelerator, self.eval_batch_size)[0]
        if corruptions:
            detail: Dict[str, Dict[str, List[float]]] = {name: {} for name in models}
            for corruption, _, dataset in corrupted_copies(self.data.test, self.hp.seed,
                                                                 self.hp.corruption_samples):
                for name, model in models.items():
                    accuracy = evaluate(model, dataset, self.accelerator, self.eval_batch_size)[0]
                    detail[name].setdefault(corruption, []).append(accuracy)
            for name, per_corruption in detail.items():
                values = [a for accuracies in per_corruption.values() for a in accuracies]
                out[f"{name}_corruption_accuracy"] = sum(values) / len(values)
                out[f"{name}_corruptions"] = per_corruption
        return out

    def cost(self, model: nn.Module, mask: Mask):
        """(MACs, params) as IMP counts them: of the exported model for channel tickets; weight tickets keep the
        dense MACs and count only their kept weights."""
        macs, params = tp.utils.count_ops_and_params(model.eval(), self.example)
        if mask.granularity == "weight":
            params -= mask.num_pruned()
        return int(macs), int(params)
