"""`load_data`: a dataset name to train/val/test splits of normalised image tensors, with its options checked.

It asks `sources` for the dataset's splits, `splits` for train, validation and test and their columns and classes,
`transforms` for timm's transform and the augmentation, then makes `images`' map-style splits, or `streaming`'s
IterableImages.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ..errors import UserError
from .images import IN_MEMORY, AugmentedImages, DataSplits, DecodedImages, LazyPixels, PreparedImages, _keep_in_memory
from .images import _pixels
from .sources import load_source
from .splits import _hub_streams, _image_column, _label_column, _local_splits, _num_classes
from .streaming import SHUFFLE_BUFFER, _iterable_splits, _local_streams
from .transforms import EvalPixels, _augmentation, _warn_if_small


def load_data(name: str, *, image_size: int = 32, in_chans: int = 3, mean=None, std=None,
              val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
              augment: str = "none", augment_kwargs: Optional[dict] = None, image_column: Optional[str] = None,
              label_column: Optional[str] = None, max_train_samples: Optional[int] = None,
              in_memory: str = "auto", streaming: bool = False,
              shuffle_buffer: Optional[int] = None) -> DataSplits:
    """Train/val/test splits of `name` as normalised float tensors of shape (in_chans, image_size, image_size).

    `name` is a registered source (`list_sources()`: the built-in digits and fashion-mnist, and those added with
    `register_source`), a saved-dataset folder, an image folder or a Hugging Face hub name.
    The dataset's own test (and validation) split is used when it has one; otherwise it is carved from the
    training data with `split_seed`, stratified by label when possible. Same arguments, same splits and tensors.
    `augment` names a training augmentation (AUGMENTATIONS; `augment_kwargs` are timm's create_transform options
    for "imagenet"); its randomness comes from torch's and Python's global generators, which `fit` seeds per epoch.
    `in_memory`: "yes" transforms every image once and keeps the 8-bit pixels in memory; "no" decodes and
    transforms images as they are read (in DataLoader workers with num_workers > 0); "auto" keeps them in memory
    when their pixels take at most MEMORY_SHARE of the memory available now, shared by this machine's processes.
    `streaming`: every split is an IterableImages. A hub dataset is then streamed (`load_dataset(streaming=True)`),
    not downloaded: its validation and test splits are its own, its split sizes come from its card, and
    `max_train_samples` limits its training stream to that many images (`datasets` divides the limit between
    workers and processes, so which images depends on them). Local data is loaded and split as without
    streaming, then read as a stream. Each epoch of a stream is shuffled among `shuffle_buffer` examples per
    DataLoader worker (SHUFFLE_BUFFER when None).
    """
    if in_memory not in IN_MEMORY:
        raise UserError(f"--data-in-memory must be one of {', '.join(IN_MEMORY)}, not {in_memory!r}")
    if streaming and in_memory == "yes":
        raise UserError("--streaming reads the images as it goes; it cannot keep them in memory (--data-in-memory yes)")
    if shuffle_buffer is not None and not streaming:
        raise UserError("--shuffle-buffer applies with --streaming")
    if shuffle_buffer is not None and shuffle_buffer < 1:
        raise UserError(f"--shuffle-buffer must be at least 1, not {shuffle_buffer}")
    shuffle_buffer = SHUFFLE_BUFFER if shuffle_buffer is None else shuffle_buffer
    _check_options(image_size, in_chans, val_fraction, test_fraction, max_train_samples)
    augmentation = _augmentation(augment, augment_kwargs or {}, image_size, in_chans)
    mean = _channel_stats(IMAGENET_DEFAULT_MEAN if mean is None else mean, in_chans, "mean")
    std = _channel_stats(IMAGENET_DEFAULT_STD if std is None else std, in_chans, "std")

    source = load_source(name, streaming)
    first_split = next(iter(source.values()))
    image_column = _image_column(first_split.features, image_column)
    label_column = _label_column(first_split.features, label_column)
    input_size = (in_chans, image_size, image_size)
    eval_transform = EvalPixels(image_size, in_chans)
    if isinstance(first_split, IterableDataset):
        streams, sizes, num_classes = _hub_streams(source, name, label_column, max_train_samples)
        return _iterable_splits(streams, sizes, num_classes, name, input_size, image_column, label_column,
                                eval_transform, augment, augmentation, mean, std, shuffle_buffer)
    splits, labels = _local_splits(source, name, image_column, label_column, val_fraction, test_fraction, split_seed,
                                   max_train_samples)
    num_classes = _num_classes(splits["train"].features[label_column], labels)
    if streaming:
        return _iterable_splits(_local_streams(splits), {split: len(dataset) for split, dataset in splits.items()},
                                num_classes, name, input_size, image_column, label_column, eval_transform, augment,
                                augmentation, mean, std, shuffle_buffer)
    return _map_splits(splits, labels, num_classes, name, input_size, image_column, eval_transform, augment,
                       augmentation, mean, std, in_memory)


def _map_splits(splits: Dict[str, Dataset], labels: Dict[str, np.ndarray], num_classes: int, name: str,
                input_size: tuple, image_column: str, eval_transform, augment: str, augmentation, mean: torch.Tensor,
                std: torch.Tensor, in_memory: str) -> DataSplits:
    """DataSplits read by index: PreparedImages (AugmentedImages for train when augmenting), their pixels kept in
    memory or decoded as they are read, as `in_memory` and the memory available say."""
    image_size = input_size[-1]
    keep = _keep_in_memory(in_memory, sum(map(len, splits.values())) * len(mean) * image_size ** 2)

    def pixels_of(dataset):
        if keep:
            return _pixels(dataset, image_column, eval_transform, image_size, len(mean))
        return LazyPixels(dataset, image_column, eval_transform, len(mean))

    train = splits["train"]
    if augment == "imagenet":
        _warn_if_small(train[0][image_column], name)
        images = DecodedImages(train, image_column, len(mean))
        train_images = AugmentedImages(images, labels["train"], augmentation, mean, std)
    elif augmentation is not None:
        train_images = AugmentedImages(pixels_of(train), labels["train"], augmentation, mean, std)
    else:
        train_images = PreparedImages(pixels_of(train), torch.from_numpy(labels["train"]), mean, std)
    val_images = PreparedImages(pixels_of(splits["val"]), torch.from_numpy(labels["val"]), mean, std)
    test_images = PreparedImages(pixels_of(splits["test"]), torch.from_numpy(labels["test"]), mean, std)
    return DataSplits(train=train_images, val=val_images, test=test_images, num_classes=num_classes, name=name,
                      input_size=input_size, in_memory=keep)


def _check_options(image_size, in_chans, val_fraction, test_fraction, max_train_samples):
    if in_chans not in (1, 3):
        raise UserError(f"in_chans must be 1 or 3, not {in_chans}")
    if image_size < 1:
        raise UserError(f"image_size must be positive, not {image_size}")
    for option, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < fraction < 1:
            raise UserError(f"{option} must lie strictly between 0 and 1, not {fraction}")
    if max_train_samples is not None and max_train_samples < 1:
        raise UserError(f"max_train_samples must be at least 1, not {max_train_samples}")


def _channel_stats(values: Sequence[float], in_chans: int, option: str) -> torch.Tensor:
    """Per-channel normalisation values as a [C, 1, 1] tensor."""
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * in_chans
    elif len(values) == 3 and in_chans == 1:
        values = (sum(values) / 3,)  # an RGB model config used for grayscale input
    if len(values) != in_chans:
        raise UserError(f"{option} has {len(values)} values; expected 1 or {in_chans}")
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1)
