"""The strategies as pieces for your own loop (lt_plugin.pruners, lt_plugin.pooling), each against an independent
path: the own-loop examples against the strategies they mirror, the Lottery Pools function on hand-loaded tickets
against the strategy, a pruner's saved level through `lt-plugin export`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

import lt_plugin
from lt_plugin import Mask, load_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.data import load_data
from lt_plugin.experiment import Experiment
from lt_plugin.pruners import EarlyBirdPruner, IMPPruner, level_density
from lt_plugin.store import load_weights

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
SMALL = ["--model", "test_resnet", "--image-size", "16", "--epochs", "1"]


def _example(name, *args, launcher=(), env=ENV):
    done = subprocess.run([*launcher, str(REPO / "examples" / name), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _same_levels(own, cli, levels, exact=True):
    results = json.loads((cli / "results.json").read_text())
    for level in range(levels + 1):
        for file in ("mask.safetensors", "weights.safetensors"):
            a, b = load_weights(own / f"level_{level}" / file), load_weights(cli / f"level_{level}" / file)
            assert a.keys() == b.keys(), (level, file)
            for name in a:
                if exact or file == "mask.safetensors":
                    assert torch.equal(a[name], b[name]), (level, file, name)
                else:
                    torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)
        own_result = json.loads((own / f"level_{level}" / "result.json").read_text())
        assert own_result["density"] == results[level]["density"]
        assert abs(own_result["test_accuracy"] - results[level]["test_accuracy"]) <= (0 if exact else 1 / 360)


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_the_own_loop_imp_example_trains_the_tickets_of_lt_plugin_imp(tmp_path, granularity):
    _example("own_loop_imp.py", *SMALL, "--levels", 2, "--pruning-ratio", 0.5, "--granularity", granularity,
             "--out", tmp_path / "own", launcher=[sys.executable])
    assert cli_main(["imp", *SMALL, "--dataset", "digits", "--levels", "2", "--target-density", "0.5",
                     "--granularity", granularity, "--out", str(tmp_path / "cli")]) == 0
    _same_levels(tmp_path / "own", tmp_path / "cli", levels=2)


@pytest.mark.slow
def test_the_accelerate_example_on_two_processes_trains_the_tickets_of_a_two_process_run(tmp_path, two_processes):
    launcher, env = two_processes  # `accelerate launch ... -m lt_plugin.cli`, 2 CPU processes
    flags = [*SMALL, "--levels", "1", "--granularity", "channel"]
    done = subprocess.run([*launcher, "imp", *flags, "--dataset", "digits", "--target-density", "0.5", "--out",
                           str(tmp_path / "cli")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    script_launcher = [arg for arg in launcher if arg != "lt_plugin.cli"][:-1]  # the same launch, of a script
    _example("own_loop_accelerate.py", *flags, "--pruning-ratio", 0.5, "--out", tmp_path / "own",
             launcher=script_launcher, env=env)
    # two gloo processes: the all-reduced gradients of the two runs round alike, within float32's last digits
    _same_levels(tmp_path / "own", tmp_path / "cli", levels=1, exact=False)


def test_the_own_loop_early_bird_finds_the_strategys_emergence_epoch(tmp_path):
    options = [*SMALL[:4], "--epochs", "5", "--window", "2", "--epsilon", "0.15", "--lr", "0.05"]
    out = _example("own_loop_early_bird.py", *options, "--pruning-ratio", 0.5, launcher=[sys.executable])
    assert "Early-Bird ticket at epoch" in out
    own_epoch = int(out.split("Early-Bird ticket at epoch ")[1].split(":")[0])
    assert cli_main(["early-bird", *options, "--dataset", "digits", "--ratios", "0.5", "--out",
                     str(tmp_path / "eb")]) == 0
    (strategy,) = json.loads((tmp_path / "eb" / "results.json").read_text())
    assert strategy["found"] and strategy["eb_epoch"] == own_epoch


TINY = dict(model="test_resnet", dataset="digits", image_size=8, max_train_samples=512, batch_size=32, epochs=2,
            lr=0.05)


def test_lottery_pool_on_hand_loaded_tickets_gives_the_strategys_blend(tmp_path):
    lt_plugin.create_strategy("imp", levels=2, **TINY).run(tmp_path / "imp")
    (strategy,) = lt_plugin.create_strategy("lottery-pools", run_dir=str(tmp_path / "imp"), targets=[2],
                                            alphas=[0.3, 0.6], protocol="reference").run(tmp_path / "pools")
    experiment = Experiment(**{k: TINY[k] for k in ("model", "dataset", "image_size", "max_train_samples")})
    data = experiment.load_data()
    tickets = {level: (load_weights(tmp_path / "imp" / f"level_{level}" / "weights.safetensors"),
                       Mask.load(tmp_path / "imp" / f"level_{level}" / "mask.safetensors")) for level in range(3)}

    @torch.no_grad()
    def evaluate(model, mask):  # a user's own validation loop: each image right or wrong, for the paired rule
        model.eval()
        return torch.cat([model(x).argmax(1) == y for x, y in DataLoader(data.val, 256)])

    def recalibrate(model, mask):  # torch's own BatchNorm update, over the training set shuffled with seed 0
        update_bn(DataLoader(data.train, 256, shuffle=True, generator=torch.Generator().manual_seed(0)), model)

    pooled = lt_plugin.lottery_pool(experiment.create_model(10, seed=3), tickets, 2, evaluate=evaluate,
                                    recalibrate=recalibrate, alphas=[0.3, 0.6], acceptance="paired")
    assert pooled.accepted == strategy["accepted"] and pooled.val_accuracy == strategy["pooled_val_accuracy"]
    assert pooled.sweeps == strategy["sweeps"]  # the scores, and the images gained and lost with their p-value
    kept = load_weights(tmp_path / "pools" / "level_2" / "weights.safetensors")
    for name, value in kept.items():
        torch.testing.assert_close(pooled.state[name].float(), value.float(), rtol=0, atol=1e-6)
    assert pooled.mask.density == strategy["density"]


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_a_pruners_saved_level_ships_with_lt_plugin_export(tmp_path, granularity):
    model = timm.create_model("test_resnet", num_classes=10)
    example = torch.zeros(1, 3, 16, 16)
    pruner = IMPPruner(model, example, pruning_ratio=0.5, iterative_steps=2, granularity=granularity)
    trainee = pruner.step()
    pruner.save_level(tmp_path / "run", trainee, metrics={"test_accuracy": 0.5})
    out = tmp_path / "ticket.safetensors"
    assert cli_main(["export", "--run", str(tmp_path / "run"), "--level", "1", "--out", str(out)]) == 0
    shipped = load_ticket(out).model
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(shipped(x), pruner.export(trainee).eval()(x), rtol=1e-5, atol=1e-5)


def test_the_imp_pruner_prunes_rewinds_and_keeps_its_mask_in_torch_prunings_words():
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    example = torch.zeros(1, 3, 16, 16)
    pruner = IMPPruner(model, example, pruning_ratio=0.75, iterative_steps=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # "trained" weights
    total = sum(model.get_parameter(n).numel() for n in pruner.mask.prunable)
    assert pruner.step() is model
    assert pruner.mask.density == pytest.approx(level_density(1, 2, total, target_density=0.25), abs=1e-4) \
        == pytest.approx(0.5, abs=1e-4)
    for name, keep in pruner.mask.tensors.items():  # the survivors are theta_0's, the rest zero
        assert torch.equal(model.state_dict()[name], theta_0[name] * keep)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.mask_after_steps(optimizer)
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert all(torch.all(model.state_dict()[n][~keep] == 0) for n, keep in pruner.mask.tensors.items())
    first = pruner.mask
    pruner.rewind_point()  # late rewinding: the current weights become the point to return to
    late = {k: v.clone() for k, v in model.state_dict().items()}
    pruner.step()
    assert pruner.mask.density == pytest.approx(0.25, abs=1e-4)
    assert all(torch.all(first.tensors[n] | ~pruner.mask.tensors[n]) for n in first.prunable)  # nothing revived
    assert all(torch.equal(model.state_dict()[n], late[n] * pruner.mask.tensors[n]) for n in pruner.mask.prunable)
    assert pruner.pruning_history() == [] and [s["step"] for s in pruner.levels()] == [1, 2]
    with pytest.raises(lt_plugin.UserError, match="iterative steps"):
        pruner.step()


def test_a_channel_pruner_hands_out_the_small_model_and_its_torch_pruning_history():
    model = timm.create_model("test_resnet", num_classes=10)
    example = torch.zeros(1, 3, 16, 16)
    pruner = IMPPruner(model, example, pruning_ratio=0.5, granularity="channel")
    small = pruner.step()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    history = pruner.pruning_history()
    assert history and history == [list(entry) for entry in pruner.mask.plan]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), model.eval()(x), rtol=1e-4, atol=1e-4)  # BatchNorm: equal


def test_the_early_bird_pruner_emerges_when_its_masks_stop_moving_and_prunes_physically():
    model = timm.create_model("test_resnet", num_classes=10)
    pruner = EarlyBirdPruner(model, torch.zeros(1, 3, 16, 16), pruning_ratio=0.5, window=3, epsilon=0.0)
    with pytest.raises(lt_plugin.UserError, match="not emerged"):
        pruner.step()
    assert pruner.update(1) is False  # two masks of the same weights: the window (3) is not full yet
    assert pruner.update(2) is True and pruner.found_at == 2
    small = pruner.step()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert pruner.score == "bn-scale"
    vit = timm.create_model("test_vit", num_classes=10, img_size=16, patch_size=4)
    assert EarlyBirdPruner(vit, torch.zeros(1, 3, 16, 16)).score == "magnitude"  # LayerNorm: no gamma to rank
