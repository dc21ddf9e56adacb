"""Where a dataset's splits come from, in the style of timm's `register_model`: `register_source` registers a
function under a dataset name, `list_sources` names them, and `load_source` resolves a name: a registered name gives
its source's splits; an existing folder is read as a saved dataset or an image folder; anything else is a Hugging
Face hub name. The built-in digits and fashion-mnist register themselves here.

A source is called as `source(streaming=...)` and returns {split name: datasets.Dataset}: local data, which
`load_data` splits, and streams itself when asked; or, when `streaming` is true, IterableDatasets, which are read as
a streamed hub dataset's splits are (their own validation or test split, sizes from their info):

    @register_source("scans", "2,000 scans, 64x64 grayscale, 3 classes")
    def scans(streaming: bool):
        return {"train": datasets.load_from_disk("/data/scans")}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

import datasets
import numpy as np
from datasets import Dataset, DatasetDict, IterableDataset
from datasets.exceptions import DatasetNotFoundError

from ..errors import DataError, first_line
from .idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, _grayscale_dataset, _read_idx

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


class Source(NamedTuple):
    description: str  # one line, for listings
    load: Callable[..., Dict[str, Dataset]]  # load(streaming=...) -> {split name: Dataset or IterableDataset}


_sources: Dict[str, Source] = {}


def register_source(name: str, description: str) -> Callable:
    """Decorator that registers `load(streaming: bool) -> {split name: Dataset}` as the source of dataset `name`."""
    def decorator(load: Callable[..., Dict[str, Dataset]]) -> Callable[..., Dict[str, Dataset]]:
        if name in _sources and _sources[name].load is not load:
            raise ValueError(f"a dataset source named {name!r} is already registered "
                             f"({_sources[name].load.__module__})")
        _sources[name] = Source(description, load)
        return load
    return decorator


def list_sources() -> List[str]:
    """Names of every registered dataset source, sorted."""
    return sorted(_sources)


def load_source(name: str, streaming: bool = False) -> Dict[str, Dataset]:
    """The splits of `name`: Datasets; IterableDatasets for a hub name with `streaming` (or a source's, as it says)."""
    if name in _sources:
        return _checked(_sources[name].load(streaming=streaming), name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if path.exists():
        raise DataError(f"{name} is a file; a dataset must be a folder, a built-in name or a hub name")
    # A hub name is "dataset" or "owner/dataset"; anything more path-like must be a folder.
    if name.startswith((".", "~", os.sep)) or name.count(os.sep) > 1:
        raise DataError(f"no such dataset folder: {name}")
    return _load_from_hub(name, streaming=streaming)


def _checked(splits, name: str) -> Dict[str, Dataset]:
    """A registered source's splits, if they are {split name: Dataset}, or all IterableDatasets."""
    values = list(splits.values()) if isinstance(splits, dict) else []
    if not values or not (all(isinstance(split, Dataset) for split in values)
                          or all(isinstance(split, IterableDataset) for split in values)):
        raise DataError(f"the source of dataset {name!r} must return {{split name: datasets.Dataset}} (or "
                        f"IterableDatasets, all of them), not {splits!r:.100}")
    return dict(splits)


@register_source("digits", "scikit-learn's 1,797 handwritten digits, 8x8 grayscale, 10 classes (always available "
                           "offline)")
def _digits(streaming: bool = False) -> Dict[str, Dataset]:
    """Local data whether `streaming` or not: load_data streams it."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # values 0..16 -> 0..255
    return {"train": _grayscale_dataset(pixels, digits.target, [str(d) for d in range(10)])}


@register_source("fashion-mnist", "Zalando's 70,000 clothing images, 28x28 grayscale, 10 classes (Debian's "
                                  "dataset-fashion-mnist files, else the Hugging Face hub)")
def _fashion_mnist(streaming: bool = False) -> Dict[str, Dataset]:
    """Local data whether `streaming` or not (the hub's copy is downloaded): load_data streams it."""
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


BUILTIN_DATASETS = {name: _sources[name].description for name in list_sources()}  # name -> description


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
        f"(HF_DATASETS_OFFLINE/HF_HUB_OFFLINE set or no network); use a built-in dataset "
        f"({', '.join(BUILTIN_DATASETS)}), a local image folder or a saved dataset folder")
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
