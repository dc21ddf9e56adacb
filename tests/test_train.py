"""Tests of the training engine (lt_plugin/train/), each against an independent path.

Tiny models on 8x8 / 16x16 random images keep every test fast; the two slow ones (a job killed with SIGKILL, two
forked gloo processes) run as subprocesses from tests/jobs and still belong to the default suite.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open

from lt_plugin.callbacks import EnforceMask, Lambda, Snapshots
from lt_plugin.errors import RunFolderError, UserError
from lt_plugin.masks import magnitude_mask, prunable_weight_names
from lt_plugin.store import load_weights
from lt_plugin.train import checkpoint, loop
from lt_plugin.train.config import create_optimizer
from lt_plugin.train import (TrainConfig, evaluate, fit, make_accelerator, recalibrate_bn, steps_per_epoch,
                             total_steps)

JOBS = Path(__file__).resolve().parent / "jobs"
REPO = JOBS.parents[1]
sys.path.insert(0, str(JOBS))
from tiny_training import conv_bn_model, image_data, mlp  # noqa: E402


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
# Two trainings that sum the same gradients in other orders, compared in float64: in float32 this MLP's 20 steps
# end ~5e-8 (about one float32 ulp of its weights) from the float64 training, so they carry rounding at most ~1x;
# float64 rounds 2**29 times finer, which puts its differences near 1e-16 (measured: 4e-17). 1e-12 leaves four
# orders for other CPUs and thread counts; a wrong batch, data order or learning rate moves the weights by ~1e-2.
FLOAT64_ROUNDING = 1e-12
JOB_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_job(script, *args, **popen_kwargs):
    """Start a job script of tests/jobs with this Python, lt_plugin importable from the repository."""
    return subprocess.Popen([sys.executable, str(JOBS / script), *map(str, args)], env=JOB_ENV, **popen_kwargs)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def metadata_of(path):
    with safe_open(str(path), framework="pt") as f:
        return {key: json.loads(value) for key, value in f.metadata().items()}


# ---------------------------------------------------------------- 1. killed mid-epoch, resumed == uninterrupted

@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_equals_uninterrupted_run(tmp_path, kill_when):
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    per_epoch, epochs = 10, 4  # the job's 160 samples in batches of 16, for 4 epochs
    reference = run_job("train_job.py", reference_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # Killed 3 steps into epoch 2: the job pauses before its 13th optimizer step, one checkpoint (step 10) written.
    kill_when([sys.executable, str(JOBS / "train_job.py"), str(killed_dir), "--pause-at-step", "13"], env=JOB_ENV)
    checkpoint, step_log = killed_dir / "checkpoint.safetensors", killed_dir / "steps.log"
    assert metadata_of(checkpoint)["step"] == per_epoch
    assert not (killed_dir / "model.safetensors").exists()
    assert len(step_log.read_text().splitlines()) == 13  # work past the checkpoint was lost

    resumed = run_job("train_job.py", killed_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]

    assert_same_weights(load_weights(killed_dir / "model.safetensors"),
                        load_weights(reference_dir / "model.safetensors"))
    assert not checkpoint.exists()
    lines = [json.loads(line) for line in (killed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(1, epochs + 1))
    assert [m["step"] for m in lines] == [per_epoch * e for e in range(1, epochs + 1)]
    assert metadata_of(killed_dir / "model.safetensors")["history"] == lines


# ---------------------------------------------------------------- 2. rewound start == uninterrupted run

def test_rewound_start_at_step_k_follows_the_uninterrupted_run(tmp_path):
    # No momentum and no weight decay: the optimizer is stateless, so its fresh start loses nothing.
    cfg = TrainConfig(epochs=3, batch_size=16, opt="momentum", momentum=0.0, weight_decay=0.0, lr=0.1,
                      sched="cosine", seed=1)
    train_set, val_set = image_data(160), image_data(40, seed=1)
    per_epoch = steps_per_epoch(cfg, len(train_set))
    k = per_epoch + 3  # mid-epoch: the rewound run skips 3 batches of epoch 2

    full = conv_bn_model()
    fit(full, train_set, val_set, cfg, tmp_path / "full", accelerator=make_accelerator(cfg), callbacks=[Snapshots([k])])

    rewound = conv_bn_model(seed=99)
    rewound.load_state_dict(load_weights(tmp_path / "full" / f"step_{k}.safetensors"))
    result = fit(rewound, train_set, val_set, cfg, tmp_path / "rewound", accelerator=make_accelerator(cfg),
                 start_step=k, callbacks=[Snapshots([k])])

    assert result.steps == total_steps(cfg, len(train_set))
    assert_same_weights(rewound.state_dict(), full.state_dict())
    assert [m["epoch"] for m in result.history] == [2, 3]
    lr_full = metadata_of(tmp_path / "full" / f"step_{k}.safetensors")["lr"]
    lr_rewound = metadata_of(tmp_path / "rewound" / f"step_{k}.safetensors")["lr"]
    cosine = 0.5 * cfg.lr * (1 + math.cos(math.pi * k / total_steps(cfg, len(train_set))))
    assert lr_rewound == lr_full == pytest.approx(cosine, rel=1e-12)


# ---------------------------------------------------------------- 3. masks stay enforced

def test_mask_stays_enforced_through_training(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.2)
    model = timm.create_model("test_resnet", num_classes=4)
    mask = magnitude_mask(model, 0.3, prunable_weight_names(model))
    density_before = mask.density
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    fit(model, image_data(64, size=16), image_data(20, size=16, seed=1), cfg, tmp_path,
        accelerator=make_accelerator(cfg), callbacks=[EnforceMask(mask), Snapshots([0])])

    params = dict(model.named_parameters())
    step_0 = load_weights(tmp_path / "step_0.safetensors")
    for name, keep in mask.tensors.items():
        assert torch.all(params[name][~keep] == 0), name
        assert torch.all(step_0[name][~keep] == 0), name  # applied before the first step
    assert any(not torch.equal(params[n][keep], before[n][keep]) for n, keep in mask.tensors.items())
    assert mask.density == density_before == pytest.approx(0.3, abs=1e-3)
    nonzero = sum(int((params[n] != 0).sum()) for n in mask.prunable)
    assert nonzero / sum(params[n].numel() for n in mask.prunable) <= density_before


# ---------------------------------------------------------------- 4. two processes

@pytest.mark.slow
def test_two_processes_agree_and_match_one_process(tmp_path):
    # The job asserts inside each of its 2 workers that every rank holds the same weights and BatchNorm
    # statistics (after fit and after recalibrate_bn) and that pruned entries are zero; see tests/jobs.
    job = run_job("two_process_job.py", tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = job.communicate(timeout=300)[0]
    assert job.returncode == 0, output[-5000:]
    report = json.loads((tmp_path / "two_process.json").read_text())
    assert report["num_processes"] == 2
    assert report["counted"] == 37  # each validation sample once, though 37 is not a multiple of 2 x 8
    assert report["accuracy"] == report["by_hand"]

    one_process = load_weights(tmp_path / "mlp_1" / "model.safetensors")
    two_processes = load_weights(tmp_path / "mlp_2" / "model.safetensors")
    # Same global batches, data order and schedule; only the rounding of the gradient differs (two half-batch means
    # averaged by the all-reduce instead of one full-batch mean), here in float64.
    for name, value in one_process.items():
        torch.testing.assert_close(two_processes[name], value, rtol=0, atol=FLOAT64_ROUNDING)
    assert metadata_of(tmp_path / "mlp_2" / "model.safetensors")["steps"] == 20


# ---------------------------------------------------------------- 5. evaluate and recalibrate_bn by hand

def test_evaluate_matches_a_hand_count():
    model = conv_bn_model().eval()
    dataset = image_data(23)
    images, labels = dataset.tensors
    with torch.no_grad():
        hand_correct = int((model(images).argmax(dim=1) == labels).sum())
    accuracy, counted = evaluate(model, dataset, make_accelerator(TrainConfig()), batch_size=5)
    assert counted == 23
    assert accuracy == hand_correct / 23


def test_recalibrate_bn_recomputes_batch_statistics_by_hand():
    model = conv_bn_model()
    conv1, bn1, conv2, bn2 = model[0], model[1], model[3], model[4]
    for bn in (bn1, bn2):
        bn.momentum = 0.3
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(7.0)
    weights_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dataset = image_data(12)
    accelerator = make_accelerator(TrainConfig())

    recalibrate_bn(model, dataset, accelerator, batch_size=12)  # one batch holding the whole set

    images = dataset.tensors[0]
    with torch.no_grad():
        h1 = conv1(images)
        a1 = F.relu(F.batch_norm(h1, None, None, bn1.weight, bn1.bias, training=True, eps=bn1.eps))
        h2 = conv2(a1)
    for bn, h in ((bn1, h1), (bn2, h2)):
        torch.testing.assert_close(bn.running_mean, h.mean(dim=(0, 2, 3)), rtol=0, atol=1e-6)
        torch.testing.assert_close(bn.running_var, h.var(dim=(0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)
        assert bn.momentum == 0.3
        assert int(bn.num_batches_tracked) == 1
    assert not model.training
    assert_same_weights(dict(model.named_parameters()), weights_before)

    # Several batches: a cumulative average (momentum=None) of equal-sized batch means is the overall mean.
    recalibrate_bn(model, dataset, accelerator, batch_size=4)
    assert int(bn1.num_batches_tracked) == 3
    torch.testing.assert_close(bn1.running_mean, h1.mean(dim=(0, 2, 3)), rtol=0, atol=1e-6)
    recalibrate_bn(model, dataset, accelerator, num_batches=2, batch_size=4)
    assert int(bn1.num_batches_tracked) == 2


# ---------------------------------------------------------------- 6. optimizer state through the checkpoint

@pytest.mark.parametrize("opt", ["momentum", "adamw"])
def test_optimizer_state_survives_the_checkpoint_round_trip(tmp_path, opt):
    cfg = TrainConfig(opt=opt, lr=0.01)
    model = conv_bn_model()
    optimizer = create_optimizer(model, cfg)
    images, labels = image_data(16).tensors
    for _ in range(3):
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    settings = checkpoint.result_settings(cfg)
    path = tmp_path / "checkpoint.safetensors"
    checkpoint.save_checkpoint(path, model, optimizer, {"epoch": 1, "step": 3, "history": [], "train_seconds": 1.5,
                                                    "stopped": False}, settings)

    model_state, optimizer_state, progress = checkpoint.read_checkpoint(path, settings)
    assert progress == {"epoch": 1, "step": 3, "history": [], "train_seconds": 1.5, "stopped": False}
    assert_same_weights(model_state, model.state_dict())
    restored_model = conv_bn_model(seed=5)
    restored_model.load_state_dict(model_state)
    restored = create_optimizer(restored_model, cfg)
    restored.load_state_dict(optimizer_state)
    original_state, restored_state = optimizer.state_dict(), restored.state_dict()
    # JSON keeps every value but turns tuples (Adam's betas) into lists, which the optimizers index the same way.
    assert restored_state["param_groups"] == json.loads(json.dumps(original_state["param_groups"]))
    assert original_state["state"].keys() == restored_state["state"].keys()
    for param_id, entries in original_state["state"].items():
        assert entries.keys() == restored_state["state"][param_id].keys()
        for key, value in entries.items():
            assert torch.equal(torch.as_tensor(restored_state["state"][param_id][key]), torch.as_tensor(value))

    for m, o in ((model, optimizer), (restored_model, restored)):  # the next step is the same too
        F.cross_entropy(m(images), labels).backward()
        o.step()
    assert_same_weights(restored_model.state_dict(), model.state_dict())


def test_crash_then_resume_in_process_equals_uninterrupted_run(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, momentum=0.9)
    train_set, val_set = image_data(96), image_data(20, seed=1)
    crash_at = steps_per_epoch(cfg, len(train_set)) + 2
    steps_seen = []

    def crash(_state):
        steps_seen.append(1)
        if len(steps_seen) == crash_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(conv_bn_model(), train_set, val_set, cfg, tmp_path / "crashed", accelerator=make_accelerator(cfg),
            callbacks=[Lambda(before_optimizer_step=crash)])
    assert (tmp_path / "crashed" / "checkpoint.safetensors").exists()
    resumed = fit(conv_bn_model(seed=7), train_set, val_set, cfg, tmp_path / "crashed",
                  accelerator=make_accelerator(cfg))
    uninterrupted = fit(conv_bn_model(), train_set, val_set, cfg, tmp_path / "full",
                        accelerator=make_accelerator(cfg))
    assert_same_weights(resumed.model.state_dict(), uninterrupted.model.state_dict())
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]
    assert len((tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()) == 3


def test_on_step_ends_training_at_that_step_and_a_resume_does_not_train_on(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, momentum=0.9)
    train_set, val_set = image_data(96), image_data(20, seed=1)
    stop_at = steps_per_epoch(cfg, len(train_set)) + 2  # mid-epoch 2
    reference = fit(conv_bn_model(), train_set, val_set, cfg, tmp_path / "full", accelerator=make_accelerator(cfg),
                    callbacks=[Snapshots([stop_at])])
    seen = []

    def stop(state):
        seen.append(state.step)
        return state.step == stop_at

    def interrupt_final_save(*_args):
        raise KeyboardInterrupt

    # The run stops at `stop_at`, then dies before its final file: the checkpoint says it had stopped.
    monkeypatch.setattr(loop, "save_weights", interrupt_final_save)
    with pytest.raises(KeyboardInterrupt):
        fit(conv_bn_model(), train_set, val_set, cfg, tmp_path / "stopped", accelerator=make_accelerator(cfg),
            callbacks=[Lambda(after_optimizer_step=stop)])
    monkeypatch.undo()
    assert seen == list(range(1, stop_at + 1))
    resumed = fit(conv_bn_model(seed=7), train_set, val_set, cfg, tmp_path / "stopped",
                  accelerator=make_accelerator(cfg),
                  callbacks=[Lambda(before_optimizer_step=interrupt_final_save)])  # must not train a step
    assert resumed.steps == stop_at
    assert [m["epoch"] for m in resumed.history] == [1, 2]
    assert_same_weights(resumed.model.state_dict(), load_weights(tmp_path / "full" / f"step_{stop_at}.safetensors"))
    assert reference.steps == 3 * steps_per_epoch(cfg, len(train_set))


def test_a_loss_that_becomes_nan_stops_with_one_line_and_keeps_the_last_good_epoch(tmp_path):
    from lt_plugin.errors import DivergedError
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    train_set, val_set = image_data(96), image_data(20, seed=1)
    per_epoch = steps_per_epoch(cfg, len(train_set))
    poison_at = per_epoch + 2
    calls = []

    def poison(state):  # after the gradients of step `poison_at`: the next forward gives NaN
        calls.append(1)
        if len(calls) == poison_at:
            with torch.no_grad():
                next(state.model.parameters()).fill_(float("nan"))

    # the epoch's first step and its last: the steps since the last check (the end of epoch 1) hold the bad loss
    with pytest.raises(DivergedError, match=f"between steps {per_epoch + 1} and {2 * per_epoch} \\(epoch 2\\).*"
                                            "learning rate") as info:
        fit(conv_bn_model(), train_set, val_set, cfg, tmp_path, accelerator=make_accelerator(cfg),
            callbacks=[Lambda(before_optimizer_step=poison)])
    assert "\n" not in str(info.value)
    kept = load_weights(tmp_path / "checkpoint.safetensors")
    assert all(torch.isfinite(t).all() for t in kept.values())
    assert metadata_of(tmp_path / "checkpoint.safetensors")["epoch"] == 1
    assert not (tmp_path / "model.safetensors").exists()


# ---------------------------------------------------------------- 7. finished work is not redone

def test_finished_run_folder_is_loaded_not_retrained(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    train_set, val_set = image_data(64), image_data(20, seed=1)
    first = fit(conv_bn_model(), train_set, val_set, cfg, tmp_path, accelerator=make_accelerator(cfg))

    def no_training(*_args):
        raise AssertionError("fit trained again")

    monkeypatch.setattr(loop, "create_optimizer", no_training)
    fresh = conv_bn_model(seed=3)
    again = fit(fresh, train_set, val_set, cfg, tmp_path, accelerator=make_accelerator(cfg),
                callbacks=[Lambda(before_optimizer_step=no_training)])
    assert again.model is fresh
    assert_same_weights(fresh.state_dict(), load_weights(tmp_path / "model.safetensors"))
    assert_same_weights(fresh.state_dict(), first.model.state_dict())
    assert (again.steps, again.val_accuracy, again.history, again.train_seconds) == \
        (first.steps, first.val_accuracy, first.history, first.train_seconds)

    with pytest.raises(RunFolderError, match="lr"):
        fit(conv_bn_model(), train_set, val_set, TrainConfig(epochs=2, batch_size=16, lr=0.5), tmp_path,
            accelerator=make_accelerator(cfg))


# ---------------------------------------------------------------- the rest of the contract

def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    accumulated = TrainConfig(epochs=2, batch_size=8, grad_accum_steps=2, lr=0.05)
    whole = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    assert steps_per_epoch(accumulated, 160) == steps_per_epoch(whole, 160) == 10
    assert steps_per_epoch(accumulated, 168) == 11  # 21 batches: the last, shorter group still steps
    train_set, val_set = image_data(160, dtype=torch.float64), image_data(20, seed=1, dtype=torch.float64)
    a = fit(mlp(dtype=torch.float64), train_set, val_set, accumulated, tmp_path / "a",
            accelerator=make_accelerator(accumulated))
    b = fit(mlp(dtype=torch.float64), train_set, val_set, whole, tmp_path / "b", accelerator=make_accelerator(whole))
    assert a.steps == b.steps == 20
    # The same samples per step (8 + 8 consecutive ones of the same permutation); only the rounding of the sum
    # differs, here in float64.
    for name, value in b.model.state_dict().items():
        torch.testing.assert_close(a.model.state_dict()[name], value, rtol=0, atol=FLOAT64_ROUNDING)


def test_same_config_gives_identical_weights(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, sched="multistep", warmup_epochs=0.5)
    train_set, val_set = image_data(64), image_data(20, seed=1)
    a = fit(conv_bn_model(), train_set, val_set, cfg, tmp_path / "a", accelerator=make_accelerator(cfg))
    b = fit(conv_bn_model(), train_set, val_set, cfg, tmp_path / "b", accelerator=make_accelerator(cfg))
    assert_same_weights(a.model.state_dict(), b.model.state_dict())
    other = TrainConfig(epochs=2, batch_size=16, lr=0.05, sched="multistep", warmup_epochs=0.5, seed=1)
    c = fit(conv_bn_model(), train_set, val_set, other, tmp_path / "c", accelerator=make_accelerator(other))
    assert not torch.equal(c.model[0].weight, a.model[0].weight)  # the seed does change the data order


def test_tensorboard_tracker_logs_every_fit_in_one_folder_of_the_run(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = TrainConfig(epochs=1, batch_size=16, log_with="tensorboard")
    accelerator = make_accelerator(cfg, project_dir=tmp_path)
    for desc in ("level 0", "level 1"):
        fit(mlp(), image_data(32), image_data(8), cfg, tmp_path / desc, accelerator=accelerator, desc=desc)
    # one folder per fit, named without spaces, side by side: TensorBoard overlays their curves
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["level_0", "level_1"]
    assert all(list((tmp_path / "logs" / name).glob("events.out.tfevents.*")) for name in ("level_0", "level_1"))


def test_clear_errors_for_what_cannot_be_trained(tmp_path):
    cfg = TrainConfig(batch_size=16)
    accelerator = make_accelerator(cfg)
    frozen = mlp().requires_grad_(False)
    with pytest.raises(UserError, match="no parameters that require grad"):
        fit(frozen, image_data(32), image_data(8), cfg, tmp_path / "a", accelerator=accelerator)
    with pytest.raises(UserError, match="empty"):
        fit(mlp(), image_data(0), image_data(8), cfg, tmp_path / "b", accelerator=accelerator)
    with pytest.raises(UserError, match="fewer than one batch"):
        fit(mlp(), image_data(8), image_data(8), cfg, tmp_path / "c", accelerator=accelerator)
    with pytest.raises(UserError, match="sched"):
        fit(mlp(), image_data(32), image_data(8), TrainConfig(batch_size=16, sched="plateau"), tmp_path / "d",
            accelerator=accelerator)
    with pytest.raises(UserError, match="project_dir"):
        make_accelerator(TrainConfig(log_with="tensorboard"))
    if importlib.util.find_spec("wandb") is None:  # a tracker whose package is missing is an error, not silence
        with pytest.raises(UserError, match="not installed"):
            make_accelerator(TrainConfig(log_with="wandb"), project_dir=tmp_path)


# ---------------------------------------------------------------- 7. weight decay as the papers' code decays

def test_wd_norm_bias_decays_every_parameter_and_timms_default_exempts_norms_and_biases():
    model = conv_bn_model()
    one_dim = {id(p) for p in model.parameters() if p.ndim <= 1}  # BatchNorm scales and shifts, biases
    assert one_dim
    for every, decayed in ((True, set(map(id, model.parameters()))),
                           (False, {id(p) for p in model.parameters()} - one_dim)):
        optimizer = create_optimizer(model, TrainConfig(weight_decay=1e-4, wd_norm_bias=every))
        got = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 1e-4 for p in group["params"]}
        assert got == decayed
        assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))


def test_the_papers_recipes_decay_every_parameter_and_earlier_files_still_match():
    from lt_plugin.recipes import RECIPES
    for name in ("lth-cifar", "lth-vgg-cifar", "eb-cifar", "lottery-pools-cifar"):
        assert RECIPES[name]["options"]["wd_norm_bias"] is True, name
    # a result's settings leave the option out at the value earlier runs trained with
    assert "wd_norm_bias" not in checkpoint.result_settings(TrainConfig())
    assert checkpoint.result_settings(TrainConfig(wd_norm_bias=True))["wd_norm_bias"] is True
