"""Replicates and comparisons: --seeds runs each seed into its own run folder and aggregates them (checked against
a hand computation), resumes seed by seed after kill -9, runs its seeds in parallel processes to the same results,
and `lt-plugin compare` matches densities and gives paired differences over shared seeds."""

import json
import math
import subprocess
import sys

import pytest
import torch

import lt_plugin
from lt_plugin.cli import main as cli_main
from lt_plugin.compare import compare
from lt_plugin.layout import RunLayout
from lt_plugin.replicates import aggregate
from lt_plugin.store import load_weights

TINY = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "8", "--max-train-samples", "128",
        "--batch-size", "32", "--epochs", "1", "--levels", "1"]
T_975_2 = 4.302652729749464  # Student's t, 97.5% quantile, 2 degrees of freedom (sqrt(1.805 / 0.0975))


def test_the_aggregate_of_known_seeds_is_the_hand_computed_mean_std_and_t_interval():
    per_seed = {0: [{"level": 0, "density": 1.0, "test_accuracy": 0.80, "model": "m"},
                    {"level": 1, "density": 0.8, "test_accuracy": 0.70, "model": "m"}],
                3: [{"level": 0, "density": 1.0, "test_accuracy": 0.90, "model": "m"},
                    {"level": 1, "density": 0.8, "test_accuracy": 0.75, "model": "m"}],
                7: [{"level": 0, "density": 1.0, "test_accuracy": 0.85, "model": "m"},
                    {"level": 1, "density": 0.8, "test_accuracy": None, "model": "m"}]}
    dense, pruned = aggregate(per_seed)
    assert dense["seeds"] == [0, 3, 7] and dense["n_seeds"] == 3 and dense["model"] == "m"
    mean, std = 0.85, 0.05  # (0.8 + 0.9 + 0.85) / 3; sqrt(((-0.05)^2 + 0.05^2 + 0) / 2)
    assert dense["test_accuracy"] == pytest.approx(mean) and dense["test_accuracy_std"] == pytest.approx(std)
    half = T_975_2 * std / math.sqrt(3)
    assert dense["test_accuracy_ci"] == pytest.approx([mean - half, mean + half])
    assert dense["test_accuracy_values"] == [0.80, 0.90, 0.85]
    assert pruned["test_accuracy"] == pytest.approx(0.725)  # a seed without the value is left out, not zero
    assert pruned["test_accuracy_values"] == [0.70, 0.75, None] and pruned["density"] == 0.8


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    out = tmp_path_factory.mktemp("replicated") / "R"
    assert cli_main(["imp", *TINY, "--seeds", "0", "1", "--out", str(out)]) == 0
    return out


def test_each_seed_is_a_run_of_its_own_and_the_run_aggregates_them(replicated, tmp_path, capsys):
    layout = RunLayout(replicated)
    assert layout.seeds() == [0, 1]
    rows = json.loads(layout.results.read_text())
    for seed in (0, 1):  # the same as a run of that seed alone
        assert cli_main(["imp", *TINY, "--seed", str(seed), "--out", str(tmp_path / f"alone_{seed}")]) == 0
        alone = json.loads((tmp_path / f"alone_{seed}" / "results.json").read_text())
        assert [r["test_accuracy"] for r in alone] == [r["test_accuracy_values"][seed] for r in rows]
        assert json.loads(layout.seed(seed).config.read_text())["hparams"]["seed"] == seed
    assert (replicated / "accuracy_vs_density.png").stat().st_size > 1000
    capsys.readouterr()
    assert cli_main(["imp", *TINY, "--seeds", "0", "1", "--out", str(replicated)]) == 0  # finished: read back
    assert "test acc (95% CI)" in capsys.readouterr().out
    assert json.loads(layout.results.read_text()) == rows
    assert cli_main(["imp", *TINY, "--out", str(replicated)]) == 2  # a one-seed run into a replicated folder


def test_branches_work_seed_by_seed_on_a_replicated_run(replicated, tmp_path):
    rows = lt_plugin.create_branch("lottery-pools", run_dir=str(replicated), alphas=[0.5]).run()
    pools = RunLayout(replicated).branch("lottery-pools")
    assert RunLayout(pools).seeds() == [0, 1] and [r["n_seeds"] for r in rows] == [2, 2]
    for seed in (0, 1):
        alone = json.loads(RunLayout(pools).seed(seed).results.read_text())
        assert [r["pooled_test_accuracy"] for r in alone] == [r["pooled_test_accuracy_values"][seed] for r in rows]
    controls = lt_plugin.create_branch("random-reinit", run_dir=str(replicated)).run()
    assert controls[0]["n_seeds"] == 2 and len(set(controls[0]["control_seed_values"])) == 2  # a draw per seed
    assert cli_main(["export", "--run", str(replicated), "--level", "1", "--out", str(tmp_path / "t.safetensors")]) == 0
    assert (tmp_path / "t_seed0.safetensors").exists() and (tmp_path / "t_seed1.safetensors").exists()


def test_compare_gives_paired_differences_over_shared_seeds(replicated, capsys):
    control = RunLayout(replicated).branch("random-reinit")
    if not (control / "results.json").exists():
        lt_plugin.create_branch("random-reinit", run_dir=str(replicated)).run()
    capsys.readouterr()
    assert cli_main(["compare", str(replicated), str(control)]) == 0
    assert "minus R" in capsys.readouterr().out
    report = json.loads((replicated / "compare" / "compare.json").read_text())
    ticket_rows = json.loads((replicated / "results.json").read_text())
    control_rows = json.loads((control / "results.json").read_text())
    (pruned,) = [row for row in report["rows"] if row["density"] < 1]
    difference = pruned["differences"][str(control.relative_to(replicated.parent))]
    by_hand = [c - t for c, t in zip(control_rows[0]["test_accuracy_values"], ticket_rows[1]["test_accuracy_values"])]
    assert difference["seeds"] == [0, 1] and difference["differences"] == pytest.approx(by_hand)
    assert (replicated / "compare" / "compare.png").stat().st_size > 1000


def _fake_run(path, densities, accuracies, seed=0, model="test_resnet"):
    """A finished one-seed IMP run folder as compare reads it: its config and its results."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"strategy": "imp", "hparams": {"model": model, "seed": seed}}))
    (path / "results.json").write_text(json.dumps([{"level": i, "density": d, "test_accuracy": a}
                                                   for i, (d, a) in enumerate(zip(densities, accuracies))]))
    return path


def test_compare_matches_densities_that_differ_slightly_and_refuses_what_cannot_be_compared(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", [1.0, 0.8, 0.64], [0.90, 0.91, 0.89])
    b = _fake_run(tmp_path / "b", [1.0, 0.8012, 0.6389, 0.5], [0.90, 0.93, 0.88, 0.80])
    report = compare([a, b], tmp_path / "out", tolerance=0.01)
    matched = {row["density"]: row["runs"]["b"]["density"] for row in report["rows"] if "b" in row["runs"]}
    assert matched == {1.0: 1.0, 0.8: 0.8012, 0.64: 0.6389}  # the nearest, within 1%; b's 0.5 has no partner
    assert report["largest_density_mismatch"] == pytest.approx(0.0011 / 0.64)  # 0.6389 for 0.64
    differences = {row["density"]: row["differences"]["b"]["mean"] for row in report["rows"]}
    assert differences == pytest.approx({1.0: 0.0, 0.8: 0.02, 0.64: -0.01})  # one shared seed: no interval
    strict = compare([a, b], tmp_path / "strict", tolerance=0.001)
    assert [row["density"] for row in strict["rows"] if "b" in row["runs"]] == [1.0]
    capsys.readouterr()
    other = _fake_run(tmp_path / "c", [1.0], [0.5], model="resnet18")
    assert cli_main(["compare", str(a), str(other)]) == 2
    assert "differs from" in capsys.readouterr().err
    assert cli_main(["compare", str(a), str(other), "--allow-different", "--out", str(tmp_path / "d")]) == 0
    assert cli_main(["compare", str(a), str(tmp_path / "nothing")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def _fake_replicated_run(path, rows, seeds=(0, 1, 2)):
    """A finished replicated run folder as compare reads it: rows of (density, per-seed test accuracies)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"strategy": "imp", "hparams": {"model": "test_resnet"}}))
    (path / "results.json").write_text(json.dumps([
        {"level": i, "density": d, "seeds": list(seeds), "test_accuracy": sum(v) / len(v), "test_accuracy_values": v}
        for i, (d, v) in enumerate(rows)]))
    return path


def test_compare_adjusts_its_differences_as_one_family_and_says_so(tmp_path, capsys):
    # At 0.5 and 0.25, b - a is 0.025, 0.035, 0.045 over the seeds (mean 0.035, std 0.01): t = 3.5 sqrt(3), df 2,
    # p = 1 - t / sqrt(2 + t^2) = 0.026 < 0.05 each; Holm over the two: 2p = 0.052 each, within noise. At density 1
    # every difference is 0: no spread, no test, not in the family.
    a = _fake_replicated_run(tmp_path / "a", [(1.0, [0.9, 0.9, 0.9]), (0.5, [0.8, 0.8, 0.8]),
                                              (0.25, [0.7, 0.7, 0.7])])
    b = _fake_replicated_run(tmp_path / "b", [(1.0, [0.9, 0.9, 0.9]), (0.5, [0.825, 0.835, 0.845]),
                                              (0.25, [0.725, 0.735, 0.745])])
    t = 3.5 * math.sqrt(3)
    p = 1 - t / math.sqrt(2 + t ** 2)
    capsys.readouterr()
    assert cli_main(["compare", str(a), str(b)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((a / "compare" / "compare.json").read_text())
    assert report["adjustment"]["method"] == "holm" and report["adjustment"]["family_size"] == 2
    differences = {row["density"]: row["differences"]["b"] for row in report["rows"]}
    assert differences[1.0]["verdict"] == "no spread" and differences[1.0]["p_value"] is None
    assert differences[1.0]["p_adjusted"] is None and differences[1.0]["n"] == 3
    for density in (0.5, 0.25):
        difference = differences[density]
        assert difference["p_value"] == pytest.approx(p, rel=1e-6) and difference["ci_low"] > 0  # raw: excludes 0
        assert difference["p_adjusted"] == pytest.approx(2 * p, rel=1e-6) and difference["verdict"] == "within noise"
        assert difference["ci_adjusted_low"] < 0 < difference["ci_adjusted_high"]
    assert "Holm-adjusted" in printed and "within noise" in printed and "no spread, n=3" in printed
    assert f"p={p:.3g} p_adj={2 * p:.3g} within noise" in printed
    unadjusted = compare([a, b], tmp_path / "none", adjustment="none")
    assert [row["differences"]["b"]["verdict"] for row in unadjusted["rows"]] == ["no spread", "above", "above"]
    assert cli_main(["compare", str(a), str(b), "--adjust", "bonferroni", "--alpha", "0.1",
                     "--out", str(tmp_path / "bonferroni")]) == 0
    loose = json.loads((tmp_path / "bonferroni" / "compare.json").read_text())
    assert [row["differences"]["b"]["verdict"] for row in loose["rows"]] == ["no spread", "above", "above"]
    capsys.readouterr()
    assert cli_main(["compare", str(a), str(b), "--adjust", "fdr"]) == 2
    assert cli_main(["compare", str(a), str(b), "--alpha", "1"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 2


def test_compare_into_a_file_is_one_line_and_exit_2_with_nothing_written(tmp_path, capsys):
    a = _fake_run(tmp_path / "a", [1.0, 0.8], [0.90, 0.91])
    b = _fake_run(tmp_path / "b", [1.0, 0.8], [0.90, 0.93])
    taken = tmp_path / "taken.json"
    taken.write_text("mine")
    for out in (taken, taken / "below"):
        capsys.readouterr()
        assert cli_main(["compare", str(a), str(b), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "is a file, not a folder" in err and "Traceback" not in err
    assert taken.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "taken.json"]
    assert not (a / "compare").exists()


def _without_timings(run):
    """A run's aggregate without the entries that time it (seconds, latency), which no two runs share."""
    return [{k: v for k, v in row.items() if "seconds" not in k and "latency" not in k}
            for row in json.loads((run / "results.json").read_text())]


@pytest.mark.slow
def test_a_replicated_run_killed_mid_seed_resumes_to_the_uninterrupted_aggregate(replicated, tmp_path, kill_when):
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "lt_plugin", "imp", *TINY, "--seeds", "0", "1", "--out", str(killed)]
    kill_when(command, killed / "seed_1" / "level_0" / "result.json")  # seed 1's first level
    subprocess.run(command, check=True, capture_output=True)
    assert _without_timings(killed) == _without_timings(replicated)
    for seed in (0, 1):
        for level in (0, 1):
            a = load_weights(RunLayout(killed).seed(seed).level(level).weights)
            b = load_weights(RunLayout(replicated).seed(seed).level(level).weights)
            assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_two_processes_with_parallel_seeds_give_the_sequential_results(tmp_path, two_processes):
    launcher, env = two_processes  # accelerate launch gives each process one thread (OMP_NUM_THREADS=1)
    command = ["imp", *TINY, "--seeds", "0", "1"]
    sequential = subprocess.run([sys.executable, "-m", "lt_plugin", *command, "--out", str(tmp_path / "sequential")],
                                env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    parallel = subprocess.run([*launcher, *command, "--parallel", "seeds", "--out", str(tmp_path / "parallel")],
                              env=env, capture_output=True, text=True, timeout=600)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    for seed in (0, 1):  # each seed trained by one process alone: the sequential run's tensors, bit for bit
        assert json.loads(RunLayout(tmp_path / "parallel").seed(seed).config.read_text())["world_size"] == 1
        for level in (0, 1):
            a = load_weights(RunLayout(tmp_path / "parallel").seed(seed).level(level).weights)
            b = load_weights(RunLayout(tmp_path / "sequential").seed(seed).level(level).weights)
            assert all(torch.equal(a[k], b[k]) for k in a)
    assert _without_timings(tmp_path / "parallel") == _without_timings(tmp_path / "sequential")
