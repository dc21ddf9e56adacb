"""Sparse Model Soups: soups against hand computations, end-to-end runs, resume after kill -9, two processes and
the user's mistakes."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from lt_plugin import Mask, load_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.corruptions import CORRUPTIONS, corrupted_copies
from lt_plugin.experiment import Experiment
from lt_plugin.pooling import average
from lt_plugin.store import load_weights
from lt_plugin.strategies.soups import greedy_soup
from tiny_training import FLOAT32_ROUNDING, assert_same_results_up_to_one_image, assert_same_weights_up_to_rounding

TINY = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "8", "--max-train-samples", "256",
        "--batch-size", "32", "--epochs", "2"]
LENET = ["--model", "lenet_300_100", *TINY[2:]]
SECONDS = ("seconds", "train_seconds", "search_seconds", "latency_ms")


def _strip(results):
    return [{k: v for k, v in r.items() if k not in SECONDS and k != "ingredients"} for r in results]



def test_a_uniform_soup_is_the_mean_of_its_ingredients():
    a = {"w": torch.tensor([1.0, 2.0]), "bn.num_batches_tracked": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, -2.0]), "bn.num_batches_tracked": torch.tensor(5)}
    soup = average([a, b])
    assert torch.equal(soup["w"], torch.tensor([2.0, 0.0]))
    assert int(soup["bn.num_batches_tracked"]) == 3  # counters are not averaged: the first's


class _HandScorer:
    """A scorer whose validation accuracy is a hand-made function of the soup's one weight: best at 1.0."""

    def __init__(self):
        self.template = nn.Linear(1, 1, bias=False)
        self.data = type("Data", (), {"val": None})

    def recalibrate(self, model, mask=None):
        pass

    def materialise(self, state, mask):
        model = nn.Linear(1, 1, bias=False)
        model.load_state_dict(state)
        return model

    def accuracy(self, model, dataset):
        return 1.0 - abs(float(model.weight.detach()) - 1.0)


def test_a_greedy_soup_takes_ingredients_that_help_and_rejects_one_that_hurts():
    mask = Mask({"weight": torch.ones(1, 1, dtype=torch.bool)}, ["weight"])
    states = [{"weight": torch.tensor([[w]])} for w in (0.8, 1.2, 3.0, 0.9)]
    # in order of validation accuracy: 0.9 first (0.9); with 0.8 the soup is 0.85 (0.85 < 0.9: rejected); with 1.2 it
    # is 1.05 (0.95: kept); with 3.0 it would be 1.7 (0.3: rejected)
    members, soup = greedy_soup(_HandScorer(), states, [0.8, 0.8, -1.0, 0.9], mask)
    assert members == [3, 1]
    assert float(soup["weight"]) == pytest.approx(1.05)  # the soup it scored: (0.9 + 1.2) / 2


@pytest.fixture(scope="module")
def soups(tmp_path_factory):
    out = tmp_path_factory.mktemp("sms") / "run"
    assert cli_main(["sparse-model-soups", *TINY, "--levels", "2", "--ingredients", "2", "--corruptions",
                     "--corruption-samples", "40", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_soups_keep_the_levels_mask_and_average_their_ingredients(soups):
    out, results = soups
    data = Experiment(model="test_resnet", dataset="digits", image_size=8, max_train_samples=256).load_data()
    assert [r["level"] for r in results] == [0, 1, 2]
    assert results[0]["density"] == 1.0 > results[1]["density"] > results[2]["density"]
    for r in results[1:]:
        level = out / f"level_{r['level']}"
        mask = Mask.load(level / "mask.safetensors")
        ingredients = [load_weights(level / f"ingredient_{i}" / "weights.safetensors") for i in range(2)]
        uniform = load_weights(level / "soup_uniform" / "weights.safetensors")
        for name in mask.prunable:  # the weights are the mean (BatchNorm statistics alone are recomputed)
            torch.testing.assert_close(uniform[name], (ingredients[0][name] + ingredients[1][name]) / 2)
            assert torch.all(uniform[name][~mask.tensors[name]] == 0)
        assert mask.density == r["density"] and r["soup"] == "greedy"
        assert r["ingredients_mean_test_accuracy"] == pytest.approx(
            sum(i["test_accuracy"] for i in r["ingredients"]) / 2)
        assert set(r["greedy_members"]) <= {0, 1} and r["greedy_members"][0] == r["best_ingredient"]
        assert r["test_accuracy"] == r["greedy_test_accuracy"]
        # the uniform soup under the strongest noise, by hand: its weights and mask on the run's 40 corrupted test
        # images (drawn with the run's seed, 0); the summary is the mean over 6 corruptions x 5 severities
        soup = Experiment(model="test_resnet", image_size=8).create_model(10, seed=0)
        soup.load_state_dict(uniform)
        mask.apply(soup).eval()
        noisy = next(c for name, severity, c in corrupted_copies(data.test, 0, 40)
                     if (name, severity) == ("gaussian_noise", 5))
        with torch.no_grad():
            correct = int((soup(noisy.images).argmax(1) == noisy.labels).sum())
        assert r["uniform_corruptions"]["gaussian_noise"][4] == pytest.approx(correct / 40)
        per_corruption = r["uniform_corruptions"]
        assert sorted(per_corruption) == sorted(CORRUPTIONS) and all(len(s) == 5 for s in per_corruption.values())
        assert r["uniform_corruption_accuracy"] == pytest.approx(sum(map(sum, per_corruption.values())) / 30)


def test_the_next_level_prunes_the_soup_and_export_ships_it(soups, tmp_path):
    out, results = soups
    soup = load_weights(out / "level_1" / "weights.safetensors")
    assert all(torch.equal(soup[k], v) for k, v in load_weights(out / "level_1" / "soup_greedy" /
                                                                 "weights.safetensors").items())
    second = Mask.load(out / "level_2" / "mask.safetensors")
    first = Mask.load(out / "level_1" / "mask.safetensors")
    assert all(torch.all(first.tensors[n] | ~second.tensors[n]) for n in first.prunable)  # nothing revived
    assert cli_main(["export", "--run", str(out), "--level", "2", "--out", str(tmp_path / "t.safetensors")]) == 0
    assert load_ticket(tmp_path / "t.safetensors").mask.density == pytest.approx(results[2]["density"])


def test_a_soups_run_killed_in_its_ingredients_ends_as_an_uninterrupted_one(soups, tmp_path, kill_when):
    out, results = soups
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "lt_plugin.cli", "sparse-model-soups", *TINY, "--levels", "2",
               "--ingredients", "2", "--corruptions", "--corruption-samples", "40", "--out", str(killed)]
    kill_when(command, killed / "level_1" / "ingredient_0" / "result.json")  # the first ingredient
    subprocess.run(command, check=True, capture_output=True)
    assert _strip(json.loads((killed / "results.json").read_text())) == _strip(results)
    a, b = (load_weights(d / "level_2" / "weights.safetensors") for d in (killed, out))
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_soups_options_are_checked_before_anything_is_written(tmp_path, capsys):
    for flags, message in ((["--ingredients", "1"], "--ingredients must be 2 or more"),
                           (["--vary", "weight-decay"], "--vary-values"),
                           (["--vary", "epochs", "--vary-values", "1", "2.5", "3"], "whole numbers"),
                           (["--soup", "mean"], "--soup must be one of")):
        assert cli_main(["sparse-model-soups", *TINY, *flags, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r" / "config.json").exists()


@pytest.mark.slow
def test_soups_on_two_processes_are_the_one_process_soups(tmp_path, two_processes):
    """LeNet-300-100 has no BatchNorm, so splitting a batch over processes changes only the rounding."""
    launcher, env = two_processes
    flags = ["sparse-model-soups", *LENET, "--levels", "1", "--ingredients", "2"]
    done = subprocess.run([*launcher, *flags, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cli_main([*flags, "--out", str(tmp_path / "one")]) == 0
    one, two = tmp_path / "one", tmp_path / "two"
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    data = Experiment(model="lenet_300_100", dataset="digits", image_size=8, max_train_samples=256).load_data()
    assert_same_results_up_to_one_image(*(json.loads((d / "results.json").read_text()) for d in (one, two)),
                                        len(data.val), len(data.test))
    # the level's mask: the same, but for weights tied with the threshold within rounding
    dense = load_weights(one / "level_0" / "weights.safetensors")
    masks = [Mask.load(d / "level_1" / "mask.safetensors") for d in (one, two)]
    magnitudes = torch.cat([dense[n].abs().reshape(-1) for n in masks[0].prunable])
    kept, kept_two = (torch.cat([m.tensors[n].reshape(-1) for n in m.prunable]) for m in masks)
    threshold = magnitudes[~kept].max()
    assert ((magnitudes[kept != kept_two] - threshold).abs() <= FLOAT32_ROUNDING * magnitudes.max()).all()
    for weights in ("level_0", "level_1/ingredient_0", "level_1/ingredient_1", "level_1/soup_uniform", "level_1"):
        assert_same_weights_up_to_rounding(*(load_weights(d / weights / "weights.safetensors") for d in (one, two)))
