"""Sparse Model Soups and instability analysis: soups and barriers against hand computations, end-to-end runs,
resume after kill -9, two processes, and the user's mistakes."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import lt_plugin
from lt_plugin import Mask, load_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.pooling import average
from lt_plugin.store import load_weights
from lt_plugin.strategies.instability import barrier, error_path
from lt_plugin.strategies.soups import greedy_soup

TINY = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "8", "--max-train-samples", "256",
        "--batch-size", "32", "--epochs", "2"]
SECONDS = ("seconds", "train_seconds", "search_seconds", "latency_ms")


def _strip(results):
    return [{k: v for k, v in r.items() if k not in SECONDS and k != "ingredients"} for r in results]


# ---------------------------------------------------------------- by hand

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


def test_the_barrier_of_a_flat_path_is_zero_and_of_a_hand_built_one_its_peak_over_the_ends():
    a = {"w": torch.tensor([1.0, 2.0])}
    assert barrier(error_path(a, a, [0, 0.5, 1], lambda state: float(state["w"].sum()))) == 0.0
    b = {"w": torch.tensor([3.0, 0.0])}
    # error = |w0 - w1| along the path: 1 at a, 3 at b, 0 at alpha 0.25 ... the peak is an end: no barrier
    path = error_path(a, b, [0, 0.25, 0.5, 0.75, 1], lambda state: abs(float(state["w"][0] - state["w"][1])))
    assert path == pytest.approx([1.0, 0.0, 1.0, 2.0, 3.0]) and barrier(path) == pytest.approx(1.0)
    assert barrier([0.1, 0.3, 0.2]) == pytest.approx(0.15)


# ---------------------------------------------------------------- Sparse Model Soups end to end

@pytest.fixture(scope="module")
def soups(tmp_path_factory):
    out = tmp_path_factory.mktemp("sms") / "run"
    assert cli_main(["sparse-model-soups", *TINY, "--levels", "2", "--ingredients", "2", "--corruptions",
                     "--corruption-samples", "40", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_soups_keep_the_levels_mask_and_average_their_ingredients(soups):
    out, results = soups
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
        assert 0 < r["uniform_corruption_accuracy"] <= 1 and len(r["greedy_corruptions"]) == 6
        assert r["test_accuracy"] == r["greedy_test_accuracy"]


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
    kill_when(command, (killed / "level_1" / "ingredient_0" / "result.json").exists, "the first ingredient")
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


# ---------------------------------------------------------------- instability end to end

@pytest.fixture(scope="module")
def dense_instability(tmp_path_factory):
    out = tmp_path_factory.mktemp("instability") / "dense"
    assert cli_main(["instability", *TINY, "--rewind-points", "0it", "1ep", "--points", "4", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_instability_measures_each_rewind_points_path_and_barrier(dense_instability):
    out, results = dense_instability
    assert [(r["level"], r["rewind_point"], r["rewind_step"]) for r in results] == [(0, "0it", 0), (0, "1ep", 8)]
    for r in results:
        assert r["alphas"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
        assert r["barrier"] == pytest.approx(barrier(r["test_error_interpolated_bn"]))
        assert r["barrier_recomputed_bn"] == pytest.approx(barrier(r["test_error_recomputed_bn"]))
        # the path's ends are the two copies themselves
        ends = [1 - a for a in r["copies_test_accuracy"]]
        assert [r["test_error_interpolated_bn"][0], r["test_error_interpolated_bn"][-1]] == pytest.approx(ends)
        copies = [load_weights(out / "level_0" / f"rewind_{r['rewind_point']}" / f"copy_{c}" / "weights.safetensors")
                  for c in "ab"]
        assert any(not torch.equal(copies[0][k], copies[1][k]) for k in copies[0])  # different SGD noise
    assert (out / "parent" / "step_8.safetensors").exists()
    first = json.loads((out / "level_0" / "rewind_1ep" / "copy_a" / "train" / "metrics.jsonl").read_text()
                       .splitlines()[0])
    assert first["epoch"] == 2  # the copies from 1ep train epoch 2 only: the schedule goes on from there


def test_a_finished_instability_run_is_reread_and_an_imp_runs_tickets_keep_their_masks(dense_instability,
                                                                                         tmp_path):
    out, results = dense_instability
    assert cli_main(["instability", *TINY, "--rewind-points", "0it", "1ep", "--points", "4", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == results
    imp = tmp_path / "imp"
    assert cli_main(["imp", *TINY, "--levels", "1", "--out", str(imp)]) == 0
    assert cli_main(["instability", "--run", str(imp), "--targets", "1", "--rewind-points", "0it", "--points", "3",
                     "--out", str(tmp_path / "sparse")]) == 0
    (r,) = json.loads((tmp_path / "sparse" / "results.json").read_text())
    mask = Mask.load(imp / "level_1" / "mask.safetensors")
    assert r["level"] == 1 and r["density"] == pytest.approx(mask.density)
    for c in "ab":
        copy = load_weights(tmp_path / "sparse" / "level_1" / "rewind_0it" / f"copy_{c}" / "weights.safetensors")
        assert all(torch.all(copy[n][~mask.tensors[n]] == 0) for n in mask.prunable)
    # the parent is the IMP run's dense training from its theta_0: the copies start from the run's ticket
    parent = load_weights(tmp_path / "sparse" / "parent" / "step_0.safetensors")
    init = load_weights(imp / "init.safetensors")
    assert all(torch.equal(parent[k], init[k]) for k in init)


def test_an_instability_run_killed_between_its_copies_ends_as_an_uninterrupted_one(dense_instability, tmp_path,
                                                                                     kill_when):
    out, results = dense_instability
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "lt_plugin.cli", "instability", *TINY, "--rewind-points", "0it", "1ep",
               "--points", "4", "--out", str(killed)]
    kill_when(command, (killed / "level_0" / "rewind_0it" / "copy_a" / "result.json").exists, "the first copy")
    subprocess.run(command, check=True, capture_output=True)
    assert json.loads((killed / "results.json").read_text()) == results


def test_instability_mistakes_are_one_line_errors(tmp_path, capsys):
    for flags, message in ((["--rewind-points", "lr"], "--rewind-points are init, <N>it or <N>ep"),
                           (["--rewind-points", "9ep"], "past the end of training"),
                           (["--targets", "1", "--rewind-points", "0it"], "add --run"),
                           (["--points", "1"], "--points must be 2 or more")):
        assert cli_main(["instability", *TINY, *flags, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r" / "config.json").exists()


@pytest.mark.slow
def test_both_run_on_two_processes(tmp_path, two_processes):
    launcher, env = two_processes
    for command in (["sparse-model-soups", *TINY, "--levels", "1", "--ingredients", "2"],
                    ["instability", *TINY, "--rewind-points", "0it", "4it", "--points", "3"]):
        out = tmp_path / command[0]
        done = subprocess.run([*launcher, *command, "--out", str(out)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        config = json.loads((out / "config.json").read_text())
        assert config["world_size"] == 2 and json.loads((out / "results.json").read_text())
