"""Strategy registry: built-ins, the decorator, and a third-party strategy found through an installed entry point."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import lt_plugin
from lt_plugin import UserError
from lt_plugin.cli import main as cli_main
from lt_plugin.experiment import Experiment
from lt_plugin.masks import prunable_weight_names, resolve_ignored
from lt_plugin.store import load_weights


def test_builtin_imp_is_registered_and_created_with_hparams():
    assert "imp" in lt_plugin.list_strategies()
    imp = lt_plugin.create_strategy("imp", levels=2, granularity="channel", epochs=1)
    assert (imp.levels, imp.granularity, imp.epochs) == (2, "channel", 1)
    with pytest.raises(UserError, match="unknown strategy 'nope'"):
        lt_plugin.create_strategy("nope")
    with pytest.raises(UserError, match="--rewind"):
        lt_plugin.create_strategy("imp", rewind="sometimes")


def test_register_strategy_decorator():
    import dataclasses

    @lt_plugin.register_strategy("test-decorated")
    @dataclasses.dataclass
    class Decorated(lt_plugin.Strategy):
        description = "for the registry test"
        amount: int = 1

        def run(self, out_dir):
            return [{"amount": self.amount}]

    assert "test-decorated" in lt_plugin.list_strategies()
    assert lt_plugin.create_strategy("test-decorated", amount=3).run(None) == [{"amount": 3}]
    with pytest.raises(TypeError):
        lt_plugin.register_strategy("not-a-strategy")(object)


def test_installed_distribution_adds_a_strategy_through_its_entry_point(tmp_path):
    # A real installed distribution: a package plus its .dist-info with entry_points.txt on sys.path, which is
    # what pip leaves behind; importlib.metadata discovers it, nothing is patched.
    package = tmp_path / "plugin_demo"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        import dataclasses
        import lt_plugin

        @dataclasses.dataclass
        class Shout(lt_plugin.Strategy):
            description = "a strategy from another distribution"
            times: int = 2

            def run(self, out_dir):
                return [{"shout": "ticket! " * self.times}]
    '''))
    dist_info = tmp_path / "plugin_demo-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-demo\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[lt_plugin.strategies]\nshout = plugin_demo:Shout\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    # The listing reads the entry point's metadata (its distribution and object) without importing it; the
    # command's own --help imports it and gives its description.
    listed = subprocess.run([sys.executable, "-m", "lt_plugin.cli", "strategies"], env=env,
                            capture_output=True, text=True, check=True).stdout
    rows = {line.split()[0]: line for line in listed.splitlines()}
    assert "plugin-demo 0.1: plugin_demo:Shout" in rows["shout"]
    assert "iterative magnitude pruning" in rows["imp"]
    helped = subprocess.run([sys.executable, "-m", "lt_plugin.cli", "shout", "--help"], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert "a strategy from another distribution" in helped and "--times" in helped
    created = subprocess.run(
        [sys.executable, "-c", "import lt_plugin; print(lt_plugin.create_strategy('shout', times=3).run(None))"],
        env=env, capture_output=True, text=True, check=True).stdout
    assert "ticket! ticket! ticket!" in created
    without = subprocess.run([sys.executable, "-m", "lt_plugin.cli", "strategies"],
                             capture_output=True, text=True, check=True).stdout
    assert "shout" not in without


def test_custom_strategy_example_runs(tmp_path):
    example = os.path.join(os.path.dirname(__file__), "..", "examples", "custom_strategy.py")
    proc = subprocess.run([sys.executable, example, "--out", str(tmp_path / "run"), "--model", "test_resnet",
                           "--image-size", "16", "--max-train-samples", "256", "--batch-size", "32", "--epochs", "2",
                           "--density", "0.3"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    result = json.loads((run / "results.json").read_text())[0]
    hparams = json.loads((run / "config.json").read_text())["hparams"]
    experiment = Experiment(**{key: hparams[key] for key in ("model", "dataset", "image_size", "max_train_samples")})
    model = experiment.create_model(10, seed=0)
    weights = load_weights(run / "level_0" / "weights.safetensors")
    prunable = prunable_weight_names(model, resolve_ignored(model))
    total = sum(weights[name].numel() for name in prunable)
    assert sum(int(weights[name].count_nonzero()) for name in prunable) == round(0.3 * total)  # the pruned are zero
    assert result["density"] == round(0.3 * total) / total
    # the test accuracy, by hand: the ticket's weights on the run's test split
    test = experiment.load_data().test
    model.load_state_dict(weights)
    model.eval()
    with torch.no_grad():
        correct = int((model(test.images).argmax(1) == test.labels).sum())
    assert result["test_accuracy"] == pytest.approx(correct / len(test))


def test_a_branch_a_user_registers_runs_through_the_command(tmp_path, capsys):
    import dataclasses

    from lt_plugin import commands
    from lt_plugin.store import atomic_write_json

    @lt_plugin.register_branch("layer-densities")
    @dataclasses.dataclass
    class LayerDensities(lt_plugin.Branch):
        description = "each ticket's density per layer, as JSON"

        def run_branch(self, source, out):
            rows = [{"ticket": key, **source.mask(key).layer_densities()} for key in source.keys()]
            atomic_write_json(rows, out / "layer_densities.json")
            return rows

    try:
        run = tmp_path / "run"
        lt_plugin.create_strategy("imp", model="test_resnet", image_size=8, max_train_samples=128, batch_size=32,
                                  epochs=1, levels=1).run(run)
        assert "layer-densities" in lt_plugin.list_branches()
        assert cli_main(["layer-densities", "--run", str(run)]) == 0
        rows = json.loads((run / "layer-densities" / "layer_densities.json").read_text())
        assert [r["ticket"] for r in rows] == ["0", "1"] and set(rows[0].values()) == {"0", 1.0}
        assert cli_main(["layer-densities", "--run", str(tmp_path / "nothing")]) == 2
        assert "not a run folder" in capsys.readouterr().err
        with pytest.raises(ValueError, match="already the name of a strategy"):
            lt_plugin.register_branch("imp")(LayerDensities)
    finally:
        commands.branches.classes.pop("layer-densities", None)
