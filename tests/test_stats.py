"""Tests of normlib.stats against hand computations and scipy: the effect-size rule, Holm, TOST, the
Kaplan-Meier restricted mean and Brown-Forsythe."""
import math

import numpy as np
import pytest
from scipy import stats

from normlib import metrics
from normlib.stats import G_LIMIT, effect_size, holm, km_restricted_mean, spread_test, tost


def test_effect_size_only_with_spread_on_both_sides_and_overlap():
    """Hedges' g where both samples spread above the resolution and |g| <= G_LIMIT; NaN otherwise."""
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert effect_size(a, b, 1e-9) == pytest.approx(metrics.welch(a, b)["g"]) == pytest.approx(-1.3076, abs=1e-4)
    assert math.isnan(effect_size([2.0] * 5, b, 1e-9))             # one side constant: a difference over ~0
    assert math.isnan(effect_size(a, [2.0] * 5, 1e-9))
    assert math.isnan(effect_size([2.0, 2.0 + 1e-12, 2.0], b, 1e-9))  # spread below the measure's resolution
    assert math.isnan(effect_size(a, b, 2.0))                       # the same, at a coarser resolution
    assert math.isnan(effect_size([1.0], b, 1e-9))                  # one value: no spread to estimate
    # overlap: shifting b moves |g| across the limit; beyond it g is not shown, the difference still is
    sd = math.sqrt((4 * np.var(a, ddof=1) + 5 * np.var(b, ddof=1)) / 9) / (1 - 3 / (4 * 11 - 9))
    inside = [x + (G_LIMIT - 0.1) * sd - 2.5 for x in b]
    outside = [x + (G_LIMIT + 0.1) * sd - 2.5 for x in b]
    assert effect_size(a, inside, 1e-9) == pytest.approx(-(G_LIMIT - 0.1))
    assert abs(metrics.welch(a, outside)["g"]) > G_LIMIT and math.isnan(effect_size(a, outside, 1e-9))
    far = [10 + 1e-3 * i for i in range(5)]                         # the studies' case: near-constant, far apart
    assert abs(metrics.welch(far, a)["g"]) > 4 and math.isnan(effect_size(far, a, 1e-9))


def test_holm_by_hand():
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    nan_too = holm([0.01, math.nan])  # an untestable comparison still counts in the family
    assert nan_too[0] == pytest.approx(0.02) and math.isnan(nan_too[1])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_tost_matches_two_one_sided_welch_tests():
    a = [0.301, 0.305, 0.298, 0.303, 0.300]
    b = [0.302, 0.299, 0.304, 0.301, 0.306]
    r = tost(a, b, margin=0.01)
    x, y = np.array(a), np.array(b)
    assert r["p_lower"] == pytest.approx(stats.ttest_ind(x + 0.01, y, equal_var=False, alternative="greater").pvalue)
    assert r["p_upper"] == pytest.approx(stats.ttest_ind(x - 0.01, y, equal_var=False, alternative="less").pvalue)
    assert r["equivalent"] and r["p"] == max(r["p_lower"], r["p_upper"]) < 0.05
    assert -0.01 < r["lo"] < r["diff"] < r["hi"] < 0.01  # the 90% interval lies inside the margin
    assert not tost(a, b, margin=0.001)["equivalent"]  # too narrow a margin for these seeds
    assert not tost(a, list(y + 0.02), margin=0.01)["equivalent"]  # a real difference
    assert not tost(a[:1], b, margin=1.0)["equivalent"]  # one run: nothing is established


def test_km_restricted_mean():
    # events at 2 and 4, one run censored at 6 (before the horizon 10): S = 1, then 2/3, then 1/3
    assert km_restricted_mean([2, 4, 6], [True, True, False], 10) == pytest.approx(2 + 2 * 2 / 3 + 6 / 3)
    times, reached = [300.0, 450.0, 1000.0, 1000.0], [True, True, False, False]  # censored at the horizon only
    assert km_restricted_mean(times, reached, 1000) == pytest.approx(np.mean(times))


def test_spread_test_responds_to_spread_not_to_the_mean():
    rng = np.random.default_rng(0)
    tight, wide = 0.30 + 0.002 * rng.standard_normal(10), 0.30 + 0.03 * rng.standard_normal(10)
    r = spread_test(tight, wide)
    assert r["p"] < 0.01 and r["sd_a"] < r["sd_b"]
    assert r["p"] == pytest.approx(stats.levene(tight, wide, center="median").pvalue)
    assert spread_test(tight, wide + 1.0)["p"] == pytest.approx(r["p"])
    assert spread_test(tight, tight + 0.1)["p"] > 0.9


def test_detectable_is_the_effect_found_with_80_percent_power():
    """Simulated: a true difference equal to what stats.detectable states, at the spread it was computed
    from, is found by Welch's test about 80% of the time; half of it far less often."""
    from scipy import stats as sp

    from normlib import stats
    rng = np.random.default_rng(0)
    n, sd, alpha = 8, 1.0, 0.05
    se = sd * (2 / n) ** 0.5
    d = stats.detectable(se, 2 * n - 2, alpha)

    def power(diff):
        hits = [sp.ttest_ind(rng.normal(diff, sd, n), rng.normal(0, sd, n), equal_var=False).pvalue < alpha
                for _ in range(3000)]
        return np.mean(hits)
    assert power(d) == pytest.approx(0.8, abs=0.04)
    assert power(d / 2) < 0.4
    assert stats.detectable(se, 14, alpha / 6) > d  # a stricter level (Holm over 6) needs a larger effect
    assert stats.detectable(se, 14, alpha, kind="equivalence") > stats.detectable(se, 14, alpha, kind="one-sided")


def test_detectable_share_by_exact_enumeration():
    from normlib import stats
    rise = stats.detectable_share(5, 5, 0.0)  # five runs a side, the control never trains
    assert 0.5 < rise < 1.0
    assert stats.detectable_share(10, 10, 0.0) < rise  # more runs detect a smaller rise
    assert math.isnan(stats.detectable_share(2, 2, 0.0))  # two runs a side can never reach p < 0.05
