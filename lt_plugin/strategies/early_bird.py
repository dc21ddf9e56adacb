"""Early-Bird tickets (You et al., ICLR 2020): find a channel ticket early in training, then train it small.

Search: train the dense model with the network-slimming penalty (`penalty * sign(gamma)` added to the gradient of
every normalisation scale) and draw a channel mask at each prune ratio at every check (every epoch by default, and
once at initialisation, as the reference does). Per ratio an `EarlyBirdDetector` keeps the last `window` masks and
declares the ticket found when the newest is within `epsilon` of each older one (normalised Hamming distance over
channels). The search ends as soon as every ratio has its ticket. Each ticket is then exported through the dependency
graph and trained, physically smaller, for the full schedule. `baseline=True` also runs the one-shot baseline on the
same budget: train dense to the end with the same penalty, prune at the same ratio with the same score, retrain small.

Run folder:
    config.json, init.safetensors          hyperparameters; theta_0
    search/train/                          the penalised dense training (fit's files); it ends at the last emergence
    search/checks/step_K.safetensors       the channel flags of every ratio's mask at global step K; plans in metadata
    ratio_R/emergence.safetensors          the dense weights when ratio R's ticket emerged (`retrain inherit` start)
    ratio_R/mask.safetensors, train/, weights.safetensors, result.json    the ticket, its training, its result
    baseline/dense/, baseline/ratio_R/     with `baseline`: the dense training to the end, and the one-shot tickets
    results.json, mask_distance.png
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch_pruning as tp
from torch import nn

from ..callbacks import Lambda, SlimmingPenalty, TrainState
from ..early_bird_rule import DISTANCES, EARLY_BIRD_SCORES as SCORES
from ..early_bird_rule import (EarlyBirdDetector, draw_channel_flags, early_bird_importance, mask_distance,
                               norm_scales, resolve_score)
from ..errors import RunFolderError, UserError
from ..experiment import Experiment
from ..layout import RunLayout, TicketFolder
from ..masks import resolve_ignored, snapshot
from ..model_checks import check_round_to
from ..pipeline import train_ticket
from ..replicates import Replicates, run_replicates
from ..report import plot_distance_matrices
from ..run_folder import RunFolder
from ..store import atomic_save_safetensors, load_weights, read_json, read_safetensors
from ..structure import ChannelStructure, export
from ..train.config import TrainConfig, steps_per_epoch
from ..train.loop import fit
from .base import Strategy, TicketFiles, start_training_run
from .registry import register_strategy

RETRAIN = ("inherit", "reinit")
# scratch: the ticket trains the whole schedule again from its start with the slimming penalty on (the reference's
# scripts/standard-train/retrain_scratch.sh: main_scratch.py --sparsity-regularization); continue: it trains the rest
# of the schedule from the emergence step, the learning rate and the penalty going on (retrain_continue.sh: main_c.py
# --start-epoch t --sparsity-regularization); full: the whole schedule again without the penalty (what run folders made
# before `scratch` trained)
RETRAIN_SCHEDULES = ("scratch", "continue", "full")
SEARCH_PRECISIONS = ("fp32", "bf16", "int8")
# Forward and backward of a training step cost about three forward passes.
TRAIN_MACS_PER_FORWARD_MAC = 3


# ---------------------------------------------------------------- the low-precision search

def _fake_int8(x: torch.Tensor) -> torch.Tensor:
    """Symmetric per-tensor 8-bit fake quantisation; gradients pass straight through. The scale stays a tensor on
    the device (no host sync per layer)."""
    scale = x.detach().abs().amax().float().clamp_min(1e-8) / 127.0
    zero_point = torch.zeros((), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, -127, 127)


@contextlib.contextmanager
def search_precision(model: nn.Module, precision: str, device_type: str):
    """Run `model` in the search's precision inside the block: bf16 autocast, or 8-bit fake quantisation of every
    Conv/Linear weight and input. Parameters and state-dict names are untouched (weights stay fp32 masters)."""
    if precision == "fp32":
        yield
        return
    if precision == "bf16":
        forward, own_forward = model.forward, model.__dict__.get("forward")

        def bf16_forward(*args, **kwargs):
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
                return forward(*args, **kwargs).float()
        model.forward = bf16_forward
        try:
            yield
        finally:  # the forward the model had, whoever set it (Accelerate's precision is fit's to undo)
            if own_forward is None:
                del model.forward
            else:
                model.forward = own_forward
        return
    layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]

    def quantise(module, args):
        # An instance attribute shadows the parameter for this forward only; the gradient reaches the parameter.
        module.__dict__["weight"] = _fake_int8(module._parameters["weight"])
        return (_fake_int8(args[0]),) + tuple(args[1:])

    def unshadow(module, _args, _output):
        module.__dict__.pop("weight", None)

    hooks = [h for m in layers for h in (m.register_forward_pre_hook(quantise), m.register_forward_hook(unshadow))]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for m in layers:
            m.__dict__.pop("weight", None)


# ---------------------------------------------------------------- the strategy

def _ratio_name(ratio: float) -> str:
    return f"{ratio:g}"


@register_strategy("early-bird")
@dataclasses.dataclass
class EarlyBird(Strategy, Replicates, TrainConfig, Experiment):
    """Early-Bird channel tickets found early in training, then trained physically smaller."""

    ratios: list = dataclasses.field(default_factory=lambda: [0.3, 0.5, 0.7], metadata={
        "help": "fractions of channels removed; each ratio gets its ticket"})
    penalty: float = dataclasses.field(default=1e-4, metadata={
        "help": "network-slimming L1 strength s: s*sign(gamma) is added to each normalisation scale's gradient"})
    epsilon: float = dataclasses.field(default=0.1, metadata={
        "help": "a ticket has emerged when its newest mask is within this distance of every older one"})
    window: int = dataclasses.field(default=5, metadata={"help": "masks kept in the FIFO (the newest included)"})
    check_every: int = dataclasses.field(default=0, metadata={
        "help": "optimizer steps between two masks (0: every epoch)"})
    search_epochs: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "give up the search after this many epochs (default: --epochs)"})
    score: str = dataclasses.field(default="auto", metadata={
        "choices": SCORES, "help": "channel score: bn-scale (|gamma|, one global threshold), magnitude (Torch-Pruning "
                                   "group magnitude), auto (bn-scale if the model has BatchNorm)"})
    retrain: str = dataclasses.field(default="inherit", metadata={
        "choices": RETRAIN, "help": "inherit (the ticket's weights at emergence, the paper's EB Train) or reinit "
                                    "(the small model initialised afresh at its own size, as the reference's "
                                    "main_scratch.py builds it)"})
    retrain_schedule: str = dataclasses.field(default="scratch", metadata={
        "choices": RETRAIN_SCHEDULES, "before": "full",
        "help": "scratch: the ticket trains the whole schedule (--epochs) again from its start, the slimming penalty "
                "on (the reference's retrain_scratch script); continue: the rest of the schedule from the emergence "
                "step, the learning rate and the penalty going on (its retrain_continue scripts, the training cost "
                "the paper reports); full: the whole schedule without the penalty (run folders made before scratch)"})
    distance: str = dataclasses.field(default="norm", metadata={
        "choices": DISTANCES, "before": "outputs",
        "help": "what the mask distance compares: norm (every normalisation-layer channel, the reference's BatchNorm "
                "channels) or outputs (every output channel of the prunable Conv/Linear weights)"})
    search_precision: str = dataclasses.field(default="fp32", metadata={
        "choices": SEARCH_PRECISIONS, "help": "precision of the search only (int8: 8-bit fake quantisation of "
                                              "weights and activations; bf16: autocast); the retraining runs in "
                                              "--mixed-precision"})
    baseline: bool = dataclasses.field(default=False, metadata={
        "help": "also run the one-shot baseline (train dense to the end, prune, retrain) and compare the costs"})
    ignore: list = dataclasses.field(default_factory=list, metadata={
        "help": "layer names left unpruned (the classifier always is)"})
    round_to: Optional[int] = dataclasses.field(default=None, metadata={
        "type": int, "help": "every pruned layer keeps a multiple of N channels (8 or 16 suit vector units and "
                             "tensor cores)"})

    ticket_key_name = "ratio"

    def __post_init__(self):
        super().__post_init__()
        self.check_replicates()
        if not self.ratios:
            raise UserError("--ratios needs at least one ratio")
        if any(not 0.0 < r < 1.0 for r in self.ratios):
            raise UserError(f"--ratios must each be in (0, 1) (the fraction of channels removed), not {self.ratios}")
        if len({_ratio_name(r) for r in self.ratios}) != len(self.ratios):
            raise UserError(f"--ratios has a ratio twice: {self.ratios}")
        self.ratios = sorted(float(r) for r in self.ratios)
        if self.penalty < 0:
            raise UserError(f"--penalty must be 0 or more, not {self.penalty}")
        if not (isinstance(self.window, int) and self.window >= 2):
            raise UserError(f"--window must be 2 or more (the newest mask and at least one older), not {self.window}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise UserError(f"--epsilon must be in [0, 1], not {self.epsilon}")
        if self.check_every < 0:
            raise UserError(f"--check-every must be 0 (every epoch) or a number of steps, not {self.check_every}")
        if self.search_epochs is not None and not 1 <= self.search_epochs <= self.epochs:
            raise UserError(f"--search-epochs must be between 1 and --epochs ({self.epochs}), not {self.search_epochs}")
        check_round_to(self.round_to)

    # ---- where the tickets are ----
    @classmethod
    def ticket_keys(cls, run_dir) -> List[str]:
        return RunLayout(run_dir).finished_ratios()

    @classmethod
    def locate_ticket(cls, run_dir, key: str) -> TicketFiles:
        run_dir = Path(run_dir)
        try:
            name = _ratio_name(float(key))
        except ValueError:
            raise UserError(f"an early-bird ticket is named by its ratio (e.g. 0.5), not {key!r}") from None
        if name not in cls.ticket_keys(run_dir):
            raise UserError(f"{run_dir} has no retrained ticket at ratio {name}; finished: "
                            f"{', '.join(cls.ticket_keys(run_dir)) or 'none'}")
        ticket = RunLayout(run_dir).ratio(name)
        return TicketFiles(weights=ticket.weights, mask=ticket.mask, result=read_json(ticket.result),
                           experiment=cls.from_run(run_dir))

    # ---- the run ----
    def run(self, out_dir) -> List[dict]:
        if self.seeds:
            return run_replicates(self, out_dir)
        # Everything a user can get wrong is checked before the run folder gets its first file.
        run = start_training_run(self, out_dir)
        cfg, accelerator, folder, data, example = run.cfg, run.accelerator, run.folder, run.data, run.example
        model = self.create_model(data.num_classes, seed=self.seed)
        init_state = {k: v.clone() for k, v in model.state_dict().items()}
        ignored = resolve_ignored(model, self.ignore)
        score = resolve_score(self.score, model)
        structure = ChannelStructure(model, example, ignored, importance=early_bird_importance(score),
                                     scope="global", round_to=self.round_to)
        deepest = structure.plans_at_ratios([max(self.ratios)])[max(self.ratios)]
        export(model, structure.mask_from_plan(deepest), example)  # fails now if the model cannot be pruned
        per_epoch = steps_per_epoch(cfg, len(data.train))
        self.check_run_folder(folder)
        folder.save_weights_once(folder.layout.init, init_state)

        dense_macs, _ = tp.utils.count_ops_and_params(model.eval(), example)
        model.train()
        search = self._search(folder, accelerator, cfg, data, model, structure, ignored, per_epoch)
        samples_per_step = cfg.batch_size * cfg.grad_accum_steps
        results = []
        for ratio in self.ratios:
            name = _ratio_name(ratio)
            found_step = search["found"].get(name)
            entry = {"ratio": ratio, "score": score, "search_precision": self.search_precision,
                     "found": found_step is not None, "eb_step": found_step,
                     "eb_epoch": _epochs(found_step, per_epoch),
                     "distances": search["distances"][name], "num_classes": data.num_classes}
            if found_step is None:
                results.append(entry)
                continue
            where = folder.layout.ratio(name)
            start = load_weights(where.emergence if self.retrain == "inherit" else folder.layout.init)
            ticket = self._retrain(run, where, search["plans"][name], start, self._retrain_start(found_step),
                                   structure, f"ratio {name}")
            search_seconds = search["seconds"] * found_step / max(search["steps"], 1)  # pro rata up to emergence
            search_macs = TRAIN_MACS_PER_FORWARD_MAC * dense_macs * found_step * samples_per_step
            entry.update(ticket)
            entry.update({"search_macs": int(search_macs), "search_seconds": search_seconds,
                          "train_macs": int(search_macs + ticket["retrain_macs"]),
                          "train_seconds": search_seconds + ticket["retrain_seconds"]})
            results.append(entry)
        if self.baseline:
            self._add_baseline(results, run, model, structure, dense_macs, init_state)
        folder.write_results(results, columns=_COLUMNS, plots={"mask_distance.png": lambda path: plot_distance_matrices(
            search["matrices"], path, title=f"Early-Bird mask distance ({self.model})")})
        return results

    # ---- the search ----
    def _search(self, folder: RunFolder, accelerator, cfg: TrainConfig, data, model: nn.Module,
                structure: ChannelStructure, ignored, per_epoch: int) -> dict:
        layout = folder.layout
        names = [_ratio_name(r) for r in self.ratios]
        checks = read_checks(layout)  # step -> (flags by ratio, plans by ratio); a resume replays them
        interval = self.check_every or per_epoch
        last_step = (self.search_epochs or self.epochs) * per_epoch

        norms = norm_scales(model, ignored) if self.distance == "norm" else None

        def check(step: int) -> Dict[str, int]:
            drawn = draw_channel_flags(structure, self.ratios, norms)
            flags = {_ratio_name(r): f for r, (_, f) in drawn.items()}
            plans = {_ratio_name(r): p for r, (p, _) in drawn.items()}
            checks[step] = (flags, plans)
            if accelerator.is_main_process:
                atomic_save_safetensors({f"flags/{n}": f for n, f in flags.items()},
                                        layout.check(step),
                                        {"step": json.dumps(step), "plans": json.dumps(plans)})
            return self._detect(checks, names, step, per_epoch)[0]

        model.load_state_dict(load_weights(layout.init))
        check(0)  # the reference's first mask is the initialisation's

        def check_and_stop(state: TrainState) -> Optional[bool]:
            if state.step % interval and state.step < last_step:
                return None  # no check at this step: nothing decided
            found = check(state.step)  # a resumed run replays the checks before this step, so it decides the same
            for name in (n for n, s in found.items() if s == state.step):
                state.save_weights(layout.ratio(name).emergence)
            return len(found) == len(names) or state.step >= last_step

        callbacks = [Lambda(after_optimizer_step=check_and_stop)]
        if self.penalty:
            callbacks.insert(0, SlimmingPenalty(norm_scales(model, ignored).values(), self.penalty))
        with search_precision(model, self.search_precision, accelerator.device.type):
            trained = fit(model, data.train, data.val, cfg, layout.search.root, accelerator=accelerator,
                          callbacks=callbacks, desc="search")
        accelerator.wait_for_everyone()
        checks = read_checks(layout)
        found, distances = self._detect(checks, names, trained.steps, per_epoch)
        for name, step in found.items():
            if not layout.ratio(name).emergence.exists():
                raise RunFolderError(f"{layout.ratio(name).root}: the weights at the emergence of ratio {name} "
                                     "are missing; delete the search folder to search again")
        steps = sorted(s for s in checks if s <= trained.steps)
        matrices = {name: ([_epochs(s, per_epoch) for s in steps],
                           [[mask_distance(checks[a][0][name], checks[b][0][name]) for b in steps] for a in steps])
                    for name in names}
        return {"found": found, "distances": distances, "plans": {n: checks[s][1][n] for n, s in found.items()},
                "steps": trained.steps, "seconds": trained.train_seconds, "matrices": matrices}

    def _detect(self, checks: dict, names: List[str], upto: int, per_epoch: int):
        """Replay the checks up to step `upto` through one detector per ratio: ({ratio: emergence step}, history)."""
        found, history = {}, {}
        for name in names:
            detector = EarlyBirdDetector(self.window, self.epsilon)
            steps = sorted(s for s in checks if s <= upto)
            for step in steps:
                detector.update(checks[step][0][name])
                if detector.found_at is not None:
                    found[name] = steps[detector.found_at]
                    break
            history[name] = [{"step": s, "epoch": _epochs(s, per_epoch), "distances": d}
                             for s, d in zip(steps, detector.distances)]
        return found, history

    # ---- training a ticket small ----
    def _retrain_start(self, emergence_step: Optional[int]) -> int:
        """The global step a ticket found at `emergence_step` retrains from: 0 (the whole schedule) or, continuing,
        the emergence step."""
        return (emergence_step or 0) if self.retrain_schedule == "continue" else 0

    def _retrain(self, run, where: TicketFolder, plan: list, start_state, start_step: int,
                 structure: ChannelStructure, desc: str) -> dict:
        """The ticket of `plan` trained physically small from `start_state` at global step `start_step` (the shared
        per-ticket pipeline; with the slimming penalty on but for the `full` schedule, as the reference's main_c.py
        and main_scratch.py; `--retrain reinit`: the small model initialised afresh at its own size), with its
        training cost in MACs: the optimizer steps it took."""
        done = run.folder.read_result(where)
        if done is not None:  # a finished ticket: no mask to read, no barrier
            return done
        mask = run.folder.load_or_make_mask(where, lambda: structure.mask_from_plan(plan))
        samples_per_step = run.cfg.batch_size * run.cfg.grad_accum_steps

        def describe(result: dict) -> dict:
            steps = result["steps"] - start_step
            retrain_macs = TRAIN_MACS_PER_FORWARD_MAC * result["macs"] * steps * samples_per_step
            return {**result, "retrain_start_step": start_step, "retrain_macs": int(retrain_macs),
                    "retrain_seconds": result["train_seconds"]}

        def penalty(small: nn.Module) -> list:
            if self.retrain_schedule == "full" or not self.penalty:
                return []
            return [SlimmingPenalty(norm_scales(small).values(), self.penalty)]
        return train_ticket(run, self, where, mask, start_state, start_step=start_step, desc=desc, describe=describe,
                            callbacks=penalty, reinitialise_seed=self.seed + 1 if self.retrain == "reinit" else None)

    def _add_baseline(self, results, run, model, structure, dense_macs, init_state) -> None:
        """The one-shot baseline on the same budget: dense to the end (same penalty), prune, retrain small with the
        ticket's own retraining (the same start step and length with --retrain-schedule continue)."""
        cfg, folder, data = run.cfg, run.folder, run.data
        model.load_state_dict(init_state)
        scales = norm_scales(model, structure.ignored).values()
        penalty = [SlimmingPenalty(scales, self.penalty)] if self.penalty else []
        dense = fit(model, data.train, data.val, cfg, folder.layout.baseline_dense.root, accelerator=run.accelerator,
                    callbacks=penalty, desc="baseline dense")
        dense_state = snapshot(dense.model)
        plans = structure.plans_at_ratios(self.ratios)
        dense_cost = TRAIN_MACS_PER_FORWARD_MAC * dense_macs * dense.steps * cfg.batch_size * cfg.grad_accum_steps
        for entry in results:
            name = _ratio_name(entry["ratio"])
            start = dense_state if self.retrain == "inherit" else init_state
            one_shot = self._retrain(run, folder.layout.baseline_ratio(name), plans[entry["ratio"]], start,
                                     self._retrain_start(entry["eb_step"]), structure, f"baseline ratio {name}")
            baseline = {"baseline_test_accuracy": one_shot["test_accuracy"],
                        "baseline_val_accuracy": one_shot["val_accuracy"], "baseline_density": one_shot["density"],
                        "baseline_macs": one_shot["macs"],
                        "baseline_train_macs": int(dense_cost + one_shot["retrain_macs"]),
                        "baseline_train_seconds": dense.train_seconds + one_shot["retrain_seconds"]}
            entry.update(baseline)
            if entry.get("train_macs"):
                entry["train_macs_saved"] = baseline["baseline_train_macs"] / entry["train_macs"]
                entry["train_seconds_saved"] = baseline["baseline_train_seconds"] / entry["train_seconds"]


_COLUMNS = (("ratio", "ratio", "{:g}"), ("eb_epoch", "EB epoch", "{}"), ("density", "density", "{:.4f}"),
            ("macs", "MACs", "{:,}"), ("latency_ms", "ms/64", "{:.1f}"), ("test_accuracy", "test acc", "{:.2%}"),
            ("train_macs", "train MACs", "{:.3g}"),
            ("train_seconds", "train s", "{:.1f}"), ("baseline_test_accuracy", "one-shot acc", "{:.2%}"),
            ("baseline_train_macs", "one-shot MACs", "{:.3g}"), ("train_macs_saved", "MACs saved", "x{:.2f}"),
            ("train_seconds_saved", "time saved", "x{:.2f}"))


def _epochs(step: Optional[int], per_epoch: int):
    """A step as epochs: an integer at epoch ends, else a fraction."""
    if step is None:
        return None
    return step // per_epoch if step % per_epoch == 0 else round(step / per_epoch, 3)


def read_checks(layout: RunLayout) -> Dict[int, tuple]:
    checks = {}
    for path in layout.checks():
        tensors, metadata = read_safetensors(path)
        try:
            step, plans = json.loads(metadata["step"]), json.loads(metadata["plans"])
        except (KeyError, json.JSONDecodeError):
            raise RunFolderError(f"{path} is not an early-bird check file; delete it to recompute it") from None
        checks[step] = ({k[len("flags/"):]: v for k, v in tensors.items()}, plans)
    return checks
