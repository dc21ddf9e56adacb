"""The per-ticket pipeline every training strategy runs, and what a ticket costs.

A ticket is a start (dense-space weights) and a mask. `train_ticket` builds the dense model with those weights,
applies the mask, exports a channel ticket so that it trains physically smaller (a weight ticket trains dense with
its mask kept enforced), trains it (`fit`), scores it on the test split, counts its MACs and parameters, measures
its latency where its model differs from the dense one, and finishes its folder: weights mapped back into the dense
space and result.json, written last. A finished ticket is read back instead of trained again.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch_pruning as tp
from torch import nn

from .callbacks import Callback, EnforceMask, Snapshots
from .deploy import forward_latency_ms
from .layout import TicketFolder
from .masks import Mask
from .networks.base import reinitialise
from .store import load_weights
from .structure import export
from .train.config import TrainConfig
from .train.evaluation import evaluate
from .train.checkpoint import TrainResult
from .train.loop import fit


def ticket_cost(model: nn.Module, mask: Mask, example: torch.Tensor) -> Tuple[int, int]:
    """(MACs, params) of a ticket's model: of the exported model for a channel ticket; a weight ticket keeps the dense
    MACs (its zeros are still multiplied) and counts only its kept parameters."""
    device = next(model.parameters()).device
    macs, params = tp.utils.count_ops_and_params(model.eval(), example.to(device))
    if mask.granularity == "weight":
        params -= mask.num_pruned()
    return int(macs), int(params)


def measures_latency(mask: Mask) -> bool:
    """Whether a ticket's latency says anything: its model is the dense one (the reference) or physically smaller
    (an exported channel ticket). A weight ticket runs the dense model, zeros included: its latency would be the
    dense model's plus the machine's noise."""
    return mask.num_pruned() == 0 or (mask.granularity == "channel" and bool(mask.plan))


def _early_stop_scores(trained, ticket: TicketFolder, run, cfg: TrainConfig) -> dict:
    """The early-stopping iteration (the lowest validation loss, LTH's criterion) and the test accuracy there."""
    stopped = copy.deepcopy(trained.model)
    stopped.load_state_dict(load_weights(ticket.train.early_stop))
    test_accuracy, _ = evaluate(stopped, run.data.test, run.accelerator, cfg.eval_batch_size, cfg.num_workers)
    best = trained.early_stop
    return {"early_stop_step": best["step"], "early_stop_val_loss": best["val_loss"],
            "early_stop_val_accuracy": best["val_accuracy"], "early_stop_test_accuracy": test_accuracy}


def train_ticket(run, strategy, ticket: TicketFolder, mask: Mask, start_state: Dict[str, torch.Tensor], *,
                 cfg: Optional[TrainConfig] = None, start_step: int = 0, snapshot_steps: Iterable[int] = (),
                 desc: str = "train", describe: Optional[Callable[[dict], dict]] = None,
                 callbacks: Optional[Callable[[nn.Module], Sequence[Callback]]] = None,
                 final_mask: Optional[Callable[[], Mask]] = None, reinitialise_seed: Optional[int] = None,
                 after_fit: Optional[Callable[[TrainResult], None]] = None) -> dict:
    """Train the ticket (`start_state`, `mask`) in the ticket folder `ticket` and return its result (read back when
    finished).

    `run` is the strategy's TrainingRun (accelerator, folder, data, example, training config; `cfg` overrides the
    config, e.g. fine-tuning at a constant rate), `strategy` the strategy (it builds the model). `start_step`
    rewinds the schedule; `snapshot_steps` keeps the weights at those steps in the ticket's training folder;
    `describe(result)` adds the strategy's own entries before the result is written; `callbacks(model)` gives more
    callbacks for the model that trains (the exported one for a channel ticket), e.g. a penalty on its scales.
    `final_mask()` gives the mask the training ended with, when a callback decides it while training (gradual
    pruning: `mask` is then where training starts); the result describes that one. `reinitialise_seed`: the model
    that trains (the exported one for a channel ticket) is initialised afresh at its own size with this seed
    (`networks.base.reinitialise`), its pruned entries zeroed, instead of starting from `start_state`'s values.
    `after_fit(trained)` gives the trained model the weights the ticket is (SWA's average, a validation-selected
    epoch) before it is scored, its validation accuracy scored anew; it runs on a finished training read back too.
    """
    done = run.folder.read_result(ticket)
    if done is not None:
        return done
    cfg = cfg or run.cfg
    model = strategy.create_model(run.data.num_classes, seed=strategy.seed, pretrained=False)  # weights come next
    model.load_state_dict(start_state)
    mask.apply(model)
    physical = mask.granularity == "channel"
    trainee = export(model, mask, run.example) if physical else model
    if reinitialise_seed is not None:
        reinitialise(trainee, reinitialise_seed)
        if not physical:
            mask.apply(trainee)
    kept = [EnforceMask(mask)] if not physical and mask.num_pruned() else []
    if snapshot_steps:
        kept.append(Snapshots(snapshot_steps))
    extra = list(callbacks(trainee)) if callbacks is not None else []
    trained = fit(trainee, run.data.train, run.data.val, cfg, ticket.train.root, accelerator=run.accelerator,
                  callbacks=[*extra, *kept], start_step=start_step, desc=desc)
    accelerator = run.accelerator
    if final_mask is not None:
        mask = final_mask()
    val_accuracy = trained.val_accuracy
    if after_fit is not None:
        after_fit(trained)
        val_accuracy, _ = evaluate(trained.model, run.data.val, accelerator, cfg.eval_batch_size, cfg.num_workers)
    test_accuracy, _ = evaluate(trained.model, run.data.test, accelerator, cfg.eval_batch_size, cfg.num_workers)
    macs, params = ticket_cost(trained.model, mask, run.example)
    latency = (forward_latency_ms(trained.model, run.example, autocast=accelerator.autocast)
               if measures_latency(mask) else None)
    result = {"density": mask.density, "params": params, "macs": macs, "val_accuracy": val_accuracy,
              "test_accuracy": test_accuracy, "train_seconds": trained.train_seconds, "steps": trained.steps,
              "num_classes": run.data.num_classes, "precision": accelerator.mixed_precision, "latency_ms": latency}
    if trained.early_stop is not None:
        result.update(_early_stop_scores(trained, ticket, run, cfg))
    if describe is not None:
        result = describe(result)
    run.folder.finish_ticket(ticket, mask.to_dense(trained.model.state_dict(), model.state_dict()), result)
    return result
