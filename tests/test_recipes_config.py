"""Recipes and --config: one layering of defaults under the command line (recipe < config file < flags given), the
resolved values in config.json, and a finished run repeated from its own config.json with one change."""

import json

import pytest
import torch
from torch import nn

import lt_plugin
from lt_plugin.cli import _strategy_values, build_parser, main as cli_main
from lt_plugin.recipes import RECIPES, recipe_options
from lt_plugin.store import load_weights
from lt_plugin.train.config import create_optimizer, create_scheduler, train_config_of

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
    assert imp.decay_milestones == (0.5, 136 / 182)
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


# What each recipe's paper trains with, read from its reference code (open_lth, Early-Bird, Lottery Pools: plain
# torch.optim.SGD(momentum=0.9); LTH's own networks: Adam), and the words its source says it in.
PAPER_OPTIMIZERS = {
    "demo": (torch.optim.SGD, False, "plain momentum 0.9"),
    "lth-lenet": (torch.optim.Adam, None, "Adam 1.2e-3"),
    "lth-conv2": (torch.optim.Adam, None, "Adam 0.0002"),
    "lth-conv4": (torch.optim.Adam, None, "Adam 0.0003"),
    "lth-conv6": (torch.optim.Adam, None, "Adam 0.0003"),
    "lth-cifar": (torch.optim.SGD, False, "plain momentum 0.9"),
    "lth-vgg-cifar": (torch.optim.SGD, False, "plain momentum 0.9"),
    "eb-cifar": (torch.optim.SGD, False, "plain momentum 0.9"),
    "lottery-pools-cifar": (torch.optim.SGD, False, "plain momentum 0.9"),
}


def test_each_recipe_builds_the_optimizer_its_source_names():
    assert set(PAPER_OPTIMIZERS) == set(RECIPES)
    imp_class = lt_plugin.get_strategy_class("imp")
    for name, (kind, nesterov, words) in PAPER_OPTIMIZERS.items():
        optimizer = create_optimizer(nn.Linear(2, 2), train_config_of(imp_class(**recipe_options(name, imp_class))))
        assert type(optimizer) is kind, name
        assert optimizer.defaults.get("nesterov") is nesterov, name  # timm's "sgd" would be Nesterov's
        if kind is torch.optim.SGD:
            assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["dampening"] == 0, name
        assert words in RECIPES[name]["source"], name


def test_the_learning_rate_decays_at_the_papers_update():
    """open_lth and the Early-Bird and Lottery Pools code decay x0.1 from update (milestone epoch x updates per
    epoch) on: lottery-pools-cifar's epochs 91 and 136 of 182, 351 updates per epoch."""
    cfg = train_config_of(lt_plugin.create_strategy("imp", recipe="lottery-pools-cifar"))
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = create_scheduler(optimizer, cfg, 351)
    expected = {0: 0.1, 91 * 351 - 1: 0.1, 91 * 351: 0.01, 136 * 351 - 1: 0.01, 136 * 351: 0.001}
    for step, lr in expected.items():
        scheduler.step_update(num_updates=step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-12), step


def test_config_json_records_the_optimizer_and_a_rerun_that_builds_another_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["imp", "--levels", "0", "--epochs", "1", "--batch-size", "64", *SMALL, "--out", str(run)]
    assert cli_main([*argv, "--opt", "sgd"]) == 0
    assert json.loads((run / "config.json").read_text())["optimizer"] == {"class": "torch.optim.sgd.SGD",
                                                                          "nesterov": True}
    capsys.readouterr()
    # a folder made with timm's sgd (Nesterov's) is not resumed with the paper's plain momentum
    assert_one_line_error([*argv, "--opt", "momentum"], "was made with opt='sgd', not 'momentum'", capsys)
    # nor by options whose name stayed but whose optimizer changed (what a library update could do)
    config = json.loads((run / "config.json").read_text())
    config["optimizer"]["nesterov"] = False
    (run / "config.json").write_text(json.dumps(config))
    assert_one_line_error([*argv, "--opt", "sgd"], "was made with the optimizer", capsys)
