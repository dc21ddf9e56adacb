"""Evaluation: a model's accuracy, loss and per-sample correctness on a dataset, and BatchNorm statistics recomputed
on training batches; what training validates with and what scoring tickets made by averaging needs, without the
trainer.

Every process scores its own share of the data and the counts are summed, so each sample counts exactly once on 1
or N processes. Models run under `accelerator.autocast()`: a ticket is scored in the precision it was trained in.
"""

from __future__ import annotations

import math
from itertools import islice
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.optim.swa_utils import update_bn

from ..errors import UserError
from ..loaders import DeviceNormalize, is_stream, make_loader, on_device, process_share

@torch.no_grad()
def evaluate(model: Union[nn.Module, Sequence[nn.Module]], dataset, accelerator: Accelerator,
             batch_size: int = 256, num_workers: int = 0) -> Tuple[float, int]:
    """Top-1 accuracy over `dataset` and the number of samples counted (each exactly once, on 1 or N processes:
    each process counts its own share, the counts are summed), in the Accelerator's precision.

    `model` may be a list of models: their mean softmax is the prediction (a naive output ensemble).
    Leaves the model(s) in eval mode.
    """
    correct, counted, _ = _score(model, dataset, accelerator, batch_size, num_workers)
    return correct / counted, int(counted)


def validate(model: nn.Module, dataset, accelerator: Accelerator, batch_size: int = 256,
             num_workers: int = 0) -> Dict[str, float]:
    """{"accuracy", "loss"}: `evaluate`'s accuracy and the mean cross-entropy over the same samples (LTH stops
    early at the lowest validation loss)."""
    correct, counted, loss = _score(model, dataset, accelerator, batch_size, num_workers)
    return {"accuracy": correct / counted, "loss": loss / counted}


def correctness(model: nn.Module, dataset, accelerator: Accelerator, batch_size: int = 256,
                num_workers: int = 0) -> torch.Tensor:
    """Whether each sample of `dataset` is predicted right, a bool tensor on the CPU in the dataset's order (a
    stream's: each process's share in turn), the same on every process: what a paired comparison of two models
    on the same samples needs."""
    return sample_scores(model, dataset, accelerator, batch_size, num_workers)[0]


def sample_scores(model, dataset, accelerator: Accelerator, batch_size: int = 256,
                  num_workers: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(each sample right or wrong, each sample's cross-entropy): a bool and a float64 tensor on the CPU, in the
    dataset's order (a stream's: each process's share in turn), the same on every process."""
    shares = [(outputs.argmax(dim=1) == targets, losses.double()) for outputs, targets, losses in
              _predictions(model, dataset, accelerator, batch_size, num_workers)]
    device = accelerator.device
    flags = torch.cat([f for f, _ in shares] or [torch.zeros(0, dtype=torch.bool, device=device)])
    losses = torch.cat([l for _, l in shares] or [torch.zeros(0, dtype=torch.float64, device=device)])
    if accelerator.num_processes == 1:
        return flags.cpu(), losses.cpu()
    return _in_dataset_order(flags, dataset, accelerator), _in_dataset_order(losses, dataset, accelerator)


def _in_dataset_order(values: torch.Tensor, dataset, accelerator: Accelerator) -> torch.Tensor:
    """Every process's per-sample values (its share: samples i, i + P, ...) gathered back in the dataset's order."""
    processes, width = accelerator.num_processes, math.ceil(len(dataset) / accelerator.num_processes)
    padded = torch.zeros(width, dtype=values.dtype, device=values.device)
    padded[:len(values)] = values
    rows = accelerator.gather(padded[None]).reshape(processes, width).cpu()
    lengths = [len(range(i, len(dataset), processes)) for i in range(processes)]
    if is_stream(dataset):
        return torch.cat([row[:n] for row, n in zip(rows, lengths)])
    everything = torch.zeros(len(dataset), dtype=values.dtype)
    for i, (row, n) in enumerate(zip(rows, lengths)):
        everything[i::processes] = row[:n]
    return everything


@torch.no_grad()
def _predictions(model, dataset, accelerator: Accelerator, batch_size: int, num_workers: int):
    """(outputs, targets, each sample's cross-entropy) of this process's share of `dataset`, batch by batch, in the
    Accelerator's precision; a list of models predicts their mean softmax."""
    if len(dataset) == 0:
        raise UserError("cannot evaluate on an empty dataset")
    device = accelerator.device
    if isinstance(model, (list, tuple)):
        members = [accelerator.unwrap_model(m).to(device).eval() for m in model]
        predict = lambda inputs: torch.stack([m(inputs).softmax(dim=1) for m in members]).mean(dim=0)  # noqa: E731
        loss = lambda probs, targets: F.nll_loss(probs.clamp_min(1e-12).log(), targets, reduction="none")  # noqa: E731
    else:
        predict = accelerator.unwrap_model(model).to(device).eval()
        loss = lambda logits, targets: F.cross_entropy(logits.float(), targets, reduction="none")  # noqa: E731
    batches = process_share(dataset, math.ceil(batch_size / accelerator.num_processes), device,
                            accelerator.process_index, accelerator.num_processes, num_workers)
    with accelerator.autocast():
        for inputs, targets in batches:
            outputs = predict(inputs)
            yield outputs, targets, loss(outputs, targets)


def _score(model, dataset, accelerator: Accelerator, batch_size: int, num_workers: int) -> Tuple[float, float, float]:
    """(correct, counted, summed cross-entropy) over every process's share, read back once at the end."""
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # correct, counted, loss
    for outputs, targets, loss in _predictions(model, dataset, accelerator, batch_size, num_workers):
        sums[0] += (outputs.argmax(dim=1) == targets).sum()
        sums[1] += targets.numel()
        sums[2] += loss.sum()
    correct, counted, loss_sum = accelerator.reduce(sums, reduction="sum").tolist()
    return correct, counted, loss_sum


def recalibrate_bn(model: nn.Module, dataset, accelerator: Accelerator, num_batches: Optional[int] = None,
                   batch_size: int = 256, num_workers: int = 0) -> None:
    """Recompute BatchNorm running statistics as a cumulative average over `num_batches` batches (all if None), in
    the Accelerator's precision (torch's `update_bn`).

    Every process runs the same batches (a fixed shuffle, not a shard), so all end with identical statistics.
    Only BatchNorm buffers change; the model is left in eval mode.
    """
    device = accelerator.device
    model = accelerator.unwrap_model(model).to(device)
    # A fixed shuffle, so a few batches of a class-sorted dataset still cover all classes.
    if is_stream(dataset):
        loader = dataset.loader(batch_size, seed=0, num_workers=num_workers, normalise=False,
                                pin_memory=device.type == "cuda")
    else:
        loader = make_loader(dataset, batch_size, device, num_workers=num_workers, shuffle=True,
                             generator=torch.Generator().manual_seed(0))
    batches = on_device(islice(loader, num_batches), device, DeviceNormalize(dataset, device))
    with accelerator.autocast():
        update_bn((inputs for inputs, _ in batches), model)
    model.eval()

