"""Own-loop pruners a user can checkpoint: each pruner's state is tensors and plain values (Torch's weights_only
loader reads it, no pickled code), `accelerator.register_for_checkpointing(pruner)` saves it with the run, and a
run killed mid-schedule and resumed from `accelerator.save_state` ends with the same masks and weights, bit for bit,
as the run that was not killed (the independent reference; both run here, in one process). The kill is in-process:
every object is dropped after `save_state`, and the resumed run builds all of them afresh."""

import io

import pytest
import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator

import lt_plugin
from lt_plugin.early_bird_pruner import EarlyBirdPruner
from lt_plugin.pruners import IMPPruner

EXAMPLE = torch.zeros(1, 3, 16, 16)
STEPS_PER_LEVEL = 3


def _batch(step):
    """The batch of a global step, the same in every run (no random state to restore)."""
    generator = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 10, (8,), generator=generator)


def _model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10)


def _train_step(prepared, optimizer, accelerator, step):
    inputs, targets = _batch(step)
    accelerator.backward(F.cross_entropy(prepared(inputs), targets))
    optimizer.step()
    optimizer.zero_grad()


def _imp_run(checkpoint, granularity, kill_at=None, resume_at=None, **options):
    """IMP over levels 0-2, STEPS_PER_LEVEL optimizer steps each, on Accelerate as docs/own-loop.md writes it:
    `accelerator.save_state` after global step `kill_at` ends the run there; `resume_at` resumes from it."""
    accelerator = Accelerator(cpu=True)
    model = _model()
    pruner = IMPPruner(model, EXAMPLE, pruning_ratio=0.75, iterative_steps=2, granularity=granularity, **options)
    accelerator.register_for_checkpointing(pruner)
    if resume_at is not None:
        pruner.load_state_from(checkpoint)  # first: a channel ticket's model takes its shape
    step = resume_at or 0
    while True:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # fresh at every level, as IMP's
        hook = pruner.mask_after_steps(optimizer)
        prepared, optimizer = accelerator.prepare(model, optimizer)
        if step == resume_at:
            accelerator.load_state(checkpoint)
        while step < STEPS_PER_LEVEL * (pruner.current_step + 1):
            step += 1
            _train_step(prepared, optimizer, accelerator, step)
            if step == kill_at:
                accelerator.save_state(checkpoint)
                return None
        hook.remove()
        if pruner.current_step == pruner.iterative_steps:
            return pruner, model
        pruner.step()
        accelerator.free_memory()  # the next level's model and optimizer are prepared anew


@pytest.mark.parametrize("granularity, kill_at, options", [
    ("weight", 1, {"rewind_to": 2}),   # in the dense training, before its rewind point (theta_2) is taken
    ("weight", 5, {}),                 # in level 1, the mask in force
    ("channel", 5, {}),                # in level 1, the model physically pruned
])
def test_an_imp_run_killed_and_resumed_ends_as_the_run_that_was_not(tmp_path, fresh_accelerate_state, granularity,
                                                                     kill_at, options):
    straight, straight_model = _imp_run(tmp_path / "unused", granularity, **options)
    assert _imp_run(tmp_path / "ckpt", granularity, kill_at=kill_at, **options) is None
    state = torch.load(tmp_path / "ckpt" / "custom_checkpoint_0.pkl", weights_only=True)  # no pickled code
    assert state["current_step"] == (0 if kill_at <= STEPS_PER_LEVEL else 1)
    resumed, resumed_model = _imp_run(tmp_path / "ckpt", granularity, resume_at=kill_at, **options)
    assert resumed.mask.plan == straight.mask.plan and resumed.levels() == straight.levels()
    assert all(torch.equal(resumed.mask.tensors[n], t) for n, t in straight.mask.tensors.items())
    a, b = resumed_model.state_dict(), straight_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], _model().state_dict()[k]) for k in ("conv1.0.weight",))  # it trained


def test_an_early_bird_search_killed_and_resumed_finds_the_same_ticket(tmp_path, fresh_accelerate_state):
    def search(kill_at=None, resume_at=None):
        accelerator = Accelerator(cpu=True)
        model = _model()
        pruner = EarlyBirdPruner(model, EXAMPLE, pruning_ratio=0.5, window=3, epsilon=0.15, penalty=1e-3)
        accelerator.register_for_checkpointing(pruner)
        prepared, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        if resume_at is not None:
            accelerator.load_state(tmp_path / "ckpt")
        for epoch in range((resume_at or 0) + 1, 9):
            for step in range(2):
                inputs, targets = _batch(10 * epoch + step)
                accelerator.backward(F.cross_entropy(prepared(inputs), targets))
                pruner.regularize(model)
                optimizer.step()
                optimizer.zero_grad()
            pruner.update(epoch)
            if epoch == kill_at:
                accelerator.save_state(tmp_path / "ckpt")
                return None
        return pruner, model

    straight, straight_model = search()
    assert search(kill_at=2) is None
    torch.load(tmp_path / "ckpt" / "custom_checkpoint_0.pkl", weights_only=True)
    resumed, resumed_model = search(resume_at=2)
    assert straight.found_at is not None and resumed.found_at == straight.found_at  # the ticket emerged, alike
    assert resumed.checks == straight.checks and resumed.detector.distances == straight.detector.distances
    assert resumed.mask.plan == straight.mask.plan
    a, b = resumed.step().state_dict(), straight.step().state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(v, straight_model.state_dict()[k]) for k, v in resumed_model.state_dict().items())


def test_a_gradual_run_killed_and_resumed_ends_as_the_run_that_was_not(tmp_path, fresh_accelerate_state):
    def train(kill_at=None, resume_at=None):
        accelerator = Accelerator(cpu=True)
        model = _model()
        pruner = lt_plugin.GradualPruner(model, pruning_ratio=0.75, start=2, end=8, frequency=2)
        accelerator.register_for_checkpointing(pruner)
        prepared, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
        if resume_at is not None:
            accelerator.load_state(tmp_path / "ckpt")
        for step in range((resume_at or 0) + 1, 11):
            _train_step(prepared, optimizer, accelerator, step)
            pruner.step()
            if step == kill_at:
                accelerator.save_state(tmp_path / "ckpt")
                return None
        return pruner, model

    straight, straight_model = train()
    assert train(kill_at=5) is None  # after the pruning of step 4, before that of step 6
    assert torch.load(tmp_path / "ckpt" / "custom_checkpoint_0.pkl", weights_only=True)["pruned_at"] == 4
    resumed, resumed_model = train(resume_at=5)
    assert resumed.current_step == straight.current_step == 10 and straight.mask.density == pytest.approx(0.25, 1e-3)
    assert all(torch.equal(resumed.mask.tensors[n], t) for n, t in straight.mask.tensors.items())
    assert all(torch.equal(v, straight_model.state_dict()[k]) for k, v in resumed_model.state_dict().items())


def test_a_pruner_pickles_after_its_hooks_and_resets_as_torch_prunings_do():
    model = _model()
    pruner = IMPPruner(model, EXAMPLE, pruning_ratio=0.75, iterative_steps=2)
    first = pruner.step()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner.mask_after_steps(optimizer)
    pruner.apply_mask()  # binds the enforcer, a local function
    torch.save(pruner, io.BytesIO())  # what failed before: the bound enforcer is not part of the pickle
    mask = pruner.mask
    pruner.reset()  # back to level 0, the rewind point the current weights
    assert pruner.current_step == 0 and pruner.levels() == [] and pruner.mask.density == 1.0
    assert first is model
    again = IMPPruner(model, EXAMPLE, pruning_ratio=0.75, iterative_steps=2)  # a fresh pruner on the same weights
    pruner.step()
    again.step()
    assert pruner.mask.distance(again.mask) == 0.0 and pruner.mask.distance(mask) == 0.0

    gradual = lt_plugin.GradualPruner(_model(), pruning_ratio=0.5, start=0, end=2, frequency=1)
    gradual.step()
    gradual.step()
    assert gradual.mask.density == pytest.approx(0.5, abs=1e-3)
    gradual.reset()
    assert gradual.current_step == 0 and gradual.mask.density == 1.0

    early_bird = EarlyBirdPruner(_model(), EXAMPLE, pruning_ratio=0.5, window=2, epsilon=1.0)
    assert early_bird.update(1) and early_bird.found_at == 1
    early_bird.reset()
    assert early_bird.checks == [None] and early_bird.found_at is None and early_bird.mask is None

    channel = IMPPruner(_model(), EXAMPLE, pruning_ratio=0.5, granularity="channel")
    channel.step()
    with pytest.raises(lt_plugin.UserError, match="cannot grow back"):
        channel.reset()
