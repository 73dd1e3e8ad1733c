"""Pure functions over Histories: the measures of the study's three criteria, one run at a time.

The measures (issue 13), one primary per criterion; normlib.verdicts compares conditions on them.

A diverged run is a result, by one rule (completed_curve): a run fails when its training loss became
non-finite (the trainer stopped it) or a validation evaluation is non-finite. From that point on it is
a classifier at chance level: validation and test loss ln(10) = 2.303, accuracy 10%, at every
evaluation it was planned to reach. A loss worse than chance counts as chance, an accuracy below 10%
as 10%: a classifier that bad has failed, and by how much is the size of an explosion, not information
about the criterion. So a failed run is never dropped, it never contributes exploding numbers, and in
every criterion it scores as a failure: it never reaches the convergence level (censored at the
planned steps, even if its loss was below the level before it diverged: it did not converge), its
stability spike and setback are 1 (the largest possible), its final loss is ln(10).

Convergence speed, primary: steps_to_level, the optimizer steps until the validation loss first reaches
a level that every condition reaches, the crossing interpolated linearly in log loss between
evaluations (the curve starts at chance, ln 10, at step 0). The level is fixed by a rule before the
conditions are compared (convergence_level): 10% above the worst condition's median best validation
loss, so a typical run of every condition reaches it before its end. A run that never reaches it is
censored at its planned steps; across runs of one condition, which share the horizon, the mean of the
censored values is the restricted mean time to the level up to the horizon (the Kaplan-Meier estimate,
verdicts.km_restricted_mean, gives the same number), not a mean of observed times, and tables say how
many runs reached the level. It responds to how fast the curve falls (a curve that falls twice as fast
reaches the level in half the steps) and not to what happens after the crossing (the final loss);
a curve that is higher all along does reach a fixed level later, as it should. Secondary:
seconds_to_level (steps x the run's mean wall time per step, wall_time / steps run, which includes
the evaluations and any start-up cost of the run, such as loading data or compiling kernels in the
first run of a process: comparable only between runs on the same hardware and set-up), and
log_loss_auc, the mean log
validation loss over training progress (the area under the curve), which mixes speed with level.

Stability, primary: spike, the largest rise of the validation loss between two consecutive evaluations
*before the run's best evaluation*, as a share of the progress made so far (ln 10 minus the best
validation loss up to then). Every rise it counts is one the run later recovered from (its loss came back
below where the rise started): a disturbance of training, not the slow climb of overfitting, which begins
at the best evaluation and so is left out (with training to a plateau, a rise of the validation loss late
in the run is mostly overfitting). 0: the loss never rose before its best on the fixed validation set;
1: a rise that undid all progress (a failed run scores 1). It reads only the fixed validation set, so the
noise of fresh mini-batches in the training loss does not enter; a curve that is merely higher, or that
made k times less progress with the same shape, has the same spike. Its scale depends on the spacing of
evaluations, the same for every condition compared. Secondary: setback (the same largest rise over the
whole run, the rises after the best included: instability and overfitting together), divergence (the
rate of failed runs), the spread across seeds of the final validation loss (verdicts tests it with
Brown-Forsythe), and, from a learning-rate sweep, lr_sensitivity (how much worse than a seed's best
learning rate its neighbours on the grid are).

Final loss, primary: best_test_loss, the test loss at the best-validation checkpoint (the weights of
the evaluation with the lowest validation loss, chosen without the test set). Secondary: best_test_acc
at that checkpoint, final_val_loss (last evaluation), and the evidence of a plateau: last_quarter_change,
the log ratio of the validation loss at the end to that at 3/4 of the planned steps (near 0: flat; below
0: still falling; above 0: rising, e.g. overfitting).

Also here: run_metrics / trials_table (the final numbers of a run, for the studies' sweep tables) and the
statistics every verdict uses (mean_ci, welch, welch_ci, format_ci).
"""
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats


def run_metrics(h):
    """One row of the final numbers of one History (a trial; NaN for a diverged run's finals)."""
    diverged = h.diverged or not h.val_loss
    final = lambda xs: float(xs[-1]) if xs and not diverged else float("nan")  # noqa: E731
    row = {
        "final_train_loss": final(h.train_loss),
        "final_val_loss": final(h.val_loss),
        "final_val_acc": final(h.val_acc),
        "best_val_acc": float(max(h.val_acc)) if h.val_acc else float("nan"),
        "test_loss": float(h.test_loss),
        "test_acc": float(h.test_acc),
        "grad_norm_mean": float(np.mean(h.step_grad_norm)) if h.step_grad_norm else float("nan"),
        "diverged": bool(h.diverged),
        "diverged_step": h.diverged_step,
        "wall_time": float(h.wall_time),
    }
    return row


def trials_table(histories, keys=("arch", "norm", "seed")):
    """DataFrame, one row per History: config keys, then run_metrics."""
    rows = [{**{k: h.config[k] for k in keys}, **run_metrics(h)} for h in histories]
    return pd.DataFrame(rows)


def metric_bounds(metric, horizon=None):
    """The values a metric can take, by its name (the one source: figures, studies and the verdicts' tables
    clip intervals to it): accuracies and error rates lie in [0, 1]; losses, step counts, seconds,
    volatilities, spreads, gradient norms and rises of the loss (spike, setback: a share of the progress,
    above 1 when a rise undoes more than all of it) are non-negative; logarithms of any of them
    (log_loss_auc: a mean log loss, below 0 once the loss is below 1) and anything else: None.
    horizon: the planned steps of the runs; steps_to_level, censored there, then lies in [0, horizon]
    (its mean is the restricted mean up to the horizon)."""
    name = str(metric)
    if name == "steps_to_level" and horizon is not None and math.isfinite(horizon):
        return 0.0, float(horizon)
    if re.search(r"(^|_)log(_|$)", name):
        return None
    if re.search(r"(^|_)(acc|error)(_|$)", name):
        return 0.0, 1.0
    if re.search(r"(^|_)(loss|steps|seconds|spike|setback|volatility|cv|sd|norm|epochs|range|beta)(_|$)", name):
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



# ---------------------------------------------------------------------------------------------
# The study's criteria, and the comparison of conditions on each of them.




def planned_steps(h):
    """Optimizer steps the run was configured for (a diverged run stopped before them)."""
    total = h.steps_per_epoch * h.config["epochs"]
    return min(total, h.config["max_steps"]) if h.config.get("max_steps") else total




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



# ---------------------------------------------------------------------------------------------
# The measures of issue 13 (see the module docstring): one failure rule, one primary per criterion.

CHANCE_LOSS = math.log(10)  # cross-entropy of a classifier giving each of the 10 classes probability 1/10
CHANCE_ACC = 0.1
LEVEL_MARGIN = 0.10  # the convergence level: this fraction above the worst condition's median best val loss


def failed(h):
    """The failure rule: the training loss became non-finite (h.diverged) or a validation evaluation is."""
    return bool(h.diverged) or not all(math.isfinite(v) for v in (*h.val_loss, *h.val_acc))


def planned_eval_steps(h):
    """The steps at which the trainer evaluates a run of this config that does not diverge."""
    total, per = planned_steps(h), h.config.get("evals_per_epoch", 1)
    at = {round(h.steps_per_epoch * k / per) for k in range(1, per * h.config["epochs"] + 1)} | {total}
    return sorted(s for s in at if 0 < s <= total)


@dataclass(frozen=True)
class Curve:
    """A run's validation curve under the failure rule (completed_curve)."""
    step: np.ndarray      # evaluation steps, up to the planned end
    val_loss: np.ndarray  # at most CHANCE_LOSS
    val_acc: np.ndarray   # at least CHANCE_ACC
    planned: int          # optimizer steps the run was configured for (the horizon)
    failed: bool


def completed_curve(h):
    """The validation curve of a run, completed by the failure rule: the evaluations measured before a
    failure, then chance (loss ln 10, accuracy 10%) at every planned evaluation after it; losses worse
    than chance count as chance, accuracies below 10% as 10%."""
    kept = []
    for s, loss, acc in zip(h.eval_step, h.val_loss, h.val_acc):
        if (h.diverged_step is not None and s >= h.diverged_step) or not (math.isfinite(loss) and math.isfinite(acc)):
            break
        kept.append((s, min(loss, CHANCE_LOSS), max(acc, CHANCE_ACC)))
    is_failed = failed(h)
    if is_failed:
        last = kept[-1][0] if kept else 0
        kept += [(s, CHANCE_LOSS, CHANCE_ACC) for s in planned_eval_steps(h) if s > last]
    step, loss, acc = (np.array(col, dtype=float) for col in zip(*kept)) if kept else (np.zeros(0),) * 3
    return Curve(step, loss, acc, planned_steps(h), is_failed)


def steps_to_level(curve, level):
    """(steps, reached): the first crossing of `level` by the validation loss, interpolated linearly in
    log loss between evaluations (from chance at step 0); (planned steps, False) if never reached, and
    for a failed run, which did not converge however low its loss was before it diverged."""
    s0, l0 = 0.0, CHANCE_LOSS
    if curve.failed:
        return float(curve.planned), False
    if l0 <= level:
        return 0.0, True
    for s, loss in zip(curve.step, curve.val_loss):
        if loss <= level:
            frac = (math.log(l0) - math.log(level)) / (math.log(l0) - math.log(loss))
            return float(s0 + frac * (s - s0)), True
        s0, l0 = s, loss
    return float(curve.planned), False


def convergence_level(best_losses, margin=LEVEL_MARGIN):
    """The level every condition should reach: (1 + margin) x the largest, over conditions, of the
    median best validation loss. best_losses: {condition: best validation losses of its runs} (a failed
    run's best is that of its completed curve). Fixed before any comparison; no condition is favoured."""
    medians = [np.median(v) for v in best_losses.values() if len(v)]
    return float((1 + margin) * max(medians)) if medians else float("nan")


def log_loss_auc(curve):
    """Mean log validation loss over training progress (trapezoids over step / planned steps, from chance
    at step 0): the area under the curve, lower when the loss falls sooner and when it ends lower."""
    x = np.concatenate([[0.0], curve.step]) / curve.planned
    y = np.log(np.concatenate([[CHANCE_LOSS], curve.val_loss]))
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / x[-1]) if len(x) > 1 else float("nan")


def _rise_shares(curve):
    """Per evaluation, the rise of the validation loss since the previous one (from chance at step 0) as a
    share of the progress made until then (ln 10 minus the best loss so far); 0 where it fell."""
    loss = np.concatenate([[CHANCE_LOSS], curve.val_loss])
    progress = CHANCE_LOSS - np.minimum.accumulate(loss)[:-1]  # best so far, before each evaluation
    rise = np.maximum(loss[1:] - loss[:-1], 0.0)
    return np.divide(rise, progress, out=np.zeros_like(rise), where=progress > 0)


def setback(curve):
    """Largest rise of the validation loss between consecutive evaluations over the whole run, as a share
    of the progress made until then: 0 = it never rose, 1 = all progress undone (a failed run scores 1).
    It counts the climb of overfitting after the best evaluation too (spike leaves that out)."""
    if curve.failed:
        return 1.0
    share = _rise_shares(curve)
    return float(share.max()) if len(share) else float("nan")


def spike(curve):
    """Largest rise of the validation loss between consecutive evaluations up to the run's best (lowest)
    evaluation, as a share of the progress made until then: only rises the run recovered from, so the
    climb of overfitting after the best does not count. 0 = no rise before the best; a failed run scores 1.
    See the module docstring for why this measures stability."""
    if curve.failed:
        return 1.0
    if not len(curve.val_loss):
        return float("nan")
    best = int(np.argmin(curve.val_loss))  # the first evaluation at the lowest loss
    return float(_rise_shares(curve)[:best + 1].max())


def loss_at(curve, step):
    """The validation loss at a step, interpolated in log loss between evaluations (chance at step 0)."""
    x = np.concatenate([[0.0], curve.step])
    return float(np.exp(np.interp(step, x, np.log(np.concatenate([[CHANCE_LOSS], curve.val_loss])))))


def last_quarter_change(curve):
    """Evidence of a plateau: log of the validation loss at the end over that at 3/4 of the planned steps."""
    if not len(curve.step):
        return float("nan")
    return float(math.log(curve.val_loss[-1] / loss_at(curve, 0.75 * curve.planned)))


PLATEAU_TOLERANCE = 0.02  # a condition has plateaued when its median run's last quarter moved the loss by <= 2%


def plateau(changes, tolerance=PLATEAU_TOLERANCE):
    """(median relative change of the validation loss over the last quarter, verdict) of a condition's runs
    from their last_quarter_change (log ratios): "plateaued" within +-tolerance, else "still falling" or
    "rising" (e.g. overfitting)."""
    x = np.asarray([v for v in changes if v is not None and np.isfinite(v)], dtype=float)
    if not len(x):
        return float("nan"), "no finite run"
    change = float(math.expm1(np.median(x)))
    return change, ("plateaued" if abs(change) <= tolerance else "still falling" if change < 0 else "rising")


def run_measures(h, level):
    """Every measure of one run (module docstring), under the failure rule; level: the convergence level."""
    c = completed_curve(h)
    steps, reached = steps_to_level(c, level)
    step_time = h.wall_time / len(h.step_loss) if h.step_loss else float("nan")
    final = (lambda v, chance: chance) if c.failed else (lambda v, chance: float(v))  # noqa: E731
    return {"diverged": c.failed, "diverged_step": h.diverged_step, "planned_steps": c.planned, "level": level,
            "steps_to_level": steps, "reached": reached, "seconds_to_level": steps * step_time,
            "step_time": step_time, "log_loss_auc": log_loss_auc(c), "spike": spike(c), "setback": setback(c),
            "best_test_loss": min(final(h.best_test_loss, CHANCE_LOSS), CHANCE_LOSS),
            "best_test_acc": max(final(h.best_test_acc, CHANCE_ACC), CHANCE_ACC),
            "final_val_loss": float(c.val_loss[-1]) if len(c.val_loss) else float("nan"),
            "last_quarter_change": last_quarter_change(c)}


PRIMARY_CONDITIONS = ("none", "batch", "layer")  # the conditions that set the convergence level


def convergence_levels(histories, conditions=PRIMARY_CONDITIONS, margin=LEVEL_MARGIN):
    """{arch: convergence_level} from the runs of `conditions` (all runs, if none of them is present)."""
    levels = {}
    for arch in dict.fromkeys(h.config["arch"] for h in histories):
        runs = [h for h in histories if h.config["arch"] == arch]
        runs = [h for h in runs if h.config["norm"] in conditions] or runs
        best = {}
        for h in runs:
            c = completed_curve(h)
            best.setdefault(h.config["norm"], []).append(float(c.val_loss.min()) if len(c.val_loss) else CHANCE_LOSS)
        levels[arch] = convergence_level(best, margin)
    return levels


def measures_table(histories, levels=None, keys=("arch", "norm", "seed", "split_seed", "lr")):
    """One row per run: config keys, then run_measures. levels: {arch: level}, by default
    convergence_levels(histories); pass the first seed set's levels to measure fresh seeds on the same."""
    levels = convergence_levels(histories) if levels is None else levels
    return pd.DataFrame([{**{k: h.config.get(k) for k in keys}, **run_measures(h, levels[h.config["arch"]])}
                         for h in histories])


def lr_sensitivity(table, metric="best_test_loss", by=("arch", "norm", "seed"), lr="lr"):
    """Sensitivity to the learning rate, from a sweep (a measures_table over an lr grid; failed runs
    are already at chance). Per seed of each condition: the grid's best lr by `metric` (lower is
    better), and the mean over its neighbours on the grid of log(metric at the neighbour / at the best).
    0: the neighbours are as good; ln(ln 10 / best): a neighbour failed."""
    rows = []
    for key, g in table.groupby(list(by), sort=False):
        g = g.sort_values(lr)
        values, i = g[metric].to_numpy(float), int(np.nanargmin(g[metric].to_numpy(float)))
        near = [j for j in (i - 1, i + 1) if 0 <= j < len(g)]
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "best_lr": float(g[lr].iloc[i]),
                     "lr_sensitivity": float(np.mean(np.log(values[near] / values[i]))) if near else float("nan")})
    return pd.DataFrame(rows)
