"""Splits read in order from `datasets` IterableDatasets (`streaming=True`): `IterableImages`, the whole batches
its DataLoaders make (`_WholeBatches`), and how many examples a streamed hub split holds.

`datasets` is imported only where a stream is read: `experiment.py` reads SHUFFLE_BUFFER from this module when
`import lt_plugin` imports it.
"""

from __future__ import annotations

import itertools
import warnings
from typing import TYPE_CHECKING, Dict, Optional

import torch
from torchvision import transforms

from ..errors import DataError, LtPluginWarning
from ..loaders import normalise_pixels
from .images import PREPARE_BATCH_SIZE, DataSplits
from .transforms import _in_mode, _same_channels, _warn_if_small

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

SHUFFLE_BUFFER = 10_000  # images a streamed training split shuffles among per DataLoader worker, by default
STREAM_SHARDS = 64  # shards of a local dataset streamed with streaming=True (the units workers and processes share)


class IterableImages(torch.utils.data.IterableDataset):
    """A split read in order from a `datasets` IterableDataset (a hub dataset streamed, or a local one made
    iterable), each image decoded and transformed by `datasets`' `map` as it is read: `transform` takes the PIL image
    (in the mode `channels` calls for) to uint8 pixels [C or 1, H, W]; batches are normalised as PreparedImages'.

    Iterating it yields (image, label) in the stream's order. `loader` gives one process its share of an epoch:
    shuffled among `shuffle_buffer` examples by (seed, epoch) as `datasets` shuffles streams (shard order, then a
    buffer), split between processes with `split_dataset_by_node`, and between DataLoader workers by shard.
    """

    def __init__(self, stream: IterableDataset, num_examples: int, image_column: str, label_column: str, transform,
                 channels: int, mean: torch.Tensor, std: torch.Tensor, shuffle_buffer: int = SHUFFLE_BUFFER):
        self.stream = stream.select_columns([image_column, label_column])
        self.shuffle_buffer = shuffle_buffer
        self.num_examples = num_examples
        self.image_column, self.label_column = image_column, label_column
        self.transform, self.channels = transform, channels
        self.mean, self.std = mean, std

    def __len__(self):
        return self.num_examples

    def __iter__(self):
        for batch in self.loader(PREPARE_BATCH_SIZE):
            yield from zip(*batch)

    def loader(self, batch_size: int, *, num_batches: Optional[int] = None, skip_batches: int = 0,
               seed: Optional[int] = None, epoch: int = 0, process_index: int = 0, num_processes: int = 1,
               num_workers: int = 0, normalise: bool = True, pin_memory: bool = False) -> torch.utils.data.DataLoader:
        """A DataLoader of (normalised images, labels) batches of this process's share of the split: in the stream's
        order, or shuffled by (`seed`, `epoch`); all of its examples (the last batch may be short), or exactly
        `num_batches` full batches (read again from the start if the share runs out first, so that every process
        makes as many steps), of which the first `skip_batches` are read and dropped (a resumed epoch).
        `normalise=False`: the uint8 pixels, for normalising on the device (`loaders.DeviceNormalize`);
        `pin_memory`: batches in page-locked memory, for copies to a GPU that do not block."""
        from datasets.distributed import split_dataset_by_node

        stream = self.stream
        if seed is not None:
            stream = stream.shuffle(seed=seed, buffer_size=self.shuffle_buffer)
        if num_processes > 1:
            stream = split_dataset_by_node(stream, rank=process_index, world_size=num_processes)
        stream = stream.map(self._prepare, batched=True, batch_size=batch_size, remove_columns=[self.image_column])
        stream.set_epoch(epoch)  # the stream iterated applies it (shard order and buffer randomness)
        if num_workers > stream.n_shards:
            num_workers = stream.n_shards  # `datasets` gives each worker whole shards; more would idle
        # Each worker batches its own shards, its last batch short: _WholeBatches makes them whole again.
        pixels = torch.utils.data.DataLoader(stream, batch_size=batch_size, num_workers=num_workers,
                                             collate_fn=self._collate)
        stats = (self.mean, self.std) if normalise else None
        return torch.utils.data.DataLoader(
            _WholeBatches(pixels, batch_size, self.channels, stats, skip_batches, num_batches),
            batch_size=None, pin_memory=pin_memory)

    def _prepare(self, examples: dict) -> dict:
        return {"pixels": [self.transform(_in_mode(image, self.channels)) for image in examples[self.image_column]]}

    def _collate(self, examples) -> tuple:
        """uint8 pixels [N, C or 1, H, W] (1 while every image is grayscale) and int64 labels: what a worker hands
        over, a quarter of float32's bytes (a twelfth for grayscale images)."""
        pixels = _same_channels([example["pixels"] for example in examples], self.channels)
        labels = torch.tensor([example[self.label_column] for example in examples], dtype=torch.int64)
        return torch.stack(pixels), labels


class _WholeBatches(torch.utils.data.IterableDataset):
    """The batches of a DataLoader of uint8 pixels, normalised in the main process with `stats` (mean, std), or left
    8-bit when `stats` is None. With `count`: exactly batches `skip`..`count` - 1 of `batch_size` images, made of the
    loader's batches (its workers' last ones are short) and read over and over (a process whose share ran out starts
    it again, with a warning); a DataLoader over it (batch_size=None) then has a length, which Accelerate ends
    gradient accumulation at."""

    def __init__(self, batches: torch.utils.data.DataLoader, batch_size: int, channels: int, stats: Optional[tuple],
                 skip: int = 0, count: Optional[int] = None):
        self.batches, self.batch_size, self.channels = batches, batch_size, channels
        self.stats, self.skip, self.count = stats, skip, count

    def __len__(self):
        if self.count is None:
            raise TypeError("a stream's share has no length until it is read")
        return self.count - self.skip

    def __iter__(self):
        batches = iter(self.batches) if self.count is None else itertools.islice(self._again(), self.skip, self.count)
        for pixels, labels in batches:
            yield (pixels if self.stats is None else normalise_pixels(pixels, *self.stats)), labels

    def _again(self):
        while True:
            made = 0
            for batch in self._whole_batches():
                made += 1
                yield batch
            if made == 0:
                raise DataError(f"a streamed split gave this process fewer than {self.batch_size} images; lower "
                                "--batch-size")
            warnings.warn(f"this process's share of the stream ended after {made} of the epoch's {self.count} "
                          "batches (its whole shards hold fewer images than the other processes'); it is read again "
                          "from its start",
                          LtPluginWarning, stacklevel=2)

    def _whole_batches(self):
        """One pass over the loader in batches of exactly batch_size (the last incomplete one dropped)."""
        pixels, labels, held = [], [], 0
        for batch_pixels, batch_labels in self.batches:
            pixels.append(batch_pixels)
            labels.append(batch_labels)
            held += len(batch_labels)
            while held >= self.batch_size:
                if len(pixels) > 1:  # pieces of several of the loader's batches
                    pixels, labels = [torch.cat(_same_channels(pixels, self.channels))], [torch.cat(labels)]
                yield pixels[0][:self.batch_size], labels[0][:self.batch_size]
                pixels, labels = [pixels[0][self.batch_size:]], [labels[0][self.batch_size:]]
                held -= self.batch_size


def _local_streams(splits: Dict[str, Dataset]) -> Dict[str, IterableDataset]:
    """Local splits as streams of up to STREAM_SHARDS shards each."""
    return {split: dataset.to_iterable_dataset(num_shards=max(1, min(STREAM_SHARDS, len(dataset))))
            for split, dataset in splits.items()}


def _stream_size(stream: IterableDataset, name: str) -> int:
    """The number of examples of a streamed split, from the dataset card's split sizes."""
    split, splits = str(stream.split), stream.info.splits
    size = splits[split].num_examples if splits and split in splits else None
    if not size:
        raise DataError(f"streamed dataset {name!r} does not give the size of its {split!r} split (the dataset "
                        "card's dataset_info), which an epoch's length needs; download it (leave out --streaming)")
    return size


def _iterable_splits(streams: Dict[str, IterableDataset], sizes: Dict[str, int], num_classes: int, name: str,
                     input_size: tuple, image_column: str, label_column: str, eval_transform, augment: str,
                     augmentation, mean: torch.Tensor, std: torch.Tensor, shuffle_buffer: int) -> DataSplits:
    """DataSplits of IterableImages over the "train", "val" and "test" streams."""
    if augment == "imagenet":
        _warn_if_small(next(iter(streams["train"]))[image_column], name)
        train_transform = augmentation
    elif augmentation is not None:
        train_transform = transforms.Compose([eval_transform, augmentation])
    else:
        train_transform = eval_transform
    splits = {split: IterableImages(streams[split], sizes[split], image_column, label_column,
                                    train_transform if split == "train" else eval_transform, len(mean), mean, std,
                                    shuffle_buffer)
              for split in ("train", "val", "test")}
    return DataSplits(**splits, num_classes=num_classes, name=name, input_size=input_size, in_memory=False,
                      streaming=True)
