"""The statistics that tell a ticket from luck: a mean over seeds with its confidence interval, a paired difference
between two settings run on the same seeds, and paired tests between two models scored on the same samples.

Everything is built on scipy.stats; this module only fixes the conventions (None skipped, degenerate cases made
defined instead of nan) and returns plain Python floats so the results go straight into JSON.

The smallest gain a paired (McNemar) test can resolve is `lt_plugin.acceptance.smallest_gain`.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import numpy as np
import scipy  # its stats module (~1.5 s to import) loads when a test first needs it

LOSS_TEST_METHODS = ("t", "wilcoxon")
MCNEMAR_ALTERNATIVES = ("greater", "less", "two-sided")


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")


def _plain(value: Optional[Any]) -> Optional[float]:
    return None if value is None else float(value)


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
    if std == 0:  # scipy's t.interval is nan with scale 0; an interval of a constant is the point
        result["ci_low"], result["ci_high"] = mean, mean
    else:
        low, high = scipy.stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
        result["ci_low"], result["ci_high"] = float(low), float(high)
    return result


def paired_difference(a: Sequence[Optional[float]], b: Sequence[Optional[float]],
                      confidence: float = 0.95) -> Dict[str, Any]:
    """The per-pair differences a_i - b_i (two settings run on the same seeds, say) and whether they differ from 0.

    Returns a dict of plain (JSON-serialisable) numbers:

    - "n", "mean", "std", "ci_low", "ci_high": `summarize` of the differences (the Student-t interval of the mean
      difference);
    - "p_value": two-sided paired t test that the mean difference is 0 (scipy.stats.ttest_rel);
    - "differences": the differences, in order, of the pairs kept.

    A pair with a None on either side is skipped. With n == 1 there is no std, interval or p-value (None); n == 0
    gives None throughout. When every difference is the same, the interval is that point and the p-value is 0.0 if
    the difference is nonzero (no spread at all around a nonzero shift) and 1.0 if it is zero (scipy gives nan for
    both).
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need the same length, got {len(a)} and {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    differences = [x - y for x, y in pairs]
    summary = summarize(differences, confidence)
    del summary["values"]
    p_value: Optional[float] = None
    if summary["n"] >= 2:
        if summary["std"] == 0:
            p_value = 0.0 if summary["mean"] != 0 else 1.0
        else:
            first, second = zip(*pairs)
            p_value = float(scipy.stats.ttest_rel(first, second).pvalue)
    return {**summary, "p_value": p_value, "differences": differences}


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
