"""lt_plugin.stats against hand computations: every expected number below is worked out in the comments."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from lt_plugin.stats import (VERDICTS, adjust, adjust_family, mcnemar_exact, paired_difference, paired_loss_test,
                              summarize, verdict)

pytestmark = pytest.mark.filterwarnings("error")  # the degenerate cases must be handled, not warned about by scipy

# Student-t 0.975 quantiles (two-sided 95%), checked once against scipy.stats.t.ppf(0.975, df).
T_975_DF2 = 4.302652729749464  # df = 2 has a closed form: t / sqrt(2 + t^2) = 0.95  =>  t = sqrt(1.805 / 0.0975)
T_975_DF3 = 3.1824463052837078


def t_df2(confidence):
    """The two-sided `confidence` quantile of Student's t with 2 degrees of freedom, in closed form:
    t / sqrt(2 + t^2) = confidence  =>  t = sqrt(2 confidence^2 / (1 - confidence^2))."""
    return math.sqrt(2 * confidence ** 2 / (1 - confidence ** 2))


def p_df2(t):
    """The two-sided p-value of t with 2 degrees of freedom, in closed form: P(|T| > t) = 1 - t / sqrt(2 + t^2)."""
    return 1 - t / math.sqrt(2 + t ** 2)


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
    assert one["no_spread"] is False  # one value says nothing about spread
    none = paired_difference([None], [1])
    assert none["n"] == 0 and none["p_value"] is None and none["differences"] == [] and none["no_spread"] is False
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


def test_a_difference_with_no_spread_is_reported_as_such_not_as_p_0_with_a_point_interval():
    shifted = paired_difference([3, 4, 5], [1, 2, 3])  # every difference 2
    assert shifted["no_spread"] is True and shifted["n"] == 3 and shifted["mean"] == 2.0 and shifted["std"] == 0
    assert shifted["p_value"] is None and shifted["ci_low"] is None and shifted["ci_high"] is None
    assert verdict(shifted, None) == "no spread"
    same = paired_difference([3, 4, 5], [3, 4, 5])
    assert same["no_spread"] is True and same["mean"] == 0 and same["p_value"] is None
    json.dumps(shifted)


def test_differences_equal_but_for_the_rounding_of_the_subtraction_have_no_spread():
    a, b = [0.91, 0.82, 0.73], [0.90, 0.81, 0.72]  # one point each, but 0.91 - 0.90 != 0.82 - 0.81 in binary
    differences = np.subtract(a, b)
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(3))
    assert t > 1e12  # the trap: a t test would call rounding a certain effect
    result = paired_difference(a, b)
    assert result["no_spread"] is True and result["p_value"] is None and result["std"] == 0
    assert result["mean"] == pytest.approx(0.01, rel=1e-12)
    spread = paired_difference(a, [0.90, 0.81, 0.7201])  # a real spread of 1e-4 is one
    assert spread["no_spread"] is False and 0 < spread["p_value"] < 1e-3


def test_holm_and_bonferroni_by_hand():
    # Holm: sorted 0.01, 0.03, 0.04 multiplied by 3, 2, 1 = 0.03, 0.06, 0.04, each raised to the largest before it:
    # 0.03, 0.06, 0.06; back in the given order 0.01 -> 0.03, 0.04 -> 0.06, 0.03 -> 0.06.
    assert adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06], rel=1e-12)
    assert adjust([0.01, 0.04, 0.03], "bonferroni") == pytest.approx([0.03, 0.12, 0.09], rel=1e-12)
    assert adjust([0.01, 0.04, 0.03], "none") == [0.01, 0.04, 0.03]
    # None is not a test: out of the family (m stays 3), kept in place
    held = adjust([None, 0.01, 0.04, None, 0.03])
    assert held[0] is None and held[3] is None and held[1:3] + held[4:] == pytest.approx([0.03, 0.06, 0.06])
    # capped at 1: 0.5 * 2 = 1.0, then 0.6 raised to it
    assert adjust([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    assert adjust([0.2]) == pytest.approx([0.2]) and adjust([]) == [] and adjust([None]) == [None]
    for bad in ([1.5], [-0.1], [float("nan")]):
        with pytest.raises(ValueError):
            adjust(bad)
    with pytest.raises(ValueError):
        adjust([0.01], "hochberg")


def test_the_verdict_words():
    # differences 1, 2, 3 (p = 0.074 by the t(2) closed form) and their negatives
    rising, falling = paired_difference([11, 12, 13], [10, 10, 10]), paired_difference([10, 10, 10], [11, 12, 13])
    assert rising["p_value"] == pytest.approx(p_df2(2 * math.sqrt(3)), rel=1e-10)
    assert verdict(rising, 0.01) == "above" and verdict(falling, 0.01) == "below"
    assert verdict(rising, 0.2) == "within noise" and verdict(falling, 0.2) == "within noise"
    assert verdict(rising, 0.05) == "within noise"  # significant means p_adjusted < alpha, strictly
    assert verdict(rising, rising["p_value"], alpha=0.1) == "above"
    assert verdict(rising, rising["p_value"]) == "within noise"
    with pytest.raises(ValueError):
        verdict(rising, None)  # a difference with spread was tested: its p must be given
    with pytest.raises(ValueError):
        verdict(rising, 0.01, alpha=5)
    assert verdict(paired_difference([4, 4], [1, 1]), None) == "no spread"
    assert verdict(paired_difference([4, None], [1, 1]), None) == "one seed"
    assert verdict(paired_difference([None], [1]), None) == "no pairs"
    # results written before differences were flagged: a std of 0 over several pairs is no spread, whatever p says
    assert verdict({"n": 3, "mean": 0.02, "std": 0.0, "p_value": 0.0}, 0.0) == "no spread"
    assert set(VERDICTS) == {"above", "below", "within noise", "no spread", "one seed", "no pairs"}


def test_holm_turns_two_95_percent_intervals_that_exclude_zero_into_within_noise():
    # Two differences 2.5, 3.5, 4.5 (mean 3.5, std 1, t = 3.5 sqrt(3), df 2): p = 0.026 each, so each 95% interval
    # excludes 0; Holm: 2p = 0.052 for the first, p raised to it for the second: both 0.052 >= 0.05.
    p = p_df2(3.5 * math.sqrt(3))
    assert 0.025 < p < 0.05 / 1.9
    family = [paired_difference([2.5, 3.5, 4.5], [0, 0, 0]), paired_difference([12.5, 13.5, 14.5], [10, 10, 10])]
    assert all(d["ci_low"] == pytest.approx(3.5 - T_975_DF2 / math.sqrt(3)) and d["ci_low"] > 0 for d in family)
    holm = adjust_family(family)
    half = t_df2(1 - 0.05 / 2) / math.sqrt(3)  # each adjusted interval at 1 - alpha / 2: k = p_adjusted / p = 2
    for d in holm:
        assert d["p_value"] == pytest.approx(p, rel=1e-10) and d["p_adjusted"] == pytest.approx(2 * p, rel=1e-10)
        assert d["verdict"] == "within noise" and d["adjustment"] == "holm" and d["family_size"] == 2
        assert d["confidence_adjusted"] == pytest.approx(0.975, rel=1e-12)
        assert (d["ci_adjusted_low"], d["ci_adjusted_high"]) == pytest.approx((3.5 - half, 3.5 + half), rel=1e-10)
        assert d["ci_adjusted_low"] < 0 < d["ci_adjusted_high"]  # the interval shown agrees with the verdict
    assert [d["verdict"] for d in adjust_family(family, "none")] == ["above", "above"]
    assert "p_adjusted" not in family[0]  # copies, the given dicts untouched


def test_a_family_with_untested_members_and_holms_step_down_intervals():
    # small: differences 10, 11, 12 (t = 11 sqrt(3)); large: 1, 2, 3 (t = 2 sqrt(3)); Holm over m = 2: small's
    # 2 p_small (factor 2, interval at 97.5%), large's p_large (> 2 p_small; factor 1, its 95% interval).
    small, large = paired_difference([10, 11, 12], [0, 0, 0]), paired_difference([1, 2, 3], [0, 0, 0])
    flat, single = paired_difference([1, 1, 1], [0, 0, 0]), paired_difference([1, None], [0, 0])
    p_small, p_large = p_df2(11 * math.sqrt(3)), p_df2(2 * math.sqrt(3))
    holm = adjust_family([flat, small, single, large])
    assert [d["verdict"] for d in holm] == ["no spread", "above", "one seed", "within noise"]
    assert [d["family_size"] for d in holm] == [2, 2, 2, 2]
    assert holm[0]["p_adjusted"] is None and holm[0]["ci_adjusted_low"] is None and holm[2]["p_adjusted"] is None
    assert holm[1]["p_adjusted"] == pytest.approx(2 * p_small, rel=1e-9)
    assert holm[3]["p_adjusted"] == pytest.approx(p_large, rel=1e-10)
    assert holm[1]["ci_adjusted_low"] == pytest.approx(11 - t_df2(0.975) / math.sqrt(3), rel=1e-9)
    assert holm[3]["ci_adjusted_low"] == pytest.approx(large["ci_low"], rel=1e-9)
    bonferroni = adjust_family([flat, small, single, large], "bonferroni", alpha=0.1)
    # Bonferroni: factor m = 2 for both, the simultaneous intervals at 1 - 0.1 / 2
    assert bonferroni[3]["p_adjusted"] == pytest.approx(2 * p_large, rel=1e-10) and bonferroni[3]["alpha"] == 0.1
    for d in (bonferroni[1], bonferroni[3]):
        half = t_df2(0.95) / math.sqrt(3)
        assert (d["ci_adjusted_low"], d["ci_adjusted_high"]) == pytest.approx((d["mean"] - half, d["mean"] + half))
    capped = adjust_family([paired_difference([1, -1, 0.5], [0, 0, 0])] * 3, "bonferroni")  # p = 0.78, 3p > 1
    assert capped[0]["p_adjusted"] == 1.0 and capped[0]["confidence_adjusted"] == pytest.approx(1 - 0.05 / 3)
    json.dumps(holm)


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
