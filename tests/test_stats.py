"""lt_plugin.stats against hand computations: every expected number below is worked out in the comments."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from lt_plugin.stats import mcnemar_exact, paired_difference, paired_loss_test, summarize

pytestmark = pytest.mark.filterwarnings("error")  # the degenerate cases must be handled, not warned about by scipy

# Student-t 0.975 quantiles (two-sided 95%), checked once against scipy.stats.t.ppf(0.975, df).
T_975_DF2 = 4.302652729749464  # df = 2 has a closed form: t / sqrt(2 + t^2) = 0.95  =>  t = sqrt(1.805 / 0.0975)
T_975_DF3 = 3.1824463052837078


def test_the_quantile_constants():
    assert T_975_DF2 == pytest.approx(math.sqrt(0.95 ** 2 * 2 / (1 - 0.95 ** 2)), rel=1e-14)
    assert scipy_stats.t.ppf(0.975, 2) == pytest.approx(T_975_DF2, rel=1e-12)
    assert scipy_stats.t.ppf(0.975, 3) == pytest.approx(T_975_DF3, rel=1e-12)


def test_summarize_one_two_three():
    # mean (1 + 2 + 3) / 3 = 2; squared deviations 1 + 0 + 1 = 2, / (n - 1) = 1 => std 1;
    # interval 2 -/+ t_{0.975, 2} * 1 / sqrt(3)
    result = summarize([1, 2, 3])
    half = T_975_DF2 / math.sqrt(3)
    assert result["n"] == 3
    assert result["mean"] == pytest.approx(2.0)
    assert result["std"] == pytest.approx(1.0)
    assert result["ci_low"] == pytest.approx(2 - half, rel=1e-12)
    assert result["ci_high"] == pytest.approx(2 + half, rel=1e-12)
    assert result["values"] == [1, 2, 3]
    json.dumps(result)


def test_summarize_other_confidence():
    # 90%: the 0.95 quantile; df = 2 closed form again: t = sqrt(0.9^2 * 2 / (1 - 0.9^2))
    t_95_df2 = math.sqrt(0.81 * 2 / 0.19)
    result = summarize([1, 2, 3], confidence=0.9)
    assert result["ci_high"] - result["mean"] == pytest.approx(t_95_df2 / math.sqrt(3), rel=1e-12)


def test_summarize_skips_none_and_one_value():
    result = summarize([None, 4.0, None])
    assert result == {"n": 1, "mean": 4.0, "std": None, "ci_low": None, "ci_high": None,
                      "values": [None, 4.0, None]}
    # None skipped: the same numbers as [1, 2, 3]
    skipping = summarize([1, None, 2, 3])
    assert skipping["n"] == 3 and skipping["mean"] == pytest.approx(2.0) and skipping["std"] == pytest.approx(1.0)
    assert skipping["values"] == [1, None, 2, 3]
    json.dumps(skipping)


def test_summarize_empty_and_constant():
    for empty in ([], [None, None]):
        result = summarize(empty)
        assert result["n"] == 0
        assert all(result[key] is None for key in ("mean", "std", "ci_low", "ci_high"))
    constant = summarize([0.5, 0.5, 0.5])
    assert constant["std"] == 0 and constant["ci_low"] == constant["ci_high"] == 0.5


def test_summarize_plain_floats_from_numpy_and_torch():
    result = summarize([torch.tensor(1.0), np.float64(2.0), np.int64(3)])
    assert all(type(value) is float for value in result["values"])
    json.dumps(result)


def test_summarize_rejects_a_bad_confidence():
    with pytest.raises(ValueError):
        summarize([1, 2, 3], confidence=95)


def test_paired_difference_by_hand():
    a = [5, 7, None, 4, 9]
    b = [4, 5, 3, 4, 6]  # the pair with a None is skipped: differences 1, 2, 0, 3
    # mean 6 / 4 = 1.5; squared deviations 0.25 + 0.25 + 2.25 + 2.25 = 5, / 3 => std sqrt(5 / 3)
    # standard error sqrt(5 / 3) / 2 = sqrt(5 / 12); t = 1.5 / sqrt(5 / 12), df 3
    result = paired_difference(a, b)
    sem = math.sqrt(5 / 12)
    t = 1.5 / sem
    assert result["n"] == 4
    assert result["differences"] == [1.0, 2.0, 0.0, 3.0]
    assert result["mean"] == pytest.approx(1.5)
    assert result["std"] == pytest.approx(math.sqrt(5 / 3))
    assert result["ci_low"] == pytest.approx(1.5 - T_975_DF3 * sem, rel=1e-12)
    assert result["ci_high"] == pytest.approx(1.5 + T_975_DF3 * sem, rel=1e-12)
    assert result["p_value"] == pytest.approx(2 * scipy_stats.t.sf(t, 3), rel=1e-10)
    assert 0.05 < result["p_value"] < 0.2  # |t| = 2.32 < 3.18: not significant at 5%
    json.dumps(result)


def test_paired_difference_df2_closed_form():
    # differences 1, 2, 3: t = 2 / (1 / sqrt(3)) = 2 sqrt(3), df 2; the t(2) tail has a closed form:
    # P(T > t) = 1/2 - t / (2 sqrt(2 + t^2)) = 1/2 - sqrt(3) / sqrt(14), two-sided twice that.
    result = paired_difference([11, 12, 13], [10, 10, 10])
    assert result["p_value"] == pytest.approx(2 * (0.5 - math.sqrt(3 / 14)), rel=1e-10)
    assert result["p_value"] == pytest.approx(2 * scipy_stats.t.sf(2 * math.sqrt(3), 2), rel=1e-10)


def test_paired_difference_degenerate():
    one = paired_difference([1.0, None], [0.5, 0.2])
    assert one["n"] == 1 and one["mean"] == 0.5 and one["differences"] == [0.5]
    assert one["std"] is None and one["ci_low"] is None and one["ci_high"] is None and one["p_value"] is None
    shifted = paired_difference([3, 4, 5], [1, 2, 3])  # every difference 2
    assert shifted["std"] == 0 and shifted["ci_low"] == shifted["ci_high"] == 2.0 and shifted["p_value"] == 0.0
    same = paired_difference([3, 4, 5], [3, 4, 5])
    assert same["mean"] == 0 and same["ci_low"] == same["ci_high"] == 0.0 and same["p_value"] == 1.0
    none = paired_difference([None], [1])
    assert none["n"] == 0 and none["p_value"] is None and none["differences"] == []
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


@pytest.mark.parametrize("gained, lost, expected", [
    (0, 0, 1.0),          # no disagreement: no evidence
    (3, 0, 1 / 8),        # all 3 of 3: 1 / 2^3
    (0, 4, 1.0),          # 0 or more of 4: certain
    (7, 3, 176 / 1024),   # C(10,7) + C(10,8) + C(10,9) + C(10,10) = 120 + 45 + 10 + 1 = 176
    (5, 5, 638 / 1024),   # 252 + 210 + 120 + 45 + 10 + 1 = 638
    (12, 1, 14 / 8192),   # C(13,12) + C(13,13) = 13 + 1
])
def test_mcnemar_exact_by_hand(gained, lost, expected):
    assert mcnemar_exact(gained, lost) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("gained, lost", [(0, 0), (1, 0), (0, 1), (2, 2), (6, 1), (9, 4), (20, 7), (31, 30)])
def test_mcnemar_exact_matches_the_sum_and_pooling(gained, lost):
    n = gained + lost
    by_sum = sum(math.comb(n, k) for k in range(gained, n + 1)) / 2 ** n
    assert mcnemar_exact(gained, lost) == pytest.approx(by_sum, rel=1e-12)


def test_mcnemar_exact_other_alternatives():
    # less: 3 or fewer of 10 = C(10,0) + C(10,1) + C(10,2) + C(10,3) = 1 + 10 + 45 + 120 = 176; two-sided doubles
    # the smaller tail at p = 0.5
    assert mcnemar_exact(3, 7, alternative="less") == pytest.approx(176 / 1024, rel=1e-12)
    assert mcnemar_exact(7, 3, alternative="two-sided") == pytest.approx(352 / 1024, rel=1e-12)
    with pytest.raises(ValueError):
        mcnemar_exact(1, 2, alternative="bigger")
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


OLD = [0.9, 1.3, 0.4, 2.2, 0.7, 1.1, 0.5, 1.8]
BETTER = [0.6, 1.2, 0.15, 1.7, 0.55, 0.75, 0.45, 1.35]  # lower on every sample, by 8 distinct amounts (no ties)
WORSE = [2 * old - new for old, new in zip(OLD, BETTER)]  # higher by the same amounts


@pytest.mark.parametrize("method", ["t", "wilcoxon"])
def test_paired_loss_test_directions(method):
    assert paired_loss_test(BETTER, OLD, method=method) < 0.01
    assert paired_loss_test(WORSE, OLD, method=method) > 0.5
    assert paired_loss_test(OLD, OLD, method=method) == 1.0
    assert paired_loss_test(torch.tensor(BETTER), torch.tensor(OLD), method=method) == pytest.approx(
        paired_loss_test(BETTER, OLD, method=method), rel=1e-6)  # float32 tensors: close, not identical
    assert paired_loss_test(torch.tensor(OLD), torch.tensor(OLD), method=method) == 1.0


def test_paired_loss_t_by_hand():
    # differences -1, -2, -3: t = -2 / (1 / sqrt(3)) = -2 sqrt(3), df 2; one-sided (less) p = P(T < -2 sqrt(3))
    # = 1/2 - sqrt(3) / sqrt(14) (the t(2) closed form)
    p = paired_loss_test([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert p == pytest.approx(0.5 - math.sqrt(3 / 14), rel=1e-10)
    assert paired_loss_test([1.0, 2.0, 3.0], [2.0, 3.0, 4.0]) == 0.0  # the same shift everywhere
    assert paired_loss_test([1.0], [2.0]) == 1.0  # one sample: no t test


def _signed_rank_p(differences):
    """The exact one-sided (less) p by enumerating the 2^n sign patterns of the ranks 1..n: the share with a positive
    rank sum no larger than the observed one (distinct magnitudes, no zeros)."""
    ranks = {value: rank for rank, value in enumerate(sorted(abs(d) for d in differences), start=1)}
    observed = sum(ranks[abs(d)] for d in differences if d > 0)
    patterns = list(itertools.product((0, 1), repeat=len(differences)))
    hits = sum(1 for signs in patterns if sum(s * r for s, r in zip(signs, range(1, len(differences) + 1))) <= observed)
    return hits / len(patterns)


def test_paired_loss_wilcoxon_by_hand():
    # 5 differences of distinct magnitudes, all negative: W+ = 0, reached only by the all-negative pattern: 1 / 2^5
    new, old = [1.0, 1.0, 1.0, 1.0, 1.0], [1.1, 1.3, 1.6, 2.0, 2.5]
    assert paired_loss_test(new, old, method="wilcoxon") == pytest.approx(1 / 32, rel=1e-12)
    assert _signed_rank_p([n - o for n, o in zip(new, old)]) == 1 / 32
    # -1, -2, -3, -4, +5: W+ = 5; rank subsets with sum <= 5: {}, {1}, {2}, {3}, {4}, {5}, {1,2}, {1,3}, {1,4},
    # {2,3}: 10 of 32
    differences = [-1.0, -2.0, -3.0, -4.0, 5.0]
    assert paired_loss_test(differences, [0.0] * 5, method="wilcoxon") == pytest.approx(10 / 32, rel=1e-12)
    assert _signed_rank_p(differences) == 10 / 32
    # zero_method "wilcox": a tie carries no direction and is dropped, leaving the first case
    assert paired_loss_test(new + [3.0], old + [3.0], method="wilcoxon") == pytest.approx(1 / 32, rel=1e-12)


def test_paired_loss_test_rejects_bad_input():
    with pytest.raises(ValueError):
        paired_loss_test([1.0, 2.0], [1.0], method="t")
    with pytest.raises(ValueError):
        paired_loss_test([1.0, 2.0], [1.0, 2.0], method="sign")
    with pytest.raises(ValueError):
        paired_loss_test([1.0, float("nan")], [1.0, 2.0])
