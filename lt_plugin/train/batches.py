"""The order `fit` reads its training batches in: one that depends only on (seed, epoch), so a resumed or rewound
run reads what an uninterrupted one reads, in one process or many.

`EpochShuffle` is the permutation of an indexable dataset; `shuffled_epochs` and `streamed_epochs` give the loop an
epoch's batches from any batch on, for indexable and for streamed datasets.
"""

from __future__ import annotations

from typing import Iterable

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import Sampler

from ..loaders import make_loader
from .config import TrainConfig, batches_per_epoch


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch of a run (a valid seed for torch, numpy and random alike)."""
    return (seed * 100_003 + epoch) % 2**31


class EpochShuffle(Sampler):
    """A permutation of range(n) that depends only on (seed, epoch): the same in every process and after a resume.
    `fit`'s data order; an own training loop that samples with it (`set_epoch` each epoch, as a DistributedSampler)
    reads the batches `fit` reads.

    Not Accelerate's seedable sampler, whose seed is part of the Accelerator's configuration: the data order must
    follow `TrainConfig.seed` whatever Accelerator the caller made.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=generator).tolist())


def shuffled_epochs(train_set, cfg: TrainConfig, accelerator: Accelerator):
    """epoch_batches(epoch, done_batches): an epoch's batches from its `done_batches`-th on, in the (seed, epoch)
    order of `EpochShuffle`, each process reading its share of every global batch."""
    loader = make_loader(train_set, cfg.batch_size, accelerator.device, num_workers=cfg.num_workers,
                         sampler=EpochShuffle(len(train_set), cfg.seed), drop_last=True)
    loader = accelerator.prepare_data_loader(loader)

    def epoch_batches(epoch: int, done_batches: int) -> Iterable:
        loader.set_epoch(epoch)
        return accelerator.skip_first_batches(loader, done_batches) if done_batches else loader
    return epoch_batches


def streamed_epochs(train_set, cfg: TrainConfig, accelerator: Accelerator):
    """epoch_batches(epoch, done_batches) of a streamed training set: each process reads its own share of the
    stream, shuffled by (seed, epoch), in batches of its share of the global batch; as many as an epoch has. The
    loader, already one process's share, is given to Accelerate only to put its batches on the device and to end
    gradient accumulation at its end (it reads one batch ahead)."""
    def epoch_batches(epoch: int, done_batches: int) -> Iterable:
        loader = train_set.loader(cfg.batch_size // accelerator.num_processes,
                                  num_batches=batches_per_epoch(cfg, len(train_set)), skip_batches=done_batches,
                                  seed=cfg.seed, epoch=epoch, process_index=accelerator.process_index,
                                  num_processes=accelerator.num_processes, num_workers=cfg.num_workers,
                                  normalise=False, pin_memory=accelerator.device.type == "cuda")
        return prepare_data_loader(loader, accelerator.device, num_processes=1, process_index=0, put_on_device=True,
                                   dispatch_batches=False, non_blocking=True)
    return epoch_batches
