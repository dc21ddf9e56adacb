"""LTH's measurements: validation every N iterations with the early-stopping iteration (the lowest validation loss)
and its weights (callbacks.EarlyStopping), kept across a resume, and recorded by IMP's levels."""

import json
import sys
from pathlib import Path

import pytest
import torch

import lt_plugin
from lt_plugin.callbacks import Snapshots
from lt_plugin.experiment import Experiment
from lt_plugin.masks import Mask
from lt_plugin.store import load_weights
from lt_plugin.train import TrainConfig, fit, make_accelerator, steps_per_epoch, validate

sys.path.insert(0, str(Path(__file__).resolve().parent / "jobs"))
from tiny_training import conv_bn_model, crash_at, image_data, reset_accelerate  # noqa: E402

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
CFG = TrainConfig(epochs=3, batch_size=16, lr=0.05, momentum=0.9, eval_every=2)


def test_the_early_stopping_step_is_the_lowest_validation_loss_of_the_evaluations(tmp_path):
    train_set, val_set = image_data(96), image_data(40, seed=1)
    steps = range(0, CFG.epochs * steps_per_epoch(CFG, 96) + 1)
    result = fit(conv_bn_model(), train_set, val_set, CFG, tmp_path, accelerator=make_accelerator(CFG),
                 callbacks=[Snapshots(steps)])
    evals = [json.loads(line) for line in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == list(range(2, 19, 2))  # every 2 steps; the epoch ends (6, 12, 18) among them
    accelerator = make_accelerator(CFG)
    for entry in evals:  # each evaluation by hand, from the weights at its step
        model = conv_bn_model()
        model.load_state_dict(load_weights(tmp_path / f"step_{entry['step']}.safetensors"))
        scores = validate(model, val_set, accelerator, CFG.eval_batch_size)
        assert entry["val_loss"] == pytest.approx(scores["loss"]) and entry["val_accuracy"] == scores["accuracy"]
    best = min(evals, key=lambda e: e["val_loss"])
    assert result.early_stop == best
    kept = load_weights(tmp_path / "early_stop.safetensors")
    snapshot = load_weights(tmp_path / f"step_{best['step']}.safetensors")
    assert all(torch.equal(kept[k], snapshot[k]) for k in snapshot)
    assert [m["val_loss"] for m in result.history] == [e["val_loss"] for e in evals if e["step"] % 6 == 0]


def test_a_resumed_run_keeps_the_early_stopping_record_of_an_uninterrupted_one(tmp_path):
    train_set, val_set = image_data(96), image_data(40, seed=1)
    with pytest.raises(KeyboardInterrupt):
        fit(conv_bn_model(), train_set, val_set, CFG, tmp_path / "crashed", accelerator=make_accelerator(CFG),
            callbacks=[crash_at(steps_per_epoch(CFG, 96) + 3)])
    resumed = fit(conv_bn_model(seed=4), train_set, val_set, CFG, tmp_path / "crashed",
                  accelerator=make_accelerator(CFG))
    reset_accelerate()
    straight = fit(conv_bn_model(), train_set, val_set, CFG, tmp_path / "straight", accelerator=make_accelerator(CFG))
    assert resumed.early_stop == straight.early_stop
    assert (tmp_path / "crashed" / "evals.jsonl").read_text() == (tmp_path / "straight" / "evals.jsonl").read_text()
    a, b = (load_weights(tmp_path / f / "early_stop.safetensors") for f in ("crashed", "straight"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert not (tmp_path / "crashed" / "early_stop.pending.safetensors").exists()


def test_imp_levels_record_the_early_stopping_iteration_and_its_test_accuracy(tmp_path):
    experiment = Experiment(model="lenet_300_100", dataset="digits", image_size=8)
    results = lt_plugin.create_strategy("imp", model="lenet_300_100", dataset="digits", image_size=8, levels=1,
                                        epochs=2, batch_size=64, opt="adam", lr=1e-3, eval_every=5,
                                        scope="layerwise", layer_prune_fractions={"fc": 0.1}).run(tmp_path / "run")
    test = experiment.load_data().test
    for r in results:
        train = tmp_path / "run" / f"level_{r['level']}" / "train"
        evals = [json.loads(line) for line in (train / "evals.jsonl").read_text().splitlines()]
        assert r["early_stop_step"] == min(evals, key=lambda e: e["val_loss"])["step"] <= r["steps"]
        # the test accuracy of the weights kept at that step, by hand (the mask was enforced on them)
        model = experiment.create_model(10, seed=0).eval()
        model.load_state_dict(load_weights(train / "early_stop.safetensors"))
        with torch.no_grad():
            correct = int((model(test.images).argmax(1) == test.labels).sum())
        assert r["early_stop_test_accuracy"] == pytest.approx(correct / len(test))
    mask = Mask.load(tmp_path / "run" / "level_1" / "mask.safetensors")
    layer = mask.layer_densities()
    assert "fc.weight" in mask.prunable  # the classifier, named by a rate of its own, is pruned
    assert layer["fc.weight"] == pytest.approx(0.9, abs=0.01)
    assert layer["fc_layers.0.weight"] == pytest.approx(0.8, abs=1e-3)
