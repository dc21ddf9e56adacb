"""Lottery Pools' acceptance rules on hand-built per-image scores: each decision equals a hand computation (the
split and the one confirmatory test included); a blend identical to the target is never kept; a blend better on
every validation image always is."""

import math

import pytest
import torch
from scipy import stats as scipy_stats
from torch import nn

from lt_plugin import Mask
from lt_plugin.acceptance import ACCEPTANCE, Rule, SampleScores, confirmation_split, smallest_gain
from lt_plugin.pooling import lottery_pool

N = 400


def _tickets():
    """Three dense 'tickets' whose blends are told apart by their one weight (target 0, candidates 1 and 2)."""
    mask = Mask({"weight": torch.ones(1, 1, dtype=torch.bool)}, ["weight"])
    return nn.Linear(1, 1, bias=False), {k: ({"weight": torch.full((1, 1), float(k))}, mask) for k in range(3)}


def _scores(correct, loss):
    return SampleScores(torch.as_tensor(correct, dtype=torch.bool), torch.as_tensor(loss, dtype=torch.float64))


def _pool(acceptance, blend_scores, target_scores, selection=None, alphas=(0.5,)):
    """The search from target 0 over candidate 1 at `alphas`: every blend scores `blend_scores`."""
    model, tickets = _tickets()

    def evaluate(m, _mask):
        blended = float(m.weight.detach()) > 0
        scores = blend_scores if blended else target_scores
        return scores.correct, scores.loss

    return lottery_pool(model, tickets, 0, evaluate=evaluate, candidates=[1], alphas=list(alphas),
                        acceptance=acceptance, selection=selection)


def test_the_confirmation_split_halves_every_class_with_its_seed():
    labels = torch.tensor([0] * 7 + [1] * 10 + [2] * 3)
    selection = confirmation_split(labels, seed=3)
    assert [int(selection[labels == c].sum()) for c in (0, 1, 2)] == [4, 5, 2]  # the odd one to selection
    assert torch.equal(selection, confirmation_split(labels, seed=3))
    assert not torch.equal(selection, confirmation_split(labels, seed=4))


def test_each_rule_decides_as_computed_by_hand():
    target = _scores([True] * 200 + [False] * 200, [0.5] * N)
    correct = torch.tensor([True] * 200 + [False] * 200)
    correct[200:205], correct[0] = True, False  # +5, -1: 4 images more
    loss = torch.full((N,), 0.5, dtype=torch.float64)
    loss[:100] = 0.45  # a hundred images surer of themselves
    blend = _scores(correct, loss)
    tries = 2  # two alphas, one candidate
    # paired: McNemar on 5 gained, 1 lost: p = (C(6,5) + C(6,6)) / 2^6 = 7/64 > 0.05 / 2
    paired = _pool("paired", blend, target, alphas=(0.5, 0.9))
    assert paired.accepted == [] and paired.sweeps[0]["p_value"] == pytest.approx(7 / 64)
    # loss: one-sided paired t on the differences (100 of -0.05, 300 of 0), by hand
    differences = loss - 0.5
    mean, sd = float(differences.mean()), float(differences.std(unbiased=True))
    p = scipy_stats.t.cdf(mean / (sd / math.sqrt(N)), N - 1)
    pooled = _pool("loss", blend, target, alphas=(0.5, 0.9))
    assert pooled.sweeps[0]["p_value"] == pytest.approx(p) and p < 0.05 / tries
    assert pooled.accepted == [[1, 0.5]]  # lower losses, the accuracy not lower
    # paper: any gain
    assert _pool("paper", blend, target).accepted == [[1, 0.5]]
    # confirm: selected on one half, tested once on the other: gains there 5 - 1 by hand
    selection = torch.zeros(N, dtype=torch.bool)
    selection[::2] = True  # even images select, odd ones confirm
    held_out = ~selection
    gained = int((blend.correct & ~target.correct & held_out).sum())
    lost = int((~blend.correct & target.correct & held_out).sum())
    confirmed = _pool("confirm", blend, target, selection=selection)
    assert confirmed.confirmation == {"gained": gained, "lost": lost, "images": N // 2,
                                      "p_value": pytest.approx(scipy_stats.binomtest(gained, gained + lost, 0.5,
                                                                                     alternative="greater").pvalue)}
    assert (gained, lost) == (2, 0) and confirmed.accepted == []  # p = 1/4 on the held-out half: the target stands


def test_no_rule_keeps_a_blend_identical_to_the_target():
    same = _scores([True] * 300 + [False] * 100, [0.3] * N)
    for acceptance in ACCEPTANCE:
        selection = confirmation_split(torch.zeros(N), 0) if acceptance == "confirm" else None
        assert _pool(acceptance, same, same, selection=selection).accepted == [], acceptance


def test_every_rule_keeps_a_blend_better_on_every_image():
    target = _scores([True] * 300 + [False] * 100, [0.6] * N)
    better = _scores([True] * N, torch.linspace(0.1, 0.2, N))
    for acceptance in ACCEPTANCE:
        selection = confirmation_split(torch.zeros(N), 0) if acceptance == "confirm" else None
        pooled = _pool(acceptance, better, target, selection=selection)
        assert pooled.accepted == [[1, 0.5]], acceptance


def test_what_each_rule_can_detect_on_a_split():
    selection = confirmation_split(torch.zeros(N), 0)
    assert Rule("paired", 198).detectable_gain(N) == smallest_gain(198) / N == 12 / N
    assert Rule("confirm", 198, selection=selection).detectable_gain(N) == 5 / (N // 2)  # 2^-5 < 0.05, one test
    assert Rule("paper", 198).detectable_gain(N) == 1 / N
    assert Rule("loss", 198).detectable_gain(N) is None
