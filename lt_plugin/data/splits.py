"""A source's splits as train, validation and test: the named ones, those carved from train (stratified by label),
and those of a streamed hub dataset; which columns hold the images and the labels, and how many classes there are."""

from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Tuple

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, Features, Image, IterableDataset, Value

from ..errors import DataError, LtPluginWarning
from .streaming import _stream_size


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


def _check_columns(splits: Dict[str, Dataset], image_column: str, label_column: str) -> None:
    """Every split has the image and label columns the first one has."""
    for split, dataset in splits.items():
        missing = sorted({image_column, label_column} - set(dataset.column_names))
        if missing:
            raise DataError(f"the {split} split has no column {', '.join(missing)}; "
                            f"columns: {_describe_columns(dataset.features)}")


def _labels(dataset: Dataset, label_column: str) -> np.ndarray:
    return np.asarray(dataset.with_format("numpy", columns=[label_column])[:][label_column], dtype=np.int64)


def _split_sizes(n: int, held_out) -> Tuple[int, int]:
    """(kept, held out) of `n` samples, `held_out` a fraction in (0, 1) (rounded up) or a count, as scikit-learn's
    train_test_split counts them (a ValueError where it raises one)."""
    kind = np.asarray(held_out).dtype.kind
    if (kind == "i" and not 0 < held_out < n) or (kind == "f" and not 0 < held_out < 1) or kind not in "if":
        raise ValueError(f"test_size={held_out} should be either positive and smaller than the number of samples {n} "
                         "or a float in the (0, 1) range")
    test = math.ceil(held_out * n) if kind == "f" else int(held_out)
    if n - test == 0:
        raise ValueError(f"with {n} samples and test_size={held_out}, the resulting train set will be empty")
    return n - test, test


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's extmath._approximate_mode: per class, how many of `draws` samples to take from `counts`, the
    largest remainders first, ties drawn at random."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    need = int(draws - floored.sum())
    if need > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (ties,) = np.where(remainder == value)
            now = min(len(ties), need)
            floored[rng.choice(ties, size=now, replace=False)] += 1
            need -= now
            if need == 0:
                break
    return floored.astype(int)


def split_indices(n: int, held_out, seed: int, labels: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices of `n` samples, stratified by `labels` when given: exactly what scikit-learn's
    `train_test_split(np.arange(n), test_size=held_out, random_state=seed, stratify=labels)` returns (its
    ShuffleSplit and StratifiedShuffleSplit, written out so that a run does not pay for importing scikit-learn;
    tests/test_data.py holds them equal). A ValueError where scikit-learn raises one."""
    n_kept, n_held = _split_sizes(n, held_out)
    rng = np.random.RandomState(seed)
    if labels is None:
        order = rng.permutation(n)
        return order[n_held:n_held + n_kept], order[:n_held]
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError(f"the least populated classes have only 1 member: {classes[counts < 2].tolist()}")
    if min(n_kept, n_held) < len(classes):
        raise ValueError(f"{min(n_kept, n_held)} samples cannot hold each of the {len(classes)} classes")
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    kept_per_class = _approximate_mode(counts, n_kept, rng)
    held_per_class = _approximate_mode(counts - kept_per_class, n_held, rng)
    kept, held = [], []
    for members, k, h in zip(by_class, kept_per_class, held_per_class):
        shuffled = members.take(rng.permutation(len(members)), mode="clip")
        kept.extend(shuffled[:k])
        held.extend(shuffled[k:k + h])
    return rng.permutation(kept), rng.permutation(held)


def _carve(dataset: Dataset, labels: np.ndarray, held_out, seed: int):
    """((rest, its labels), (held-out part, its labels)) of `dataset`, whose labels are `labels`; `held_out` is a
    fraction or a count. Stratified by label when possible."""
    try:
        kept, held = split_indices(len(dataset), held_out, seed, labels)
    except ValueError:  # a class with a single sample, or fewer held-out samples than classes
        try:
            kept, held = split_indices(len(dataset), held_out, seed)
        except ValueError as exc:
            raise DataError(f"cannot split {len(dataset)} samples: {exc}") from None
    return (dataset.select(kept), labels[kept]), (dataset.select(held), labels[held])


def _local_splits(source: Dict[str, Dataset], name: str, image_column: str, label_column: str, val_fraction: float,
                  test_fraction: float, split_seed: int,
                  max_train_samples: Optional[int]) -> Tuple[Dict[str, Dataset], Dict[str, np.ndarray]]:
    """({"train", "val", "test": Dataset}, {the same: labels}): the source's own validation and test splits, else
    carved with `split_seed` (test from all its data, then validation from the rest), and at most
    `max_train_samples` of train. Labels are read once from the source's splits and carved with them (reading them
    back from a carved Dataset gathers row by row)."""
    named = dict(zip(("train", "val", "test"), _named_splits(source, name)))
    _check_columns({split: dataset for split, dataset in named.items() if dataset is not None}, image_column,
                   label_column)
    train, val, test = (None if split is None else (split, _labels(split, label_column)) for split in named.values())
    if test is None:
        train, test = _carve(*train, test_fraction, split_seed)
    if val is None:
        train, val = _carve(*train, val_fraction, split_seed)
    if max_train_samples is not None and max_train_samples < len(train[0]):
        _, train = _carve(*train, max_train_samples, split_seed)
    splits = {"train": train, "val": val, "test": test}
    return {split: dataset for split, (dataset, _) in splits.items()}, \
        {split: labels for split, (_, labels) in splits.items()}


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
