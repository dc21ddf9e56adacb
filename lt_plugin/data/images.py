"""Map-style splits of images read by index, and where their pixels are kept.

`PreparedImages` holds 8-bit pixels transformed once (in memory), or `LazyPixels` that decode and transform each
image as it is read; `AugmentedImages` transforms its images anew at every read (`DecodedImages` decodes them for
timm's ImageNet recipe). "auto" keeps the pixels in memory when they take at most `MEMORY_SHARE` of the memory
available (`available_memory`). `DataSplits` is what `load_data` returns.

No `datasets` here: the datasets are only called through their methods, so importing DataSplits stays cheap.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..loaders import normalise_pixels
from .transforms import EvalPixels, _in_mode, _same_channels

if TYPE_CHECKING:
    from datasets import Dataset

PREPARE_BATCH_SIZE = 256  # images read from a dataset at a time when transforming them
IN_MEMORY = ("auto", "yes", "no")
MEMORY_SHARE = 0.25  # "auto" keeps the pixels in memory when they take at most this share of the available memory


@dataclass
class DataSplits:
    """Items of every split are (float32 tensor [C, H, W], normalised; int label)."""

    train: torch.utils.data.Dataset  # PreparedImages, or AugmentedImages when augmenting
    val: torch.utils.data.Dataset  # the dataset's validation split, else carved from train
    test: torch.utils.data.Dataset  # the dataset's test split, else carved from all its data
    num_classes: int
    name: str
    input_size: tuple  # (C, H, W) of the tensors
    in_memory: bool = True  # False: images decoded and transformed as they are read (no, or streaming)
    streaming: bool = False  # True: every split is an IterableImages, read in order through datasets' streaming


class DecodedImages:
    """The images of a dataset's column, as PIL images in the mode `in_chans` calls for, decoded when indexed."""

    def __init__(self, dataset: Dataset, image_column: str, in_chans: int):
        self.dataset = dataset.select_columns([image_column])
        self.image_column = image_column
        self.in_chans = in_chans

    def __getitem__(self, index):
        return _in_mode(self.dataset[int(index)][self.image_column], self.in_chans)


class LazyPixels:
    """The uint8 pixels [C, H, W] of a dataset's images, decoded and transformed each time they are indexed (by an
    int, a slice or a list of ints): the streaming path. The values are those `_pixels` keeps in memory."""

    def __init__(self, dataset: Dataset, image_column: str, pixel_transform, channels: int):
        self.dataset = dataset.select_columns([image_column])
        self.image_column = image_column
        self.pixel_transform = pixel_transform
        self.channels = channels

    def __len__(self):
        return len(self.dataset)

    def _transform(self, image) -> torch.Tensor:
        return self.pixel_transform(_in_mode(image, self.channels)).expand(self.channels, -1, -1)

    def __getitem__(self, index):
        if isinstance(index, slice):
            index = range(*index.indices(len(self)))
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            return self._transform(self.dataset[int(index)][self.image_column])
        images = self.dataset[[int(i) for i in index]][self.image_column]  # one read for the batch
        return torch.stack([self._transform(image) for image in images])


class PreparedImages(torch.utils.data.Dataset):
    """Images as uint8 `pixels` [N, C or 1, H, W], transformed once at load time and kept in memory (a quarter of
    float32's memory; a twelfth for grayscale images, kept as one channel), or `LazyPixels` decoded and transformed
    as they are read; normalised to float32 `(pixels / 255 - mean) / std` when read, a whole batch at a time when a
    DataLoader asks (`__getitems__`); `labels` int64 [N]. The values are the same however the images are read."""

    def __init__(self, pixels, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        if isinstance(pixels, torch.Tensor) and pixels.dtype != torch.uint8:
            raise TypeError(f"PreparedImages keeps uint8 pixels, not {pixels.dtype}")
        self.pixels = pixels
        self.labels = labels
        self.mean = mean
        self.std = std

    @property
    def images(self) -> torch.Tensor:
        """Every image normalised, float32 [N, C, H, W] (allocated on each access: for small splits and tests)."""
        return normalise_pixels(self.pixels[:], self.mean, self.std)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return normalise_pixels(self.pixels[index:index + 1], self.mean, self.std)[0], int(self.labels[index])

    def __getitems__(self, indices):
        batch = normalise_pixels(self.pixels[list(indices)], self.mean, self.std)
        return [(image, int(self.labels[i])) for image, i in zip(batch, indices)]

    def pixel_batch(self, indices) -> tuple:
        """(uint8 pixels [B, C or 1, H, W], int64 labels [B]) of `indices`: one gather, not normalised (what
        lt_plugin's loaders send to the device, `loaders.DeviceNormalize` normalising them there)."""
        indices = list(indices)
        return self.pixels[indices], self.labels[indices]


class AugmentedImages(torch.utils.data.Dataset):
    """Images randomly transformed anew each time they are read. `images[i]` is what `pixel_transform` takes: uint8
    pixels [C, H, W] transformed once at load time, which the small-image recipes shift and flip (augment="crop",
    "crop-flip"), or a PIL image decoded each time for timm's ImageNet recipe (DecodedImages, augment="imagenet")."""

    def __init__(self, images, labels: np.ndarray, pixel_transform, mean: torch.Tensor, std: torch.Tensor):
        self.images = images
        self.labels = labels
        self.pixel_transform = pixel_transform
        self.mean = mean
        self.std = std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        pixels = self.pixel_transform(self.images[index])
        return normalise_pixels(pixels.unsqueeze(0), self.mean, self.std)[0], int(self.labels[index])

    def pixel_batch(self, indices) -> tuple:
        """(uint8 pixels [B, C or 1, H, W], int64 labels [B]) of `indices`, each image transformed anew."""
        indices = list(indices)
        pixels = _same_channels([self.pixel_transform(self.images[i]) for i in indices], len(self.mean))
        return torch.stack(pixels), torch.as_tensor(self.labels[indices], dtype=torch.int64)


def available_memory() -> int:
    """Bytes of memory available now (the kernel's MemAvailable: free plus reclaimable caches)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _keep_in_memory(choice: str, pixel_bytes: int) -> bool:
    if choice != "auto":
        return choice == "yes"
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # each process of a launch holds its own copy
    return pixel_bytes * processes <= MEMORY_SHARE * available_memory()


def _pixels(dataset: Dataset, image_column: str, pixel_transform, image_size: int, channels: int) -> torch.Tensor:
    """uint8 [N, C, image_size, image_size] pixels of every image, transformed once. C is 1 while every image is
    grayscale (a third of the memory of 3 channels; `normalise_pixels` copies the channel), else `channels`."""
    from .idx import stored_grayscale  # it imports `datasets`, which holding a Dataset has loaded already
    stored = stored_grayscale(dataset, image_column)  # the built-in sources' images, read in one piece
    if stored is not None and isinstance(pixel_transform, EvalPixels) and stored.shape[1:] == (image_size,) * 2:
        return torch.from_numpy(stored).unsqueeze(1)  # images of the side, which the evaluation transform keeps
    pixels = None
    row = 0
    for batch in dataset.select_columns([image_column]).iter(batch_size=PREPARE_BATCH_SIZE):
        for image in batch[image_column]:
            image = pixel_transform(_in_mode(image, in_chans=channels))
            if pixels is None:
                pixels = torch.empty((len(dataset), image.shape[0], image_size, image_size), dtype=torch.uint8)
            elif image.shape[0] > pixels.shape[1]:  # the first colour image after grayscale ones
                pixels = pixels.expand(-1, image.shape[0], -1, -1).clone()
            pixels[row] = image  # a grayscale image among colour ones is copied into every channel
            row += 1
    if pixels is None:
        pixels = torch.empty((0, channels, image_size, image_size), dtype=torch.uint8)
    return pixels
