"""Grayscale image arrays as `datasets` Datasets: the gzipped IDX files that (Fashion-)MNIST ships in, and the
Dataset with an Image column that the built-in sources build from uint8 [N, H, W] pixels."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, Features, Image

from ..errors import DataError

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


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
    The columns are handed over as Arrow arrays, which `datasets` casts at once rather than row by row.
    """
    height, width = pixels.shape[1:]
    header = b"P5 %d %d 255\n" % (width, height)
    images = pa.array([header + image.tobytes() for image in pixels], type=pa.binary())
    features = Features({"image": Image(), "label": ClassLabel(names=class_names)})
    return Dataset.from_dict({"image": images, "label": pa.array(labels.astype(np.int64))}, features=features)
