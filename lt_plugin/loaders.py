"""Batches on the device, fed the way a GPU wants them: one path for training, evaluation and BatchNorm statistics.

A dataset that keeps 8-bit pixels (every split `lt_plugin.data` makes: `pixel_batch(indices)`, or a stream's
`loader(..., normalise=False)`) is read as uint8 batches, one gather per batch (no per-image tensors re-stacked), a
quarter of float32's bytes on the bus; on a GPU they are pinned, copied without blocking, and normalised there by
`DeviceNormalize` with the dataset's own arithmetic, so a model sees exactly the values of `dataset[i]`. Any other
dataset (a TensorDataset of float images, say) is read through its items, and its batches are used as they are.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

MAX_WORKERS = 8  # DataLoader workers per process when --num-workers is left to its default on a GPU


def normalise_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """float32 (pixels / 255 - mean) / std of uint8 pixels [N, C or 1, H, W], with C = len(mean) channels; `mean`
    and `std` [C, 1, 1] on the pixels' device. The only normalisation: datasets and DeviceNormalize both call it."""
    return pixels.expand(-1, len(mean), -1, -1).float().div_(255).sub_(mean).div_(std)


def default_num_workers(device: torch.device) -> int:
    """DataLoader workers when none are asked for: none on a CPU, whose cores the training itself needs; on a GPU,
    up to MAX_WORKERS per process among the cores this process may use, one left for the process itself."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return max(0, min(MAX_WORKERS, per_process - 1))


def reads_pixels(dataset) -> bool:
    """Whether `dataset` hands out 8-bit pixels with the mean and std that normalise them."""
    return hasattr(dataset, "pixel_batch") and hasattr(dataset, "mean") and hasattr(dataset, "std")


class PixelBatches(Dataset):
    """A dataset's `pixel_batch` as a map-style dataset whose DataLoader reads each batch in one call."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, indices):
        return self.dataset.pixel_batch(indices)


def _as_batch(batch):
    """The collate function of PixelBatches: `__getitems__` has already made the batch."""
    return batch


def make_loader(dataset, batch_size: int, device: torch.device, *, num_workers: int = 0, sampler=None,
                shuffle: bool = False, generator: Optional[torch.Generator] = None, drop_last: bool = False,
                persistent: bool = False) -> DataLoader:
    """A DataLoader of `dataset` in batches of `batch_size`: uint8 pixel batches when the dataset keeps them, pinned
    for a GPU; `persistent` keeps its workers between epochs (a training loader, iterated once per epoch)."""
    pixels = reads_pixels(dataset)
    return DataLoader(PixelBatches(dataset) if pixels else dataset, batch_size=batch_size, sampler=sampler,
                      shuffle=shuffle, generator=generator, drop_last=drop_last,
                      collate_fn=_as_batch if pixels else None, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=persistent and num_workers > 0)


class DeviceNormalize:
    """Inputs as a model takes them, on the device: uint8 pixels normalised by the dataset's mean and std (float
    inputs as they are), in `channels_last` memory format when asked (what cuDNN's tensor-core convolutions use)."""

    def __init__(self, dataset, device: torch.device, channels_last: bool = False):
        mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
        self.stats = (mean.to(device), std.to(device)) if torch.is_tensor(mean) and torch.is_tensor(std) else None
        self.channels_last = channels_last

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dtype == torch.uint8 and self.stats is not None:
            inputs = normalise_pixels(inputs, *self.stats)
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return inputs


def on_device(batches: Iterable, device: torch.device, normalize: DeviceNormalize) -> Iterator[Tuple]:
    """(inputs, targets) of `batches` on `device`, copied without blocking (from pinned memory on a GPU), normalised."""
    for inputs, targets in batches:
        yield normalize(inputs.to(device, non_blocking=True)), targets.to(device, non_blocking=True)


def is_stream(dataset) -> bool:
    """Whether `dataset` is read in order through its own `loader` (data.IterableImages), not by index."""
    return isinstance(dataset, torch.utils.data.IterableDataset) and hasattr(dataset, "loader")


def process_share(dataset, batch_size: int, device: torch.device, process_index: int = 0, num_processes: int = 1,
                  num_workers: int = 0) -> Iterator[Tuple]:
    """This process's share of `dataset`, in order, in batches of up to `batch_size`, on `device` and normalised:
    every `num_processes`-th sample from `process_index` on (a stream: its own shards), so that the processes
    together read each sample exactly once (evaluation)."""
    normalize = DeviceNormalize(dataset, device)
    if is_stream(dataset):
        loader = dataset.loader(batch_size, process_index=process_index, num_processes=num_processes,
                                num_workers=num_workers, normalise=False, pin_memory=device.type == "cuda")
    else:
        loader = make_loader(dataset, batch_size, device, num_workers=num_workers,
                             sampler=range(process_index, len(dataset), num_processes))
    return on_device(loader, device, normalize)
