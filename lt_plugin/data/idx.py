"""Grayscale image arrays as `datasets` Datasets: the gzipped IDX files that (Fashion-)MNIST ships in, the Dataset
with an Image column that the built-in sources build from uint8 [N, H, W] pixels, and those pixels read back in one
piece."""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, Features, Image

from ..errors import DataError

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
_PGM_HEADER = re.compile(rb"P5 (\d+) (\d+) 255\n")  # what _grayscale_dataset writes before each image's pixels


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
    count, height, width = pixels.shape
    header = np.frombuffer(b"P5 %d %d 255\n" % (width, height), dtype=np.uint8)
    rows = np.empty((count, header.size + height * width), dtype=np.uint8)  # each image: its header, its pixels
    rows[:, :header.size], rows[:, header.size:] = header, pixels.reshape(count, -1)
    offsets = np.arange(count + 1, dtype=np.int64) * rows.shape[1]  # 64-bit: datasets casts them to its Image's
    images = pa.LargeBinaryArray.from_buffers(pa.large_binary(), count, [None, pa.py_buffer(offsets),
                                                                         pa.py_buffer(rows)])
    features = Features({"image": Image(), "label": ClassLabel(names=class_names)})
    return Dataset.from_dict({"image": images, "label": pa.array(labels.astype(np.int64))}, features=features)


def stored_grayscale(dataset: Dataset, image_column: str) -> Optional[np.ndarray]:
    """uint8 [N, H, W]: the pixels of a Dataset's images when they are what `_grayscale_dataset` stores (every one an
    uncompressed PGM of one size), read from the Arrow column in one piece rather than decoded one by one; None for
    any other images."""
    if len(dataset) == 0:
        return None
    column = dataset.select_columns([image_column]).with_format("arrow")[:][image_column].combine_chunks()
    if not pa.types.is_struct(column.type) or column.type.get_field_index("bytes") < 0:
        return None
    encoded = column.field("bytes")
    header = _PGM_HEADER.match(encoded[0].as_py() or b"") if pa.types.is_binary(encoded.type) else None
    if header is None or encoded.null_count:
        return None
    width, height = int(header.group(1)), int(header.group(2))
    size = len(header.group(0)) + width * height
    offsets = np.frombuffer(encoded.buffers()[1], dtype=np.int32)[encoded.offset:encoded.offset + len(encoded) + 1]
    if np.any(np.diff(offsets) != size):
        return None
    rows = np.frombuffer(encoded.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]].reshape(len(encoded), size)
    if not np.array_equal(rows[:, :len(header.group(0))], np.broadcast_to(
            np.frombuffer(header.group(0), dtype=np.uint8), (len(encoded), len(header.group(0))))):
        return None
    return rows[:, len(header.group(0)):].reshape(-1, height, width).copy()
