"""Tests of normlib.metrics' per-run final numbers and statistics on hand-built Histories (nothing is
trained): final loss/accuracy, mean and 95% CI against scipy's t interval, Welch's test and Hedges' g
on known data, the interval-overlap verdict of the studies. (The measures of steps 1-5 are tested in
test_measures.py, their comparisons in test_verdicts.py.)"""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from normlib import metrics, verdicts
from normlib.train import History, TrainConfig


def hist(norm="none", seed=0, arch="mlp", *, val_loss=(1.0, 0.6, 0.4, 0.3), val_acc=(0.5, 0.6, 0.75, 0.8),
         steps_per_epoch=10, epochs=2, step_loss=None, step_grad_norm=None, test_loss=0.35, test_acc=0.78,
         diverged_step=None):
    """A History of a run with 4 evaluations at steps 5, 10, 15, 20 (2 epochs of 10 steps), or one that
    diverged at diverged_step (then the evaluations after it and the test results are missing)."""
    config = TrainConfig(arch=arch, norm=norm, seed=seed, epochs=epochs, evals_per_epoch=2).to_dict()
    n = steps_per_epoch * epochs
    step_loss = list(step_loss if step_loss is not None else np.linspace(2.0, 0.3, n))
    step_grad_norm = list(step_grad_norm if step_grad_norm is not None else np.linspace(3.0, 1.0, n))
    evals = [5, 10, 15, 20]
    if diverged_step is not None:
        keep = sum(s < diverged_step for s in evals)
        step_loss = step_loss[:diverged_step - 1] + [math.nan]
        step_grad_norm = step_grad_norm[:diverged_step - 1] + [math.nan]
        evals, val_loss, val_acc = evals[:keep], val_loss[:keep], val_acc[:keep]
        test_loss = test_acc = math.nan
    return History(config=config, step_loss=step_loss, step_grad_norm=step_grad_norm, eval_step=list(evals),
                   eval_epoch=[s / steps_per_epoch for s in evals], train_loss=list(val_loss),
                   train_acc=list(val_acc), val_loss=list(val_loss), val_acc=list(val_acc), test_loss=test_loss,
                   test_acc=test_acc, steps_per_epoch=steps_per_epoch, wall_time=1.0,
                   diverged=diverged_step is not None, diverged_step=diverged_step)


# ----------------------------------------------------------------------------
# convergence speed, stability, final values of one run


def test_final_loss_and_accuracy():
    row = metrics.run_metrics(hist())
    assert row["final_val_loss"] == 0.3 and row["final_val_acc"] == 0.8 and row["final_train_loss"] == 0.3
    assert row["test_loss"] == 0.35 and row["test_acc"] == 0.78 and row["best_val_acc"] == 0.8
    assert row["diverged"] is False and row["diverged_step"] is None


def test_diverged_run_has_no_final_values():
    row = metrics.run_metrics(hist(diverged_step=12))
    assert row["diverged"] is True and row["diverged_step"] == 12
    assert all(math.isnan(row[k]) for k in ("final_val_loss", "final_val_acc", "test_loss", "test_acc"))


def test_trials_table():
    hs = [hist("none", 0), hist("batch", 1, arch="cnn")]
    t = metrics.trials_table(hs)
    assert list(t[["arch", "norm", "seed"]].itertuples(index=False, name=None)) == [("mlp", "none", 0),
                                                                                   ("cnn", "batch", 1)]
    assert list(t["final_val_loss"]) == [0.3, 0.3] and list(t["test_acc"]) == [0.78, 0.78]


# ----------------------------------------------------------------------------
# statistics across seeds

def test_mean_ci_matches_scipy_t_interval():
    x = [0.81, 0.84, 0.83, 0.86, 0.79, 0.85]
    m, lo, hi = metrics.mean_ci(x)
    ref_lo, ref_hi = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert m == pytest.approx(np.mean(x)) and lo == pytest.approx(ref_lo) and hi == pytest.approx(ref_hi)
    lo90, hi90 = stats.t.interval(0.90, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert metrics.mean_ci(x, level=0.90)[1:] == pytest.approx((lo90, hi90))


def test_mean_ci_edge_cases():
    assert metrics.mean_ci([1.0, None, math.nan, 3.0]) == pytest.approx(metrics.mean_ci([1.0, 3.0]))
    m, lo, hi = metrics.mean_ci([2.0])
    assert m == 2.0 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(v) for v in metrics.mean_ci([]))
    assert metrics.mean_ci([4.0, 4.0, 4.0]) == (4.0, 4.0, 4.0)


def test_welch_and_hedges_g_on_known_data():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    w = metrics.welch(a, b)
    # by hand: means 3 and 5.5, variances 2.5 and 3.5
    se2a, se2b = 2.5 / 5, 3.5 / 6
    t = -2.5 / math.sqrt(se2a + se2b)
    df = (se2a + se2b) ** 2 / (se2a ** 2 / 4 + se2b ** 2 / 5)  # Welch-Satterthwaite
    assert w["diff"] == pytest.approx(-2.5)
    assert w["t"] == pytest.approx(t) and w["t"] == pytest.approx(-2.4019, abs=1e-4)
    assert w["p"] == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert w["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    s_pooled = math.sqrt((4 * 2.5 + 5 * 3.5) / 9)
    hedges = -2.5 / s_pooled * (1 - 3 / (4 * 9 - 1))  # Hedges & Olkin's small-sample correction, df = 9
    assert w["g"] == pytest.approx(hedges) and w["g"] == pytest.approx(-1.3076, abs=1e-4)
    assert (w["n_a"], w["n_b"]) == (5, 6)


def test_welch_needs_two_values_per_side():
    w = metrics.welch([1.0], [2.0, 3.0])
    assert w["diff"] == pytest.approx(-1.5) and math.isnan(w["p"]) and math.isnan(w["g"])


def test_welch_ci_matches_hand_computation():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    diff, lo, hi = metrics.welch_ci(a, b)
    se = math.sqrt(2.5 / 5 + 3.5 / 6)
    df = (2.5 / 5 + 3.5 / 6) ** 2 / ((2.5 / 5) ** 2 / 4 + (3.5 / 6) ** 2 / 5)
    half = stats.t.ppf(0.975, df) * se
    assert (diff, lo, hi) == pytest.approx((-2.5, -2.5 - half, -2.5 + half))
    assert hi < 0  # the difference is established, consistent with p < 0.05
    assert metrics.welch(a, b)["p"] < 0.05


def test_verdict_names_a_winner_only_when_intervals_do_not_overlap():
    low, high = [0.10, 0.11, 0.12, 0.11], [0.30, 0.31, 0.29, 0.30]
    assert metrics.verdict(low, high, ("bn", "ln"))[0] == "bn"  # lower is better by default
    assert metrics.verdict(low, high, ("bn", "ln"), higher_is_better=True)[0] == "ln"
    winner, d = metrics.verdict(high, low, ("bn", "ln"))
    assert winner == "ln" and d["hi_b"] < d["lo_a"]


def test_verdict_tie_when_intervals_overlap():
    a, b = [0.10, 0.20, 0.30, 0.15], [0.18, 0.28, 0.38, 0.22]  # means differ, intervals overlap
    winner, d = metrics.verdict(a, b, ("bn", "ln"))
    assert d["mean_a"] < d["mean_b"] and d["hi_a"] >= d["lo_b"]
    assert winner == "tie"
    assert metrics.verdict([0.1], [0.9], ("bn", "ln"))[0] == "tie"  # one seed: no interval, no verdict


def test_format_ci():
    assert metrics.format_ci(0.1234, 0.11, 0.136) == "0.123 [0.110, 0.136]"
    assert metrics.format_ci(0.5, math.nan, math.nan) == "0.500"
    assert metrics.format_ci(math.nan, math.nan, math.nan) == "n/a"


# ----------------------------------------------------------------------------
# criteria: per-arch target, censoring, comparison of conditions

def criteria_histories():
    """mlp: 'none' ends at val loss 0.30 on average (the target); batch reaches it early,
    layer never does, one weight run diverges before reaching it."""
    hs = [hist("none", s, val_loss=(1.0, 0.6, 0.4, v)) for s, v in enumerate([0.28, 0.30, 0.32])]
    hs += [hist("batch", s, val_loss=(0.5, 0.3, 0.25, 0.2)) for s in range(3)]
    hs += [hist("layer", s, val_loss=(1.0, 0.8, 0.6, 0.5)) for s in range(3)]
    hs += [hist("weight", 0, diverged_step=7)]
    return hs


def test_verdict_needs_min_seeds_even_for_zero_width_intervals():
    # two seeds that agree exactly give zero-width intervals: no evidence of a difference
    assert metrics.verdict([8, 8], [11, 11], ("a", "b"))[0] == "tie"
    assert metrics.verdict([8, 8, 8], [11, 11, 11], ("a", "b"))[0] == "a"
    assert metrics.verdict([0.90, 0.91, 0.92], [0.80, 0.81, 0.82], ("a", "b"), higher_is_better=True)[0] == "a"


def test_intervals_are_clipped_to_the_values_a_metric_can_take():
    m, lo, hi = metrics.mean_ci([0.9, 1.0], bounds=metrics.metric_bounds("test_acc"))
    assert m == pytest.approx(0.95) and hi == 1.0 and 0 < lo < 0.9  # unclipped: 0.95 +- 0.635
    m, lo, hi = metrics.mean_ci([0.01, 0.5], bounds=metrics.metric_bounds("final_val_loss"))
    assert lo == 0.0 and hi > 0.5
    assert metrics.mean_ci([0.9, 1.0])[2] > 1  # no bounds: the plain t interval
    assert metrics.metric_bounds("val_error") == (0, 1) and metrics.metric_bounds("best_val_acc") == (0, 1)
    assert metrics.metric_bounds("steps_to_loss")[0] == 0 and metrics.metric_bounds("seed") is None


def test_steps_to_the_level_are_bounded_by_the_horizon_they_are_censored_at():
    """A restricted mean of steps censored at the planned steps lies in [0, horizon]: metric_bounds knows it
    when given the horizon (the verdicts' tables pass the runs' planned steps), and only for that measure."""
    assert metrics.metric_bounds("steps_to_level", horizon=400) == (0.0, 400.0)
    assert metrics.metric_bounds("steps_to_level") == (0.0, math.inf)
    assert metrics.metric_bounds("final_val_loss", horizon=400) == (0.0, math.inf)
    table = pd.DataFrame({"arch": "mlp", "norm": ["none"] * 3, "steps_to_level": [380.0, 400.0, 400.0],
                          "reached": [True, False, False], "planned_steps": 400, "diverged": False})
    row = verdicts.condition_summary(table, measures=("steps_to_level",)).iloc[0]
    assert row["hi"] == 400.0 and row["lo"] < row["mean"] < 400.0  # unclipped, the t interval passes 400


def test_a_log_of_a_loss_is_not_bounded_below_by_zero():
    """log_loss_auc is a mean log loss: below 0 once the loss is below 1, so its interval is not clipped at 0
    (it was: "-0.997 [0.000, -0.986]")."""
    assert metrics.metric_bounds("log_loss_auc") is None
    m, lo, hi = metrics.mean_ci([-1.0, -0.99, -0.98], bounds=metrics.metric_bounds("log_loss_auc"))
    assert lo < m < hi < 0


