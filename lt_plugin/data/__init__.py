"""Image classification data through Hugging Face `datasets` and timm's transforms.

`load_data(name)` takes a registered source's name (`list_sources()`: the built-in digits and fashion-mnist, and
those added with `register_source`), a saved-dataset folder, an image folder or a Hugging Face hub name, and returns
train/val/test splits of normalised image tensors. Without augmentation every split is transformed once, at load
time, into one stacked tensor, so reading it each epoch costs nothing. With `streaming=True` the splits are
`datasets` IterableDatasets read in order (`IterableImages`), for hub datasets too large to download.

The modules, one concern each: `sources` (dataset names, the registry, folders and the hub), `idx` (IDX files and
grayscale datasets), `splits` (train/val/test, columns, classes), `transforms` (timm's transforms, augmentations),
`images` (map-style splits, in memory or not), `streaming` (IterableImages) and `load` (`load_data`).

Importing this package is cheap: a name is imported from the module that holds it when it is first used, so that
`import lt_plugin` (masks, export, `lt-plugin check`) does not pay for importing `datasets`.
"""

import importlib

_OWNERS = {
    "load": ("load_data",),
    "sources": ("register_source", "list_sources", "load_source", "BUILTIN_DATASETS", "FASHION_MNIST_DIR_ENV",
                "FASHION_MNIST_DEFAULT_DIR", "FASHION_MNIST_HUB_NAME", "FASHION_MNIST_FILES", "FASHION_MNIST_CLASSES"),
    "images": ("DataSplits", "PreparedImages", "AugmentedImages", "LazyPixels", "DecodedImages", "available_memory",
               "IN_MEMORY", "MEMORY_SHARE", "PREPARE_BATCH_SIZE"),
    "streaming": ("IterableImages", "SHUFFLE_BUFFER", "STREAM_SHARDS"),
    "transforms": ("AUGMENTATIONS", "CROP_PADDING", "SMALL_IMAGE_SIDE", "data_config_for"),
}
_OWNER_OF = {name: module for module, names in _OWNERS.items() for name in names}

__all__ = sorted(_OWNER_OF)


def __getattr__(name: str):
    """A public name, read from the module that holds it (imported on first use; not cached, so it is never
    stale)."""
    if name not in _OWNER_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_OWNER_OF[name]}"), name)


def __dir__():
    return sorted({*globals(), *__all__})
