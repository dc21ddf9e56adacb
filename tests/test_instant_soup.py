"""Instant Soup Pruning: the merge and its one-step adjustment against hand computations, the rounds' arithmetic,
denoisers shared between two processes, an end-to-end run at IMP's exact counts, resume after kill -9 inside a
denoiser round, the branches, and the user's mistakes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lt_plugin import Mask
from lt_plugin.cli import main as cli_main
from lt_plugin.denoisers import merge_masks, round_count, round_densities
from lt_plugin.layout import RunLayout
from lt_plugin.levels import level_density
from lt_plugin.store import load_weights

JOBS = Path(__file__).resolve().parent / "jobs"
REPO = JOBS.parents[1]
TINY = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "8", "--max-train-samples", "256",
        "--batch-size", "32", "--epochs", "3"]  # 8 optimizer steps per epoch, 24 in all
# A pruning every 5 steps: level 1 (density 0.8) has rounds at steps 5 (0.9) and 10 (0.81), the rest at step 15.
SOUP = ["instant-soup", *TINY, "--levels", "1", "--denoisers", "2", "--lookahead-steps", "3", "--round-every", "0.625"]
SECONDS = ("seconds", "train_seconds", "latency_ms")


def _strip(results):
    return [{k: v for k, v in r.items() if k not in SECONDS} for r in results]


def _mask(*kept):
    """A mask of two 4-entry weights, entries numbered 0..7 across them, keeping `kept`."""
    flat = torch.zeros(8, dtype=torch.bool)
    flat[list(kept)] = True
    return Mask({"a": flat[:4], "b": flat[4:]}, ["a", "b"])


def _flat(mask):
    return torch.cat([mask.tensors["a"], mask.tensors["b"]]).nonzero().reshape(-1).tolist()


def test_a_union_is_trimmed_and_an_intersection_filled_to_the_rounds_exact_count():
    current = _mask(0, 1, 2, 3, 4, 5, 6)  # entry 7 was pruned before: it is never revived, however large
    magnitude = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.8, 0.2, 0.7, 5.0])
    scores = {"a": magnitude[:4], "b": magnitude[4:]}
    denoisers = [_mask(0, 1, 2, 3, 4), _mask(0, 1, 2, 5, 6)]  # each keeps the round's 5 of 8
    densities = (5 / 8, {})
    # union {0..6}: 7 kept, the model's two smallest of them dropped (1: 0.1, 5: 0.2)
    union = merge_masks(denoisers, "union", scores, current, densities, "global")
    assert _flat(union) == [0, 2, 3, 4, 6]
    # intersection {0, 1, 2}: 3 kept, the model's two largest of the rest of the current mask added (4: 0.8, 6: 0.7)
    intersection = merge_masks(denoisers, "intersection", scores, current, densities, "global")
    assert _flat(intersection) == [0, 1, 2, 4, 6]
    # layer-wise: each weight keeps round(5/8 * 4) = 2 (a: 0 and 2 of the union; b: 4 and 6)
    assert _flat(merge_masks(denoisers, "union", scores, current, densities, "layerwise")) == [0, 2, 4, 6]


def test_the_rounds_step_down_by_the_fraction_and_stop_above_the_final_density():
    assert round_count((0.64, {}), 0.1) == 4  # 0.9, 0.81, 0.729, 0.6561; the next, 0.59, is past 0.64
    assert round_count((0.9, {}), 0.1) == 0  # one step of 10% reaches it: the rest is pruned at once
    assert round_count((0.95, {"fc": 0.5}), 0.2) == 3  # 0.8, 0.64, 0.512 for the layer of its own
    rest, own = round_densities((0.95, {"fc": 0.5}), 0.2, 2)
    assert rest == 0.95 and own == {"fc": pytest.approx(0.64)}  # never below a weight's final density


def test_two_processes_share_the_denoisers_and_read_the_same_masks(tmp_path):
    # Its own script: forking pytest's process (threads and an OpenMP pool already running) can hang the children.
    done = subprocess.run([sys.executable, str(JOBS / "two_process_denoisers_job.py"), str(tmp_path)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # process 0 trained denoisers 0 and 2, process 1 denoiser 1, 4 steps each; one process alone trains all 12
    trained = [json.loads((tmp_path / f"trained_by_{who}.json").read_text()) for who in (0, 1, "alone")]
    assert trained == [8, 4, 12]
    alone = [Mask.load(tmp_path / f"seen_by_alone_{j}.safetensors") for j in range(3)]
    for j, mask in enumerate(alone):
        assert mask.density == pytest.approx(0.8, abs=1 / 200)
        for p in (0, 1):  # each denoiser's mask the same whichever process trained it
            seen = Mask.load(tmp_path / f"seen_by_{p}_{j}.safetensors")
            assert all(torch.equal(seen.tensors[n], mask.tensors[n]) for n in mask.prunable)
    assert alone[0].distance(alone[1]) > 0  # their own subsets and rates give their own masks


@pytest.fixture(scope="module")
def soup(tmp_path_factory):
    out = tmp_path_factory.mktemp("soup") / "run"
    assert cli_main([*SOUP, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_each_level_reaches_imps_exact_count_and_picks_its_epoch_by_validation(soup):
    out, results = soup
    layout = RunLayout(out)
    assert [r["rounds"] for r in results] == [0, 2]
    assert [r["prune_end_step"] for r in results] == [0, 15]
    for r in results:
        mask = Mask.load(layout.level(r["level"]).mask)
        total = sum(mask.tensors[n].numel() for n in mask.prunable)
        kept = sum(int(mask.tensors[n].sum()) for n in mask.prunable)
        assert kept == round(level_density(r["level"], 1, total) * total)  # IMP's level, weight for weight
        weights = load_weights(layout.level(r["level"]).weights)
        assert all(torch.all(weights[n][~mask.tensors[n]] == 0) for n in mask.prunable)
        history = [json.loads(line) for line in layout.level(r["level"]).train.metrics.read_text().splitlines()]
        eligible = [h for h in history if h["step"] >= r["prune_end_step"]]
        best = max(h["val_accuracy"] for h in eligible)
        assert r["selected_step"] == max(h["step"] for h in eligible if h["val_accuracy"] == best)
        assert r["val_accuracy"] == pytest.approx(best)
        assert r["denoiser_steps"] == r["rounds"] * 2 * 3
        assert r["cost_epochs"] == pytest.approx(3 + r["denoiser_steps"] / 8)
        assert r["imp_cost_epochs"] == 3 * (r["level"] + 1)
        files = layout.level(r["level"]).train
        assert files.denoiser_masks() == [] and files.steps() == [] and files.pruned_masks() == []


def test_an_instant_soup_run_killed_inside_a_denoiser_round_ends_as_an_uninterrupted_one(soup, tmp_path):
    out, results = soup
    killed = tmp_path / "killed"
    # Killed once denoiser 0 of level 1's round at step 10 is written: the run resumes from its checkpoint of step 8
    # (whose mask is step 5's), reads denoiser 0 back at step 10 and trains denoiser 1.
    written = "level_1/train/denoiser_10_0.safetensors"
    done = subprocess.run([sys.executable, str(JOBS / "kill_after_write.py"), written, *SOUP, "--out", str(killed)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == -9, done.stderr[-2000:]
    files = RunLayout(killed).level(1).train
    assert files.checkpoint.exists() and files.pruned_mask(5).exists() and files.denoiser_mask(10, 0).exists()
    assert not files.denoiser_mask(10, 1).exists()
    assert cli_main([*SOUP, "--out", str(killed)]) == 0
    assert _strip(json.loads((killed / "results.json").read_text())) == _strip(results)
    for level in (0, 1):
        a, b = load_weights(RunLayout(killed).level(level).weights), load_weights(RunLayout(out).level(level).weights)
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert cli_main(["compare", str(out), str(killed), "--out", str(tmp_path / "compare")]) == 0
    rows = json.loads((tmp_path / "compare" / "compare.json").read_text())["rows"]
    assert [len(row["runs"]) for row in rows] == [2, 2]


def test_the_controls_and_lottery_pools_refuse_an_instant_soup_run_in_one_line(soup, tmp_path, capsys):
    """Its tickets were pruned while they trained (a control would change the training too), and its levels are
    separate trainings, not each pruned from the one before (nothing for Lottery Pools to interpolate along)."""
    out, _ = soup
    for argv, message in ((["random-reinit", "--run", str(out), "--out", str(tmp_path / "control")],
                           "would change their training too"),
                          (["random-mask", "--run", str(out), "--out", str(tmp_path / "mask")],
                           "would change their training too"),
                          (["lottery-pools", "--run", str(out), "--out", str(tmp_path / "pools")],
                           "'instant-soup' run")):
        capsys.readouterr()
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not any((tmp_path / name).exists() for name in ("control", "mask", "pools"))


def test_instant_soup_options_are_checked_before_anything_is_written(tmp_path, capsys):
    for flags, message in ((["--denoisers", "0"], "--denoisers must be 1 or more"),
                           (["--lookahead-steps", "0"], "--lookahead-steps must be 1 or more"),
                           (["--subset-fraction", "0"], "--subset-fraction must be in (0, 1]"),
                           (["--subset-fraction", "1.5"], "--subset-fraction must be in (0, 1]"),
                           (["--round-fraction", "1"], "--round-fraction must be in (0, 1)"),
                           (["--round-every", "2"], "more than the 24 of training"),
                           (["--denoiser-lr-scales", "1", "2"], "one value per denoiser"),
                           (["--granularity", "channel"], "prunes single weights"),
                           (["--merge", "vote"], "--merge must be one of")):
        assert cli_main(["instant-soup", *TINY, "--levels", "2", *flags, "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (flags, err)
    assert not (tmp_path / "r" / "config.json").exists()
