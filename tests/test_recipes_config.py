"""Recipes and --config: one layering of defaults under the command line (recipe < config file < flags given), the
resolved values in config.json, and a finished run repeated from its own config.json with one change."""

import json

import pytest

import lt_plugin
from lt_plugin.cli import _strategy_values, build_parser, main as cli_main
from lt_plugin.recipes import RECIPES, recipe_options
from lt_plugin.store import load_weights

SMALL = ["--model", "test_resnet", "--image-size", "16", "--max-train-samples", "256"]


def options(*argv):
    """The hyperparameters `lt-plugin imp ARGV` would build its strategy with."""
    args = build_parser("imp").parse_args(["imp", "--out", "unused", *argv])
    return _strategy_values(args.command_class, args)


def assert_one_line_error(argv, message, capsys, out=None):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert out is None or not out.exists()  # nothing written


def test_a_recipe_fills_the_defaults_and_flags_given_win_even_at_default_values():
    values = options("--recipe", "lth-cifar", "--epochs", "2", "--augment", "none")
    assert values["recipe"] == "lth-cifar" and values["epochs"] == 2 and values["augment"] == "none"
    assert (values["lr"], values["batch_size"], values["sched"], values["decay_milestones"]) == \
        (0.1, 128, "multistep", (0.5, 0.75))
    assert options()["augment"] == "none" and options()["batch_size"] == 128  # no recipe: the dataclass defaults
    eb = options("--recipe", "eb-cifar")
    assert eb["batch_size"] == 256 and "penalty" not in eb  # imp has no penalty: the recipe's is skipped


def test_recipes_apply_to_the_python_api_with_keyword_arguments_winning():
    imp = lt_plugin.create_strategy("imp", recipe="lottery-pools-cifar", epochs=20, rewind="2ep")
    assert (imp.epochs, imp.rewind, imp.levels, imp.batch_size, imp.val_fraction) == (20, "2ep", 18, 128, 0.1)
    assert imp.decay_milestones == (0.5, 0.7473)
    with pytest.raises(lt_plugin.UserError, match="unknown recipe 'cifar'"):
        lt_plugin.create_strategy("imp", recipe="cifar")


def test_every_recipe_cites_a_source_and_sets_options_a_strategy_has(capsys):
    known = set()
    for name in lt_plugin.list_strategies():
        known |= {f for f in lt_plugin.get_strategy_class(name).__dataclass_fields__}
    imp_class = lt_plugin.get_strategy_class("imp")
    for name, recipe in RECIPES.items():
        assert set(recipe["options"]) <= known, name
        imp_class(**recipe_options(name, imp_class))  # the values are valid (IMP checks its options)
    assert cli_main(["recipes"]) == 0
    listing = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        assert f"{name}\n  source: {recipe['source']}" in listing
    for paper in ("arXiv:1803.03635", "arXiv:1909.11957", "arXiv:2208.10842"):
        assert paper in listing


def test_a_config_file_sits_between_the_recipe_and_the_flags(tmp_path):
    config = tmp_path / "options.yaml"
    # YAML reads 1e-4 as a string: it is read as the command line would; hyphenated names are accepted
    config.write_text("recipe: lth-cifar\nlr: 0.05\nweight_decay: 1e-4\ndecay-milestones: [0.6]\naugment: crop\n")
    values = options("--config", str(config), "--augment", "crop-flip")
    assert (values["lr"], values["weight_decay"], values["decay_milestones"]) == (0.05, 1e-4, (0.6,))
    assert values["augment"] == "crop-flip" and values["batch_size"] == 128 and values["recipe"] == "lth-cifar"
    json_config = tmp_path / "options.json"
    json_config.write_text(json.dumps({"epochs": 7, "model_kwargs": {"drop_rate": 0.1}}))
    assert options("--config", str(json_config))["model_kwargs"] == {"drop_rate": 0.1}
    assert options("--config", str(json_config), "--recipe", "demo")["epochs"] == 7  # the file wins over a recipe


@pytest.mark.parametrize("content, message", [
    ("epoch: 3\n", "imp has no option 'epoch'"),
    ("epochs: three\n", "epochs must be int, not 'three'"),
    ("augment: sideways\n", "augment must be one of none, crop-flip, crop, imagenet"),
    ("decay_milestones: 0.5\n", "decay_milestones must be a list"),
    ("- epochs\n", "must hold option names and their values"),
    ("epochs: [3\n", "not valid YAML"),
])
def test_config_file_mistakes_are_one_line_errors(tmp_path, capsys, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    assert_one_line_error(["imp", "--config", str(config), "--out", str(tmp_path / "run")], message, capsys,
                          tmp_path / "run")


def test_a_finished_run_is_repeated_from_its_config_json_with_one_change(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli_main(["imp", "--recipe", "lth-cifar", "--epochs", "2", "--levels", "1", *SMALL, "--out",
                     str(first)]) == 0
    recorded = json.loads((first / "config.json").read_text())["hparams"]
    assert recorded["recipe"] == "lth-cifar" and recorded["epochs"] == 2  # the override, and the recipe's values:
    assert (recorded["lr"], recorded["batch_size"], recorded["sched"], recorded["augment"]) == \
        (0.1, 128, "multistep", "crop-flip")

    assert cli_main(["imp", "--config", str(first / "config.json"), "--levels", "2", "--out", str(second)]) == 0
    repeated = json.loads((second / "config.json").read_text())["hparams"]
    assert {k: v for k, v in repeated.items() if recorded[k] != v} == {"levels": 2}
    for level in (0, 1):  # the same settings give the same tickets
        a = load_weights(first / f"level_{level}" / "weights.safetensors")
        b = load_weights(second / f"level_{level}" / "weights.safetensors")
        assert all(a[k].equal(b[k]) for k in a)
    assert (second / "level_2" / "result.json").exists()

    capsys.readouterr()
    other = tmp_path / "eb.json"
    other.write_text(json.dumps({"strategy": "early-bird", "hparams": {"epochs": 1}, "world_size": 1}))
    assert_one_line_error(["imp", "--config", str(other), "--out", str(tmp_path / "x")],
                          "is the config of a 'early-bird' run, not 'imp'", capsys, tmp_path / "x")


def test_a_config_json_from_before_named_augmentations_is_accepted(tmp_path):
    old = tmp_path / "config.json"
    old.write_text(json.dumps({"strategy": "imp", "hparams": {"augment": True, "epochs": 2}, "versions": {}}))
    assert options("--config", str(old))["augment"] == "imagenet"
