"""The baselines a ticket is judged against, end to end: pruning at initialisation and gradual magnitude pruning as
run folders of IMP's form, their masks against independent computations, the layer-shuffle control on them, the
own-loop GradualPruner on the cubic schedule, and kill -9 resumption."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import timm
import torch.nn.functional as F
from torch import nn

import lt_plugin
from lt_plugin import Mask
from lt_plugin.layout import RunLayout
from lt_plugin.pai import gradual_density
from lt_plugin.store import load_weights

REPO = Path(__file__).resolve().parents[1]
TINY = dict(model="test_resnet", dataset="digits", image_size=16, max_train_samples=256, batch_size=32, epochs=2,
            lr=0.05)
TINY_FLAGS = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples", "256",
              "--batch-size", "32", "--epochs", "2", "--lr", "0.05", "--levels", "2", "--prune-fraction", "0.5"]


def _kept(mask: Mask) -> int:
    return sum(int(mask.tensors[n].sum()) for n in mask.prunable)


def _total(mask: Mask) -> int:
    return sum(mask.tensors[n].numel() for n in mask.prunable)


@pytest.fixture(scope="module")
def snip_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("snip") / "run"
    strategy = lt_plugin.create_strategy("prune-at-init", criterion="snip", levels=2, prune_fraction=0.5, **TINY)
    return out, strategy, strategy.run(out)


def test_prune_at_init_levels_are_the_criterions_masks_at_imps_densities(snip_run):
    out, strategy, results = snip_run
    layout = RunLayout(out)
    assert [r["level"] for r in results] == [0, 1, 2] and {r["criterion"] for r in results} == {"snip"}
    init = load_weights(layout.init)
    model = strategy.create_model(10, seed=0)
    model.load_state_dict(init)
    classifier = {f"{n}.weight" for n, m in model.named_modules() if m is model.get_classifier()}
    data = strategy.load_data()
    # The scored images: 10 per class drawn with the seed, one batch of Synaptic-Flow's 256.
    run = SimpleNamespace(data=data, accelerator=SimpleNamespace(device=torch.device("cpu")))
    batches = strategy.score_batches(run)
    assert [len(t) for _, t in batches] == [100]
    for level in (1, 2):
        mask = Mask.load(layout.level(level).mask)
        assert not classifier & set(mask.prunable)
        assert _kept(mask) == round(strategy.level_density(level, _total(mask)) * _total(mask))  # exact count
        # The same mask by the public function on theta_0, computed again.
        again = lt_plugin.prune_at_init(model, batches, "snip", results[level]["density"], prunable=mask.prunable)
        assert all(torch.equal(mask.tensors[n], again.tensors[n]) for n in mask.prunable)
        # The level trains from theta_0 under its mask.
        start = load_weights(layout.level(level).train.step(0))
        name = mask.prunable[0]
        assert torch.equal(start[name], init[name] * mask.tensors[name])
    assert Mask.load(layout.level(1).mask).distance(Mask.load(layout.level(2).mask)) > 0


def test_each_ticket_folder_has_its_sparsity_layer_by_layer(snip_run):
    out, _, results = snip_run
    for level in range(3):
        ticket = RunLayout(out).level(level)
        mask, report = Mask.load(ticket.mask), json.loads(ticket.sparsity.read_text())
        weights = load_weights(ticket.weights)
        assert [row["layer"] + ".weight" for row in report["layers"]] == mask.prunable
        for row in report["layers"]:
            keep, weight = mask.tensors[row["layer"] + ".weight"], weights[row["layer"] + ".weight"]
            assert row["shape"] == list(keep.shape) and row["kept"] == int(keep.sum())
            assert row["nonzero"] == int(weight.count_nonzero())
        assert report["density"] == results[level]["density"]


def test_a_shuffled_control_of_a_snip_run_keeps_its_per_layer_counts(snip_run, tmp_path):
    out, _, _ = snip_run
    lt_plugin.create_branch("random-mask", run_dir=str(out), targets=[2]).run(tmp_path / "shuffled")
    lt_plugin.create_branch("random-reinit", run_dir=str(out), targets=[2]).run(tmp_path / "reinit")
    ticket = Mask.load(RunLayout(out).level(2).mask)
    shuffled = Mask.load(RunLayout(tmp_path / "shuffled").level(2).mask)
    reinit = Mask.load(RunLayout(tmp_path / "reinit").level(2).mask)
    assert {n: int(t.sum()) for n, t in shuffled.tensors.items()} == {n: int(t.sum()) for n, t in ticket.tensors.items()}
    partial = [n for n, t in ticket.tensors.items() if 0 < int(t.sum()) < t.numel()]
    assert partial and all(not torch.equal(shuffled.tensors[n], ticket.tensors[n]) for n in partial)  # redrawn
    assert all(torch.equal(reinit.tensors[n], ticket.tensors[n]) for n in ticket.tensors)


@pytest.mark.parametrize("criterion", ["snip", "random"])
def test_channel_tickets_at_init_go_through_torch_prunings_groups(tmp_path, criterion):
    settings = dict(TINY, epochs=1)
    strategy = lt_plugin.create_strategy("prune-at-init", criterion=criterion, granularity="channel", levels=1,
                                         target_density=0.5, **settings)
    results = strategy.run(tmp_path / "run")
    mask = Mask.load(RunLayout(tmp_path / "run").level(1).mask)
    assert mask.granularity == "channel" and mask.plan  # the groups it removes, which export replays
    assert results[1]["macs"] < results[0]["macs"]  # trained physically small
    assert abs(mask.density - 0.5) < 0.1  # the nearest density the groups reach


@pytest.mark.parametrize("criterion,granularity,flags,message", [
    ("synflow", "channel", [], "--criterion synflow scores single weights"),
    ("snip", "weight", ["--importance", "lamp"], "--importance is IMP's ranking of channels"),
    ("snip", "weight", ["--score-samples", "0"], "--score-samples must be 1 or more"),
])
def test_prune_at_init_refuses_in_one_line(tmp_path, criterion, granularity, flags, message):
    proc = subprocess.run([sys.executable, "-m", "lt_plugin.cli", "prune-at-init", "--criterion", criterion,
                           "--granularity", granularity, *flags, "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_gradual_reaches_each_levels_density_exactly_on_the_schedule(tmp_path):
    out = tmp_path / "gmp"
    # 8 steps per epoch, 16 in all: the schedule runs from step 4 (25%) to 12 (75%), pruning every 2 steps.
    strategy = lt_plugin.create_strategy("gradual", levels=2, prune_fraction=0.5, frequency=2, **TINY)
    results = strategy.run(out)
    layout = RunLayout(out)
    init = load_weights(layout.init)
    assert strategy.scope == "layerwise"  # Zhu & Gupta's rule is the default of gradual alone
    for level in (1, 2):
        mask = Mask.load(layout.level(level).mask)
        assert results[level]["prune_start_step"] == 4 and results[level]["prune_end_step"] == 12
        density = strategy.level_density(level, _total(mask))
        for name in mask.prunable:  # every layer to the level's density, by hand
            assert int(mask.tensors[name].sum()) == round(density * mask.tensors[name].numel()), (level, name)
        assert results[level]["density"] == _kept(mask) / _total(mask)
        trained = load_weights(layout.level(level).weights)
        assert all(not trained[n][~mask.tensors[n]].any() for n in mask.prunable)  # held at zero
        assert not layout.level(level).train.pruned_masks()                       # the step masks cleaned up
    assert results[0]["density"] == 1.0 and "prune_start_step" not in results[0]
    model = strategy.create_model(10, seed=0)  # every level starts from the run's theta_0
    assert all(torch.equal(init[n], t) for n, t in model.state_dict().items())
    for control in ("random-reinit", "random-mask"):  # they would change the training too: refused, nothing written
        proc = subprocess.run([sys.executable, "-m", "lt_plugin.cli", control, "--run", str(out)],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "would change their training too" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (out / "controls").exists()

    # A folder made when global ranking was the default (and before --schedule) keeps its meaning on a rerun.
    config = json.loads(layout.config.read_text())
    config["hparams"]["scope"] = "global"
    del config["hparams"]["schedule"]
    layout.config.write_text(json.dumps(config))
    options = dict(levels=2, prune_fraction=0.5, frequency=2, **TINY)
    with pytest.raises(lt_plugin.RunFolderError, match="was made with scope='global', not 'layerwise'"):
        lt_plugin.create_strategy("gradual", **options).run(out)
    with pytest.raises(lt_plugin.RunFolderError, match="was made with schedule='cubic', not 'linear'"):
        lt_plugin.create_strategy("gradual", scope="global", schedule="linear", **options).run(out)
    assert lt_plugin.create_strategy("gradual", scope="global", **options).run(out) == results  # read back


def test_gradual_refuses_a_schedule_that_does_not_fit(tmp_path):
    for flags, message in [(["--frequency", "100"], "no room for one pruning every --frequency 100 steps"),
                           (["--end", "3ep"], "past the end of training"),
                           (["--granularity", "channel"], "gradual prunes single weights"),
                           (["--start", "later"], "--start is <N>it, <N>ep or a fraction")]:
        proc = subprocess.run([sys.executable, "-m", "lt_plugin.cli", "gradual", *TINY_FLAGS, *flags,
                               "--out", str(tmp_path / "x")], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, (flags, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_gradual_pruner_follows_the_cubic_schedule_in_an_own_loop():
    torch.manual_seed(0)
    model = timm.create_model("lenet_300_100", num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = lt_plugin.GradualPruner(nn.DataParallel(model), pruning_ratio=0.8, start=2, end=14, frequency=3)
    # the classifier is found and left alone through the wrapper
    assert pruner.mask.prunable == ["fc_layers.0.weight", "fc_layers.1.weight"]
    sizes, previous = {"fc_layers.0.weight": 784 * 300, "fc_layers.1.weight": 300 * 100}, None
    for step in range(1, 19):
        inputs, targets = torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,))
        F.cross_entropy(model(inputs), targets).backward()
        pruner.regularize(model)  # a no-op, as in Torch-Pruning's loop
        optimizer.step()
        optimizer.zero_grad()
        pruned = pruner.step()
        assert pruned == (step in (5, 8, 11, 14))
        t = 2 + (min(step, 14) - 2) // 3 * 3  # the last pruning step so far
        expected = 1.0 if step < 5 else 0.2 + 0.8 * (1 - (t - 2) / 12) ** 3
        assert expected == pytest.approx(gradual_density(step, 2, 14, 3, 0.2))  # the formula, by hand
        for name, size in sizes.items():  # Zhu & Gupta's rule: every layer to the schedule's density
            assert int(pruner.mask.tensors[name].sum()) == round(expected * size), (step, name)
        weights = dict(model.named_parameters())
        assert all(not weights[n][~pruner.mask.tensors[n]].any() for n in pruner.mask.prunable)
        if previous is not None:  # nothing pruned grows back
            assert all(not (pruner.mask.tensors[n] & ~previous[n]).any() for n in previous)
        previous = {n: t.clone() for n, t in pruner.mask.tensors.items()}
    assert pruner.mask.density == pytest.approx(0.2, abs=1 / sum(sizes.values()))
    state = pruner.state_dict()
    other = lt_plugin.GradualPruner(model, pruning_ratio=0.8, start=2, end=14, frequency=3)
    other.load_state_dict(state)
    assert other.current_step == 18 and all(torch.equal(other.mask.tensors[n], state["mask"][n]) for n in state["mask"])
    ranked_globally = lt_plugin.GradualPruner(timm.create_model("lenet_300_100", num_classes=3), pruning_ratio=0.8,
                                              start=0, end=3, frequency=3, global_pruning=True)
    for _ in range(3):
        ranked_globally.step()
    kept = {n: int(t.sum()) for n, t in ranked_globally.mask.tensors.items()}
    assert sum(kept.values()) == round(0.2 * sum(sizes.values())) and kept != {n: round(0.2 * size)
                                                                               for n, size in sizes.items()}


@pytest.mark.slow
@pytest.mark.parametrize("command", [["prune-at-init", "--criterion", "synflow", "--iterations", "5"],
                                     ["gradual", "--frequency", "2"]])
def test_a_baseline_killed_mid_level_resumes_to_identical_results(tmp_path, kill_when, command):
    cli = [sys.executable, "-m", "lt_plugin.cli", *command, *TINY_FLAGS]
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    kill_when([*cli, "--out", str(killed)], killed / "level_1" / "train" / "checkpoint.safetensors")  # its 1st epoch
    subprocess.run([*cli, "--out", str(killed)], check=True, capture_output=True)
    subprocess.run([*cli, "--out", str(straight)], check=True, capture_output=True)
    for level in range(3):
        a = load_weights(RunLayout(killed).level(level).weights)
        b = load_weights(RunLayout(straight).level(level).weights)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), level
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("train_seconds", "latency_ms")} for r in rs]  # noqa: E731
    assert strip(json.loads((killed / "results.json").read_text())) == \
        strip(json.loads((straight / "results.json").read_text()))


def test_the_own_loop_gradual_example_trains_the_network_of_lt_plugin_gradual(tmp_path):
    small = ["--model", "test_resnet", "--image-size", "16", "--epochs", "2", "--frequency", "3"]
    done = subprocess.run([sys.executable, str(REPO / "examples" / "own_loop_gradual.py"), *small, "--pruning-ratio",
                           "0.75", "--out", str(tmp_path / "own")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "final: density 0.2500" in done.stdout
    cli = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "lt_plugin.cli", "gradual", *small, "--dataset", "digits", "--levels", "1",
                    "--target-density", "0.25", "--out", str(cli)], check=True, capture_output=True)
    for file in ("mask.safetensors", "weights.safetensors"):
        a, b = load_weights(tmp_path / "own" / file), load_weights(RunLayout(cli).level(1).root / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
