"""Instability analysis: barriers against hand computations, a dense network's paths, an IMP run's tickets as
the paper's Figure 5 defines them, resume after kill -9, two processes and the user's mistakes."""

import json
import subprocess
import sys

import pytest
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from lt_plugin import Mask
from lt_plugin.cli import main as cli_main
from lt_plugin.experiment import Experiment
from lt_plugin.store import load_weights
from lt_plugin.branches.instability import barrier, error_path

TINY = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "8", "--max-train-samples", "256",
        "--batch-size", "32", "--epochs", "2"]
SECONDS = ("seconds", "train_seconds", "search_seconds", "latency_ms")


def _flat(state):
    return torch.cat([value.double().flatten() for _, value in sorted(state.items()) if value.is_floating_point()])


def _strip(results):
    return [{k: v for k, v in r.items() if k not in SECONDS and k != "ingredients"} for r in results]



def test_the_barrier_of_a_flat_path_is_zero_and_of_a_hand_built_one_its_peak_over_the_ends():
    a = {"w": torch.tensor([1.0, 2.0])}
    assert barrier(error_path(a, a, [0, 0.5, 1], lambda state: float(state["w"].sum()))) == 0.0
    b = {"w": torch.tensor([3.0, 0.0])}
    # error = |w0 - w1| along the path: 1 at a, 3 at b, 0 at alpha 0.25 ... the peak is an end: no barrier
    path = error_path(a, b, [0, 0.25, 0.5, 0.75, 1], lambda state: abs(float(state["w"][0] - state["w"][1])))
    assert path == pytest.approx([1.0, 0.0, 1.0, 2.0, 3.0]) and barrier(path) == pytest.approx(1.0)
    assert barrier([0.1, 0.3, 0.2]) == pytest.approx(0.15)


@pytest.fixture(scope="module")
def dense_instability(tmp_path_factory):
    out = tmp_path_factory.mktemp("instability") / "dense"
    assert cli_main(["instability", *TINY, "--rewind-points", "0it", "1ep", "--points", "4", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_instability_measures_each_rewind_points_path_and_barrier(dense_instability):
    out, results = dense_instability
    assert [(r["level"], r["rewind_point"], r["rewind_step"]) for r in results] == [(0, "0it", 0), (0, "1ep", 8)]
    data = Experiment(model="test_resnet", dataset="digits", image_size=8, max_train_samples=256).load_data()
    assert len(data.train) <= 256  # one batch of 256: the recomputed statistics do not depend on its order
    model = Experiment(model="test_resnet", image_size=8).create_model(10, seed=0)
    peaks_inside = []
    for r in results:
        assert r["alphas"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
        # the path's ends are the two copies themselves
        ends = [1 - a for a in r["copies_test_accuracy"]]
        assert [r["test_error_interpolated_bn"][0], r["test_error_interpolated_bn"][-1]] == pytest.approx(ends)
        a, b = (load_weights(out / "level_0" / f"rewind_{r['rewind_point']}" / f"copy_{c}" / "weights.safetensors")
                for c in "ab")
        assert any(not torch.equal(a[k], b[k]) for k in a)  # different SGD noise
        # every point of both paths by hand: the copies interpolated tensor by tensor (running statistics too), as
        # they are or with BatchNorm recomputed on the training set; the test error of that network; the barrier,
        # the path's highest error over the mean of its ends'
        paths = {"interpolated_bn": [], "recomputed_bn": []}
        for alpha in (0, 1 / 3, 2 / 3, 1):
            model.load_state_dict({k: (1 - alpha) * v + alpha * b[k] if v.is_floating_point() else v
                                   for k, v in a.items()})
            for path, recompute in (("interpolated_bn", False), ("recomputed_bn", True)):
                if recompute:
                    update_bn(DataLoader(data.train, batch_size=256), model)
                with torch.no_grad():
                    correct = (model.eval()(data.test.images).argmax(1) == data.test.labels).double().mean()
                paths[path].append(1 - correct.item())
        for path, errors in paths.items():
            assert r[f"test_error_{path}"] == pytest.approx(errors), path
            peak = max(errors) - (errors[0] + errors[-1]) / 2
            assert r["barrier" if path == "interpolated_bn" else "barrier_recomputed_bn"] == pytest.approx(peak), path
            peaks_inside.append(max(errors[1:-1]) > max(errors[0], errors[-1]))
    assert any(peaks_inside)  # copies from theta_0 are not linearly connected: the ends alone miss the barrier


def test_a_finished_instability_run_is_reread_and_an_imp_runs_tickets_keep_their_masks(dense_instability,
                                                                                         tmp_path):
    out, results = dense_instability
    assert cli_main(["instability", *TINY, "--rewind-points", "0it", "1ep", "--points", "4", "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text()) == results
    imp = tmp_path / "imp"
    assert cli_main(["imp", *TINY, "--levels", "1", "--rewind", "2it", "--keep-steps", "0it", "--out", str(imp)]) == 0
    assert cli_main(["instability", "--run", str(imp), "--targets", "1", "--points", "3"]) == 0
    (r,) = json.loads((imp / "instability" / "results.json").read_text())
    mask = Mask.load(imp / "level_1" / "mask.safetensors")
    assert r["level"] == 1 and r["density"] == pytest.approx(mask.density)
    # By default the run's own rewind point: the subnetwork the run trained, from its own dense training's theta_k.
    assert (r["rewind_point"], r["rewind_step"], r["mask_rewind_step"]) == ("2it", 2, 2)
    for c in "ab":
        copy = load_weights(imp / "instability" / "level_1" / "rewind_2it" / f"copy_{c}" / "weights.safetensors")
        assert all(torch.all(copy[n][~mask.tensors[n]] == 0) for n in mask.prunable)
    assert not (imp / "instability" / "parent").exists()  # no second dense training
    # Another point the run kept: its mask on that theta_k, said in the result; a point it did not keep: one line.
    assert cli_main(["instability", "--run", str(imp), "--targets", "1", "--rewind-points", "0it", "--points", "3",
                     "--out", str(tmp_path / "at_init")]) == 0
    (r,) = json.loads((tmp_path / "at_init" / "results.json").read_text())
    assert (r["rewind_step"], r["mask_rewind_step"]) == (0, 2)
    assert cli_main(["instability", "--run", str(imp), "--rewind-points", "1it", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_an_instability_run_killed_between_its_copies_ends_as_an_uninterrupted_one(dense_instability, tmp_path,
                                                                                     kill_when):
    out, results = dense_instability
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "lt_plugin.cli", "instability", *TINY, "--rewind-points", "0it", "1ep",
               "--points", "4", "--out", str(killed)]
    kill_when(command, killed / "level_0" / "rewind_0it" / "copy_a" / "result.json")  # the first copy
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
def test_instability_on_two_processes_is_the_one_process_analysis(tmp_path, two_processes):
    """LeNet-300-100 has no BatchNorm, so splitting a batch over processes changes only the rounding."""
    launcher, env = two_processes
    flags = ["instability", "--model", "lenet_300_100", *TINY[2:], "--rewind-points", "0it", "4it", "--points", "3"]
    done = subprocess.run([*launcher, *flags, "--out", str(tmp_path / "two")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert cli_main([*flags, "--out", str(tmp_path / "one")]) == 0
    one, two = tmp_path / "one", tmp_path / "two"
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    images = len(Experiment(model="lenet_300_100", dataset="digits", image_size=8,
                            max_train_samples=256).load_data().test)
    results = [json.loads((d / "results.json").read_text()) for d in (one, two)]
    for a, b in zip(*results):  # errors within one test image each (a near-tie may flip), the barrier within two
        for key in ("test_error_interpolated_bn", "test_error_recomputed_bn", "copies_test_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1 / images + 1e-12), key
        for key in ("barrier", "barrier_recomputed_bn"):
            assert a[key] == pytest.approx(b[key], abs=2 / images + 1e-12), key
        decided = ("level", "density", "rewind_point", "rewind_step", "alphas")
        assert [a[key] for key in decided] == [b[key] for key in decided]
    for point in ("0it", "4it"):
        weights = {(d.name, copy): _flat(load_weights(d / "level_0" / f"rewind_{point}" / f"copy_{copy}" /
                                                       "weights.safetensors")) for d in (one, two) for copy in "ab"}
        noise = (weights["one", "a"] - weights["one", "b"]).norm()  # the two copies: the same start, other SGD noise
        for copy in "ab":
            # The processes sum the same gradients in another order. That rounding can flip a ReLU and grow (measured
            # with other CPU kernels: 0.2% of the noise), but stays far below SGD noise; a wrong shard, data order or
            # learning rate moves a copy as far as the noise does.
            assert (weights["one", copy] - weights["two", copy]).norm() <= 0.05 * noise, (point, copy)
