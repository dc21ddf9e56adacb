"""lt_plugin.data's source registry and its layout: a registered source loads as a built-in does, names are
registered once, and the package stays light (no strategy, experiment or training module; small modules)."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from lt_plugin.data import BUILTIN_DATASETS, PreparedImages, list_sources, load_data, register_source
from lt_plugin.data import sources
from lt_plugin.errors import DataError

PACKAGE = Path(__file__).resolve().parents[1] / "lt_plugin" / "data"
RAW = dict(mean=(0.0,), std=(1.0,))  # normalisation that keeps pixels / 255, so they can be read back


@pytest.fixture(autouse=True)
def own_registry(monkeypatch):
    """Sources a test registers are gone after it."""
    monkeypatch.setattr(sources, "_sources", dict(sources._sources))


def tiny_splits(count=40):
    """{"train": Dataset} of `count` 4x4 grayscale images whose pixels are all their index, two classes."""
    images = [PILImage.fromarray(np.full((4, 4), i, dtype=np.uint8)) for i in range(count)]
    features = Features({"image": Image(), "label": ClassLabel(names=["even", "odd"])})
    return {"train": Dataset.from_dict({"image": images, "label": [i % 2 for i in range(count)]}, features=features)}


def test_a_registered_source_is_loaded_by_name_and_carved_as_a_built_in_is():
    calls = []

    @register_source("test-tiny", "40 tiny images for the registry test")
    def tiny(streaming):
        calls.append(streaming)
        return tiny_splits()

    assert "test-tiny" in list_sources()
    splits = load_data("test-tiny", image_size=4, in_chans=1, **RAW)
    assert calls == [False] and splits.name == "test-tiny" and splits.num_classes == 2
    assert (len(splits.train), len(splits.val), len(splits.test)) == (28, 4, 8)  # test 20%, then val 10% of the rest
    assert all(isinstance(split, PreparedImages) for split in (splits.train, splits.val, splits.test))
    seen = sorted(int(round(float(image[0, 0, 0]) * 255)) for split in (splits.train, splits.val, splits.test)
                  for image, _ in split)
    assert seen == list(range(40))  # every image in exactly one split
    for image, label in splits.test:
        assert label == int(round(float(image[0, 0, 0]) * 255)) % 2
    assert np.bincount(splits.test.labels.numpy()).tolist() == [4, 4]  # stratified by label
    streamed = load_data("test-tiny", image_size=4, in_chans=1, streaming=True, **RAW)
    assert calls == [False, True] and streamed.streaming
    assert torch.equal(torch.cat([images for images, _ in streamed.test.loader(8)]), splits.test.images)


def test_a_name_is_registered_once_and_a_source_must_give_datasets():
    register_source("test-once", "first")(lambda streaming: tiny_splits())
    with pytest.raises(ValueError, match="'test-once' is already registered"):
        register_source("test-once", "second")(lambda streaming: tiny_splits())
    register_source("test-not-splits", "gives a list")(lambda streaming: [1, 2])
    with pytest.raises(DataError, match="'test-not-splits' must return"):
        load_data("test-not-splits")


def test_the_built_ins_are_registered_sources():
    assert {"digits", "fashion-mnist"} <= set(list_sources())
    assert list(BUILTIN_DATASETS) == ["digits", "fashion-mnist"] and all(BUILTIN_DATASETS.values())


def run_python(script: str):
    """What `script`, run by a fresh interpreter, prints last, read as a Python literal."""
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return ast.literal_eval(printed.splitlines()[-1])


def test_the_data_package_imports_no_higher_layer():
    """Every module of lt_plugin.data imported: besides lt_plugin's light root (the papers' networks, the errors),
    the only lt_plugin modules loaded are the loaders; no strategy, experiment or training module."""
    loaded = run_python(
        "import importlib, pkgutil, sys\n"
        "import lt_plugin.data as data\n"
        "for module in pkgutil.iter_modules(data.__path__):\n"
        "    importlib.import_module('lt_plugin.data.' + module.name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('lt_plugin') and not m.startswith('lt_plugin.data')))")
    assert [m for m in loaded if not m.startswith("lt_plugin.networks.")] == [
        "lt_plugin", "lt_plugin._version", "lt_plugin.errors", "lt_plugin.loaders", "lt_plugin.networks"]


def test_import_lt_plugin_does_not_import_datasets():
    """`datasets` is slow to import: masks, export and `lt-plugin check` do without it."""
    assert run_python("import sys, lt_plugin, lt_plugin.data; from lt_plugin.data import DataSplits, SHUFFLE_BUFFER; "
                      "print(['datasets' in sys.modules, 'lt_plugin.data.load' in sys.modules])") == [False, False]


def test_each_module_of_the_package_is_under_300_lines():
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert {"__init__.py", "load.py", "sources.py", "splits.py", "images.py", "streaming.py"} <= set(lengths)
    assert all(length < 300 for length in lengths.values()), lengths
