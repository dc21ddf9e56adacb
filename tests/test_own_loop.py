"""The strategies as pieces for your own loop (lt_plugin.pruners, lt_plugin.pooling), each against an independent
path: the own-loop examples against the strategies they mirror, the Lottery Pools function on hand-loaded tickets
against the strategy, a pruner's saved level through `lt-plugin export`."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch_pruning as tp
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

import lt_plugin
from lt_plugin import Mask, load_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.experiment import Experiment
from lt_plugin.errors import LtPluginWarning
from lt_plugin.levels import level_density
from lt_plugin.early_bird_pruner import EarlyBirdPruner
from lt_plugin.pruners import IMPPruner
from lt_plugin.store import load_weights
from tiny_training import assert_same_weights_up_to_rounding

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
            if exact or file == "mask.safetensors":
                assert all(torch.equal(a[name], b[name]) for name in a), (level, file)
            else:
                assert_same_weights_up_to_rounding(a, b)
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
    (strategy,) = lt_plugin.create_branch("lottery-pools", run_dir=str(tmp_path / "imp"), targets=[2],
                                            alphas=[0.3, 0.6], protocol="reference",
                                            acceptance="paired").run(tmp_path / "pools")
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
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(LtPluginWarning, match="iterative steps: nothing is pruned"):  # as Torch-Pruning's step()
        assert pruner.step() is model
    assert pruner.current_step == 2 and all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_a_channel_pruner_prunes_the_model_in_place_and_gives_its_torch_pruning_history():
    model = timm.create_model("test_resnet", num_classes=10)
    dense = copy.deepcopy(model)
    example = torch.zeros(1, 3, 16, 16)
    pruner = IMPPruner(model, example, pruning_ratio=0.5, granularity="channel")
    assert pruner.step() is model
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
    history = pruner.pruning_history()
    assert history and history == [list(entry) for entry in pruner.mask.plan]
    replayed = copy.deepcopy(dense)  # Torch-Pruning's own replay of the history on the dense model
    tp.DependencyGraph().build_dependency(replayed, example_inputs=example).load_pruning_history(history)
    assert {k: v.shape for k, v in replayed.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # the zeroed channels of the dense model, removed: BatchNorm makes them equal
        torch.testing.assert_close(model.eval()(x), pruner.mask.apply(dense).eval()(x), rtol=1e-4, atol=1e-4)


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


# ---------------------------------------------------------------- driven as a Torch-Pruning user drives them

def _resnet(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=10)


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_a_wrapped_model_keeps_its_classifier(granularity):
    example = torch.zeros(1, 3, 16, 16)
    wrapped = nn.DataParallel(_resnet())
    pruner = IMPPruner(wrapped, example, pruning_ratio=0.5, granularity=granularity)
    handed = pruner.step()
    assert "fc.weight" not in pruner.mask.prunable and all(not n.startswith("module.") for n in pruner.mask.tensors)
    if granularity == "weight":
        assert handed is wrapped and bool(wrapped.module.fc.weight.ne(0).all())  # the classes are all there
    else:  # pruned in place: the module inside, to be wrapped again (its parameters are new)
        assert handed is wrapped.module and handed.fc.out_features == 10
    mask = lt_plugin.create_mask(nn.DataParallel(_resnet()), example, 0.5, "channel")
    assert lt_plugin.export(nn.DataParallel(_resnet()), mask, example).fc.out_features == 10
    compiled = torch.compile(_resnet())  # torch.compile's wrapper: its _orig_mod is pruned
    assert "fc.weight" not in IMPPruner(compiled, example, pruning_ratio=0.5).mask.prunable


def test_a_channel_step_prunes_the_users_model_in_place_and_reads_its_training_back():
    """Torch-Pruning's habit: `pruner.step()` with its return ignored, then training `model`. The model is the
    ticket, physically pruned in place; the next level's channels come from its trained weights, as `create_mask`
    chooses them on a dense copy holding those weights (the independent reference)."""
    example = torch.zeros(1, 3, 16, 16)
    model = _resnet()
    pruner = IMPPruner(model, example, pruning_ratio=0.75, iterative_steps=2, granularity="channel")
    dense_parameters = sum(p.numel() for p in model.parameters())
    first_layer = model.conv1[0]
    pruner.step()  # the return ignored
    assert model.conv1[0] is first_layer and sum(p.numel() for p in model.parameters()) < dense_parameters
    assert first_layer.out_channels == int(pruner.mask.tensors["conv1.0.weight"].flatten(1).any(dim=1).sum())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # the model is the ticket the pruner exports: theta_0's survivors
        torch.testing.assert_close(model.eval()(x), pruner.export().eval()(x), rtol=0, atol=0)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():  # the level's training, on `model`
            p.mul_(torch.rand_like(p) * 2)
    trained = pruner.mask.to_dense(model.state_dict(), _resnet().state_dict())
    reference = _resnet()
    reference.load_state_dict(trained)
    expected = lt_plugin.create_mask(reference, example, pruner.density(2), "channel", previous=pruner.mask)
    pruner.step()
    assert pruner.mask.plan == expected.plan and pruner.mask.distance(expected) == 0.0
    assert [h["step"] for h in pruner.levels()] == [1, 2]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in pruner.export().parameters())


def test_weights_that_regrew_are_reported_and_zeroed_at_step_and_save_level(tmp_path):
    model = _resnet()
    pruner = IMPPruner(model, torch.zeros(1, 3, 16, 16), pruning_ratio=0.75, iterative_steps=2)
    pruner.step()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)  # no mask_after_steps: forgotten
    nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert pruner.mask.regrown(model) > 0
    with pytest.warns(LtPluginWarning, match="not zero: the mask was not kept during training"):
        pruner.save_level(tmp_path / "run", model_name="test_resnet")
    saved = load_weights(tmp_path / "run" / "level_1" / "weights.safetensors")
    assert all(not saved[n][~keep].any() for n, keep in pruner.mask.tensors.items())
    optimizer.step()
    with pytest.warns(LtPluginWarning, match="not zero"):
        pruner.step()
    assert pruner.mask.regrown(model) == 0


def test_mask_after_steps_holds_on_an_accelerate_prepared_optimizer(fresh_accelerate_state):
    from accelerate import Accelerator
    model = _resnet()
    pruner = IMPPruner(model, torch.zeros(1, 3, 16, 16), pruning_ratio=0.5)
    pruner.step()
    accelerator = Accelerator(cpu=True)
    prepared, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    handle = pruner.mask_after_steps(optimizer)
    for _ in range(2):
        accelerator.backward(nn.functional.cross_entropy(prepared(torch.randn(4, 3, 16, 16)),
                                                         torch.tensor([0, 1, 2, 3])))
        optimizer.step()
        optimizer.zero_grad()
    assert pruner.mask.regrown(model) == 0
    handle.remove()


def test_a_generic_torch_pruning_loop_runs_both_pruners():
    example = torch.zeros(1, 3, 16, 16)
    for pruner in (IMPPruner(_resnet(), example, pruning_ratio=0.5, iterative_steps=2),
                   EarlyBirdPruner(_resnet(), example, pruning_ratio=0.5)):
        model = pruner.model
        for _ in range(2):  # Torch-Pruning's sparse-training loop, word for word
            loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
            loss.backward()
            pruner.regularize(model)
            pruner.update_regularizer()
            model.zero_grad()
    eb = EarlyBirdPruner(nn.DataParallel(_resnet()), example, pruning_ratio=0.5)
    nn.functional.cross_entropy(eb.model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    gamma = eb.model.bn1.weight
    before = gamma.grad.clone()
    eb.regularize(nn.DataParallel(eb.model), reg=1e-3)  # Torch-Pruning's BNScalePruner.regularize(model, reg=...)
    torch.testing.assert_close(gamma.grad, before + 1e-3 * torch.sign(gamma.detach()))


def test_options_that_mean_nothing_or_cannot_work_are_one_line():
    example = torch.zeros(1, 3, 16, 16)
    for options in (dict(importance="lamp"), dict(round_to=8)):
        with pytest.raises(lt_plugin.UserError, match="weight tickets rank"):
            IMPPruner(_resnet(), example, **options)
    with pytest.raises(lt_plugin.UserError, match="example_inputs are on cpu and the model on meta"):
        IMPPruner(_resnet().to("meta"), example, granularity="channel")
    with pytest.raises(lt_plugin.UserError, match="example_inputs are on cpu and the model on meta"):
        EarlyBirdPruner(_resnet().to("meta"), example)


def test_a_fresh_optimizer_and_masked_gradients_at_each_level():
    model = _resnet()
    pruner = IMPPruner(model, torch.zeros(1, 3, 16, 16), pruning_ratio=0.75, iterative_steps=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    assert optimizer.state  # the dense level's moments
    pruner.step(optimizer=optimizer)
    assert not optimizer.state  # IMP's fresh optimizer for the level
    optimizer.zero_grad()
    handle = pruner.mask_gradients()  # LAMB and LARS scale a layer's step by norms: dead weights must not count
    nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    for name, keep in pruner.mask.tensors.items():
        assert not model.get_parameter(name).grad[~keep].any(), name
    handle.remove()
    with pytest.raises(lt_plugin.UserError, match="build a new optimizer"):
        IMPPruner(_resnet(), torch.zeros(1, 3, 16, 16), granularity="channel").step(optimizer=optimizer)


def test_save_level_records_the_schedule_and_lottery_pools_keeps_each_layers_rate(tmp_path):
    model = timm.create_model("lenet_300_100", num_classes=10)
    example = torch.zeros(1, 1, 28, 28)
    pruner = IMPPruner(model, example, pruning_ratio=0.5, iterative_steps=2, pruning_ratio_dict={"fc": 0.19})
    run = tmp_path / "run"
    for level in range(3):
        if level:
            pruner.step()
            with torch.no_grad():  # a level's "training": the kept weights move, the classifier's grow large
                for name, keep in pruner.mask.tensors.items():
                    model.get_parameter(name).add_(torch.randn_like(keep, dtype=torch.float) * 0.05 * keep)
                model.fc.weight.mul_(10)
        pruner.save_level(run, model_name="lenet_300_100", metrics={"test_accuracy": 0.5})
    config = json.loads((run / "config.json").read_text())["hparams"]
    assert config["target_density"] == 0.5 and config["scope"] == "global"
    assert config["layer_prune_fractions"] == {"fc": pytest.approx(1 - 0.81 ** 0.5)}
    lt_plugin.create_branch("lottery-pools", run_dir=str(run), targets=[2], alphas=[0.5],
                            acceptance="paper").run(tmp_path / "pools")
    target, pooled = Mask.load(run / "level_2" / "mask.safetensors"), Mask.load(tmp_path / "pools" / "level_2" /
                                                                                "mask.safetensors")
    # the classifier, pruned at its own rate, keeps its own count; the global threshold keeps the others' total
    assert int(pooled.tensors["fc.weight"].sum()) == int(target.tensors["fc.weight"].sum())
    assert sum(int(t.sum()) for t in pooled.tensors.values()) == sum(int(t.sum()) for t in target.tensors.values())


def test_torch_prunings_own_loop_with_the_imp_pruner_dropped_in(tmp_path):
    out = _example("own_loop_torch_pruning.py", "--model", "test_resnet", "--image-size", 16, "--epochs", 1,
                   "--steps", 2, "--pruning-ratio", 0.75, "--out", tmp_path / "run", launcher=[sys.executable])
    assert "step 2: density 0.2500" in out
    for level in (1, 2):
        mask = Mask.load(tmp_path / "run" / f"level_{level}" / "mask.safetensors")
        weights = load_weights(tmp_path / "run" / f"level_{level}" / "weights.safetensors")
        assert all(not weights[n][~keep].any() for n, keep in mask.tensors.items())  # the mask held in training
    assert cli_main(["export", "--run", str(tmp_path / "run"), "--level", "2", "--out", str(tmp_path / "t.st")]) == 0


# ---------------------------------------------------------------- the model moves; regrowth while it trains

def test_the_masks_follow_a_model_that_moves():
    """`meta` stands in for a GPU: every parameter's data moves, the Parameter objects stay (what `.to()` does)."""
    model = _resnet()
    gradual = lt_plugin.GradualPruner(model, pruning_ratio=0.5, start=0, end=2, frequency=1)
    assert gradual.step() and gradual.step()  # pruned on the CPU, at steps 1 and 2
    kept = {n: t.clone() for n, t in gradual.mask.tensors.items()}
    model.to("meta")
    assert gradual.step() is False  # the zeros kept where the model now is (this crashed: a CPU mask, meta weights)
    assert next(model.parameters()).device.type == "meta"
    assert all(torch.equal(gradual.state_dict()["mask"][n], t) for n, t in kept.items())

    imp_model = _resnet()
    imp = IMPPruner(imp_model, torch.zeros(1, 3, 16, 16), pruning_ratio=0.5)
    imp.step()
    optimizer = torch.optim.SGD(imp_model.parameters(), lr=0.1)
    imp.mask_after_steps(optimizer)
    imp_model.to("meta")
    optimizer.step()  # the hook zeroes the pruned entries on the meta device
    assert next(imp_model.parameters()).device.type == "meta"


def _regrow(model, mask, where):
    """Make `where` {weight name: n} pruned entries nonzero, the first n of each tensor (by hand)."""
    with torch.no_grad():
        for name, count in where.items():
            pruned = (~mask.tensors[name]).reshape(-1).nonzero().reshape(-1)[:count]
            model.get_parameter(name).view(-1)[pruned] = 1.0


def test_regrowth_is_counted_layer_by_layer_while_it_trains(tmp_path):
    from lt_plugin.callbacks import RegrowthCheck
    from lt_plugin.train import TrainConfig, fit, make_accelerator

    model = _resnet()
    pruner = IMPPruner(model, torch.zeros(1, 3, 16, 16), pruning_ratio=0.5)
    pruner.step()
    check = RegrowthCheck(pruner.mask, every=3)
    _regrow(model, pruner.mask, {"layer1.0.conv1.weight": 5, "layer2.0.conv2.weight": 2})
    with pytest.warns(LtPluginWarning, match="step 3: 7 entries the mask prunes are not zero "
                                             r"\(layer1.0.conv1.weight 5, layer2.0.conv2.weight 2\)"):
        assert check.check(model, 3) == {"layer1.0.conv1.weight": 5, "layer2.0.conv2.weight": 2}
    pruner.apply_mask()
    assert check.check(model, 6) == {}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1)
    watch = pruner.watch_regrowth(optimizer, every=2)  # without mask_after_steps: the weights grow back
    with pytest.warns(LtPluginWarning, match="step 2: .* entries the mask prunes are not zero"):
        for _ in range(3):
            nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
            optimizer.step()
            optimizer.zero_grad()
    assert [step for step, _ in watch.check.found] == [2] and sum(watch.check.found[0][1].values()) > 0
    watch.remove()

    from tiny_training import image_data  # a fit with the check and without the mask kept: it warns as it goes
    fitted = _resnet()
    mask = lt_plugin.create_mask(fitted, torch.zeros(1, 3, 16, 16), 0.3, "weight")
    mask.apply(fitted)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.2)
    during = RegrowthCheck(mask, every=2)
    with pytest.warns(LtPluginWarning, match="entries the mask prunes are not zero"):
        fit(fitted, image_data(64, size=16), image_data(20, size=16, seed=1), cfg, tmp_path / "fit",
            accelerator=make_accelerator(cfg), callbacks=[during])
    assert [step for step, _ in during.found] == [2, 4]


def test_the_sparsity_report_counts_each_layer():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 4))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0, 0, :2] = 1.0      # 2 of 54 entries
        model[2].weight.fill_(1.0)
        model[2].weight[:, :3] = 0.0            # 36 of 48
    report = lt_plugin.sparsity_report(model)
    assert [(r["layer"], r["shape"], r["kept"], r["total"]) for r in report.rows] == [
        ("0", [3, 2, 3, 3], 2, 54), ("2", [4, 12], 36, 48)]
    assert report.rows[1]["density"] == 0.75 and report.density == 38 / 102
    text = str(report).splitlines()
    assert text[0].split() == ["layer", "shape", "kept", "total", "density"] and text[-1].split()[0] == "total"
    mask = Mask({"0.weight": model[0].weight != 0, "2.weight": torch.ones(4, 12, dtype=torch.bool)},
                ["0.weight", "2.weight"])
    with_mask = lt_plugin.sparsity_report(model.state_dict(), mask)  # what the mask keeps, and what is nonzero
    assert [(r["kept"], r["nonzero"]) for r in with_mask.rows] == [(2, 2), (48, 36)]
