"""Image classification data through Hugging Face `datasets` and timm's transforms.

`load_data(name)` takes a built-in name (digits, fashion-mnist), a saved-dataset folder, an image folder or a
Hugging Face hub name, and returns train/val/test splits of normalised image tensors. Without augmentation every
split is transformed once, at load time, into one stacked tensor, so reading it each epoch costs nothing.
With `streaming=True` the splits are `datasets` IterableDatasets read in order (`IterableImages`), for hub datasets
too large to download.
"""

from __future__ import annotations

import gzip
import itertools
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, IterableDataset, Value
from datasets.distributed import split_dataset_by_node
from datasets.exceptions import DatasetNotFoundError
from sklearn.model_selection import train_test_split
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform, resolve_data_config
from torchvision import transforms

from .errors import DataError, LtPluginWarning, UserError, first_line
from .experiment import AUGMENTATIONS, SHUFFLE_BUFFER
from .loaders import normalise_pixels

BUILTIN_DATASETS = {
    "digits": "scikit-learn's 1,797 handwritten digits, 8x8 grayscale, 10 classes (always available offline)",
    "fashion-mnist": "Zalando's 70,000 clothing images, 28x28 grayscale, 10 classes "
                     "(Debian's dataset-fashion-mnist files, else the Hugging Face hub)",
}

FASHION_MNIST_DIR_ENV = "LT_PLUGIN_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HUB_NAME = "zalando-datasets/fashion_mnist"
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049

PREPARE_BATCH_SIZE = 256
CROP_PADDING = 4  # pixels on each side, as the references pad CIFAR's 32x32 images
SMALL_IMAGE_SIDE = 64  # source images below this lose too much to timm's random-resized crop
STREAM_SHARDS = 64  # shards of a local dataset streamed with streaming=True (the units workers and processes share)


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


def load_data(name: str, *, image_size: int = 32, in_chans: int = 3, mean=None, std=None,
              val_fraction: float = 0.1, test_fraction: float = 0.2, split_seed: int = 0,
              augment: str = "none", augment_kwargs: Optional[dict] = None, image_column: Optional[str] = None,
              label_column: Optional[str] = None, max_train_samples: Optional[int] = None,
              in_memory: str = "auto", streaming: bool = False,
              shuffle_buffer: Optional[int] = None) -> DataSplits:
    """Train/val/test splits of `name` as normalised float tensors of shape (in_chans, image_size, image_size).

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

    source = _load_source(name, streaming)
    first_split = next(iter(source.values()))
    image_column = _image_column(first_split.features, image_column)
    label_column = _label_column(first_split.features, label_column)
    input_size = (in_chans, image_size, image_size)
    eval_transform = _pixel_transform(image_size, in_chans, is_training=False)
    if isinstance(first_split, IterableDataset):
        streams, sizes, num_classes = _hub_streams(source, name, label_column, max_train_samples)
        return _iterable_splits(streams, sizes, num_classes, name, input_size, image_column, label_column,
                                eval_transform, augment, augmentation, mean, std, shuffle_buffer)
    train, val, test = _named_splits(source, name)
    if test is None:
        train, test = _carve(train, label_column, test_fraction, split_seed)
    if val is None:
        train, val = _carve(train, label_column, val_fraction, split_seed)
    if max_train_samples is not None and max_train_samples < len(train):
        _, train = _carve(train, label_column, max_train_samples, split_seed)

    splits = {"train": train, "val": val, "test": test}
    for split, dataset in splits.items():
        missing = sorted({image_column, label_column} - set(dataset.column_names))
        if missing:
            raise DataError(f"the {split} split has no column {', '.join(missing)}; "
                            f"columns: {_describe_columns(dataset.features)}")
    labels = {split: _labels(dataset, label_column) for split, dataset in splits.items()}
    num_classes = _num_classes(train.features[label_column], labels)

    if streaming:
        streams = {split: dataset.to_iterable_dataset(num_shards=max(1, min(STREAM_SHARDS, len(dataset))))
                   for split, dataset in splits.items()}
        return _iterable_splits(streams, {split: len(dataset) for split, dataset in splits.items()}, num_classes,
                                name, input_size, image_column, label_column, eval_transform, augment, augmentation,
                                mean, std, shuffle_buffer)
    keep = _keep_in_memory(in_memory, sum(map(len, splits.values())) * len(mean) * image_size ** 2)

    def pixels_of(dataset):
        if keep:
            return _pixels(dataset, image_column, eval_transform, image_size, len(mean))
        return LazyPixels(dataset, image_column, eval_transform, len(mean))

    if augment == "imagenet":
        _warn_if_small(train[0][image_column], name)
        images = DecodedImages(train, image_column, len(mean))
        train_images = AugmentedImages(images, labels["train"], augmentation, mean, std)
    elif augmentation is not None:
        train_images = AugmentedImages(pixels_of(train), labels["train"], augmentation, mean, std)
    else:
        train_images = PreparedImages(pixels_of(train), torch.from_numpy(labels["train"]), mean, std)
    val_images = PreparedImages(pixels_of(val), torch.from_numpy(labels["val"]), mean, std)
    test_images = PreparedImages(pixels_of(test), torch.from_numpy(labels["test"]), mean, std)
    return DataSplits(train=train_images, val=val_images, test=test_images, num_classes=num_classes, name=name,
                      input_size=input_size, in_memory=keep)


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


def _hub_streams(source: Dict[str, IterableDataset], name: str, label_column: str,
                 max_train_samples: Optional[int]):
    """({train, val, test: stream}, {split: number of examples}, number of classes) of a streamed hub dataset."""
    train, val, test = _named_splits(source, name)
    if val is None and test is None:
        raise DataError(f"streamed dataset {name!r} has no validation or test split, and a stream cannot be split "
                        "without reading it all; download it (leave out --streaming) to carve them from train")
    if val is None or test is None:
        held_out = test if val is None else val
        warnings.warn(f"streamed dataset {name!r} has no {'validation' if val is None else 'test'} split: its "
                      f"{held_out.split} split serves as both, so the test accuracy is measured on the images the "
                      "run selects with", LtPluginWarning, stacklevel=3)
        val = test = held_out
    streams = {"train": train, "val": val, "test": test}
    sizes = {split: _stream_size(stream, name) for split, stream in streams.items()}
    if max_train_samples is not None and max_train_samples < sizes["train"]:
        streams["train"], sizes["train"] = train.take(max_train_samples), max_train_samples
    label_feature = train.features[label_column]
    if not isinstance(label_feature, ClassLabel):
        raise DataError(f"streamed dataset {name!r}: label column {label_column!r} is not a ClassLabel, so the "
                        "number of classes is unknown without reading every label")
    return streams, sizes, label_feature.num_classes


def _stream_size(stream: IterableDataset, name: str) -> int:
    """The number of examples of a streamed split, from the dataset card's split sizes."""
    split, splits = str(stream.split), stream.info.splits
    size = splits[split].num_examples if splits and split in splits else None
    if not size:
        raise DataError(f"streamed dataset {name!r} does not give the size of its {split!r} split (the dataset "
                        "card's dataset_info), which an epoch's length needs; download it (leave out --streaming)")
    return size


IN_MEMORY = ("auto", "yes", "no")
MEMORY_SHARE = 0.25  # "auto" keeps the pixels in memory when they take at most this share of the available memory


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


def data_config_for(model: torch.nn.Module, image_size: int) -> dict:
    """timm's data config (mean, std, interpolation, input_size...) for `model`, at `image_size` with no crop."""
    in_chans = next((m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), 3)
    return resolve_data_config({"input_size": (in_chans, image_size, image_size), "crop_pct": 1.0}, model=model)


# ---- options ----

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


# ---- sources: each gives {split name: datasets.Dataset} ----

def _load_source(name: str, streaming: bool = False) -> Dict[str, Dataset]:
    """The splits of `name`: Datasets; IterableDatasets for a hub name with `streaming`."""
    if name == "digits":
        return _digits()
    if name == "fashion-mnist":
        return _fashion_mnist()
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if path.exists():
        raise DataError(f"{name} is a file; a dataset must be a folder, a built-in name or a hub name")
    # A hub name is "dataset" or "owner/dataset"; anything more path-like must be a folder.
    if name.startswith((".", "~", os.sep)) or name.count(os.sep) > 1:
        raise DataError(f"no such dataset folder: {name}")
    return _load_from_hub(name, streaming=streaming)


def _digits() -> Dict[str, Dataset]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # values 0..16 -> 0..255
    return {"train": _grayscale_dataset(pixels, digits.target, [str(d) for d in range(10)])}


def _fashion_mnist() -> Dict[str, Dataset]:
    directory = Path(os.environ.get(FASHION_MNIST_DIR_ENV) or FASHION_MNIST_DEFAULT_DIR)
    paths = {part: directory / file_name for part, file_name in FASHION_MNIST_FILES.items()}
    missing = [path.name for path in paths.values() if not path.is_file()]
    if missing and os.environ.get(FASHION_MNIST_DIR_ENV):
        raise DataError(f"{FASHION_MNIST_DIR_ENV}={directory}: missing {', '.join(missing)}")
    if missing:
        return _load_from_hub(FASHION_MNIST_HUB_NAME, why=f" (no fashion-mnist files in {directory}: install "
                              f"Debian's dataset-fashion-mnist or set {FASHION_MNIST_DIR_ENV})")
    return {split: _grayscale_dataset(_read_idx(paths[f"{split}_images"], IDX_IMAGES_MAGIC, dims=3),
                                      _read_idx(paths[f"{split}_labels"], IDX_LABELS_MAGIC, dims=1),
                                      FASHION_MNIST_CLASSES)
            for split in ("train", "test")}


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """The uint8 array of a gzipped IDX file: a big-endian header (magic, then one size per dimension), then data."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    header_size = 4 * (1 + dims)
    if len(data) >= header_size:
        found_magic, *shape = struct.unpack(f">{1 + dims}I", data[:header_size])
        if found_magic == magic and len(data) == header_size + int(np.prod(shape)):
            return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
    raise DataError(f"{path}: not an IDX file of {dims}-dimensional uint8 data")


def _grayscale_dataset(pixels: np.ndarray, labels: np.ndarray, class_names) -> Dataset:
    """A dataset with an Image column, from uint8 [N, H, W] pixels.

    The images are stored as uncompressed PGM: PNG would cost ~9 s to encode and as long to decode for 60k images.
    """
    height, width = pixels.shape[1:]
    header = b"P5 %d %d 255\n" % (width, height)
    images = [{"bytes": header + image.tobytes(), "path": None} for image in pixels]
    features = Features({"image": Image(), "label": ClassLabel(names=class_names)})
    return Dataset.from_dict({"image": images, "label": labels.astype(np.int64)}, features=features)


def _load_folder(path: Path) -> Dict[str, Dataset]:
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    except Exception as exc:  # datasets raises many types for an unreadable folder
        raise DataError(f"cannot read dataset folder {path}: {first_line(exc)}") from None
    return dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}


def _load_from_hub(name: str, why: str = "", streaming: bool = False) -> Dict[str, Dataset]:
    offline_error = DataError(
        f"dataset {name!r} must be downloaded from the Hugging Face hub{why}, but the hub is offline "
        "(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set or no network); use a built-in dataset (digits, fashion-mnist), "
        "a local image folder or a saved dataset folder")
    if _offline_requested() and not datasets.config.HF_HUB_OFFLINE:
        # `datasets` read the variables when imported, before they were set, and would retry the network for ~20 s.
        raise offline_error
    try:
        return dict(datasets.load_dataset(name, streaming=streaming))
    except DatasetNotFoundError:
        raise DataError(f"no dataset {name!r} on the Hugging Face hub") from None
    except ConnectionError:
        raise offline_error from None
    except Exception as exc:  # anything else the hub or the dataset's files can raise
        raise DataError(f"cannot load dataset {name!r} from the Hugging Face hub: {first_line(exc)}") from None


def _offline_requested() -> bool:
    return any(os.environ.get(variable, "").upper() in ("1", "ON", "YES", "TRUE")
               for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))


# ---- splits and columns ----

def _named_splits(splits: Dict[str, Dataset], name: str):
    """(train, validation or None, test or None); a dataset with one split only has all of it as training data."""
    if "train" in splits:
        return splits["train"], splits.get("validation"), splits.get("test")
    if len(splits) == 1:
        return next(iter(splits.values())), None, None
    raise DataError(f"dataset {name!r} has no 'train' split (splits: {', '.join(splits)})")


def _describe_columns(features: Features) -> str:
    return ", ".join(f"{column} ({feature.dtype if isinstance(feature, Value) else type(feature).__name__})"
                     for column, feature in features.items())


def _image_column(features: Optional[Features], requested: Optional[str]) -> str:
    if features is None:  # a stream whose card does not declare them
        raise DataError("the dataset does not declare its columns' types (features), so its image and label columns "
                        "are unknown")
    if requested is None:
        requested = next((column for column, feature in features.items() if isinstance(feature, Image)), None)
        if requested is None:
            raise DataError(f"no image column (an Image feature) among the columns: {_describe_columns(features)}")
    if not isinstance(features.get(requested), Image):
        raise DataError(f"image column {requested!r} is not an Image column; columns: {_describe_columns(features)}")
    return requested


def _label_column(features: Features, requested: Optional[str]) -> str:
    if requested is None:
        requested = next((column for column, feature in features.items() if isinstance(feature, ClassLabel)),
                         next((column for column in ("label", "labels") if column in features), None))
        if requested is None:
            raise DataError("no label column (a ClassLabel feature, or a column named label/labels) among the "
                            f"columns: {_describe_columns(features)}; name one with label_column")
    feature = features.get(requested)
    if not (isinstance(feature, ClassLabel) or (isinstance(feature, Value) and pa.types.is_integer(feature.pa_type))):
        raise DataError(f"label column {requested!r} must hold integer class ids; columns: "
                        f"{_describe_columns(features)}")
    return requested


def _labels(dataset: Dataset, label_column: str) -> np.ndarray:
    return np.asarray(dataset.with_format("numpy", columns=[label_column])[:][label_column], dtype=np.int64)


def _carve(dataset: Dataset, label_column: str, held_out, seed: int):
    """(rest, held-out part) of `dataset`; `held_out` is a fraction or a count. Stratified by label when possible."""
    indices = np.arange(len(dataset))
    try:
        kept, held = train_test_split(indices, test_size=held_out, random_state=seed,
                                      stratify=_labels(dataset, label_column))
    except ValueError:  # a class with a single sample, or fewer held-out samples than classes
        try:
            kept, held = train_test_split(indices, test_size=held_out, random_state=seed)
        except ValueError as exc:
            raise DataError(f"cannot split {len(dataset)} samples: {exc}") from None
    return dataset.select(kept), dataset.select(held)


def _num_classes(label_feature, labels: Dict[str, np.ndarray]) -> int:
    if isinstance(label_feature, ClassLabel):
        num_classes = label_feature.num_classes
    else:
        num_classes = 1 + max(int(split_labels.max()) for split_labels in labels.values() if split_labels.size)
    for split, split_labels in labels.items():
        outside = split_labels[(split_labels < 0) | (split_labels >= num_classes)]
        if outside.size:
            raise DataError(f"the {split} split has labels outside 0..{num_classes - 1} (e.g. {outside[0]})")
    return num_classes


# ---- transforms ----

def _pixel_transform(image_size: int, in_chans: int, is_training: bool, **options):
    """timm's transform up to uint8 pixels [C, H, W], without ToTensor's scaling and the normalisation.

    This is how timm splits it for its prefetching loader: the normalisation is then done on whole splits at once
    (`loaders.normalise_pixels`), with the same arithmetic as ToTensor + Normalize.
    """
    return create_transform(input_size=(in_chans, image_size, image_size), is_training=is_training, crop_pct=1.0,
                            interpolation="bicubic", use_prefetcher=True, **options)


def _augmentation(augment: str, augment_kwargs: dict, image_size: int, in_chans: int):
    """The random training transform of an augmentation name: timm's, on PIL images, for "imagenet"; torchvision's
    shift (and flip) on uint8 pixel tensors at the image size for the small-image recipes; None for "none"."""
    if augment not in AUGMENTATIONS:
        raise UserError(f"augment must be one of {', '.join(AUGMENTATIONS)}, not {augment!r}")
    if augment_kwargs and augment != "imagenet":
        raise UserError(f"augment_kwargs (timm's create_transform options) apply to augment 'imagenet', "
                        f"not {augment!r}")
    if augment == "imagenet":
        try:
            return _pixel_transform(image_size, in_chans, is_training=True, **augment_kwargs)
        except TypeError as exc:
            raise UserError(f"augment_kwargs {augment_kwargs}: {first_line(exc)}") from None
    if augment == "none":
        return None
    shift = [transforms.RandomCrop(image_size, padding=CROP_PADDING)]
    if augment == "crop-flip":
        shift.append(transforms.RandomHorizontalFlip())
    return transforms.Compose(shift)


def _warn_if_small(image, name: str) -> None:
    width, height = image.size
    if min(width, height) < SMALL_IMAGE_SIDE:
        warnings.warn(f"augment 'imagenet' crops random areas down to 8% of an image and jitters its colours, which "
                      f"destroys small images like the {width}x{height} of {name}: use 'crop-flip', or 'crop' for "
                      "images that must not be mirrored (digits, text)", LtPluginWarning, stacklevel=3)


def _in_mode(image, in_chans: int):
    """The PIL image as 'L' for 1-channel models, else as 'RGB', except that grayscale stays 'L'.

    A grayscale image transformed once and copied into 3 channels gives the same pixels as converting it to RGB
    first, for a third of the work; `normalise_pixels` does the copying.
    """
    mode = "L" if in_chans == 1 or image.mode == "L" else "RGB"
    return image if image.mode == mode else image.convert(mode)


def _same_channels(pixels: List[torch.Tensor], channels: int) -> List[torch.Tensor]:
    """uint8 pixels [..., C or 1, H, W] as they are when all have one channel count, else all with `channels`
    (grayscale images, or batches of them, among colour ones)."""
    if len({p.shape[-3] for p in pixels}) == 1:
        return pixels
    return [p.expand(*p.shape[:-3], channels, *p.shape[-2:]) for p in pixels]


def _pixels(dataset: Dataset, image_column: str, pixel_transform, image_size: int, channels: int) -> torch.Tensor:
    """uint8 [N, C, image_size, image_size] pixels of every image, transformed once. C is 1 while every image is
    grayscale (a third of the memory of 3 channels; `normalise_pixels` copies the channel), else `channels`."""
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


