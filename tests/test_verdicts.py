"""Tests of normlib.verdicts on hand-made per-run tables and synthetic Histories (nothing is trained):
the primary family and its verdicts; exploratory comparisons; confirmation on fresh seeds; winners from
pairwise verdicts; glue values and the reader's table. (normlib.stats, Holm and TOST among them: tests/test_stats.py.)"""
import math
import re

import numpy as np
import pandas as pd
import pytest

from normlib import metrics, verdicts
from normlib.stats import holm

C = metrics.CHANCE_LOSS


def runs(network, norm, n=5, diverged=(), **columns):
    """Rows of a measures table: columns maps a measure to n values (or one value for all runs);
    runs listed in `diverged` are at chance, as metrics.run_measures makes them."""
    rows = []
    for i in range(n):
        row = {"arch": network, "norm": norm, "seed": i, "planned_steps": 1000, "diverged": i in diverged,
               "reached": True, "steps_to_level": 500.0, "spike": 0.01, "setback": 0.01, "best_test_loss": 0.30,
               "seconds_to_level": 5.0, "log_loss_auc": -0.5, "best_test_acc": 0.89, "final_val_loss": 0.31}
        row.update({k: (v[i] if np.ndim(v) else v) for k, v in columns.items()})
        if i in diverged:
            row.update(steps_to_level=1000.0, reached=False, spike=1.0, setback=1.0, best_test_loss=C, best_test_acc=0.1,
                       final_val_loss=C, seconds_to_level=10.0, log_loss_auc=0.0)
        rows.append(row)
    return rows


def jitter(center, spread=0.01, n=5):
    return list(center + spread * np.array([-2, -1, 0, 1, 2])[:n] / 2)


def study(network="mlp"):
    """BN reaches the level sooner than none and LN (clear); LN vs none: no difference in speed; BN lower
    final loss than none; stability alike everywhere."""
    return pd.DataFrame(
        runs(network, "none", steps_to_level=jitter(700, 40), best_test_loss=jitter(0.33, 0.01),
             spike=jitter(0.02, 0.004)) +
        runs(network, "batch", steps_to_level=jitter(400, 40), best_test_loss=jitter(0.30, 0.01),
             spike=jitter(0.02, 0.004)) +
        runs(network, "layer", steps_to_level=jitter(690, 40), best_test_loss=jitter(0.315, 0.02),
             spike=jitter(0.021, 0.004)))


# ----------------------------------------------------------------------------
# a measure without spread

def test_no_verdict_on_a_measure_without_spread_in_either_condition():
    """Every run of both conditions at the same value (a loss that never rose: spike 0 everywhere, or two
    constants): no test, no verdict, the page says so. One condition without spread is still tested."""
    flat = pd.DataFrame(runs("mlp", "none", spike=0.0) + runs("mlp", "batch", spike=0.0) + runs("mlp", "layer", spike=0.0))
    t = verdicts.primary_table(flat).set_index(["measure", "first", "second"]).xs("spike", level="measure")
    assert t["no_spread"].all() and t["p"].isna().all() and (t["verdict"] == verdicts.NO_SPREAD).all()
    constants = pd.DataFrame(runs("mlp", "none", spike=0.5) + runs("mlp", "batch", spike=0.0))
    c = verdicts.comparison_table(constants, ["spike"], [("batch", "none")], "x", adjust=False).iloc[0]
    assert c["verdict"] == verdicts.NO_SPREAD and not c["established"]  # not "batch norm lower" with p = 0
    assert verdicts.short_verdict(c) == verdicts.NO_SPREAD
    one = pd.DataFrame(runs("mlp", "none", spike=jitter(0.5, 0.1)) + runs("mlp", "batch", spike=0.0))
    c = verdicts.comparison_table(one, ["spike"], [("batch", "none")], "x", adjust=False).iloc[0]
    assert not c["no_spread"] and c["verdict"] == "batch norm lower"
    merged = verdicts.confirm(verdicts.primary_table(flat), verdicts.primary_table(flat.assign(seed=flat.seed + 10)))
    assert (merged[merged["measure"] == "spike"]["claim"] == verdicts.NO_SPREAD).all()


# ----------------------------------------------------------------------------
# the primary family

def test_primary_table_is_the_declared_family():
    t = verdicts.primary_table(pd.concat([study("mlp"), study("cnn")]))
    assert len(t) == 2 * 3 * 3 and set(t["family"]) == {"primary"}
    assert set(t["measure"]) == set(verdicts.PRIMARY) and set(t["better"]) == {"lower"}
    assert {tuple(p) for p in t[["first", "second"]].to_numpy()} == set(verdicts.PRIMARY_PAIRS)
    assert (t["p_holm"] >= t["p"]).all() and t["p_holm"].tolist() == pytest.approx(list(holm(t["p"])))


def test_primary_verdicts_follow_holm_and_direction():
    t = verdicts.primary_table(study()).set_index(["measure", "first", "second"])
    speed = t.loc[("steps_to_level", "batch", "none")]
    assert speed["verdict"] == "batch norm lower" and speed["winner"] == "batch" and speed["diff"] == pytest.approx(-300)
    assert speed["diff_lo"] < -300 < speed["diff_hi"] < 0
    assert t.loc[("steps_to_level", "batch", "layer"), "verdict"] == "batch norm lower"
    assert t.loc[("steps_to_level", "layer", "none"), "verdict"] == "not established"
    assert (t.xs("spike", level="measure")["verdict"] == "not established").all()
    assert t.loc[("best_test_loss", "batch", "none"), "verdict"] == "batch norm lower"
    # direction: a higher-is-better measure names the winner "higher"
    acc = verdicts.comparison_table(study(), ["best_test_acc"], [("batch", "none")], "x", adjust=False)
    assert acc["verdict"].item() == verdicts.NO_SPREAD  # identical accuracies: nothing to test
    hi = verdicts.comparison_table(pd.DataFrame(runs("mlp", "batch", best_test_acc=jitter(0.90)) +
                                                runs("mlp", "none", best_test_acc=jitter(0.85))),
                                   ["best_test_acc"], [("batch", "none")], "x", adjust=False)
    assert hi["verdict"].item() == "batch norm higher" and hi["winner"].item() == "batch"
    lo = verdicts.comparison_table(pd.DataFrame(runs("mlp", "batch", best_test_loss=jitter(0.40)) +
                                                runs("mlp", "none", best_test_loss=jitter(0.30))),
                                   ["best_test_loss"], [("batch", "none")], "x", adjust=False)
    assert lo["verdict"].item() == "no normalization lower" and lo["winner"].item() == "none"


def test_multiplicity_can_withhold_a_verdict_the_raw_p_would_give():
    t = study()
    t.loc[t["norm"] == "layer", "best_test_loss"] = jitter(0.305, 0.02)  # LN vs none: raw p ~ 0.02
    row = verdicts.primary_table(t).set_index(["measure", "first", "second"]).loc[("best_test_loss", "layer", "none")]
    assert row["p"] < 0.05 <= row["p_holm"]
    assert row["verdict"] == "not established" and not row["established"]


def test_groups_report_n_and_diverged_and_keep_failed_runs():
    t = study()
    t = pd.concat([t[t["norm"] != "none"], pd.DataFrame(runs("mlp", "none", diverged=(4,),
                                                             steps_to_level=jitter(700, 40)))])
    row = verdicts.primary_table(t).set_index(["measure", "first", "second"]).loc[("best_test_loss", "batch", "none")]
    assert (row["n_first"], row["diverged_first"], row["n_second"], row["diverged_second"]) == (5, 0, 5, 1)
    assert row["mean_second"] == pytest.approx((4 * 0.30 + C) / 5)  # the failed run counts, at chance
    steps = verdicts.primary_table(t).set_index(["measure", "first", "second"]).loc[("steps_to_level", "batch", "none")]
    assert (steps["reached_first"], steps["reached_second"]) == (5, 4)
    assert steps["hi_second"] <= 1000  # a restricted mean's interval ends at the horizon


def test_no_hedges_g_when_a_group_has_no_spread():
    t = pd.DataFrame(runs("mlp", "batch", steps_to_level=jitter(400, 40)) +
                     runs("mlp", "none", steps_to_level=1000.0, reached=False))  # all censored: no spread
    row = verdicts.primary_table(t).set_index(["measure", "first", "second"]).loc[("steps_to_level", "batch", "none")]
    assert row["verdict"] == "batch norm lower" and math.isnan(row["hedges_g"])
    assert abs(metrics.welch(t.loc[t.norm == "batch", "steps_to_level"],
                             t.loc[t.norm == "none", "steps_to_level"])["g"]) > 10  # what the old table showed
    # spread on both sides and overlapping groups: g is given (study()'s steps lie ~9 SDs apart, beyond the
    # rule's |g| <= 4 of normlib.stats.effect_size, so this fixture spreads them wider)
    wide = pd.DataFrame(runs("mlp", "batch", steps_to_level=jitter(400, 400)) +
                        runs("mlp", "none", steps_to_level=jitter(700, 400)))
    both = verdicts.primary_table(wide).set_index(["measure", "first", "second"])
    assert both.loc[("steps_to_level", "batch", "none"), "hedges_g"] < 0  # spread on both sides: g is given
    assert math.isnan(verdicts.primary_table(study()).set_index(["measure", "first", "second"])
                      .loc[("steps_to_level", "batch", "none"), "hedges_g"])  # groups far apart: no g


def test_too_few_runs_is_not_established():
    t = pd.DataFrame(runs("mlp", "batch", n=2, steps_to_level=[400.0, 410.0]) +
                     runs("mlp", "none", n=2, steps_to_level=[900.0, 910.0]))
    row = verdicts.comparison_table(t, ["steps_to_level"], [("batch", "none")], "x", adjust=False).iloc[0]
    assert row["p"] < 0.05 and row["verdict"] == "not established"


# ----------------------------------------------------------------------------
# exploratory comparisons, winners

def with_outlier():
    """The study plus weight norm with one seed at chance: the case that erased every verdict before."""
    wn = runs("mlp", "weight", diverged=(2,), steps_to_level=[300.0, 420.0, 1000.0, 700.0, 380.0],
              best_test_loss=jitter(0.32, 0.01))
    return pd.concat([study(), pd.DataFrame(wn)], ignore_index=True)


def test_exploratory_table_is_marked_and_unadjusted():
    e = verdicts.exploratory_table(with_outlier())
    assert set(e["family"]) == {"exploratory: no multiplicity control"} and e["p_holm"].isna().all()
    pairs = {tuple(p) for p in e[["first", "second"]].to_numpy()}
    assert ("weight", "none") in pairs and ("batch", "weight") in pairs
    primary_rows = e[e["measure"].isin(verdicts.PRIMARY)]
    assert not any(tuple(p) in verdicts.PRIMARY_PAIRS for p in primary_rows[["first", "second"]].to_numpy())
    fail = e.set_index(["measure", "first", "second"]).loc[("failure_rate", "weight", "none")]
    assert fail["test"] == "Fisher" and fail["mean_first"] == pytest.approx(0.2) and fail["verdict"] == "not established"
    sd = e.set_index(["measure", "first", "second"]).loc[("final_val_loss_sd", "weight", "none")]
    assert sd["test"] == "Brown-Forsythe" and sd["mean_first"] > sd["mean_second"]


def test_an_outlier_condition_does_not_erase_pairwise_winners():
    t = with_outlier()
    assert verdicts.primary_table(t).equals(verdicts.primary_table(study()))  # the outlier is not in the family
    pairwise = pd.concat([verdicts.primary_table(t), verdicts.exploratory_table(t)])
    pairwise = pairwise[pairwise["measure"] == "steps_to_level"].set_index(["first", "second"])
    assert pairwise.loc[("batch", "none"), "established"] and pairwise.loc[("batch", "layer"), "established"]
    assert not pairwise.loc[("batch", "weight"), "established"]  # the wide condition: honestly undecided
    four = verdicts.winners(pairwise.reset_index()).iloc[0]
    assert four["winner"] == "" and four["verdict"] == "not established"  # BN vs WN is not established
    three = verdicts.winners(verdicts.primary_table(t)).set_index("measure")
    assert three.loc["steps_to_level", "verdict"] == "batch norm best"
    assert three.loc["steps_to_level", "winner"] == "batch"
    assert three.loc["spike", "winner"] == "" and three.loc["spike", "verdict"] == "not established"
    assert three.loc["best_test_loss", "winner"] == ""  # BN beats none, but BN vs LN is not established


# ----------------------------------------------------------------------------
# confirmation on fresh seeds

def fresh(shift_batch=0.0, flip=False):
    t = study()
    t["seed"] += 100
    if flip:  # BN now slower than none
        t.loc[t["norm"] == "batch", "steps_to_level"] = jitter(900, 40)
    t.loc[t["norm"] == "batch", "best_test_loss"] += shift_batch
    return t


def test_confirm():
    first = verdicts.primary_table(study())
    c = verdicts.confirm(first, verdicts.primary_table(fresh())).set_index(["measure", "first", "second"])
    assert c.loc[("steps_to_level", "batch", "none"), "confirmation"] == "confirmed"
    assert c.loc[("steps_to_level", "batch", "none"), "claim"] == "batch norm lower"
    assert c.loc[("steps_to_level", "layer", "none"), "confirmation"] == "not established"
    assert c.loc[("steps_to_level", "layer", "none"), "claim"] == "not established"
    flipped = verdicts.confirm(first, verdicts.primary_table(fresh(flip=True))).set_index(["measure", "first", "second"])
    assert flipped.loc[("steps_to_level", "batch", "none"), "confirmation"] == "not confirmed"  # opposite sign
    assert flipped.loc[("steps_to_level", "batch", "none"), "claim"] == "not established"
    gone = verdicts.confirm(first, verdicts.primary_table(fresh(shift_batch=0.03)))
    gone = gone.set_index(["measure", "first", "second"])
    assert gone.loc[("best_test_loss", "batch", "none"), "confirmation"] == "not confirmed"  # no difference left


def test_confirmation_is_holm_adjusted_over_the_established_family():
    first = pd.DataFrame({"network": "mlp", "measure": ["steps_to_level", "spike", "best_test_loss"],
                          "first": "batch", "second": "none", "diff": [-1.0, -1.0, -1.0],
                          "established": [True, True, False], "verdict": "batch norm lower", "winner": "batch"})
    second = first.assign(diff=[-0.5, -0.5, -0.5], diff_lo=math.nan, diff_hi=math.nan, p=[0.03, 0.2, 0.001],
                          n_first=5, diverged_first=0, n_second=5, diverged_second=0)
    c = verdicts.confirm(first, second).set_index("measure")
    # two comparisons were established: Holm doubles 0.03 to 0.06; the third (p = 0.001) was not established
    assert c.loc["steps_to_level", "p_confirm"] == pytest.approx(0.06)
    assert c["confirmation"].tolist() == ["not confirmed", "not confirmed", "not established"]
    c1 = verdicts.confirm(first.assign(established=[True, False, False]), second).set_index("measure")
    assert c1.loc["steps_to_level", "confirmation"] == "confirmed"  # a family of one: 0.03 < 0.05


def test_headlines_only_from_confirmed_verdicts():
    first = verdicts.primary_table(study())
    c = verdicts.confirm(first, verdicts.primary_table(fresh(flip=True)))
    lines = verdicts.headlines(c, {"mlp": "MLP"})
    assert len(lines) == (c["confirmation"] == "confirmed").sum() >= 1
    assert all("confirmed on fresh seeds" in s and s.startswith("MLP, ") for s in lines)
    assert not any("convergence speed" in s and "than no normalization" in s for s in lines)  # flipped: not confirmed
    assert any(s.startswith("MLP, final loss: batch norm lower than no normalization") for s in lines)
    confirmed_winners = verdicts.winners(c, "confirmed_winner").set_index("measure")
    assert confirmed_winners.loc["steps_to_level", "winner"] == ""  # BN vs none was not confirmed


# ----------------------------------------------------------------------------
# glue values and the reader's table

def test_glue_values_are_plain_python():
    c = verdicts.confirm(verdicts.primary_table(study()), verdicts.primary_table(fresh()))
    g = verdicts.values_to_glue(c)
    assert all(type(v) in (float, int, str, bool) for v in g.values())
    base = "mlp_steps_to_level_batch_vs_none_"
    assert g[base + "verdict"] == "batch norm lower" and g[base + "confirmation"] == "confirmed"
    assert g[base + "n_batch"] == 5 and g[base + "diverged_none"] == 0
    assert g[base + "diff"] == pytest.approx(-300) and g[base + "ci"].startswith("-300 [")
    assert g["mlp_spike_layer_vs_none_verdict"] == "not established"


def test_each_comparison_states_what_it_could_detect():
    """The smallest difference each primary comparison detects with 80% power at Holm's first level (alpha /
    18), larger where the runs spread more; on the fresh seeds, at the level of the confirmation's family."""
    t = verdicts.primary_table(study()).set_index(["measure", "first", "second"])
    speed = t.loc[("steps_to_level", "batch", "none")]
    from normlib.stats import detectable
    assert speed["detectable"] == pytest.approx(detectable(speed["se"], speed["df"], 0.05 / len(t)))
    wide = pd.DataFrame(runs("mlp", "none", steps_to_level=jitter(700, 80)) + runs("mlp", "batch", steps_to_level=jitter(400, 80))
                        + runs("mlp", "layer", steps_to_level=jitter(690, 80)))
    w = verdicts.primary_table(wide).set_index(["measure", "first", "second"])
    assert w.loc[("steps_to_level", "batch", "none"), "detectable"] == pytest.approx(2 * speed["detectable"], rel=0.05)
    c = verdicts.confirm(verdicts.primary_table(study()), verdicts.primary_table(fresh()))
    established = c[c["established"]]
    assert established["detectable_fresh"].notna().all() and c[~c["established"]]["detectable_fresh"].isna().all()
    assert "detectable on fresh seeds" in verdicts.reader_table(c)


def test_reader_table_and_line():
    t = verdicts.primary_table(study())
    r = verdicts.reader_table(t)
    assert list(r.columns) == ["network", "criterion", "measure", "comparison", "difference [95% CI]", "Holm p",
                               "detectable (80% power)", "verdict", "n (diverged)"]
    row = t[(t["measure"] == "best_test_loss") & (t["first"] == "batch") & (t["second"] == "none")].iloc[0]
    line = verdicts.reader_line(row)
    assert re.fullmatch(r"BN - none: -0\.030 \[-0\.\d{3}, -0\.\d{3}\], Holm p (< 0\.001|= 0\.\d{3}), BN lower", line)
    assert set(r["verdict"]) <= {"BN lower", "LN lower", "none lower", "not established"}
    e = verdicts.reader_table(verdicts.exploratory_table(with_outlier()))
    assert "Holm p" not in e and e["p"].str.match(r"([01]\.\d{3}|< 0\.001|n/a)$").all()  # unadjusted: no Holm


# ----------------------------------------------------------------------------
# from Histories to verdicts

def test_from_histories_to_the_primary_table():
    from tests.test_measures import falling, run
    hs = [run(falling(r + 0.1 * s, f), norm=n, seed=s, best_test_loss=b + 0.002 * s)
          for n, r, f, b in (("none", 3, 0.40, 0.42), ("batch", 6, 0.30, 0.31), ("layer", 4, 0.35, 0.36))
          for s in range(5)]
    hs[5] = run(falling(6, 0.30), norm="batch", seed=0, diverged_step=700)  # one BN seed diverges late
    table = metrics.measures_table(hs)
    t = verdicts.primary_table(table).set_index(["measure", "first", "second"])
    speed = t.loc[("steps_to_level", "batch", "none")]
    assert (speed["n_first"], speed["diverged_first"]) == (5, 1)
    assert speed["reached_first"] == 4 and speed["mean_first"] > 300  # the failed seed counts at the horizon
    summary = verdicts.condition_summary(table).set_index(["norm", "measure"])
    assert summary.loc[("batch", "steps_to_level"), "diverged"] == 1
    assert summary.loc[("batch", "steps_to_level"), "reached"] == 4
    assert summary.loc[("batch", "spike"), "mean"] == pytest.approx(0.2)  # 4 x 0 + 1 failed run
    corr = verdicts.criterion_correlations(table)["mlp"]
    assert corr.shape == (3, 3)


def test_confirm_runs_needs_fresh_seeds_and_another_split():
    first, again = study().assign(split_seed=0, level=0.5), fresh().assign(split_seed=1, level=0.5)
    c = verdicts.confirm_runs(first, again).set_index(["measure", "first", "second"])
    assert c.loc[("steps_to_level", "batch", "none"), "confirmation"] == "confirmed"
    with pytest.raises(ValueError, match="disjoint"):
        verdicts.confirm_runs(first, study().assign(split_seed=1, level=0.5))
    with pytest.raises(ValueError, match="split"):
        verdicts.confirm_runs(first, fresh().assign(split_seed=0, level=0.5))
    with pytest.raises(ValueError, match="levels"):
        verdicts.confirm_runs(first, again.assign(level=0.6))


def test_summary_values_to_glue():
    t = pd.concat([study(), pd.DataFrame(runs("mlp", "weight", diverged=(1,)))])
    g = verdicts.summary_values_to_glue(verdicts.condition_summary(t))
    assert all(type(v) in (float, int, str) for v in g.values())
    assert g["mlp_steps_to_level_batch"].startswith("400 [") and g["mlp_steps_to_level_batch_reached"] == 5
    assert (g["mlp_best_test_loss_weight_n"], g["mlp_best_test_loss_weight_diverged"]) == (5, 1)
    assert g["mlp_steps_to_level_weight_reached"] == 4 and "mlp_spike_weight_reached" not in g


def test_a_mean_log_loss_below_zero_keeps_its_interval():
    """log_loss_auc is negative once the loss is below 1: its interval in the conditions table and in a
    comparison is not clipped at 0 (step 5 showed "-0.997 [0.000, -0.986]"); a loss's interval still is."""
    table = pd.DataFrame(runs("mlp", "none", log_loss_auc=jitter(-1.0, 0.02), best_test_loss=[0.0, 0.0, 0.0, 0.0, 0.05])
                         + runs("mlp", "batch", log_loss_auc=jitter(-1.1, 0.02)))
    summary = verdicts.condition_summary(table).set_index(["norm", "measure"])
    row = summary.loc[("none", "log_loss_auc")]
    assert row["lo"] < row["mean"] < row["hi"] < 0
    assert summary.loc[("none", "best_test_loss"), "lo"] == 0.0  # clipped: a loss is never negative
    ex = verdicts.exploratory_table(table).set_index(["measure", "first", "second"])
    assert ex.loc[("log_loss_auc", "batch", "none"), "lo_first"] < -1.1 < ex.loc[("log_loss_auc", "batch", "none"),
                                                                                  "hi_first"] < 0


def test_the_verdicts_clip_intervals_to_the_values_each_measure_can_take():
    """One source, metrics.metric_bounds: a spike above 1 (a rise that undid more than all progress) keeps its
    interval above 1, an accuracy's stays within [0, 1]; every interval of a measure lies within its bounds."""
    table = pd.DataFrame(runs("mlp", "none", spike=[1.1, 1.2, 1.3, 1.2, 1.2], best_test_acc=[0.99, 1.0, 1.0, 1.0, 0.9])
                         + runs("mlp", "batch"))
    summary = verdicts.condition_summary(table, measures=tuple(verdicts.MEASURES)).set_index(["norm", "measure"])
    assert summary.loc[("none", "spike"), "hi"] > 1.2 and summary.loc[("none", "best_test_acc"), "hi"] == 1.0
    for (norm, name), row in summary.iterrows():
        low, high = metrics.metric_bounds(name) or (-math.inf, math.inf)
        assert low <= row["lo"] <= row["mean"] <= row["hi"] <= high or math.isnan(row["lo"]), (norm, name)
