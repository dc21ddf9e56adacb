"""Schedules as fasterai users know them, each against its formula written out by hand: GradualPruner's named
schedules with start and end as steps or fractions of training, the start step that prunes when the schedule's
density there is below 1 (Zhu & Gupta with s_i > 0, one-shot), and IMPPruner's rewind point in the same words."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import lt_plugin
from lt_plugin.gradual import GradualSchedule
from lt_plugin.masks import Mask
from lt_plugin.pruners import IMPPruner
from lt_plugin.schedules import pruning_window, schedule_density, training_step

LAYERS = {"fc_layers.0.weight": 784 * 300, "fc_layers.1.weight": 300 * 100}


def _lenet(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("lenet_300_100", num_classes=3)


def test_the_schedules_are_fasterais_formulas():
    # fasterai's sched_agp, sched_iterative (3 steps), sched_oneshot; fastai's sched_cos and sched_lin, in sparsity
    # start=0, end=0.9 at pos 0.3; the density is 1 - sparsity
    start, end, pos = 0.0, 0.9, 0.3
    by_hand = {"cubic": end + (start - end) * (1 - pos) ** 3, "agp": end + (start - end) * (1 - pos) ** 3,
               "iterative": start + (end - start) / 3 * math.ceil(pos * 3), "one-shot": end,
               "cosine": start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2,
               "linear": start + pos * (end - start)}
    for name, sparsity in by_hand.items():
        assert schedule_density(name, 1.0, 0.1, pos) == pytest.approx(1 - sparsity, abs=1e-12), name
        assert schedule_density(name, 1.0, 0.1, 1.0) == 0.1
        assert schedule_density(name, 1.0, 0.1, 0.0) == (0.1 if name == "one-shot" else 1.0)
    assert schedule_density("iterative", 1.0, 0.1, 0.34, iterative_steps=3) == pytest.approx(0.4)  # 2 of 3 steps


@pytest.mark.parametrize("schedule, expected", [
    # start 2, end 8, every 2 steps, final density 0.25: the pruning steps and their densities, by hand
    ("cubic", {4: 0.25 + 0.75 * (2 / 3) ** 3, 6: 0.25 + 0.75 * (1 / 3) ** 3, 8: 0.25}),
    ("linear", {4: 1 - 0.75 / 3, 6: 1 - 0.75 * 2 / 3, 8: 0.25}),
    ("cosine", {4: 1 + (1 + math.cos(math.pi * 2 / 3)) * -0.75 / 2, 6: 1 + (1 + math.cos(math.pi / 3)) * -0.75 / 2,
                8: 0.25}),
    ("one-shot", {2: 0.25}),
    ("iterative", {4: 1 - 0.75 / 3, 6: 1 - 0.75 * 2 / 3, 8: 0.25}),
])
def test_gradual_pruner_prunes_on_each_named_schedule(schedule, expected):
    model = _lenet()
    pruner = lt_plugin.GradualPruner(model, pruning_ratio=0.75, schedule=schedule, start=2, end=8, frequency=2)
    density = 1.0
    for step in range(1, 11):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)  # the weights move between prunings
        assert pruner.step() == (step in expected), step
        density = expected.get(step, density)
        for name, size in LAYERS.items():  # every layer to the schedule's density (Zhu & Gupta's rule)
            assert int(pruner.mask.tensors[name].sum()) == round(density * size), (step, name)


def test_start_and_end_as_steps_fractions_or_epochs():
    assert pruning_window(0.25, 0.75, 2, total_steps=16) == (4, 12) == pruning_window(4, 12, 2)
    assert pruning_window("1ep", "3ep", 5, steps_per_epoch=4) == (4, 9)  # the end moved back onto the grid
    assert training_step("0.5", "start", total_steps=10) == 5 and training_step("7it", "start") == 7
    for kwargs, message in [(dict(start=0.25, end=0.75), "start=0.25 is a fraction of the training: give total_steps"),
                            (dict(start=0, end=20, total_steps=10), "past the end of training"),
                            (dict(start=5, end=6, frequency=2), "no room for one pruning every frequency=2 steps"),
                            (dict(start="1ep", end=4), "counts epochs: give steps_per_epoch"),
                            (dict(start=1.5, end=2, total_steps=10), "it must be in \\[0, 1\\]")]:
        with pytest.raises(lt_plugin.UserError, match=message):
            lt_plugin.GradualPruner(_lenet(), **kwargs)
    fractions = lt_plugin.GradualPruner(_lenet(), start=0.25, end=0.75, frequency=2, total_steps=16)
    assert (fractions.schedule.start_step, fractions.schedule.end_step) == (4, 12)


def test_an_initial_density_below_one_prunes_at_the_start_step():
    """Zhu & Gupta's s_i > 0: at t0 the mask is brought to the initial density (it was left dense until t0 + dt)."""
    model = _lenet()
    schedule = GradualSchedule(start_step=3, end_step=9, frequency=3, final_density=0.2, initial_density=0.8)
    assert not schedule.is_pruning_step(2) and schedule.is_pruning_step(3) and schedule.density(2) == 1.0
    mask = schedule.mask_at(model, 3, Mask.ones(model, list(LAYERS)))
    for name, size in LAYERS.items():
        weights = model.get_parameter(name).detach().abs().flatten()
        by_hand = weights >= weights.sort(descending=True).values[round(0.8 * size) - 1]
        assert torch.equal(mask.tensors[name].flatten(), by_hand), name  # the largest 80% of |w|, layer by layer
    assert schedule.density(6) == pytest.approx(0.2 + 0.6 * 0.5 ** 3)
    from_zero = lt_plugin.GradualPruner(_lenet(), pruning_ratio=0.8, initial_ratio=0.2, start=0, end=6, frequency=3)
    assert from_zero.mask.density == pytest.approx(0.8, abs=1e-5) and from_zero.current_step == 0  # at once


@pytest.mark.parametrize("rewind_to, more", [(3, {}), (0.5, {"total_steps": 6}), ("1ep", {"steps_per_epoch": 3}),
                                             ("3it", {})])
def test_imp_rewinds_to_a_point_given_as_gradual_starts_are(rewind_to, more):
    model = _lenet()
    pruner = IMPPruner(model, torch.zeros(1, 1, 28, 28), pruning_ratio=0.5, rewind_to=rewind_to, **more)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.mask_after_steps(optimizer)  # counts the dense training's steps
    kept = {}
    for step in range(1, 7):
        F.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 3, (8,))).backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 3:
            kept = {k: v.clone() for k, v in model.state_dict().items()}  # theta_3, by hand
    pruner.step()
    for name, value in model.state_dict().items():  # the survivors are theta_3's
        keep = pruner.mask.tensors.get(name)
        assert torch.equal(value, kept[name] * keep if keep is not None else kept[name]), name


def test_a_late_rewind_point_the_pruner_never_saw_is_one_line():
    model = _lenet()
    pruner = IMPPruner(model, torch.zeros(1, 1, 28, 28), pruning_ratio=0.5, rewind_to=100)
    with pytest.raises(lt_plugin.UserError, match="rewind_to is step 100 .* counted 0 optimizer steps"):
        pruner.step()


def test_fits_gradual_pruning_prunes_at_a_start_step_of_zero_before_the_first_step(tmp_path):
    from tiny_training import image_data

    from lt_plugin.callbacks import Snapshots
    from lt_plugin.gradual import GradualPruning
    from lt_plugin.store import load_weights
    from lt_plugin.train import TrainConfig, fit, make_accelerator

    model = timm.create_model("test_resnet", num_classes=4)
    prunable = [n for n, p in model.named_parameters() if p.dim() > 1 and not n.startswith("fc.")]
    schedule = GradualSchedule(start_step=0, end_step=2, frequency=2, final_density=0.3, schedule="one-shot")
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.1)
    fit(model, image_data(64, size=16), image_data(20, size=16, seed=1), cfg, tmp_path / "fit",
        accelerator=make_accelerator(cfg),
        callbacks=[GradualPruning(schedule, prunable, tmp_path / "final.safetensors"), Snapshots([0])])
    mask = Mask.load(tmp_path / "final.safetensors")
    step_0 = load_weights(tmp_path / "fit" / "step_0.safetensors")
    for name in prunable:  # one-shot at step 0: every layer at 30% before the first optimizer step
        assert int(mask.tensors[name].sum()) == round(0.3 * mask.tensors[name].numel()), name
        assert not step_0[name][~mask.tensors[name]].any(), name
