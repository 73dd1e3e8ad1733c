"""Pure functions over Histories: the three criteria of the study and their statistics.

Convergence speed: steps / epochs until the validation loss (or accuracy) first reaches a target.
Stability: spread across seeds of the final validation loss, step-to-step volatility of the
training loss, and spread of the gradient norm. Final loss and accuracy.
Across seeds: mean with a 95% Student-t confidence interval; differences between two
conditions: Welch's t-test with Hedges' g. A verdict names a winner only when the two 95%
intervals do not overlap; otherwise it is a tie (the difference is not established).
"""
import math
import re
import warnings

import numpy as np
import pandas as pd
from scipy import stats


def first_reach(values, steps, target, higher_is_better=False):
    """First entry of steps at which values reaches target (<= target, or >= if higher_is_better); None if never."""
    for v, s in zip(values, steps):
        if (v >= target) if higher_is_better else (v <= target):
            return s
    return None


def volatility(step_loss, tail=0.5):
    """Step-to-step loss volatility: std of the differences of log training loss over the last `tail` of training."""
    x = np.log(np.asarray(step_loss, dtype=float))
    x = x[int(len(x) * (1 - tail)):]
    x = x[np.isfinite(x)]
    return float(np.std(np.diff(x))) if len(x) > 2 else float("nan")


def grad_norm_spread(step_grad_norm, tail=0.5):
    """Coefficient of variation of the gradient norm over the last `tail` of training."""
    g = np.asarray(step_grad_norm, dtype=float)
    g = g[int(len(g) * (1 - tail)):]
    g = g[np.isfinite(g)]
    return float(np.std(g) / np.mean(g)) if len(g) > 1 and np.mean(g) > 0 else float("nan")


def run_metrics(h, target_loss=None, target_acc=None):
    """One row of scalar metrics for one History (a trial). Targets: None to skip convergence."""
    diverged = h.diverged or not h.val_loss
    final = lambda xs: float(xs[-1]) if xs and not diverged else float("nan")  # noqa: E731
    row = {
        "final_train_loss": final(h.train_loss),
        "final_val_loss": final(h.val_loss),
        "final_val_acc": final(h.val_acc),
        "best_val_acc": float(max(h.val_acc)) if h.val_acc else float("nan"),
        "test_loss": float(h.test_loss),
        "test_acc": float(h.test_acc),
        "volatility": volatility(h.step_loss),
        "grad_norm_cv": grad_norm_spread(h.step_grad_norm),
        "grad_norm_mean": float(np.mean(h.step_grad_norm)) if h.step_grad_norm else float("nan"),
        "diverged": bool(h.diverged),
        "diverged_step": h.diverged_step,
        "wall_time": float(h.wall_time),
    }
    if target_loss is not None:
        s = first_reach(h.val_loss, h.eval_step, target_loss)
        row["steps_to_loss"] = s
        row["epochs_to_loss"] = None if s is None else s / h.steps_per_epoch
    if target_acc is not None:
        s = first_reach(h.val_acc, h.eval_step, target_acc, higher_is_better=True)
        row["steps_to_acc"] = s
        row["epochs_to_acc"] = None if s is None else s / h.steps_per_epoch
    return row


def trials_table(histories, keys=("arch", "norm", "seed"), **targets):
    """DataFrame, one row per History: config keys, then run_metrics."""
    rows = [{**{k: h.config[k] for k in keys}, **run_metrics(h, **targets)} for h in histories]
    return pd.DataFrame(rows)


def metric_bounds(metric):
    """The values a metric can take, by its name: accuracies and error rates lie in [0, 1]; losses,
    step counts, volatilities, spreads and gradient norms are non-negative; anything else: None."""
    name = str(metric)
    if re.search(r"(^|_)(acc|error)(_|$)", name):
        return 0.0, 1.0
    if re.search(r"(^|_)(loss|steps|volatility|cv|sd|norm|epochs|range|beta)(_|$)", name):
        return 0.0, math.inf
    return None


def mean_ci(values, level=0.95, bounds=None):
    """(mean, lo, hi) with a Student-t interval; NaNs dropped; (nan, nan, nan) if empty, no interval for n=1.

    bounds=(low, high), e.g. metric_bounds(name): the interval is clipped to the values the metric can
    take (two accuracies of 0.9 and 1.0 give a t interval reaching past 100%). Clipping never changes
    whether two intervals overlap, as both means lie inside the bounds."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (float("nan"),) * 3
    m = float(x.mean())
    if len(x) == 1:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    lo, hi = m - half, m + half
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return m, lo, hi


def summarize(table, by, metrics, level=0.95):
    """Mean, CI bounds and count of each metric per group of `by` columns (long format)."""
    rows = []
    for key, g in table.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            vals = g[metric].tolist()
            m, lo, hi = mean_ci(vals, level, metric_bounds(metric))
            n = sum(v is not None and np.isfinite(float(v)) for v in vals)
            rows.append({**dict(zip(by, key)), "metric": metric, "mean": m, "lo": lo, "hi": hi, "n": n,
                         "n_trials": len(vals)})
    return pd.DataFrame(rows)


def welch(a, b):
    """Welch's t-test of mean(a) - mean(b), with Hedges' g as the effect size."""
    a = np.asarray([v for v in a if v is not None and np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if v is not None and np.isfinite(v)], dtype=float)
    out = {"diff": float(a.mean() - b.mean()) if len(a) and len(b) else float("nan"),
           "t": float("nan"), "p": float("nan"), "g": float("nan"), "n_a": len(a), "n_b": len(b)}
    if len(a) < 2 or len(b) < 2:
        return out
    with warnings.catch_warnings():  # near-identical seeds: scipy warns of precision loss, p is still defined
        warnings.simplefilter("ignore", RuntimeWarning)
        t, p = stats.ttest_ind(a, b, equal_var=False)
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    correction = 1 - 3 / (4 * (len(a) + len(b)) - 9)
    # seeds that agree to rounding (e.g. every run at chance accuracy) leave no spread to scale by
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-300)
    g = out["diff"] / pooled * correction if pooled > 1e-9 * scale else float("nan")
    out.update(t=float(t), p=float(p), g=float(g))
    return out


def overlap_equivalent_p(n, level=0.95):
    """The two-sided p-value of a t-test of two samples of n equal-spread values at which their `level`
    intervals just stop overlapping: |diff| = 2 t_{n-1} s / sqrt(n), i.e. t = sqrt(2) t_{n-1} on 2n - 2
    degrees of freedom. Non-overlapping intervals, this report's rule, are that much stricter than the test."""
    if n < 2:
        return float("nan")
    threshold = math.sqrt(2) * stats.t.ppf(0.5 + level / 2, n - 1)
    return float(2 * stats.t.sf(threshold, 2 * n - 2))


MIN_SEEDS = 3  # fewer finite values per condition than this: no verdict, the difference is not established


def verdict(a, b, names=("A", "B"), higher_is_better=False, level=0.95, bounds=None):
    """Which of two samples is better: a name, or "tie" when the 95% intervals overlap or either has
    fewer than MIN_SEEDS finite values (two seeds that happen to agree give a zero-width interval,
    which is no evidence). Returns (winner, details): both means/intervals and the Welch test."""
    ma, loa, hia = mean_ci(a, level, bounds)
    mb, lob, hib = mean_ci(b, level, bounds)
    test = welch(a, b)
    details = {"mean_a": ma, "lo_a": loa, "hi_a": hia, "mean_b": mb, "lo_b": lob, "hi_b": hib, **test}
    too_few = min(test["n_a"], test["n_b"]) < MIN_SEEDS
    if too_few or any(math.isnan(v) for v in (loa, hia, lob, hib)) or not (hia < lob or hib < loa):
        return "tie", details
    a_better = (ma > mb) if higher_is_better else (ma < mb)
    return (names[0] if a_better else names[1]), details


def rank_conditions(samples, higher_is_better=False, level=0.95):
    """samples: {name: values}. The best condition by mean, and the names tied with it (overlapping CIs).
    Returns (winner_or_'tie', best_by_mean, tied_names)."""
    means = {k: mean_ci(v, level) for k, v in samples.items()}
    valid = {k: m for k, m in means.items() if not math.isnan(m[0])}
    if not valid:
        return "tie", None, []
    best = (max if higher_is_better else min)(valid, key=lambda k: valid[k][0])
    tied = [k for k in valid if k != best and verdict(samples[best], samples[k], (best, k),
                                                      higher_is_better, level)[0] == "tie"]
    return ("tie" if tied else best), best, tied


# ---------------------------------------------------------------------------------------------
# The study's criteria, and the comparison of conditions on each of them.

CRITERIA = (  # (criterion, metric, what it measures, higher is better)
    ("convergence speed", "steps_to_loss", "steps until the validation loss first reaches the target", False),
    ("stability", "volatility", "step-to-step volatility of the log training loss (last half)", False),
    ("stability", "grad_norm_cv", "coefficient of variation of the gradient norm (last half)", False),
    ("final loss", "final_val_loss", "validation loss at the end of training", False),
    ("final loss", "test_loss", "test loss at the end of training", False),
    ("accuracy", "test_acc", "test accuracy at the end of training", True),
)


def criteria_trials(histories, reference="none", keys=("arch", "norm", "seed")):
    """trials_table with convergence measured against a per-arch target: the mean final validation
    loss of the reference condition (or, without it, of the worst condition), i.e. the loss every
    condition should be able to reach. A run that never reaches it (a diverged run included) is
    censored at the steps it was configured for (steps_to_loss = planned_steps, reached = False)."""
    base = trials_table(histories, keys)
    rows = []
    for arch, group in base.groupby("arch", sort=False):
        means = group.groupby("norm")["final_val_loss"].mean()  # NaN for a condition whose runs all diverged
        target = means.get(reference, math.nan)
        target = means.max() if math.isnan(target) else target
        for h in histories:
            if h.config["arch"] != arch:
                continue
            row = {**{k: h.config[k] for k in keys}, **run_metrics(h, target_loss=target), "target_loss": target}
            row["reached"] = row["steps_to_loss"] is not None
            if not row["reached"]:
                row["steps_to_loss"] = planned_steps(h)
                row["epochs_to_loss"] = planned_steps(h) / h.steps_per_epoch
            rows.append(row)
    return pd.DataFrame(rows)


def planned_steps(h):
    """Optimizer steps the run was configured for (a diverged run stopped before them)."""
    total = h.steps_per_epoch * h.config["epochs"]
    return min(total, h.config["max_steps"]) if h.config.get("max_steps") else total


def seed_spread(table, metric="final_val_loss", by=("arch", "norm")):
    """Standard deviation across seeds of a metric per condition (the across-seed stability)."""
    return table.groupby(list(by), sort=False)[metric].std(ddof=1).rename(f"{metric}_sd").reset_index()


def compare_conditions(table, conditions, arch, criteria=CRITERIA, level=0.95):
    """One row per criterion metric for one arch: mean [CI] per condition, the winner (or tie) and,
    for the best two conditions, Welch's p and Hedges' g. conditions: norm names in table."""
    rows = []
    t = table[table["arch"] == arch]
    for criterion, metric, what, higher in criteria:
        samples = {c: t.loc[t["norm"] == c, metric].tolist() for c in conditions}
        winner, best, tied = rank_conditions(samples, higher_is_better=higher, level=level)
        row = {"criterion": criterion, "metric": metric, "measures": what, "higher_is_better": higher,
               "winner": winner, "best_by_mean": best, "tied_with_best": ", ".join(tied)}
        for c in conditions:
            m, lo, hi = mean_ci(samples[c], level, metric_bounds(metric))
            row.update({f"{c}_mean": m, f"{c}_lo": lo, f"{c}_hi": hi})
        others = [c for c in conditions if c != best and any(np.isfinite(samples[c]))]
        if best is not None and others:
            runner = (max if higher else min)(others, key=lambda c: mean_ci(samples[c])[0])
            w = welch(samples[best], samples[runner])
            row.update({"runner_up": runner, "welch_p": w["p"], "hedges_g": w["g"]})
        rows.append(row)
    return pd.DataFrame(rows)


def format_ci(m, lo, hi, fmt="{:.3f}"):
    """'0.123 [0.110, 0.136]', or just the mean when there is no interval."""
    if not np.isfinite(m):
        return "n/a"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return fmt.format(m)
    return f"{fmt.format(m)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def welch_ci(a, b, level=0.95):
    """(diff, lo, hi): mean(a) - mean(b) with a Welch (unequal variances, Welch-Satterthwaite df)
    confidence interval; no interval (nan bounds) when either sample has fewer than 2 values."""
    a = np.asarray([v for v in a if v is not None and np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if v is not None and np.isfinite(v)], dtype=float)
    if not (len(a) and len(b)):
        return (float("nan"),) * 3
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, float("nan"), float("nan")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)  # squared standard errors
    if va + vb == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df) * math.sqrt(va + vb))
    return diff, diff - half, diff + half


def head_to_head(table, a, b, arch, criteria=CRITERIA, level=0.95):
    """Two conditions (norm names a, b) on every criterion metric for one arch: one row per metric with
    both means and CIs, the study's verdict (a, b or "tie" when the 95% intervals overlap), the difference
    a - b with its Welch CI, Welch's p and Hedges' g."""
    rows = []
    t = table[table["arch"] == arch]
    for criterion, metric, what, higher in criteria:
        sa, sb = (t.loc[t["norm"] == c, metric].tolist() for c in (a, b))
        winner, d = verdict(sa, sb, (a, b), higher_is_better=higher, level=level, bounds=metric_bounds(metric))
        diff, lo, hi = welch_ci(sa, sb, level)
        rows.append({"criterion": criterion, "metric": metric, "measures": what, "higher_is_better": higher,
                     "winner": winner, f"{a}_mean": d["mean_a"], f"{a}_lo": d["lo_a"], f"{a}_hi": d["hi_a"],
                     f"{b}_mean": d["mean_b"], f"{b}_lo": d["lo_b"], f"{b}_hi": d["hi_b"],
                     "diff": diff, "diff_lo": lo, "diff_hi": hi, "welch_p": d["p"], "hedges_g": d["g"]})
    return pd.DataFrame(rows)
