"""Statistical tests the verdicts and the studies use, on plain samples (lists or arrays of numbers).

- effect_size: the one rule for a standardized effect (Hedges' g) anywhere in the report: shown only when
  both samples spread and overlap enough for it to mean something, else NaN.
- holm: Holm's step-down adjustment of a family of p-values (Holm 1979).
- tost: equivalence of two means within a margin, two one-sided Welch tests (Schuirmann 1987).
- spread_test: equal spread of two samples, the Brown-Forsythe test (Levene's test about the median).
- km_restricted_mean: the restricted mean time to an event, the area under the Kaplan-Meier curve.
- what a test can detect (power 80%, Cohen 1988): welch_se / mean_se (the standard error and degrees of
  freedom behind a Welch or one-sample t-test), detectable (the smallest true difference a t-test of that
  standard error detects, or the smallest equivalence margin TOST establishes), detectable_share (the
  smallest rise of a share of successes a one-sided Fisher test detects, by exact enumeration).

Means with their Student-t intervals and Welch's test are in normlib.metrics (mean_ci, welch,
welch_ci, format_ci).
"""
import math

import numpy as np
from scipy import stats

from normlib.metrics import welch  # Welch's test and Hedges' g; effect_size decides where g is shown

ALPHA = 0.05  # every test of the report decides at this level
POWER = 0.8   # what a test "can detect": a true effect it finds with this probability
G_LIMIT = 4.0  # beyond this |Hedges' g| the samples barely overlap: g measures their spread, not the effect


def finite(values):
    """The finite numbers of values (None and NaN dropped), as a float array."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return x[np.isfinite(x)]


def effect_size(a, b, resolution):
    """Hedges' g of mean(a) - mean(b) (normlib.metrics.welch), or NaN where a standardized effect says nothing:
    the one rule of the report, used by normlib.verdicts.compare (the main comparison) and, through it, by every
    difference row of the studies (normlib.studies.common). g is shown only when
    - both samples spread: each SD above `resolution`, the measure's smallest meaningful spread. A sample of
      identical values (every run at chance, a loss that never rose) leaves nothing to scale by: g becomes a
      difference over ~zero (|g| = 137 in the main comparison, 60 in a study).
    - the samples overlap: |g| <= G_LIMIT. At |g| = 4 two normal densities overlap by 2 Phi(-2) = 4.6% and a
      draw from one exceeds a draw from the other 99.8% of the time (Phi(4 / sqrt 2)); beyond, g mostly measures
      how small the seed-to-seed spread happened to be: its standard error, sqrt(1/n_a + 1/n_b + g^2 / (2 (n_a +
      n_b))) (Hedges & Olkin 1985), is over g / 4.5 with 5 seeds a side, and the spread it divides by is itself
      estimated from those few seeds.
    Where g is not shown, the raw difference with its interval carries the size of the effect (every verdict
    sentence states it)."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2 or min(a.std(ddof=1), b.std(ddof=1)) <= resolution:
        return math.nan
    g = welch(a, b)["g"]
    return float(g) if np.isfinite(g) and abs(g) <= G_LIMIT else math.nan


def holm(pvalues):
    """Holm's step-down adjusted p-values, in the input order. A NaN p (a comparison that could not be
    tested) stays NaN but counts in the family size, as a declared comparison that cannot reject."""
    p = np.asarray(pvalues, dtype=float)
    m, out = len(p), np.full(len(p), np.nan)
    order = [i for i in np.argsort(p, kind="stable") if np.isfinite(p[i])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def tost(a, b, margin, alpha=ALPHA):
    """Equivalence of two means within +-margin by two one-sided Welch tests (Schuirmann 1987):
    H0 diff <= -margin and H0 diff >= +margin. Returns diff, its (1 - 2 alpha) Welch interval, the two
    one-sided p, p = their max, and equivalent (p < alpha: the difference lies within the margin)."""
    a, b = finite(a), finite(b)
    out = {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else math.nan, "margin": float(margin),
           "lo": math.nan, "hi": math.nan, "p_lower": math.nan, "p_upper": math.nan, "p": math.nan,
           "equivalent": False}
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se, d = math.sqrt(va + vb), out["diff"]
    if se == 0:
        p_lower, p_upper, half = float(d <= -margin), float(d >= margin), 0.0
    else:
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
        p_lower, p_upper = stats.t.sf((d + margin) / se, df), stats.t.cdf((d - margin) / se, df)
        half = stats.t.ppf(1 - alpha, df) * se
    p = max(p_lower, p_upper)
    out.update(lo=d - half, hi=d + half, p_lower=float(p_lower), p_upper=float(p_upper), p=float(p),
               equivalent=bool(p < alpha))
    return out


def km_restricted_mean(times, reached, horizon):
    """Restricted mean time to the event up to `horizon`, the area under the Kaplan-Meier survival curve;
    runs that did not reach the event are censored at their time. When every run is censored only at
    the common horizon this equals the mean of min(time, horizon), the mean of metrics.steps_to_level."""
    t, e = np.asarray(times, dtype=float), np.asarray(reached, dtype=bool)
    surv, area, last = 1.0, 0.0, 0.0
    for u in np.unique(t[e & (t <= horizon)]):
        area += surv * (u - last)
        surv *= 1 - np.sum(e & (t == u)) / np.sum(t >= u)
        last = u
    return float(area + surv * (horizon - last))


def spread_test(a, b):
    """Brown-Forsythe test of equal spread (Levene's test about the median): sd_a, sd_b and p."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        return {"sd_a": math.nan, "sd_b": math.nan, "p": math.nan}
    p = stats.levene(a, b, center="median").pvalue if np.ptp(np.concatenate([a, b])) > 0 else math.nan
    return {"sd_a": float(a.std(ddof=1)), "sd_b": float(b.std(ddof=1)), "p": float(p)}


# ----------------------------------------------------------------------------
# what a test can detect


def welch_se(a, b):
    """(standard error of mean(a) - mean(b), Welch-Satterthwaite degrees of freedom); NaNs with fewer than
    two finite values a side; (0, inf) when neither sample spreads."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return 0.0, math.inf
    return math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))


def mean_se(x):
    """(standard error of the mean of x, n - 1): a one-sample or paired t-test."""
    x = finite(x)
    if len(x) < 2:
        return math.nan, math.nan
    return float(x.std(ddof=1) / math.sqrt(len(x))), len(x) - 1.0


def detectable(se, df, alpha=ALPHA, power=POWER, kind="two-sided"):
    """The smallest true effect a t-test with this standard error and df finds with the given power at level
    alpha (the normal approximation to the noncentral t, with t quantiles): (t_{1-alpha/2} + t_power) x se
    for a two-sided test, (t_{1-alpha} + t_power) x se one-sided (non-inferiority), and for "equivalence" the
    smallest margin TOST establishes with that power when the true difference is 0, (t_{1-alpha} +
    t_{(1+power)/2}) x se. NaN when se is."""
    if not (np.isfinite(se) and se >= 0):
        return math.nan
    first = {"two-sided": 1 - alpha / 2, "one-sided": 1 - alpha, "equivalence": 1 - alpha}[kind]
    second = (1 + power) / 2 if kind == "equivalence" else power
    return float((stats.t.ppf(first, df) + stats.t.ppf(second, df)) * se)


def detectable_share(n_a, n_b, p_b, alpha=ALPHA, power=POWER, step=0.01):
    """The smallest rise of the share of successes over p_b (the other group's observed share) that a
    one-sided Fisher exact test of n_a against n_b runs detects with the given power, by exact enumeration
    of both binomial outcomes; NaN when even a share of 1 is not detected that often."""
    if not (n_a and n_b):
        return math.nan
    xa, xb = np.arange(n_a + 1), np.arange(n_b + 1)
    reject = np.array([[stats.fisher_exact([[i, n_a - i], [j, n_b - j]], alternative="greater").pvalue < alpha
                        for j in xb] for i in xa])
    prob_b = stats.binom.pmf(xb, n_b, p_b)
    for p_a in np.arange(p_b + step, 1 + 1e-9, step):
        if stats.binom.pmf(xa, n_a, min(p_a, 1.0)) @ reject @ prob_b >= power:
            return float(min(p_a, 1.0) - p_b)
    return math.nan
