"""lt_plugin.data: sources, splits, transforms and errors, all offline on small data."""

import gzip
import socket
import struct
import time
from collections import Counter

import numpy as np
import pytest
import timm
import torch
from datasets import Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from sklearn.datasets import load_digits

from lt_plugin.data import BUILTIN_DATASETS, DataSplits, LazyPixels, PreparedImages, data_config_for, load_data
from lt_plugin.data.images import _pixels
from lt_plugin.data.transforms import _pixel_transform
from lt_plugin.errors import DataError, LtPluginWarning, UserError

RAW = dict(mean=(0.0,), std=(1.0,))  # normalisation that keeps pixels / 255, so they can be read back


def pixel_rows(images: torch.Tensor):
    """uint8 pixel bytes of each image normalised with RAW."""
    return [bytes(row) for row in torch.round(images * 255).to(torch.uint8).flatten(1).numpy()]


def scaled_digits():
    digits = load_digits()
    return np.rint(digits.images / 16 * 255).astype(np.uint8), digits.target


def all_splits(splits: DataSplits):
    return [splits.train, splits.val, splits.test]


def test_builtin_names_are_described():
    assert set(BUILTIN_DATASETS) == {"digits", "fashion-mnist"}


def test_digits_splits_partition_the_data_and_repeat():
    splits = load_data("digits", image_size=8, in_chans=1, **RAW)
    assert splits.num_classes == 10 and splits.name == "digits" and splits.input_size == (1, 8, 8)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1293, 144, 360)

    # Every digit lands in exactly one split, with its label (a multiset, since some digits are duplicates).
    pixels, targets = scaled_digits()
    expected = Counter(zip((bytes(p) for p in pixels.reshape(len(pixels), -1)), targets.tolist()))
    found = Counter()
    for split in all_splits(splits):
        found.update(zip(pixel_rows(split.images), split.labels.tolist()))
    assert found == expected

    # The val split is stratified: 144 images over 10 classes of ~180 digits each.
    val_counts = np.bincount(splits.val.labels.numpy(), minlength=10)
    assert val_counts.min() >= 13 and val_counts.max() <= 16

    again = load_data("digits", image_size=8, in_chans=1, **RAW)
    for first, second in zip(all_splits(splits), all_splits(again)):
        assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    other_seed = load_data("digits", image_size=8, in_chans=1, split_seed=1, **RAW)
    assert not torch.equal(other_seed.test.images, splits.test.images)


def test_digit_tensor_is_the_hand_computed_transform():
    mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
    splits = load_data("digits", image_size=8, in_chans=3, mean=mean, std=std)
    pixels, _ = scaled_digits()
    hand = {}  # the expected tensor of each digit, keyed by its 0..255 pixels
    for image in pixels:
        scaled = torch.from_numpy(image).float() / 255
        hand[image.tobytes()] = torch.stack([(scaled - m) / s for m, s in zip(mean, std)])
    for image, label in (splits.test[0], splits.train[5], splits.val[7]):
        assert isinstance(label, int)
        # Read the pixels back from the first channel, then compare all three channels to the hand computation.
        key = torch.round((image[0] * std[0] + mean[0]) * 255).to(torch.uint8).numpy().tobytes()
        assert key in hand
        assert torch.allclose(image, hand[key], atol=1e-5)


def test_tensor_shapes_and_types():
    rgb = load_data("digits", image_size=32)
    image, label = rgb.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    assert rgb.input_size == (3, 32, 32)
    # Grayscale copied into 3 channels, normalised per channel with the ImageNet defaults.
    imagenet_mean, imagenet_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    unnormalised = rgb.test.images[:4] * imagenet_std.view(1, 3, 1, 1) + imagenet_mean.view(1, 3, 1, 1)
    assert torch.allclose(unnormalised[:, 0], unnormalised[:, 2], atol=1e-5)

    gray = load_data("digits", image_size=16, in_chans=1)
    assert gray.train[0][0].shape == (1, 16, 16) and gray.input_size == (1, 16, 16)


def test_max_train_samples_shrinks_only_train():
    full = load_data("digits", image_size=8)
    small = load_data("digits", image_size=8, max_train_samples=100)
    assert len(small.train) == 100
    assert torch.equal(small.val.images, full.val.images) and torch.equal(small.test.images, full.test.images)
    assert set(pixel_rows(small.train.images)) <= set(pixel_rows(full.train.images))
    assert torch.equal(load_data("digits", image_size=8, max_train_samples=100).train.images, small.train.images)
    assert len(np.unique(small.train.labels.numpy())) == 10  # stratified, so every class is kept


def test_augment_transforms_train_on_the_fly():
    plain = load_data("digits", image_size=32)
    with pytest.warns(LtPluginWarning):  # timm's ImageNet recipe on 8x8 digits
        augmented = load_data("digits", image_size=32, augment="imagenet")
    assert not isinstance(augmented.train, PreparedImages)
    assert len(augmented.train) == len(plain.train)
    torch.manual_seed(0)
    image, label = augmented.train[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == plain.train[3][1]
    assert torch.equal(augmented.val.images, plain.val.images)
    batch, labels = next(iter(torch.utils.data.DataLoader(augmented.train, batch_size=8)))
    assert batch.shape == (8, 3, 32, 32) and labels.shape == (8,)


def write_idx(path, array, magic):
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(directory, rng):
    parts = {}
    for split, prefix, count in (("train", "train", 40), ("test", "t10k", 10)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = np.arange(count) % 10
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)
        parts[split] = (images, labels)
    return parts


def test_fashion_mnist_reads_idx_files(tmp_path, monkeypatch):
    parts = fake_fashion_mnist(tmp_path, np.random.default_rng(0))
    monkeypatch.setenv("LT_PLUGIN_FASHION_MNIST_DIR", str(tmp_path))
    splits = load_data("fashion-mnist", image_size=28, in_chans=1, **RAW)
    assert splits.num_classes == 10 and splits.input_size == (1, 28, 28)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (36, 4, 10)

    test_images, test_labels = parts["test"]
    assert pixel_rows(splits.test.images) == [image.tobytes() for image in test_images]  # own split, in order
    assert splits.test.labels.tolist() == test_labels.tolist()

    train_images, train_labels = parts["train"]
    found = Counter()
    for split in (splits.train, splits.val):
        found.update(zip(pixel_rows(split.images), split.labels.tolist()))
    assert found == Counter(zip((image.tobytes() for image in train_images), train_labels.tolist()))


def test_fashion_mnist_bad_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LT_PLUGIN_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="missing .*t10k-images-idx3-ubyte.gz"):
        load_data("fashion-mnist")
    fake_fashion_mnist(tmp_path, np.random.default_rng(0))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(10), magic=2051)
    with pytest.raises(DataError, match="not an IDX file"):
        load_data("fashion-mnist")


def test_fashion_mnist_without_files_falls_back_to_the_offline_hub(tmp_path, monkeypatch):
    monkeypatch.setattr("lt_plugin.data.sources.FASHION_MNIST_DEFAULT_DIR", str(tmp_path))
    monkeypatch.delenv("LT_PLUGIN_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="'zalando-datasets/fashion_mnist' must be downloaded .*dataset-fashion-mnist"):
        load_data("fashion-mnist")


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for colour, channel in (("blue", 2), ("red", 0)):
        (tmp_path / colour).mkdir()
        for i in range(6):
            pixels = rng.integers(0, 60, size=(10, 12, 3), dtype=np.uint8)
            pixels[..., channel] = 200 + i
            PILImage.fromarray(pixels).save(tmp_path / colour / f"{i}.png")
    splits = load_data(str(tmp_path), image_size=10, val_fraction=0.25, test_fraction=0.25, **RAW)
    assert splits.num_classes == 2
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 3, 3)
    for split in all_splits(splits):
        for image, label in split:
            is_red = bool(image[0].mean() > image[2].mean())
            assert label == int(is_red)  # classes are the sorted folder names: blue=0, red=1


def saved_dataset(folder, rng):
    def rows(count):
        images = [PILImage.fromarray(rng.integers(0, 256, size=(6, 6), dtype=np.uint8)) for _ in range(count)]
        return {"img": images, "target": [i % 3 for i in range(count)]}

    features = Features({"img": Image(), "target": Value("int64")})
    DatasetDict(train=Dataset.from_dict(rows(20), features=features),
                test=Dataset.from_dict(rows(5), features=features)).save_to_disk(str(folder))


def test_saved_dataset(tmp_path):
    folder = tmp_path / "saved"
    saved_dataset(folder, np.random.default_rng(0))
    files_before = sorted(folder.rglob("*"))

    with pytest.raises(DataError, match="img \\(Image\\), target \\(int64\\)"):
        load_data(str(folder))  # 'target' is no ClassLabel and not named label/labels

    splits = load_data(str(folder), label_column="target", image_size=6, in_chans=1, **RAW)
    assert splits.num_classes == 3  # max label + 1
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 2, 5)
    assert splits.test.labels.tolist() == [0, 1, 2, 0, 1]
    assert sorted(folder.rglob("*")) == files_before  # nothing written into the user's folder


def test_hub_name_offline_fails_at_once_with_one_line(monkeypatch):
    """At once: no connection tried and no retry's back-off waited (datasets retries the hub for ~20 s)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    attempts = []

    def refuse(_socket, address):
        attempts.append(("connect", address))
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(time, "sleep", lambda seconds: attempts.append(("sleep", seconds)))
    with pytest.raises(DataError) as error:
        load_data("cifar10")
    assert attempts == []
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("dataset 'cifar10' must be downloaded from the Hugging Face hub, but the hub is offline")
    assert "digits, fashion-mnist" in message


def test_missing_folder():
    with pytest.raises(DataError, match="no such dataset folder: ./no/such/folder"):
        load_data("./no/such/folder")


def test_bad_columns_name_the_columns():
    with pytest.raises(DataError, match="'pixels'.*image \\(Image\\), label \\(ClassLabel\\)"):
        load_data("digits", image_column="pixels")
    with pytest.raises(DataError, match="'image'.*integer class ids.*image \\(Image\\), label \\(ClassLabel\\)"):
        load_data("digits", label_column="image")


def test_bad_options():
    with pytest.raises(UserError, match="in_chans"):
        load_data("digits", in_chans=2)
    with pytest.raises(UserError, match="val_fraction"):
        load_data("digits", val_fraction=1.0)
    with pytest.raises(UserError, match="mean has 2 values"):
        load_data("digits", mean=(0.5, 0.5))


def test_data_config_for():
    config = data_config_for(timm.create_model("resnet18", num_classes=10), 32)
    assert config["input_size"] == (3, 32, 32) and config["crop_pct"] == 1.0
    assert len(config["mean"]) == 3 and len(config["std"]) == 3 and config["interpolation"]

    gray_config = data_config_for(timm.create_model("resnet18", num_classes=10, in_chans=1), 16)
    assert gray_config["input_size"] == (1, 16, 16)
    splits = load_data("digits", image_size=16, in_chans=1, mean=gray_config["mean"], std=gray_config["std"])
    assert splits.train[0][0].shape == (1, 16, 16)


def test_prepared_images_keep_uint8_pixels_and_read_the_same_values_one_by_one_or_by_batch():
    splits = load_data("digits", image_size=16)
    test = splits.test
    assert test.pixels.dtype == torch.uint8  # a quarter of float32's memory
    whole = test.images
    assert whole.dtype == torch.float32 and whole.shape[0] == len(test)
    one_by_one = torch.stack([test[i][0] for i in range(len(test))])
    loader = torch.utils.data.DataLoader(test, batch_size=37, shuffle=False)  # batches through __getitems__
    by_batch = torch.cat([inputs for inputs, _ in loader])
    assert torch.equal(one_by_one, whole) and torch.equal(by_batch, whole)
    assert torch.equal(torch.cat([labels for _, labels in loader]), test.labels)
    with pytest.raises(TypeError, match="uint8"):
        PreparedImages(whole, test.labels, test.mean, test.std)


@pytest.mark.parametrize("augment", ["none", "crop"])
def test_streamed_and_in_memory_splits_give_the_same_tensors_batch_for_batch(augment):
    in_memory = load_data("digits", image_size=16, augment=augment, in_memory="yes")
    streamed = load_data("digits", image_size=16, augment=augment, in_memory="no")
    assert in_memory.in_memory and not streamed.in_memory
    for split in ("val", "test"):
        a, b = getattr(in_memory, split), getattr(streamed, split)
        assert isinstance(b.pixels, LazyPixels) and torch.equal(a.images, b.images)
        loaders = [torch.utils.data.DataLoader(d, batch_size=64, num_workers=workers)
                   for d, workers in ((a, 0), (b, 2))]  # the streamed one decodes in worker processes
        for (x, y), (x2, y2) in zip(*loaders):
            assert torch.equal(x, x2) and torch.equal(y, y2)
    torch.manual_seed(3)  # the augmentation draws from torch's generator: the same draws give the same images
    first = [in_memory.train[i][0] for i in range(20)]
    torch.manual_seed(3)
    assert all(torch.equal(x, streamed.train[i][0]) for i, x in enumerate(first))


def test_auto_keeps_pixels_in_memory_when_they_take_a_small_share_of_the_memory(monkeypatch):
    assert load_data("digits", image_size=8).in_memory  # 1,797 x 3 x 8 x 8 bytes
    monkeypatch.setattr("lt_plugin.data.images.available_memory", lambda: 4 * 1797 * 3 * 8 * 8 - 1)
    assert not load_data("digits", image_size=8).in_memory
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes, two copies
    monkeypatch.setattr("lt_plugin.data.images.available_memory", lambda: 4 * 1797 * 3 * 8 * 8)
    assert not load_data("digits", image_size=8).in_memory
    with pytest.raises(UserError, match="--data-in-memory"):
        load_data("digits", in_memory="sometimes")


def test_a_streamed_run_with_workers_trains_the_same_weights_as_an_in_memory_run(tmp_path):
    from lt_plugin.cli import main as cli_main
    from lt_plugin.store import load_weights
    flags = ["imp", "--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples",
             "256", "--batch-size", "32", "--epochs", "2", "--levels", "1"]
    assert cli_main([*flags, "--out", str(tmp_path / "memory")]) == 0
    assert cli_main([*flags, "--data-in-memory", "no", "--num-workers", "2", "--out", str(tmp_path / "streamed")]) == 0
    for level in (0, 1):
        a, b = (load_weights(tmp_path / run / f"level_{level}" / "weights.safetensors")
                for run in ("memory", "streamed"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), level


def test_an_image_folder_with_train_and_val_folders_uses_val_for_validation(tmp_path):
    """The layout timm users have (train/ and val/, one folder per class): val/ is the validation split."""
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    for split, count in (("train", 6), ("val", 3)):
        for colour, rgb in colours.items():
            folder = tmp_path / split / colour
            folder.mkdir(parents=True)
            for i in range(count):
                PILImage.new("RGB", (10, 10), rgb).save(folder / f"{i}.png")
    splits = load_data(str(tmp_path), image_size=8, test_fraction=0.5)
    assert len(splits.val) == 6  # all of val/, none carved from train/
    assert len(splits.train) + len(splits.test) == 12


def test_grayscale_images_are_kept_as_one_channel_and_read_as_the_streamed_ones(tmp_path):
    in_memory = load_data("digits", in_memory="yes")
    streamed = load_data("digits", in_memory="no")
    assert in_memory.test.pixels.shape[1] == 1  # a third of the memory of three channels
    assert in_memory.test.images.shape[1] == 3 and torch.equal(in_memory.test.images, streamed.test.images)
    # Grayscale images, then a colour one: the store gets its channels when the colour image comes.
    images = []
    for i in range(4):
        pixels = np.full((9, 9, 3), 40 * i, dtype=np.uint8)
        pixels[..., 0] = 200
        image = PILImage.fromarray(pixels)
        images.append(image if i == 3 else image.convert("L"))
    dataset = Dataset.from_dict({"image": images}, features=Features({"image": Image()}))
    transform = _pixel_transform(8, 3, is_training=False)
    kept = _pixels(dataset, "image", transform, 8, 3)
    assert kept.shape == (4, 3, 8, 8)
    assert torch.equal(kept, LazyPixels(dataset, "image", transform, 3)[:])
    assert torch.equal(kept[0, 0], kept[0, 2]) and not torch.equal(kept[3, 0], kept[3, 2])


def test_the_evaluation_transform_reads_images_of_its_side_straight_to_timms_pixels():
    from lt_plugin.data.transforms import EvalPixels
    generator = np.random.default_rng(0)
    for in_chans, mode in ((1, "L"), (3, "RGB"), (3, "L")):
        fast, timm_eval = EvalPixels(8, in_chans), _pixel_transform(8, in_chans, is_training=False)
        for height, width in ((8, 8), (9, 8), (12, 12)):  # its side (read straight), then resized by timm's
            shape = (height, width) if mode == "L" else (height, width, 3)
            image = PILImage.fromarray(generator.integers(0, 256, shape, dtype=np.uint8), mode)
            pixels = fast(image)
            assert pixels.dtype == torch.uint8 and pixels.shape[1:] == (8, 8)
            assert torch.equal(pixels, timm_eval(image)), (in_chans, mode, height, width)


def test_the_built_in_sources_grayscale_pixels_are_read_back_in_one_piece_as_decoding_gives_them():
    from lt_plugin.data.idx import _grayscale_dataset, stored_grayscale
    from lt_plugin.data.transforms import EvalPixels
    pixels = np.random.default_rng(0).integers(0, 256, (12, 6, 5), dtype=np.uint8)
    dataset = _grayscale_dataset(pixels, np.arange(12) % 3, ["a", "b", "c"])
    picked = [7, 2, 11, 0]  # a selection: an indices mapping over the table
    assert np.array_equal(stored_grayscale(dataset, "image"), pixels)
    assert np.array_equal(stored_grayscale(dataset.select(picked), "image"), pixels[picked])
    square = _grayscale_dataset(pixels[:, :5, :], np.zeros(12, dtype=np.int64), ["a"]).select(picked)
    kept = _pixels(square, "image", EvalPixels(5, 1), 5, 1)  # read in one piece
    decoded = _pixels(square, "image", _pixel_transform(5, 1, is_training=False), 5, 1)  # decoded one by one
    assert kept.shape == (4, 1, 5, 5) and torch.equal(kept, decoded)
    png = Dataset.from_dict({"image": [PILImage.fromarray(p) for p in pixels[:2]]}, features=Features({"image": Image()}))
    mixed = Dataset.from_dict({"image": [{"bytes": b"P5 5 6 255\n" + bytes(30), "path": None},
                                         {"bytes": b"P5 6 5 255\n" + bytes(30), "path": None}]},
                              features=Features({"image": Image()}))
    assert stored_grayscale(png, "image") is None and stored_grayscale(mixed, "image") is None


def test_carved_splits_are_scikit_learns_to_the_index():
    """The validation and test splits are carved exactly as scikit-learn's train_test_split carves them (stratified
    and not), so run folders keep their data when a run no longer imports scikit-learn; and a ValueError where
    scikit-learn raises one (the carve then falls back, or names the problem)."""
    import numpy as np
    from sklearn.model_selection import train_test_split
    from lt_plugin.data.splits import split_indices
    rng = np.random.default_rng(0)
    cases = [(60_000, 5_000 / 60_000, 10), (1_797, 0.4, 10), (256, 0.1, 10), (10, 3, 3)]
    cases += [(int(rng.integers(2, 300)), float(rng.uniform(0.01, 0.99)) if i % 2 else int(rng.integers(1, 300)),
               int(rng.integers(1, 12))) for i in range(300)]
    for n, held_out, classes in cases:
        labels = rng.integers(0, classes, n)
        seed = int(rng.integers(0, 2 ** 31 - 1))
        for stratify in (labels, None):
            try:
                expected = train_test_split(np.arange(n), test_size=held_out, random_state=seed, stratify=stratify)
            except ValueError:
                with pytest.raises(ValueError):
                    split_indices(n, held_out, seed, stratify)
                continue
            kept, held = split_indices(n, held_out, seed, stratify)
            assert np.array_equal(kept, expected[0]) and np.array_equal(held, expected[1]), (n, held_out, seed)
