"""Tests of the per-run measures of issue 13 (normlib.metrics: completed_curve ... run_measures) on
synthetic Histories (nothing is trained). Each measure is shown to move with what it claims to measure
and not with a confounder, and a diverged run to count as a failure in every criterion."""
import math

import numpy as np
import pytest

from normlib import metrics
from normlib.train import History, TrainConfig

C = metrics.CHANCE_LOSS
EPOCHS, PER_EPOCH, SPE = 10, 4, 100          # 1,000 planned steps, evaluations every 25 steps
STEPS = [round(SPE * k / PER_EPOCH) for k in range(1, EPOCHS * PER_EPOCH + 1)]
U = np.array(STEPS) / (SPE * EPOCHS)         # training progress at each evaluation


def falling(rate=5.0, floor=0.3):
    """A validation curve over progress u: log loss falls from chance towards log floor as exp(-rate u),
    so doubling the rate is exactly running the same curve twice as fast."""
    return lambda u: floor * (C / floor) ** np.exp(-rate * np.asarray(u))


def run(curve=falling(), *, norm="none", seed=0, arch="mlp", best_test_loss=0.35, best_test_acc=0.88,
        diverged_step=None, step_noise=0.0, wall_time=20.0):
    """A History with 40 evaluations (curve: a function of progress or 40 values); diverged_step: the
    run stops there (evaluations from it on and the test results are missing, as in train.train)."""
    val = np.asarray(curve(U) if callable(curve) else curve, dtype=float)
    rng = np.random.default_rng(seed)
    step_loss = list(np.exp(np.interp(np.arange(1, 1001), STEPS, np.log(np.minimum(val, 1e30))) +
                            step_noise * rng.standard_normal(1000)))
    grad = list(1.0 + step_noise * rng.random(1000))
    steps = list(STEPS)
    if diverged_step is not None:
        keep = sum(s < diverged_step for s in steps)
        steps, val = steps[:keep], val[:keep]
        step_loss, grad = step_loss[:diverged_step - 1] + [math.nan], grad[:diverged_step - 1] + [math.nan]
        best_test_loss = best_test_acc = math.nan
    config = TrainConfig(arch=arch, norm=norm, seed=seed, epochs=EPOCHS, evals_per_epoch=PER_EPOCH).to_dict()
    return History(config=config, step_loss=step_loss, step_grad_norm=grad, eval_step=steps,
                   eval_epoch=[s / SPE for s in steps], train_loss=list(val), train_acc=[0.8] * len(steps),
                   val_loss=list(val), val_acc=[0.8] * len(steps), test_loss=best_test_loss, test_acc=best_test_acc,
                   best_step=steps[-1] if steps else None, best_test_loss=best_test_loss, best_test_acc=best_test_acc,
                   steps_per_epoch=SPE, wall_time=wall_time, diverged=diverged_step is not None,
                   diverged_step=diverged_step)


def measures(h, level=0.5):
    return metrics.run_measures(h, level)


def with_spikes(base, spikes):
    """base's 40 values with val_loss[i] += height for each {i: height}."""
    v = np.asarray(base(U) if callable(base) else base, dtype=float).copy()
    for i, height in spikes.items():
        v[i] += height
    return v


# ----------------------------------------------------------------------------
# the failure rule

def test_planned_evaluations_match_the_trainer_schedule():
    assert metrics.planned_eval_steps(run()) == STEPS
    h = run()
    h.config = {**h.config, "max_steps": 510}
    assert metrics.planned_eval_steps(h) == [s for s in STEPS if s <= 510] + [510]


def test_completed_curve_of_a_diverged_run_is_chance_from_the_divergence_on():
    values = falling()(U)
    values[19] = 1e24  # the evaluation before the divergence exploded but is finite
    c = metrics.completed_curve(run(values, diverged_step=510))
    assert c.failed and c.planned == 1000 and list(c.step) == STEPS  # completed to the planned end
    assert np.allclose(c.val_loss[:19], values[:19])                 # measured before it
    assert c.val_loss[19] == C                                        # worse than chance counts as chance
    assert np.all(c.val_loss[20:] == C) and np.all(c.val_acc[20:] == metrics.CHANCE_ACC)


def test_a_non_finite_evaluation_is_a_failure_even_without_the_diverged_flag():
    values = falling()(U)
    values[30] = math.inf
    h = run(values)
    assert not h.diverged and metrics.failed(h)
    c = metrics.completed_curve(h)
    assert np.allclose(c.val_loss[:30], values[:30]) and np.all(c.val_loss[30:] == C)


def test_a_diverged_run_counts_as_failure_in_every_criterion():
    """Diverged late, after a good start: no criterion may drop it or reward it."""
    good_start = run(falling(rate=8), diverged_step=990)
    slow_survivor = run(falling(rate=2, floor=0.6), best_test_loss=0.7, best_test_acc=0.75)
    m, s = measures(good_start, level=0.8), measures(slow_survivor, level=0.8)
    assert m["diverged"] and not m["reached"] and m["steps_to_level"] == 1000  # censored at the planned steps
    assert m["setback"] == 1.0 and m["spike"] == 1.0                            # the largest possible
    assert (m["best_test_loss"], m["best_test_acc"], m["final_val_loss"]) == (C, metrics.CHANCE_ACC, C)
    assert all(np.isfinite(v) for k, v in m.items() if isinstance(v, float))    # nothing NaN, nothing exploding
    # the slow run that survived is better on every primary measure
    assert s["reached"] and s["steps_to_level"] < m["steps_to_level"]
    assert s["spike"] < m["spike"] and s["best_test_loss"] < m["best_test_loss"]
    t = metrics.measures_table([good_start, slow_survivor])
    assert len(t) == 2 and t["diverged"].tolist() == [True, False]              # kept, and flagged


def test_a_run_that_diverges_at_once_is_still_a_failure():
    m = measures(run(falling(), diverged_step=3))
    assert m["diverged"] and m["spike"] == 1.0 and m["steps_to_level"] == 1000 and m["best_test_loss"] == C


# ----------------------------------------------------------------------------
# convergence speed

def test_steps_to_level_interpolates_in_log_loss():
    c = metrics.Curve(np.array([25.0, 50.0]), np.array([1.0, 0.25]), np.array([0.5, 0.9]), 50, False)
    assert metrics.steps_to_level(c, 0.5) == (pytest.approx(37.5), True)  # linear in loss would give 41.7
    c = metrics.Curve(np.array([25.0]), np.array([C / math.e ** 2]), np.array([0.5]), 25, False)
    assert metrics.steps_to_level(c, C / math.e) == (pytest.approx(12.5), True)  # from chance at step 0
    assert metrics.steps_to_level(c, 0.01) == (25.0, False)  # never reached: censored at the horizon


@pytest.mark.parametrize("rate", [3.0, 5.0])
def test_convergence_responds_to_how_fast_the_curve_falls(rate):
    slow, fast = measures(run(falling(rate))), measures(run(falling(2 * rate)))
    assert slow["reached"] and fast["reached"]
    assert slow["steps_to_level"] / fast["steps_to_level"] == pytest.approx(2.0, rel=0.02)


def test_convergence_ignores_what_happens_after_the_crossing():
    """Same curve until the level is crossed, then one plateaus just below it and one falls much lower:
    the same speed, different final losses."""
    base = falling(5.0, 0.3)(U)
    cross = int(np.argmax(base <= 0.5))
    plateau = np.where(np.arange(40) > cross, np.minimum(base, 0.48), base)
    plateau[cross + 1:] = 0.48
    lower = np.where(np.arange(40) > cross, base * np.linspace(1, 0.5, 40), base)
    a, b = measures(run(plateau, best_test_loss=0.5)), measures(run(lower, best_test_loss=0.2))
    assert a["steps_to_level"] == b["steps_to_level"]
    assert a["final_val_loss"] > b["final_val_loss"] and a["best_test_loss"] > b["best_test_loss"]
    assert a["log_loss_auc"] > b["log_loss_auc"]  # the area, the secondary view, mixes in the level


def test_convergence_level_rule():
    best = {"none": [0.40, 0.42, 0.50], "batch": [0.30, 0.31, 0.29], "layer": [0.35, 0.36, 0.37]}
    assert metrics.convergence_level(best) == pytest.approx(1.1 * 0.42)  # 10% above the worst median
    assert metrics.convergence_level({**best, "none": [0.40, 9.0, 9.0, 0.41, 0.42]}) == pytest.approx(1.1 * 0.42)
    hs = [run(falling(r, f), norm=n, seed=s) for n, r, f in (("none", 3, 0.40), ("batch", 6, 0.30), ("layer", 4, 0.35))
          for s in range(3)]
    hs.append(run(falling(1, 2.0), norm="weight"))  # an exploratory condition does not move the level
    level = metrics.convergence_levels(hs)["mlp"]
    assert level == pytest.approx(1.1 * metrics.completed_curve(hs[0]).val_loss.min())
    t = metrics.measures_table(hs)
    assert t.loc[t["norm"] != "weight", "reached"].all()  # every typical run of the compared conditions reaches it


def test_convergence_is_unchanged_by_a_common_shift_of_every_curve():
    """Multiply every run's loss by 1.2 (a constant shift of log loss, e.g. a harder validation set): the
    level moves with the curves and every run's steps to it stay the same."""
    specs = [("none", 3, 0.40), ("batch", 6, 0.30), ("layer", 4, 0.35)]
    hs = [run(falling(r, f), norm=n) for n, r, f in specs]
    shifted = [run(lambda u, r=r, f=f: 1.2 * falling(r, f)(u), norm=n) for n, r, f in specs]
    a, b = metrics.measures_table(hs), metrics.measures_table(shifted)
    assert b["level"].iloc[0] == pytest.approx(1.2 * a["level"].iloc[0])
    assert np.allclose(a["steps_to_level"], b["steps_to_level"], rtol=1e-9)
    assert a["steps_to_level"].nunique() == 3  # three distinct speeds


def test_censored_runs_restricted_mean():
    from normlib.stats import km_restricted_mean
    hs = [run(falling(5), seed=0), run(falling(5, 0.6), seed=1), run(falling(5), seed=2, diverged_step=100)]
    t = metrics.measures_table(hs, levels={"mlp": 0.5})
    assert t["reached"].tolist() == [True, False, False]
    assert t["steps_to_level"].tolist()[1:] == [1000.0, 1000.0]  # censored at the horizon, not dropped
    assert km_restricted_mean(t["steps_to_level"], t["reached"], 1000) == pytest.approx(t["steps_to_level"].mean())


def test_seconds_to_level_uses_the_mean_step_time():
    m = measures(run(wall_time=50.0))
    assert m["step_time"] == pytest.approx(0.05) and m["seconds_to_level"] == pytest.approx(0.05 * m["steps_to_level"])


def test_log_loss_auc_by_hand():
    c = metrics.Curve(np.array([25.0, 50.0]), np.array([0.5, 0.5]), np.array([0.8, 0.8]), 50, False)
    assert metrics.log_loss_auc(c) == pytest.approx(0.5 * (math.log(C) + math.log(0.5)) / 2 + 0.5 * math.log(0.5))


# ----------------------------------------------------------------------------
# stability

def test_setback_is_zero_for_smooth_curves_at_any_level():
    assert measures(run(falling(5, 0.3)))["setback"] == 0.0
    assert measures(run(falling(2, 1.2)))["setback"] == 0.0  # merely higher (and slower): not less stable


def test_setback_measures_an_injected_spike():
    base = falling(5, 0.3)(U)
    small, large = with_spikes(base, {20: 0.1}), with_spikes(base, {20: 0.4, 30: 0.1})
    expected = (small[20] - base[19]) / (C - base[19])  # rise over the progress made until then
    assert measures(run(small))["setback"] == pytest.approx(expected)
    assert measures(run(large))["setback"] > measures(run(small))["setback"] > 0.04


def test_setback_is_invariant_to_the_scale_of_progress():
    """A curve that made half the progress from chance, with the same shape (spikes included), has the
    same setback: stability is not read off the level."""
    spiky = with_spikes(falling(5, 0.3), {12: 0.2, 25: 0.05})
    half = C - 0.5 * (C - spiky)
    assert measures(run(half))["setback"] == pytest.approx(measures(run(spiky))["setback"])
    assert measures(run(spiky))["setback"] > 0.05


def test_no_measure_reads_the_training_loss_noise():
    """Mini-batch noise in the per-step training loss and gradient norm changes no measure, while the
    step-to-step volatility of the log training loss (the stability measure of earlier versions of this
    report) moves with it tenfold."""
    quiet, noisy = run(step_noise=0.0), run(step_noise=0.5)
    assert measures(quiet) == measures(noisy)
    volatility = lambda h: float(np.std(np.diff(np.log(h.step_loss))))  # noqa: E731
    assert volatility(noisy) > 10 * volatility(quiet) + 0.1


def test_setback_barely_moves_with_slow_overfitting():
    base = falling(8, 0.3)(U)
    overfit = base * np.where(U > 0.5, 1 + 0.2 * (U - 0.5), 1.0)  # +10% by the end, slowly
    jump = with_spikes(base, {30: 0.03})                          # a jump of a third of that, once
    assert measures(run(overfit))["setback"] < measures(run(jump))["setback"] / 5
    assert measures(run(overfit))["setback"] < 0.005


def overfitting(rate=8.0, floor=0.3, rise=0.2, start=0.5):
    """A smooth fall to a minimum at progress `start`, then a steady climb (+rise x the progress after it):
    the shape of overfitting, with no disturbance of training in it."""
    base = falling(rate, floor)(U)
    return base * np.where(U > start, 1 + rise * (U - start), 1.0)


def test_spike_is_zero_for_smooth_curves_and_for_overfitting():
    """The primary stability measure ignores the climb after the best evaluation, which the setback counts."""
    assert measures(run(falling(5, 0.3)))["spike"] == 0.0
    assert measures(run(falling(2, 1.2)))["spike"] == 0.0  # merely higher and slower: not less stable
    steep = measures(run(overfitting(rise=2.0)))             # +100% of the loss by the end
    assert steep["spike"] == 0.0 and steep["setback"] > 0.005


def test_spike_measures_a_recovered_disturbance():
    """A jump of the validation loss that the run recovers from counts in full, at any point before the best;
    a larger one scores higher."""
    base = falling(5, 0.3)(U)
    small, large = with_spikes(base, {20: 0.1}), with_spikes(base, {20: 0.4, 30: 0.1})
    expected = (small[20] - base[19]) / (C - base[19])  # rise over the progress made until then
    assert measures(run(small))["spike"] == pytest.approx(expected)
    assert measures(run(large))["spike"] > measures(run(small))["spike"] > 0.04
    late = with_spikes(overfitting(), {12: 0.1})  # the same jump in a run that overfits later: still counted
    assert measures(run(late))["spike"] == pytest.approx((late[12] - late[11]) / (C - late[11]))


def test_spike_is_invariant_to_the_scale_of_progress():
    spiky = with_spikes(falling(5, 0.3), {12: 0.2, 25: 0.05})
    half = C - 0.5 * (C - spiky)
    assert measures(run(half))["spike"] == pytest.approx(measures(run(spiky))["spike"])
    assert measures(run(spiky))["spike"] > 0.05


def test_spike_separates_instability_from_overfitting_where_the_setback_cannot():
    """Two runs, one that overfits steeply after its best (no disturbance) and one disturbed once and
    recovered: the setback ranks the overfitting run as less stable, the spike ranks them as they are."""
    overfit = overfitting(rise=2.0)
    disturbed = with_spikes(falling(8, 0.3), {25: 0.01})
    o, d = measures(run(overfit)), measures(run(disturbed))
    assert o["setback"] > d["setback"]
    assert o["spike"] < d["spike"]


# ----------------------------------------------------------------------------
# final loss

def test_final_loss_is_the_best_checkpoint_test_loss_and_ignores_speed():
    fast, slow = measures(run(falling(8), best_test_loss=0.33)), measures(run(falling(3), best_test_loss=0.33))
    assert fast["steps_to_level"] < slow["steps_to_level"]
    assert fast["best_test_loss"] == slow["best_test_loss"] == 0.33
    assert measures(run(falling(8), best_test_loss=0.30))["best_test_loss"] == 0.30  # moves with the final level


def test_last_quarter_change_shows_a_plateau():
    flat, falling_still = measures(run(falling(12, 0.3))), measures(run(falling(1.5, 0.3)))
    assert abs(flat["last_quarter_change"]) < 1e-3
    assert falling_still["last_quarter_change"] < -0.05


# ----------------------------------------------------------------------------
# learning-rate sensitivity (a sweep)

def sweep_table(losses_by_seed, norm="batch"):
    import pandas as pd
    lrs = [0.01, 0.03, 0.1, 0.3]
    return pd.DataFrame([{"arch": "mlp", "norm": norm, "seed": s, "lr": lr, "best_test_loss": v}
                         for s, losses in enumerate(losses_by_seed) for lr, v in zip(lrs, losses)])


def test_lr_sensitivity():
    flat = metrics.lr_sensitivity(sweep_table([[0.40, 0.32, 0.30, 0.33]]))
    sharp = metrics.lr_sensitivity(sweep_table([[0.60, 0.45, 0.30, C]]))  # lr 0.3 diverged: chance
    assert flat["best_lr"].item() == 0.1
    assert flat["lr_sensitivity"].item() == pytest.approx((math.log(0.32 / 0.30) + math.log(0.33 / 0.30)) / 2)
    assert sharp["lr_sensitivity"].item() == pytest.approx((math.log(0.45 / 0.30) + math.log(C / 0.30)) / 2)
    scaled = metrics.lr_sensitivity(sweep_table([[2 * v for v in (0.40, 0.32, 0.30, 0.33)]]))
    assert scaled["lr_sensitivity"].item() == pytest.approx(flat["lr_sensitivity"].item())  # not the level
    edge = metrics.lr_sensitivity(sweep_table([[0.30, 0.36, 0.5, 0.6]]))
    assert edge["lr_sensitivity"].item() == pytest.approx(math.log(0.36 / 0.30))  # one neighbour at the edge
