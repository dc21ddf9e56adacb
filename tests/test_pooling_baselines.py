"""Lottery Pools' baselines against hand computations on a tiny model: SWA (the running blend at alphas
1/(i+2), the uniform mean of the target and its candidates), EMA (a fixed alpha) and the naive output ensemble
(the mean of the members' softmaxes), entry by entry and prediction by prediction."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from lt_plugin import Mask
from lt_plugin.masks import magnitude_mask
from lt_plugin.pooling import keep_target_mask, running_blend, swa_alphas
from lt_plugin.train import TrainConfig, evaluate, make_accelerator, validate

PRUNABLE = ["0.weight"]


def _model():
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def _tickets():
    """Four tickets of one architecture; the target (level 3) keeps 5 of its 12 weights."""
    model, tickets = _model(), {}
    for level in range(4):
        generator = torch.Generator().manual_seed(level)
        state = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v + level
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        tickets[level] = (state, magnitude_mask(model, 5 / 12, PRUNABLE) if level == 3 else
                          Mask.ones(model, PRUNABLE))
    return tickets


def test_the_swa_alphas_make_the_uniform_mean_of_the_target_and_its_candidates():
    tickets = _tickets()
    target_state, target_mask = tickets[3]
    keep = target_mask.tensors["0.weight"]
    state, mask = running_blend(_model(), tickets, 3, [2, 1, 0], swa_alphas(3), reprune=keep_target_mask)
    assert mask is target_mask
    for name, value in target_state.items():
        if not value.is_floating_point():
            assert torch.equal(state[name], value), name  # counters stay the target's
            continue
        mean = sum(tickets[level][0][name] for level in range(4)) / 4
        torch.testing.assert_close(state[name], mean * keep if name == "0.weight" else mean)


def test_swa_and_ema_re_prune_each_blend_to_the_targets_count_by_global_magnitude():
    tickets = _tickets()
    for by_hand, alphas in (([1 / 2, 1 / 3, 1 / 4], swa_alphas(3)), ([0.9] * 3, [0.9] * 3)):  # SWA, EMA
        current = dict(tickets[3][0])
        for level, alpha in zip([2, 1, 0], by_hand):  # blend, then keep the 5 largest |w|
            current = {k: alpha * tickets[level][0][k] + (1 - alpha) * v if v.is_floating_point() else v
                       for k, v in current.items()}
            weight = current["0.weight"]
            keep = torch.zeros(weight.numel(), dtype=torch.bool)
            keep[weight.abs().reshape(-1).topk(5).indices] = True
            current["0.weight"] = weight * keep.reshape(weight.shape)
        state, mask = running_blend(_model(), tickets, 3, [2, 1, 0], alphas)
        assert torch.equal(mask.tensors["0.weight"], current["0.weight"] != 0)
        for name, value in current.items():
            torch.testing.assert_close(state[name], value)


def test_an_ensemble_predicts_the_mean_of_its_members_softmaxes(fresh_accelerate_state):
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(64, 5, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        member = nn.Linear(5, 3)
        with torch.no_grad():
            member.weight.mul_(1 + 4 * seed)  # members of different confidence: the mean of softmaxes is not that
        members.append(member)                # of the logits, nor the majority vote
    with torch.no_grad():
        logits = torch.stack([m(inputs) for m in members])
    probabilities = logits.softmax(dim=2).mean(dim=0)
    predicted = probabilities.argmax(dim=1)
    assert not torch.equal(predicted, logits.mean(dim=0).argmax(dim=1))
    assert not torch.equal(predicted, logits.argmax(dim=2).mode(dim=0).values)
    accelerator = make_accelerator(TrainConfig())
    dataset = TensorDataset(inputs, labels)
    accuracy, counted = evaluate(members, dataset, accelerator, batch_size=16)
    assert counted == 64 and accuracy == (predicted == labels).sum().item() / 64
    loss = F.nll_loss(probabilities.log(), labels).item()  # the cross-entropy of the mean softmax
    assert validate(members, dataset, accelerator, batch_size=16)["loss"] == pytest.approx(loss, rel=1e-5)
    assert not math.isclose(loss, F.cross_entropy(logits.mean(dim=0), labels).item(), rel_tol=1e-3)
