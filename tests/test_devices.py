"""What a GPU run needs, shown on the CPU: tensors made on the device of the tensors they meet (the `meta` device
raises where a CPU tensor meets one of its tensors), BatchNorm buffers that a move replaced (a dtype change or a
clone replaces them as a move to a GPU does), one precision policy, fp16's loss scaling, and an input pipeline that
sends 8-bit pixels and reads nothing back from the device in a step. The same strategies on a real GPU are in
tests/test_cuda.py (`pytest -m cuda`)."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from lt_plugin import create_mask, export, loaders, train
from lt_plugin.callbacks import EnforceMask
from lt_plugin.cli import main as cli_main
from lt_plugin.data import load_data
from lt_plugin.deploy import forward_latency_ms
from lt_plugin.masks import Mask, magnitude_mask, prunable_weight_names
from lt_plugin.callbacks import SlimmingPenalty
from lt_plugin.early_bird_rule import EarlyBirdDetector, mask_distance, norm_scales
from lt_plugin.strategies.early_bird import search_precision
from lt_plugin.structure import ChannelStructure
from lt_plugin.train import TrainConfig, evaluate, fit, make_accelerator, steps_per_epoch

sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))
from tiny_training import conv_bn_model, crash_at as interrupt_at, image_data, reset_accelerate  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
META_HAS_NO_VALUES = "meta tensors"  # what reading a value of a meta tensor raises: the device checks came before


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- tensors on the device of the tensors they meet

def test_a_channel_plan_becomes_a_mask_on_the_device_of_the_model():
    model = timm.create_model("test_resnet", num_classes=10)
    structure = ChannelStructure(model, torch.zeros(1, 3, 16, 16), ignored=[model.get_classifier()])
    plan = structure.plans_at_ratios([0.5])[0.5]
    on_cpu = structure.mask_from_plan(plan)
    model.to("meta")  # the traced model moved, as fit moves it to the GPU: its masks are built there
    on_meta = structure.mask_from_plan(plan)
    assert {t.device.type for t in on_meta.tensors.values()} == {"meta"}
    assert on_meta.tensors.keys() == on_cpu.tensors.keys() and on_meta.plan == on_cpu.plan


def test_a_physically_small_model_maps_back_into_the_dense_space_on_its_own_device():
    model = timm.create_model("test_resnet", num_classes=10)
    example = torch.zeros(1, 3, 16, 16)
    mask = create_mask(model, example, 0.5, "channel")
    small = export(model, mask, example)
    dense = mask.to_dense(small.state_dict(), model.state_dict())
    masked = mask.apply(copy.deepcopy(model)).state_dict()
    assert _same(dense, masked)  # the small model's weights, zeros where pruned
    on_meta = mask.to_dense(small.to("meta").state_dict(), model.state_dict())  # a CPU template, a device model
    assert {t.device.type for t in on_meta.values()} == {"meta"}
    assert {k: (v.shape, v.dtype) for k, v in on_meta.items()} == {k: (v.shape, v.dtype) for k, v in dense.items()}


def test_masks_and_channel_flags_are_compared_where_the_newest_lives():
    on_disk = torch.tensor([True, False, True, True])
    fresh = on_disk.to("meta")  # a check made on the device meets one read from its file
    for compare in (lambda: mask_distance(fresh, on_disk),
                    lambda: Mask({"w": fresh}, ["w"]).distance(Mask({"w": on_disk}, ["w"]))):
        with pytest.raises(RuntimeError, match=META_HAS_NO_VALUES):  # not "... is not on the expected device"
            compare()
    detector = EarlyBirdDetector(window=2)
    detector.update(on_disk)
    with pytest.raises(RuntimeError, match=META_HAS_NO_VALUES):
        detector.update(fresh)
    assert Mask({"w": on_disk}, ["w"]).distance(Mask({"w": on_disk.logical_not()}, ["w"])) == 1.0


# ---------------------------------------------------------------- --sync-bn

def test_reverting_sync_batchnorm_keeps_the_buffers_a_move_replaced():
    model = conv_bn_model()
    originals = train.convert_sync_batchnorm(model)
    model.double()  # like .to("cuda"): every buffer becomes a new tensor, held by the synced layers only
    model.train()(torch.randn(8, 3, 8, 8, dtype=torch.float64))
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    train.revert_sync_batchnorm(model, originals)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert _same(model.state_dict(), trained) and model[1].running_mean.dtype == torch.float64


def test_fit_with_sync_bn_returns_the_trained_statistics_when_prepare_moves_the_model(tmp_path, monkeypatch):
    for module in (train.config, train.loop):  # one CPU process: no sync needed
        monkeypatch.setattr(module, "check_sync_bn", lambda cfg, accelerator: None)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, sync_bn=True)
    accelerator = make_accelerator(cfg)
    prepare = accelerator.prepare

    def moving_prepare(model, optimizer):
        model._apply(torch.clone)  # what prepare's move to a GPU does: new buffers, the parameters kept
        return prepare(model, optimizer)

    monkeypatch.setattr(accelerator, "prepare", moving_prepare)
    synced = fit(conv_bn_model(), image_data(64), image_data(16, seed=1), cfg, tmp_path / "synced",
                 accelerator=accelerator).model.state_dict()
    plain_cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    plain = fit(conv_bn_model(), image_data(64), image_data(16, seed=1), plain_cfg, tmp_path / "plain",
                accelerator=make_accelerator(plain_cfg)).model.state_dict()
    assert not torch.equal(plain["1.running_mean"], torch.zeros(8))  # the statistics did move
    assert _same(synced, plain)  # on one process SyncBatchNorm is BatchNorm: the same statistics come back


# ---------------------------------------------------------------- one precision policy

def test_unset_mixed_precision_is_accelerates_choice(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what accelerate launch --mixed_precision bf16 sets
    accelerator = make_accelerator(TrainConfig())
    assert accelerator.mixed_precision == "bf16"
    assert train.resolve_train_config(TrainConfig(), accelerator).mixed_precision == "bf16"
    reset_accelerate()
    assert make_accelerator(TrainConfig(mixed_precision="no")).mixed_precision == "no"  # a flag given wins


def test_fit_leaves_the_model_its_own_forward_and_scores_it_in_the_runs_precision(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, mixed_precision="bf16")
    accelerator = make_accelerator(cfg)
    trained = fit(conv_bn_model(), image_data(64), image_data(16, seed=1), cfg, tmp_path, accelerator=accelerator)
    assert "forward" not in vars(trained.model)  # Accelerate's autocast patch is gone with fit
    fresh = conv_bn_model(seed=5)
    fresh.load_state_dict(trained.model.state_dict())
    test_set = image_data(40, seed=2)
    images, labels = test_set.tensors
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        by_hand = int((fresh.eval()(images).argmax(1) == labels).sum()) / 40
    # the trained object and a fresh one with its weights: the same score, in bf16 as the run trained
    assert evaluate(trained.model, test_set, accelerator, 16)[0] == evaluate(fresh, test_set, accelerator, 16)[0] \
        == by_hand
    assert trained.model(images).dtype == torch.float32  # outside the run's scoring, the model's own precision


def test_a_bf16_search_leaves_the_next_fit_in_the_runs_precision(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05, mixed_precision="bf16")
    accelerator = make_accelerator(cfg)
    model = conv_bn_model()
    with search_precision(model, "bf16", "cpu"):
        fit(model, image_data(32), image_data(8), cfg, tmp_path / "search", accelerator=accelerator)
    assert "forward" not in vars(model)
    dtypes = set()
    hook = model[0].register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    fit(model, image_data(32), image_data(8), cfg, tmp_path / "baseline", accelerator=accelerator)
    hook.remove()
    assert dtypes == {torch.bfloat16}  # the baseline trains (and validates) in bf16 as the search did


def _scaled(accelerator):
    """fp16's loss scaling on the CPU: Accelerate's GradScaler path, which it only builds for GPUs."""
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=1)
    return accelerator


def test_the_slimming_penalty_acts_on_unscaled_gradients(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05)
    states = []
    for scaled in (False, True):
        reset_accelerate()
        accelerator = make_accelerator(cfg)
        model = conv_bn_model()
        penalty = SlimmingPenalty(norm_scales(model).values(), 0.5)  # strong, so a 65,536x weaker one shows
        fit(model, image_data(64), image_data(16, seed=1), cfg, tmp_path / str(scaled),
            accelerator=_scaled(accelerator) if scaled else accelerator, callbacks=[penalty])
        states.append(model.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(states[1][name], value, rtol=1e-5, atol=1e-6)


def test_a_resumed_fp16_run_goes_on_with_the_loss_scale_it_had_reached(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    crash_at = steps_per_epoch(cfg, 64) + 2
    with pytest.raises(KeyboardInterrupt):
        fit(conv_bn_model(), image_data(64), image_data(16), cfg, tmp_path / "crashed",
            accelerator=_scaled(make_accelerator(cfg)), callbacks=[interrupt_at(crash_at)])
    scales = []
    for folder in ("crashed", "straight"):
        reset_accelerate()
        accelerator = _scaled(make_accelerator(cfg))
        fit(conv_bn_model(), image_data(64), image_data(16), cfg, tmp_path / folder, accelerator=accelerator)
        scales.append(accelerator.scaler.get_scale())
    assert scales[0] == scales[1] == 2.0 ** (16 + 3 * steps_per_epoch(cfg, 64))  # doubled after every step


def test_the_int8_search_reads_nothing_back_from_the_device_in_a_forward(monkeypatch):
    model = timm.create_model("test_resnet", num_classes=10)
    x = torch.randn(2, 3, 16, 16)
    with search_precision(model, "int8", "cpu"):
        expected = model(x)

        def host_read(*_args):
            raise AssertionError("a host sync in the int8 forward")

        for method in ("item", "__float__", "__bool__", "tolist"):
            monkeypatch.setattr(torch.Tensor, method, host_read)
        got = model(x)
    monkeypatch.undo()
    assert torch.equal(got, expected)


def test_bf16_under_accelerate_launch_trains_a_level_and_records_its_precision(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", "lt_plugin.cli", "imp", "--model",
               "test_resnet", "--dataset", "digits", "--image-size", "8", "--max-train-samples", "256",
               "--batch-size", "32", "--epochs", "1", "--levels", "1", "--out", str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["hparams"]["mixed_precision"] == "bf16"
    results = json.loads((out / "results.json").read_text())
    assert [r["precision"] for r in results] == ["bf16", "bf16"]


# ---------------------------------------------------------------- the input pipeline

def test_loaders_send_8_bit_pixels_and_normalise_them_on_the_device_as_the_dataset_does():
    data = load_data("digits", image_size=8)
    loader = loaders.make_loader(data.test, 37, torch.device("cpu"))
    pixels, labels = next(iter(loader))
    assert pixels.dtype == torch.uint8 and pixels.shape[0] == 37
    normalize = loaders.DeviceNormalize(data.test, torch.device("cpu"))
    expected = torch.utils.data.default_collate(data.test.__getitems__(list(range(37))))
    assert torch.equal(normalize(pixels), expected[0]) and torch.equal(labels, expected[1])
    assert normalize(pixels).shape[1] == 3  # grayscale kept as one channel until the device copies it into three
    channels_last = loaders.DeviceNormalize(data.test, torch.device("cpu"), channels_last=True)
    assert channels_last(pixels).is_contiguous(memory_format=torch.channels_last)
    floats = image_data(5)
    assert torch.equal(loaders.DeviceNormalize(floats, torch.device("cpu"))(floats.tensors[0]), floats.tensors[0])
    gpu_loader = loaders.make_loader(data.test, 37, torch.device("cuda"))  # built, not iterated: no GPU here
    assert gpu_loader.pin_memory


def test_workers_by_default_none_on_a_cpu_and_up_to_eight_on_a_gpu(monkeypatch):
    assert loaders.default_num_workers(torch.device("cpu")) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert loaders.default_num_workers(torch.device("cuda")) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loaders.default_num_workers(torch.device("cuda")) == 3


def _host_reads(monkeypatch):
    """A counter of every value read back from a tensor (what forces a GPU to finish its work)."""
    count = [0]
    for method in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, method)

        def counted(self, *args, _original=original):
            count[0] += 1
            return _original(self, *args)
        monkeypatch.setattr(torch.Tensor, method, counted)
    return count


@pytest.mark.parametrize("with_mask", [False, True])
def test_a_training_step_reads_nothing_back_from_the_device(tmp_path, monkeypatch, with_mask):
    reads = []
    for samples in (160, 320):  # 10 and 20 steps in the one epoch
        reset_accelerate()
        cfg = TrainConfig(epochs=1, batch_size=16, lr=0.05)
        accelerator = make_accelerator(cfg)
        train_set, val_set = image_data(samples), image_data(16, seed=1)
        model = conv_bn_model()
        callbacks = [EnforceMask(magnitude_mask(model, 0.5, prunable_weight_names(model)))] if with_mask else []
        count = _host_reads(monkeypatch)
        fit(model, train_set, val_set, cfg, tmp_path / f"{samples}{with_mask}", accelerator=accelerator,
            callbacks=callbacks)
        monkeypatch.undo()
        reads.append(count[0])
    assert reads[0] == reads[1]  # twice the steps, not one read more


def test_evaluation_leaves_no_loader_with_accelerate():
    accelerator = make_accelerator(TrainConfig())
    for _ in range(3):
        evaluate(conv_bn_model(), image_data(20), accelerator, batch_size=8)
    assert accelerator._dataloaders == []


def test_latency_on_a_gpu_waits_for_the_device(monkeypatch):
    waits = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waits.append(device))
    from lt_plugin import deploy
    run = deploy._synchronised(nn.Linear(4, 2), torch.device("cuda"))
    run(torch.zeros(1, 4))
    assert waits == [torch.device("cuda")]
    assert forward_latency_ms(nn.Linear(4, 2), torch.zeros(1, 4), rounds=2, warmup=0) > 0
    assert not waits[1:]  # a CPU model is not synchronised


def test_export_benchmark_on_a_gpu_this_machine_lacks_is_one_line(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = cli_main(["export", "--run", str(tmp_path), "--ticket", "0", "--out", str(tmp_path / "t.safetensors"),
                     "--benchmark", "--device", "cuda"])
    assert code == 2 and "no CUDA GPU" in capsys.readouterr().err


def test_the_gpu_benchmark_says_so_without_a_gpu_and_its_parts_run_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    script = str(REPO / "benchmarks" / "gpu.py")
    if not torch.cuda.is_available():
        done = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith("benchmarks/gpu.py: no CUDA GPU on this machine")
    smoke = subprocess.run([sys.executable, script, "--smoke"], env=env, capture_output=True, text=True, timeout=600)
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    written = Path(smoke.stdout.strip().splitlines()[-1].split(" and ")[0].split("wrote ")[1])
    report = json.loads(written.read_text())
    assert {"dense", "ticket", "macs_ratio", "ticket_speedup", "imp", "targets"} <= report.keys()
    assert report["macs_ratio"] > 1 and report["imp"]["levels"] == 3
