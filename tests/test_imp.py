"""IMP end to end on real data (digits) with a tiny timm model, checked against hand computations and files."""

import json
import math
import subprocess
import sys

import pytest
import torch

import lt_plugin
from lt_plugin import Mask, load_ticket
from lt_plugin.cli import main as cli_main
from lt_plugin.store import load_weights as weights

TINY = dict(model="test_resnet", dataset="digits", image_size=16, max_train_samples=512, batch_size=32, epochs=3,
            lr=0.05)


def test_density_schedule_by_hand():
    imp = lt_plugin.create_strategy("imp", levels=3, prune_fraction=0.2)
    total, remaining = 1000, [1000]
    for _ in range(3):
        remaining.append(remaining[-1] - math.ceil(0.2 * remaining[-1]))
    assert [imp.level_density(level, total) for level in range(4)] == [r / total for r in remaining]
    target = lt_plugin.create_strategy("imp", levels=4, target_density=0.1)
    assert target.level_density(4, total) == pytest.approx(0.1)
    assert target.level_density(1, total) == pytest.approx(0.1 ** 0.25)


@pytest.fixture(scope="module")
def weight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("imp") / "run"
    results = lt_plugin.create_strategy("imp", levels=2, rewind="3it", **TINY).run(out)
    return out, results


def test_levels_prune_the_trained_weights_and_rewind_the_survivors(weight_run):
    out, results = weight_run
    assert [r["level"] for r in results] == [0, 1, 2]
    densities = [r["density"] for r in results]
    assert densities[0] == 1.0 and densities[1] == pytest.approx(0.8, abs=1e-3)
    assert densities[2] == pytest.approx(0.64, abs=1e-3)
    theta_k = weights(out / "level_0" / "train" / "step_3.safetensors")
    for level in (1, 2):
        mask = Mask.load(out / f"level_{level}" / "mask.safetensors")
        previous = Mask.load(out / f"level_{level - 1}" / "mask.safetensors")
        trained_before = weights(out / f"level_{level - 1}" / "weights.safetensors")
        for name in mask.prunable:
            keep = mask.tensors[name]
            assert not (keep & ~previous.tensors[name]).any()  # nested masks
            # the survivors are the largest trained weights of the level before (global threshold)
        survivors = torch.cat([trained_before[n][mask.tensors[n]].abs() for n in mask.prunable])
        removed_now = torch.cat([trained_before[n][previous.tensors[n] & ~mask.tensors[n]].abs()
                                 for n in mask.prunable])
        assert survivors.min() >= removed_now.max()
        # the level starts from theta_k on the survivors and zero elsewhere, at step k
        start = weights(out / f"level_{level}" / "train" / "step_3.safetensors")
        for name, value in theta_k.items():
            keep = mask.tensors.get(name)
            expected = value * keep if keep is not None else value
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(start[name], expected), name
    saved = json.loads((out / "results.json").read_text())
    assert saved == results
    for key in ("level", "density", "params", "macs", "val_accuracy", "test_accuracy", "train_seconds"):
        assert all(key in r for r in results)
    assert results[2]["params"] < results[1]["params"] < results[0]["params"]
    assert (out / "accuracy_vs_density.png").stat().st_size > 1000
    assert results[0]["test_accuracy"] > 0.3  # it learns something from 512 digits in 3 epochs


def test_rerun_does_no_work_and_other_settings_are_refused(weight_run, capsys):
    out, results = weight_run
    stamp = (out / "level_2" / "result.json").stat().st_mtime_ns
    again = lt_plugin.create_strategy("imp", levels=2, rewind="3it", **TINY).run(out)
    assert again == results and (out / "level_2" / "result.json").stat().st_mtime_ns == stamp
    code = cli_main(["imp", "--out", str(out), "--levels", "2", "--rewind", "3it", "--model", "test_resnet",
                               "--dataset", "digits", "--image-size", "16", "--max-train-samples", "512",
                               "--batch-size", "32", "--epochs", "4", "--lr", "0.05"])
    err = capsys.readouterr().err
    assert code == 2 and "epochs=3, not 4" in err and len(err.strip().splitlines()) == 1


def test_export_writes_a_ticket_that_reproduces_the_test_accuracy(weight_run, tmp_path):
    out, results = weight_run
    assert cli_main(["export", "--run", str(out), "--level", "2", "--out", str(tmp_path / "t.safetensors")]) == 0
    ticket = load_ticket(tmp_path / "t.safetensors")
    from lt_plugin.experiment import Experiment
    data = Experiment(model="test_resnet", dataset="digits", image_size=16, max_train_samples=256).load_data()
    with torch.no_grad():
        predictions = ticket.model(data.test.images).argmax(dim=1)
    assert (predictions == data.test.labels).float().mean().item() == pytest.approx(results[2]["test_accuracy"])
    assert ticket.mask.density == pytest.approx(results[2]["density"])


def test_channel_tickets_train_physically_smaller(tmp_path):
    results = lt_plugin.create_strategy("imp", levels=2, granularity="channel", prune_fraction=0.4,
                                        **TINY).run(tmp_path / "run")
    macs = [r["macs"] for r in results]
    assert macs[2] < macs[1] < macs[0]
    assert results[2]["density"] == pytest.approx(0.36, abs=0.03)
    trained_small = weights(tmp_path / "run" / "level_2" / "train" / "model.safetensors")
    dense = weights(tmp_path / "run" / "level_2" / "weights.safetensors")
    assert sum(v.numel() for v in trained_small.values()) < 0.6 * sum(v.numel() for v in dense.values())
    # the exported ticket, rebuilt from the dense-space weights and the mask, is the small model that was trained
    assert cli_main(["export", "--run", str(tmp_path / "run"), "--level", "2", "--out", str(tmp_path / "t.st")]) == 0
    ticket = load_ticket(tmp_path / "t.st")
    assert ticket.metadata["physical"]
    rebuilt = ticket.model.state_dict()
    assert rebuilt.keys() == trained_small.keys()
    assert all(torch.equal(rebuilt[k], trained_small[k]) for k in rebuilt)
    from lt_plugin.experiment import Experiment
    data = Experiment(model="test_resnet", dataset="digits", image_size=16, max_train_samples=512).load_data()
    with torch.no_grad():
        accuracy = (ticket.model(data.test.images).argmax(dim=1) == data.test.labels).float().mean().item()
    assert accuracy == pytest.approx(results[2]["test_accuracy"])


def test_cli_user_mistakes_exit_2_with_one_line(tmp_path):
    cases = [(["--model", "no_such_model_xyz"], "unknown timm model"),
             (["--rewind", "sometimes"], "--rewind"),
             (["--dataset", "./missing-folder"], "no such dataset folder"),
             (["--model", "mixer_s16_224", "--model-kwargs", '{"img_size": 32}', "--granularity", "channel"],
              "Torch-Pruning cannot group the channels of MlpMixer")]
    for flags, message in cases:
        proc = subprocess.run([sys.executable, "-m", "lt_plugin.cli", "imp", "--out", str(tmp_path / "x"), *flags],
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "x").exists()  # nothing written


@pytest.mark.slow
def test_a_run_killed_at_several_points_ends_as_an_uninterrupted_one(tmp_path, kill_when):
    flags = ["--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples", "256",
             "--batch-size", "32", "--epochs", "3", "--levels", "2", "--lr", "0.05"]
    command = [sys.executable, "-m", "lt_plugin.cli", "imp", *flags]
    killed = tmp_path / "killed"
    points = (killed / "level_0" / "train" / "checkpoint.safetensors",  # level 0 training
              killed / "level_1" / "mask.safetensors",  # level 1's mask
              killed / "level_2" / "train" / "checkpoint.safetensors")  # level 2 training
    for path in points:
        kill_when([*command, "--out", str(killed)], path)
    subprocess.run([*command, "--out", str(killed)], check=True, capture_output=True)
    subprocess.run([*command, "--out", str(tmp_path / "straight")], check=True, capture_output=True)
    for level in range(3):
        a = weights(killed / f"level_{level}" / "weights.safetensors")
        b = weights(tmp_path / "straight" / f"level_{level}" / "weights.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), level
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("train_seconds", "latency_ms")} for r in rs]  # noqa: E731
    assert strip(json.loads((killed / "results.json").read_text())) == \
        strip(json.loads((tmp_path / "straight" / "results.json").read_text()))


def test_finetune_trains_at_the_final_lr_and_lr_rewinding_reruns_the_schedule(tmp_path):
    from lt_plugin.train import TrainConfig, final_lr
    cfg = TrainConfig(epochs=4, batch_size=10, lr=0.1, sched="multistep", decay_milestones=(0.5, 0.75))
    assert final_lr(cfg, 100) == pytest.approx(0.001)  # 0.1 decayed twice by 0.1
    settings = dict(TINY, sched="multistep", epochs=2, decay_milestones=(0.5,))
    lt_plugin.create_strategy("imp", levels=1, rewind="finetune", **settings).run(tmp_path / "ft")
    lt_plugin.create_strategy("imp", levels=1, rewind="lr", **settings).run(tmp_path / "lr")
    finetune_lrs = [json.loads(line)["lr"] for line in
                    (tmp_path / "ft" / "level_1" / "train" / "metrics.jsonl").read_text().splitlines()]
    lrs = {level: [json.loads(line)["lr"] for line in
                   (tmp_path / "lr" / level / "train" / "metrics.jsonl").read_text().splitlines()]
           for level in ("level_0", "level_1")}
    assert finetune_lrs == pytest.approx([0.005, 0.005])
    assert lrs["level_1"] == lrs["level_0"]  # LR rewinding reruns the whole schedule
    # both start from the trained weights of level 0, masked
    trained = weights(tmp_path / "ft" / "level_0" / "weights.safetensors")
    start = weights(tmp_path / "ft" / "level_1" / "train" / "step_0.safetensors")
    mask = Mask.load(tmp_path / "ft" / "level_1" / "mask.safetensors")
    for name in mask.prunable:
        assert torch.equal(start[name], trained[name] * mask.tensors[name])


@pytest.mark.slow
def test_two_process_run_matches_the_one_process_schedule(tmp_path, two_processes):
    flags = ["imp", "--model", "test_resnet", "--dataset", "digits", "--image-size", "16", "--max-train-samples",
             "256", "--batch-size", "32", "--epochs", "1", "--levels", "1", "--lr", "0.05"]
    launcher, env = two_processes
    subprocess.run([*launcher, *flags, "--out", str(tmp_path / "two")], env=env, check=True, capture_output=True,
                   timeout=600)
    assert cli_main([*flags, "--out", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert [r["steps"] for r in two] == [r["steps"] for r in one]  # the global batch is the same
    assert [r["density"] for r in two] == pytest.approx([r["density"] for r in one])
    assert abs(two[0]["test_accuracy"] - one[0]["test_accuracy"]) < 0.1
