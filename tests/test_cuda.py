"""Every strategy end to end on a CUDA GPU in bf16, and what only a GPU shows: `pytest -m cuda`.

Skipped without CUDA (the CPU suite catches the same class of defect with the meta device and dtype changes:
tests/test_devices.py). cuDNN is not deterministic by default (autotuned kernels, atomic reductions): a resumed run
is compared with an uninterrupted one exactly under `deterministic=True`, and within a tolerance otherwise.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lt_plugin
from lt_plugin import Mask, load_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.data import load_data
from lt_plugin.experiment import Experiment
from lt_plugin.loaders import DeviceNormalize, make_loader
from lt_plugin.store import load_weights
from lt_plugin.structure import ChannelStructure, export
from lt_plugin.train import TrainConfig, fit, make_accelerator, steps_per_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))
from tiny_training import crash_at, reset_accelerate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("fresh_accelerate_state"),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TINY = dict(model="test_resnet", dataset="digits", image_size=16, max_train_samples=512, batch_size=64, epochs=2,
            lr=0.05, mixed_precision="bf16")


@pytest.fixture(scope="module")
def imp_runs(tmp_path_factory):
    """A weight and a channel IMP run of two levels, on the GPU in bf16."""
    runs = {}
    for granularity in ("weight", "channel"):
        reset_accelerate()
        out = tmp_path_factory.mktemp("imp") / granularity
        results = lt_plugin.create_strategy("imp", levels=2, granularity=granularity, prune_fraction=0.4,
                                            **TINY).run(out)
        runs[granularity] = (out, results)
    reset_accelerate()
    return runs


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_imp_levels_train_on_the_gpu_in_bf16(imp_runs, granularity, tmp_path):
    out, results = imp_runs[granularity]
    assert json.loads((out / "config.json").read_text())["hparams"]["mixed_precision"] == "bf16"
    assert [r["precision"] for r in results] == ["bf16"] * 3
    assert results[0]["density"] == 1.0 > results[1]["density"] > results[2]["density"]
    assert all(r["val_accuracy"] > 0.3 for r in results)  # digits: well above the 10% of guessing
    if granularity == "channel":
        assert results[0]["macs"] > results[1]["macs"] > results[2]["macs"]
    # the ticket file, rebuilt on the GPU, is the masked dense model
    assert cli_main(["export", "--run", str(out), "--level", "2", "--out", str(tmp_path / "t.safetensors")]) == 0
    ticket = load_ticket(tmp_path / "t.safetensors", map_location="cuda")
    dense = Experiment(model="test_resnet", image_size=16).create_model(10, seed=0)
    dense.load_state_dict(load_weights(out / "level_2" / "weights.safetensors"))
    Mask.load(out / "level_2" / "mask.safetensors").apply(dense)
    x = torch.randn(8, 3, 16, 16, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(ticket.model(x), dense.cuda().eval()(x), rtol=1e-4, atol=1e-4)


def test_early_bird_finds_retrains_and_compares_with_the_baseline_on_the_gpu(tmp_path):
    results = lt_plugin.create_strategy("early-bird", ratios=[0.3, 0.5], window=2, baseline=True,
                                        search_precision="int8", **{**TINY, "epochs": 4}).run(tmp_path / "eb")
    for r in results:
        assert r["found"] and r["precision"] == "bf16"
        assert r["train_macs"] < r["baseline_train_macs"]
        assert 0 < r["density"] < 1 and r["test_accuracy"] > 0.3


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_lottery_pools_pools_gpu_tickets_at_their_sparsity(imp_runs, granularity, tmp_path):
    out, imp_results = imp_runs[granularity]
    results = lt_plugin.create_branch("lottery-pools", run_dir=str(out), alphas=[0.3, 0.7],
                                        corruptions=True, corruption_samples=64).run(tmp_path / "pools")
    for pooled, ticket in zip(results, imp_results):
        assert pooled["density"] == pytest.approx(ticket["density"])
        assert pooled["pooled_val_accuracy"] >= pooled["ticket_bn_val_accuracy"]
        if granularity == "channel":
            assert pooled["macs"] == ticket["macs"]


def test_channel_masks_and_the_dense_map_stay_on_the_gpu():
    model = Experiment(model="test_resnet", image_size=16).create_model(10, seed=0)
    example = torch.zeros(1, 3, 16, 16)
    structure = ChannelStructure(model, example, ignored=[model.get_classifier()])
    plan = structure.plans_at_ratios([0.5])[0.5]
    model.cuda()
    mask = structure.mask_from_plan(plan)
    assert {t.device.type for t in mask.tensors.values()} == {"cuda"}
    small = export(model, mask, example.cuda())
    dense = mask.to_dense(small.state_dict(), copy.deepcopy(model).cpu().state_dict())
    assert {t.device.type for t in dense.values()} == {"cuda"}
    # distances between the mask on the GPU and masks on the CPU: the same plan's, and the dense model's
    model.cpu()
    on_cpu = structure.mask_from_plan(plan)
    assert {t.device.type for t in on_cpu.tensors.values()} == {"cpu"}
    assert mask.distance(on_cpu) == 0.0
    pruned = sum(int((~mask.tensors[name]).sum()) for name in mask.prunable)
    total = sum(mask.tensors[name].numel() for name in mask.prunable)
    assert mask.distance(Mask.ones(model, mask.prunable, "channel")) == pruned / total > 0


def test_8_bit_batches_are_normalised_on_the_gpu_as_on_the_cpu():
    data = load_data("digits", image_size=16)
    pixels, _ = next(iter(make_loader(data.test, 64, torch.device("cuda"))))
    assert pixels.is_pinned() and pixels.dtype == torch.uint8
    on_gpu = DeviceNormalize(data.test, torch.device("cuda"))(pixels.cuda(non_blocking=True))
    on_cpu = DeviceNormalize(data.test, torch.device("cpu"))(pixels)
    assert torch.equal(on_gpu.cpu(), on_cpu)


def test_sync_bn_on_one_gpu_keeps_the_trained_statistics(tmp_path):
    results = lt_plugin.create_strategy("imp", levels=0, sync_bn=True, **TINY).run(tmp_path / "run")
    weights = load_weights(tmp_path / "run" / "level_0" / "weights.safetensors")
    init = load_weights(tmp_path / "run" / "init.safetensors")
    stats = [k for k in weights if k.endswith("running_var")]
    assert stats and all(not torch.equal(weights[k], init[k]) for k in stats)
    assert results[0]["val_accuracy"] > 0.3


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_resumed_gpu_run_ends_as_an_uninterrupted_one(tmp_path, deterministic):
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, mixed_precision="bf16", deterministic=deterministic)
    data = load_data("digits", image_size=16, max_train_samples=512)
    experiment = Experiment(model="test_resnet", image_size=16)
    with pytest.raises(KeyboardInterrupt):
        fit(experiment.create_model(10, seed=0), data.train, data.val, cfg, tmp_path / "crashed",
            accelerator=make_accelerator(cfg), callbacks=[crash_at(steps_per_epoch(cfg, len(data.train)) + 2)])
    resumed = fit(experiment.create_model(10, seed=1), data.train, data.val, cfg, tmp_path / "crashed",
                  accelerator=make_accelerator(cfg)).model.state_dict()
    straight = fit(experiment.create_model(10, seed=0), data.train, data.val, cfg, tmp_path / "straight",
                   accelerator=make_accelerator(cfg)).model.state_dict()
    for name, value in straight.items():
        if deterministic:
            assert torch.equal(resumed[name], value), name
        elif value.is_floating_point():
            # Autotuned cuDNN kernels and atomic adds round differently from run to run; after 24 bf16 steps the
            # weights drift by far less than 5% of their largest magnitude, a wrong resume by far more.
            assert (resumed[name] - value).abs().max() <= 0.05 * value.abs().max().clamp(min=1e-3), name


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_two_gpus_over_nccl_run_the_one_gpu_schedule(tmp_path):
    flags = ["imp", "--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples",
             "512", "--batch-size", "64", "--epochs", "2", "--lr", "0.05", "--levels", "1"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", "lt_plugin.cli"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([*launch, *flags, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cli_main([*flags, "--mixed-precision", "bf16", "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    assert [r["steps"] for r in two] == [r["steps"] for r in one]
    for a, b in zip(two, one):
        assert abs(a["density"] - b["density"]) < 0.01 and abs(a["val_accuracy"] - b["val_accuracy"]) < 0.1
