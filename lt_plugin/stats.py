"""The statistics that tell a ticket from luck: a mean over seeds with its confidence interval, a paired difference
between two settings run on the same seeds, the adjustment of a family of such differences for multiplicity with
the verdict word each then earns, and paired tests between two models scored on the same samples.

Everything is built on scipy.stats (and statsmodels' multipletests for the adjustment); this module only fixes the
conventions (None skipped, degenerate cases made defined instead of nan) and returns plain Python floats so the
results go straight into JSON.

The smallest gain a paired (McNemar) test can resolve is `lt_plugin.acceptance.smallest_gain`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import scipy  # its stats module (~1.5 s to import) loads when a test first needs it

LOSS_TEST_METHODS = ("t", "wilcoxon")
MCNEMAR_ALTERNATIVES = ("greater", "less", "two-sided")
ADJUSTMENTS = ("holm", "bonferroni", "none")
# What `verdict` says of a paired difference: its sign where the adjusted test resolves one, else why not.
VERDICTS = ("above", "below", "within noise", "no spread", "one seed", "no pairs")
# Differences equal to within this many machine epsilons of the largest value differenced have no spread: the
# subtraction's rounding (0.91 - 0.90 against 0.82 - 0.81) is not variation between seeds.
ROUNDING_EPSILONS = 8


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha!r}")


def _plain(value: Optional[Any]) -> Optional[float]:
    return None if value is None else float(value)


def _t_interval(mean: float, std: float, n: int, confidence: float) -> tuple:
    """mean -/+ t_{(1+confidence)/2, n-1} * std / sqrt(n) as plain floats; the point itself when std is 0."""
    if std == 0:  # scipy's t.interval is nan with scale 0; an interval of a constant is the point
        return mean, mean
    low, high = scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return float(low), float(high)


def summarize(values: Sequence[Optional[float]], confidence: float = 0.95) -> Dict[str, Any]:
    """The mean of `values` (one per seed, say) with a Student-t confidence interval of that mean.

    Returns a dict of plain (JSON-serialisable) numbers:

    - "n": how many values counted (None entries are skipped);
    - "mean": their mean;
    - "std": their sample standard deviation (ddof=1);
    - "ci_low", "ci_high": mean -/+ t_{(1+confidence)/2, n-1} * std / sqrt(n) (scipy.stats.t); when every value is
      equal the interval collapses to the mean;
    - "values": the values as given, None kept, numbers as floats.

    With n == 1, "std", "ci_low" and "ci_high" are None (one value says nothing about spread); with n == 0 every
    field but "n" (0) and "values" is None.
    """
    _check_confidence(confidence)
    given = [_plain(value) for value in values]
    kept = np.array([value for value in given if value is not None], dtype=float)
    n = int(kept.size)
    result: Dict[str, Any] = {"n": n, "mean": None, "std": None, "ci_low": None, "ci_high": None, "values": given}
    if n == 0:
        return result
    mean = float(kept.mean())
    result["mean"] = mean
    if n == 1:
        return result
    std = float(kept.std(ddof=1))
    result["std"] = std
    result["ci_low"], result["ci_high"] = _t_interval(mean, std, n, confidence)
    return result


def paired_difference(a: Sequence[Optional[float]], b: Sequence[Optional[float]],
                      confidence: float = 0.95) -> Dict[str, Any]:
    """The per-pair differences a_i - b_i (two settings run on the same seeds, say) and whether they differ from 0.

    Returns a dict of plain (JSON-serialisable) numbers:

    - "n", "mean", "std", "ci_low", "ci_high": `summarize` of the differences (the Student-t interval of the mean
      difference);
    - "p_value": two-sided paired t test that the mean difference is 0 (scipy.stats.ttest_rel);
    - "no_spread": True when there are two pairs or more and every difference is the same (to within the rounding
      of the subtraction, `ROUNDING_EPSILONS`);
    - "differences": the differences, in order, of the pairs kept.

    A pair with a None on either side is skipped. With n == 1 there is no std, interval or p-value (None); n == 0
    gives None throughout. A difference with no spread has "std" 0 and no interval or p-value (None): the t test
    is undefined there (scipy's p is 0 or nan), and a zero-width interval would claim a certainty that n seeds
    cannot give; its n and "mean" say what was seen.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need the same length, got {len(a)} and {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    differences = [x - y for x, y in pairs]
    summary = summarize(differences, confidence)
    del summary["values"]
    scale = max((max(abs(x), abs(y)) for x, y in pairs), default=0.0)
    no_spread = len(pairs) >= 2 and bool(
        max(differences) - min(differences) <= ROUNDING_EPSILONS * np.finfo(float).eps * scale)
    p_value: Optional[float] = None
    if no_spread:
        summary.update(std=0.0, ci_low=None, ci_high=None)
    elif len(pairs) >= 2:
        first, second = zip(*pairs)
        p_value = float(scipy.stats.ttest_rel(first, second).pvalue)
    return {**summary, "p_value": p_value, "no_spread": no_spread, "differences": differences}


def _has_no_spread(difference: Dict[str, Any]) -> bool:
    """A difference with no spread: flagged by paired_difference, or (as older results recorded it) a std of 0."""
    return bool(difference.get("no_spread")) or ((difference.get("n") or 0) >= 2 and difference.get("std") == 0)


def adjust(p_values: Sequence[Optional[float]], method: str = "holm") -> List[Optional[float]]:
    """The p-values of one family of tests adjusted for their number, in the order given.

    `method`: "holm" (Holm's step-down: the i-th smallest of m p-values is multiplied by m - i + 1, each then
    raised to the largest before it, capped at 1), "bonferroni" (each multiplied by m, capped at 1), both by
    statsmodels.stats.multitest.multipletests; "none" gives them back. None entries (tests not made: one seed, no
    spread) are not in the family, so m counts the numbers only, and stay None.
    """
    if method not in ADJUSTMENTS:
        raise ValueError(f"method must be one of {ADJUSTMENTS}, got {method!r}")
    given = [_plain(p) for p in p_values]
    tested = [p for p in given if p is not None]
    if not all(0 <= p <= 1 for p in tested):  # also refuses nan
        raise ValueError(f"p-values must lie in [0, 1], got {tested}")
    if method == "none" or not tested:
        return given
    from statsmodels.stats.multitest import multipletests  # slow to import: paid only where a family is adjusted
    adjusted = iter(multipletests(tested, method=method)[1])
    return [None if p is None else float(next(adjusted)) for p in given]


def verdict(difference: Dict[str, Any], adjusted_p: Optional[float], alpha: float = 0.05) -> str:
    """What a paired difference (a dict of `paired_difference`) shows, given its adjusted p-value: "above" or
    "below" zero when `adjusted_p` < `alpha`, by the sign of its mean; "within noise" otherwise; and where no test
    was made, why: "no spread" (every difference the same: see its "mean" and "n"), "one seed" (n == 1) or
    "no pairs" (n == 0). One of `VERDICTS`.
    """
    _check_alpha(alpha)
    n = difference.get("n") or 0
    if n == 0:
        return "no pairs"
    if n == 1:
        return "one seed"
    if _has_no_spread(difference):
        return "no spread"
    if adjusted_p is None:
        raise ValueError("a difference over several seeds with spread needs its adjusted p-value")
    if adjusted_p >= alpha:
        return "within noise"
    return "above" if difference["mean"] > 0 else "below"


def adjust_family(differences: Sequence[Dict[str, Any]], method: str = "holm",
                  alpha: float = 0.05) -> List[Dict[str, Any]]:
    """One family of paired differences (dicts of `paired_difference`), adjusted together: a copy of each with

    - "p_adjusted": its p-value adjusted over the family (`adjust`); None where no test was made (one seed, no
      spread), which keeps it out of the family;
    - "adjustment", "alpha", "family_size": the method, the level and m, the number of tests in the family;
    - "verdict": `verdict` from "p_adjusted";
    - "confidence_adjusted", "ci_adjusted_low", "ci_adjusted_high": the t interval of the mean difference at
      1 - alpha / k, where k = p_adjusted / p_value is the factor the adjustment multiplied this p-value by (m
      where the adjusted p is capped at 1; 1 for "none"). It excludes 0 exactly when the verdict is "above" or
      "below". For "bonferroni" k = m: the simultaneous intervals, all m covering at once with probability
      >= 1 - alpha. For "holm" k is the step-down factor (1 to m): the interval agrees with the verdict but is not
      simultaneous (Holm's procedure has no simple compatible intervals). None where no test was made.
    """
    _check_alpha(alpha)
    p_values = [None if _has_no_spread(d) else d.get("p_value") for d in differences]
    adjusted = adjust(p_values, method)
    size = sum(p is not None for p in p_values)
    family = []
    for difference, p, q in zip(differences, p_values, adjusted):
        entry = {**difference, "p_adjusted": q, "adjustment": method, "alpha": alpha, "family_size": size,
                 "verdict": verdict(difference, q, alpha),
                 "confidence_adjusted": None, "ci_adjusted_low": None, "ci_adjusted_high": None}
        if q is not None:
            factor = 1.0 if method == "none" else q / p if 0 < p and q < 1 else float(size)
            confidence = 1 - alpha / factor
            low, high = _t_interval(difference["mean"], difference["std"], difference["n"], confidence)
            entry.update(confidence_adjusted=confidence, ci_adjusted_low=low, ci_adjusted_high=high)
        family.append(entry)
    return family


def mcnemar_exact(gained: int, lost: int, alternative: str = "greater") -> float:
    """McNemar's exact test on the samples two models disagree on: `gained` the new model gets right and the old one
    wrong, `lost` the other way round. Under the null each disagreement is a fair coin, so this is the binomial test
    of `gained` successes in `gained + lost` trials at 0.5 (scipy.stats.binomtest).

    Returns the p-value as a float: with "greater" (the default), the chance of `gained` or more of the
    disagreements going the new model's way; "less" and "two-sided" as in scipy.stats.binomtest. 1.0 when the
    models never disagree (no evidence either way).
    """
    if alternative not in MCNEMAR_ALTERNATIVES:
        raise ValueError(f"alternative must be one of {MCNEMAR_ALTERNATIVES}, got {alternative!r}")
    if gained < 0 or lost < 0:
        raise ValueError(f"counts must be non-negative, got gained={gained}, lost={lost}")
    if gained + lost == 0:
        return 1.0
    return float(scipy.stats.binomtest(int(gained), int(gained + lost), 0.5, alternative=alternative).pvalue)


def _as_float_array(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor (any device, any floating dtype, bfloat16 included)
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=float).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite (a nan or inf loss makes any p-value meaningless)")
    return array


def paired_loss_test(new_losses: Any, old_losses: Any, method: str = "t") -> float:
    """One-sided p-value that the new model's per-sample loss is lower than the old's, from the per-sample
    differences new - old on the same samples (in the same order).

    `new_losses` and `old_losses`: torch tensors, numpy arrays or sequences of the same number of elements
    (flattened). `method`:

    - "t": paired t test, scipy.stats.ttest_rel(new, old, alternative="less");
    - "wilcoxon": Wilcoxon signed-rank test, scipy.stats.wilcoxon(new - old, alternative="less",
      zero_method="wilcox"). "wilcox" drops the samples both models score identically, as McNemar (`mcnemar_exact`)
      drops the samples both get right or both get wrong: a tie says nothing about which model is better; and it
      keeps scipy's exact null distribution available for small samples, where "pratt" (zeros ranked, then dropped)
      falls back to the normal approximation whenever there is a zero.

    Returns the p-value as a float. Defined where scipy gives nan: identical inputs (every difference 0), or fewer
    samples than the test needs, give 1.0 (no evidence); every difference the same nonzero value gives 0.0 for the
    t test if the new loss is lower, 1.0 if higher.
    """
    if method not in LOSS_TEST_METHODS:
        raise ValueError(f"method must be one of {LOSS_TEST_METHODS}, got {method!r}")
    new = _as_float_array(new_losses, "new_losses")
    old = _as_float_array(old_losses, "old_losses")
    if new.size != old.size:
        raise ValueError(f"paired losses need the same number of samples, got {new.size} and {old.size}")
    differences = new - old
    if not np.any(differences):  # identical (or empty): scipy gives nan
        return 1.0
    if method == "wilcoxon":
        return float(scipy.stats.wilcoxon(differences, alternative="less", zero_method="wilcox").pvalue)
    if new.size < 2:
        return 1.0
    if np.all(differences == differences[0]):  # no spread: scipy warns and returns 0 or 1 by sign; say so plainly
        return 0.0 if differences[0] < 0 else 1.0
    return float(scipy.stats.ttest_rel(new, old, alternative="less").pvalue)
