"""--streaming: splits read in order from `datasets` IterableDatasets, checked against the in-memory path, a hub
dataset stand-in (parquet files and a dataset card, streamed by `datasets.load_dataset` as the hub's are), and the
training loop's resume and multi-process guarantees."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from torch import nn

from lt_plugin.callbacks import Lambda, Snapshots
from lt_plugin.cli import main as cli_main
from lt_plugin.data import IterableImages, load_data, load_source
from lt_plugin.errors import DataError, LtPluginWarning, RunFolderError, UserError
from lt_plugin.store import load_weights, read_json
from lt_plugin.train import TrainConfig, evaluate, fit, make_accelerator, steps_per_epoch

JOBS = Path(__file__).resolve().parent / "jobs"

REAL_LOAD_DATASET = datasets.load_dataset


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def image_bytes(images: torch.Tensor):
    return [bytes(row) for row in images.flatten(1).numpy().view("uint8")]


def share(split: IterableImages, **options):
    """(images, labels) of every batch of one loader, concatenated."""
    batches = list(split.loader(32, **options))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.fixture(scope="module")
def digits16():
    return load_data("digits", image_size=16, streaming=True), load_data("digits", image_size=16, in_memory="yes")


# ---------------------------------------------------------------- the splits and their order

def test_streamed_splits_are_the_in_memory_tensors_in_the_same_order(digits16):
    streamed, in_memory = digits16
    assert streamed.streaming and not streamed.in_memory and streamed.num_classes == 10
    for split in ("train", "val", "test"):
        a, b = getattr(streamed, split), getattr(in_memory, split)
        assert isinstance(a, IterableImages) and len(a) == len(b)
        images, labels = share(a)
        assert torch.equal(images, b.images) and torch.equal(labels, b.labels), split
        first = next(iter(a))  # iterating the split itself: (image, label) in the same order
        assert torch.equal(first[0], b.images[0]) and first[1] == b.labels[0]


def test_an_epochs_order_follows_seed_and_epoch_and_processes_split_it_without_overlap(digits16):
    train = digits16[0].train
    order = share(train, seed=0, epoch=1)
    assert torch.equal(order[0], share(train, seed=0, epoch=1)[0])  # the same (seed, epoch), the same order
    assert not torch.equal(order[0], share(train, seed=0, epoch=2)[0])
    assert not torch.equal(order[0], share(train, seed=1, epoch=1)[0])
    assert sorted(image_bytes(order[0])) == sorted(image_bytes(share(train)[0]))  # a permutation of the split
    halves = [share(train, seed=0, epoch=1, process_index=rank, num_processes=2)[0] for rank in (0, 1)]
    assert abs(len(halves[0]) - len(halves[1])) <= 1
    assert sorted(image_bytes(torch.cat(halves))) == sorted(image_bytes(order[0]))  # each image read once


def test_a_share_that_runs_out_is_read_again_and_skipped_batches_are_the_epochs_first(digits16):
    train = digits16[0].train
    full_batches = len(train) // 2 // 32  # of one process's share
    options = dict(seed=3, epoch=0, process_index=1, num_processes=2)
    with pytest.warns(LtPluginWarning, match=f"ended after {full_batches} of the epoch's {full_batches + 2} batches"):
        again = list(train.loader(32, num_batches=full_batches + 2, **options))
    assert len(again) == full_batches + 2 and all(len(labels) == 32 for _, labels in again)
    assert torch.equal(again[full_batches][0], again[0][0])  # the share again from its first batch
    tail = list(train.loader(32, num_batches=full_batches, skip_batches=5, **options))
    assert len(tail) == full_batches - 5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(tail, again[5:full_batches]))


def test_workers_read_the_whole_split_each_image_once(digits16):
    train = digits16[0].train
    with_workers = share(train, seed=0, epoch=0, num_workers=2)[0]
    assert sorted(image_bytes(with_workers)) == sorted(image_bytes(share(train)[0]))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than this machine's 2 cores
@pytest.mark.parametrize("workers,batch_size", [(2, 128), (3, 128), (4, 200)])
def test_an_epoch_read_by_workers_is_whole_batches_each_image_at_most_once(digits16, workers, batch_size):
    """Each worker's last batch is short; they are joined into whole batches, not made up by reading images again."""
    train = digits16[0].train
    batches = list(train.loader(batch_size, num_batches=len(train) // batch_size, seed=0, num_workers=workers))
    assert len(batches) == len(train) // batch_size and all(len(labels) == batch_size for _, labels in batches)
    read = image_bytes(torch.cat([images for images, _ in batches]))
    assert len(set(read)) == len(read)


def test_grayscale_among_colour_images_streams_as_in_memory(tmp_path):
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage
    images = [PILImage.new("L", (10, 10), 20 * i) if i % 3 else PILImage.new("RGB", (10, 10), (200, 10 * i, 0))
              for i in range(30)]
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"])})
    Dataset.from_dict({"image": images, "label": [i % 2 for i in range(30)]}, features=features).save_to_disk(
        str(tmp_path / "mixed"))
    streamed = load_data(str(tmp_path / "mixed"), image_size=8, streaming=True)
    in_memory = load_data(str(tmp_path / "mixed"), image_size=8, in_memory="yes")
    for split in ("train", "val", "test"):
        images, labels = share(getattr(streamed, split))
        assert torch.equal(images, getattr(in_memory, split).images), split
        assert torch.equal(labels, getattr(in_memory, split).labels), split


@pytest.mark.parametrize("workers", [0, 2])
def test_an_augmented_stream_is_random_yet_the_same_from_the_same_global_seed(digits16, workers):
    """The augmentation draws from torch's global generator (in workers, from seeds it gives them), which `fit`
    seeds per epoch: the same seed, the same shifted images; the evaluation splits stay unaugmented."""
    augmented = load_data("digits", image_size=16, augment="crop", streaming=True)
    reads = []
    for _ in range(2):
        torch.manual_seed(7)
        reads.append(share(augmented.train, seed=0, epoch=0, num_workers=workers))
    assert torch.equal(reads[0][0], reads[1][0]) and torch.equal(reads[0][1], reads[1][1])
    plain = share(digits16[0].train, seed=0, epoch=0, num_workers=workers)
    assert torch.equal(reads[0][1], plain[1]) and not torch.equal(reads[0][0], plain[0])
    assert torch.equal(share(augmented.test)[0], digits16[1].test.images)


# ---------------------------------------------------------------- a hub dataset, streamed

CARD = """---
dataset_info:
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
{names}
{splits}
---
"""


def hub_stand_in(folder: Path, parts: dict, sizes: bool = True) -> Path:
    """A dataset laid out as on the hub: data/<split>-NNNNN-of-NNNNN.parquet files and a card giving the features
    and, when `sizes`, the split sizes. `parts` maps split -> list of row ranges of the digits, one file each."""
    digits = load_source("digits")["train"]
    (folder / "data").mkdir(parents=True)
    for split, ranges in parts.items():
        for i, rows in enumerate(ranges):
            digits.select(rows).to_parquet(str(folder / "data" / f"{split}-{i:05d}-of-{len(ranges):05d}.parquet"))
    names = "\n".join(f"          '{d}': '{d}'" for d in range(10))
    splits = "  splits:\n" + "\n".join(f"  - name: {split}\n    num_bytes: 0\n    num_examples: {sum(map(len, ranges))}"
                                       for split, ranges in parts.items()) if sizes else ""
    (folder / "README.md").write_text(CARD.format(names=names, splits=splits))
    return folder


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """hub(parts, sizes=True): the name of a hub dataset that `datasets.load_dataset` streams from local files."""
    def make(parts, sizes=True):
        folder = hub_stand_in(tmp_path / "hub", parts, sizes)

        def load_dataset(name, **options):
            assert name == "someone/digits" and options == {"streaming": True}
            return REAL_LOAD_DATASET(str(folder), **options)
        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        # `datasets` sleeps 5 s after each pass over shuffled parquet shards (its workaround for apache/arrow#45214).
        monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
        return "someone/digits"
    return make


def test_a_hub_dataset_streams_with_its_own_splits_and_the_sizes_of_its_card(hub):
    name = hub({"train": [range(0, 600), range(600, 1200)], "validation": [range(1200, 1500)],
                "test": [range(1500, 1797)]})
    splits = load_data(name, image_size=8, streaming=True)
    assert (len(splits.train), len(splits.val), len(splits.test), splits.num_classes) == (1200, 300, 297, 10)
    in_memory = load_data("digits", image_size=8, in_memory="yes")
    everything = torch.cat([in_memory.train.images, in_memory.val.images, in_memory.test.images])
    val_images = share(splits.val)[0]
    assert len(val_images) == 300 and set(image_bytes(val_images)) <= set(image_bytes(everything))
    assert splits.train.stream.n_shards == 2  # a worker per file
    first = load_data(name, image_size=8, streaming=True, max_train_samples=100)
    assert len(first.train) == 100 and torch.equal(share(first.train)[0], share(splits.train)[0][:100])


def test_a_process_whose_shards_hold_fewer_images_reads_them_again_and_says_so(hub):
    """Two files over two processes: each reads one whole file. The smaller one's process starts it again to make
    the epoch's steps, with a warning; the other stops at the epoch's end."""
    name = hub({"train": [range(0, 1000), range(1000, 1200)], "validation": [range(1200, 1500)],
                "test": [range(1500, 1797)]})
    train = load_data(name, image_size=8, streaming=True).train
    steps = len(train) // 64  # the epoch's global batches of 64: 18, of 32 images in each process
    larger = list(train.loader(32, num_batches=steps, seed=0, process_index=0, num_processes=2))
    with pytest.warns(LtPluginWarning, match="ended after 6 of the epoch's 18 batches"):
        smaller = list(train.loader(32, num_batches=steps, seed=0, process_index=1, num_processes=2))
    assert len(larger) == len(smaller) == steps
    assert torch.equal(smaller[6][0], smaller[0][0])  # its one file again from the start


def test_a_hub_dataset_without_a_validation_split_tests_on_its_test_split_and_says_so(hub):
    name = hub({"train": [range(0, 1500)], "test": [range(1500, 1797)]})
    with pytest.warns(LtPluginWarning, match="no validation split: its test split serves as both"):
        splits = load_data(name, image_size=8, streaming=True)
    assert len(splits.val) == len(splits.test) == 297


@pytest.mark.parametrize("parts,sizes,said", [
    ({"train": [range(0, 1797)]}, True, "no validation or test split"),
    ({"train": [range(0, 1500)], "validation": [range(1500, 1650)], "test": [range(1650, 1797)]}, False,
     "does not give the size of its 'train' split"),
], ids=["no held-out split", "no split sizes"])
def test_a_hub_stream_that_cannot_be_read_in_epochs_is_one_error(hub, parts, sizes, said):
    name = hub(parts, sizes)
    with pytest.raises(DataError, match=said):
        load_data(name, image_size=8, streaming=True)


def test_streaming_a_hub_dataset_offline_says_the_hub_is_offline():
    with pytest.raises(DataError, match="'cifar10' must be downloaded from the Hugging Face hub, but the hub is off"):
        load_data("cifar10", streaming=True)


def test_streaming_cannot_keep_the_images_in_memory_and_a_shuffle_buffer_needs_it():
    with pytest.raises(UserError, match="--streaming"):
        load_data("digits", streaming=True, in_memory="yes")
    with pytest.raises(UserError, match="--shuffle-buffer applies with --streaming"):
        load_data("digits", shuffle_buffer=100)


# ---------------------------------------------------------------- training on a stream

def linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))


@pytest.fixture(scope="module")
def digits8():
    return load_data("digits", image_size=8, streaming=True, max_train_samples=400)


def test_a_streamed_run_crashed_mid_epoch_resumes_to_the_uninterrupted_result(digits8, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, momentum=0.9, grad_accum_steps=5)
    calls = []

    def crash(_state):
        calls.append(1)
        if len(calls) == steps_per_epoch(cfg, len(digits8.train)) + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(linear(), digits8.train, digits8.val, cfg, tmp_path / "crashed", accelerator=make_accelerator(cfg),
            callbacks=[Lambda(before_optimizer_step=crash)])
    resumed = fit(linear(seed=5), digits8.train, digits8.val, cfg, tmp_path / "crashed",
                  accelerator=make_accelerator(cfg))
    straight = fit(linear(), digits8.train, digits8.val, cfg, tmp_path / "straight", accelerator=make_accelerator(cfg))
    # 12 batches an epoch in groups of 5, 5 and 2: the short last group still makes a step, at the stream's end.
    assert straight.steps == 3 * steps_per_epoch(cfg, len(digits8.train)) == 3 * 3
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_a_streamed_run_rewound_mid_epoch_reads_on_from_the_same_batch(digits8, tmp_path):
    """A fresh SGD without momentum has no state, so training from an uninterrupted run's weights at step k with
    start_step=k must end where the run did: the epoch's first k batches are skipped, not read again."""
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.1, opt="momentum", momentum=0.0, weight_decay=0.0)
    straight = fit(linear(), digits8.train, digits8.val, cfg, tmp_path / "straight",
                   accelerator=make_accelerator(cfg), callbacks=[Snapshots([5])])
    model = linear()
    model.load_state_dict(load_weights(tmp_path / "straight" / "step_5.safetensors"))
    rewound = fit(model, digits8.train, digits8.val, cfg, tmp_path / "rewound", accelerator=make_accelerator(cfg),
                  start_step=5)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(rewound.model.state_dict()[name], tensor), name


def test_fit_resumes_a_stream_only_with_the_workers_and_processes_that_set_its_order(digits8, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)

    def crash(_state):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(linear(), digits8.train, digits8.val, cfg, tmp_path, accelerator=make_accelerator(cfg),
            callbacks=[Lambda(before_optimizer_step=crash)])
    (tmp_path / "checkpoint.safetensors").unlink(missing_ok=True)
    fit(linear(), digits8.train, digits8.val, cfg, tmp_path, accelerator=make_accelerator(cfg))
    other = TrainConfig(epochs=2, batch_size=32, lr=0.05, num_workers=2)
    with pytest.raises(RunFolderError, match="num_workers"):
        fit(linear(), digits8.train, digits8.val, other, tmp_path, accelerator=make_accelerator(other))


def test_evaluating_a_stream_counts_each_image_once_as_the_in_memory_path_does(digits16):
    streamed, in_memory = digits16
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    accelerator = make_accelerator(TrainConfig())
    accuracy, counted = evaluate(model, streamed.test, accelerator, batch_size=50)
    assert (accuracy, counted) == evaluate(model, in_memory.test, accelerator, batch_size=50)
    assert counted == len(in_memory.test) and 0 < accuracy < 1


FAST = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples", "256",
        "--batch-size", "32", "--epochs", "1", "--streaming"]


def test_a_streamed_run_resumes_only_with_the_workers_that_set_its_order(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["imp", *FAST, "--levels", "1", "--out", str(out)]) == 0
    assert cli_main(["imp", *FAST, "--levels", "1", "--num-workers", "2", "--out", str(out)]) == 2
    assert "num_workers=0, not 2" in capsys.readouterr().err
    assert cli_main(["lottery-pools", "--run-dir", str(out), "--corruptions", "--out", str(tmp_path / "lp")]) == 2
    assert "streams its data" in capsys.readouterr().err


def test_a_streamed_run_of_two_processes_resumes_only_on_two(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(["imp", *FAST, "--levels", "0", "--out", str(out)]) == 0
    config = read_json(out / "config.json")
    (out / "config.json").write_text(json.dumps({**config, "world_size": 2}))
    assert cli_main(["imp", *FAST, "--levels", "0", "--out", str(out)]) == 2
    assert "over 2 processes" in capsys.readouterr().err


def test_a_run_folder_made_before_streaming_existed_still_resumes(tmp_path):
    flags = ["imp", *FAST[:-1], "--levels", "0", "--out", str(tmp_path / "run")]
    assert cli_main(flags) == 0
    config = read_json(tmp_path / "run" / "config.json")
    for key in ("streaming", "shuffle_buffer"):
        del config["hparams"][key]
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    assert cli_main(flags) == 0
    assert cli_main([*flags, "--streaming"]) == 2  # but not with the option on


@pytest.mark.slow
def test_two_processes_train_evaluate_and_recalibrate_on_their_own_shares(tmp_path):
    """The job (tests/jobs) asserts in each worker that both ranks end with the same weights and BatchNorm
    statistics after fit and after recalibrate_bn on the stream; here: the schedule's steps were made (12 batches an
    epoch in accumulation groups of 5, 5 and 2), and the two shares of the test stream
    counted each image once, as a hand count over the in-memory images does."""
    job = subprocess.run([sys.executable, str(JOBS / "two_process_stream_job.py"), str(tmp_path)], text=True,
                         capture_output=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(JOBS.parents[1]), str(JOBS)])})
    assert job.returncode == 0, (job.stdout + job.stderr)[-5000:]
    report = read_json(tmp_path / "two_process_stream.json")
    assert report["steps"] == report["schedule_steps"]
    assert report["counted"] == report["test_size"] and report["accuracy"] == pytest.approx(report["by_hand"])
