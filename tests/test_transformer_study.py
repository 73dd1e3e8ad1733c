"""Tests of normlib.studies.transformer: its declared family on hand-made tables whose verdicts are known
(each verdict moves with what it claims), its trial plan (conditions, tuning seeds disjoint from the test
seeds, a config shared by the comparison and the sweep counted once), the tuning by successive halving on
fake runs, the refusals of bad parameters, the tables and the figures. Nothing is trained."""
import math

import matplotlib
import pandas as pd
import pytest

from normlib import params, protocol, study_figures
from normlib.studies import transformer as vit
from normlib.train import History
from normlib.trials import Result

matplotlib.use("Agg")

P = {"seeds": [0, 1, 2, 3, 4], "tuning_seeds": [100], "lrs": [0.003, 0.01, 0.03], "tuning_budgets": [0.25, 0.5],
     "sweep_lrs": [0.03], "sweep_bn": False, "warmup": 0.1, "acc_threshold": 0.75, "hidden": [16, 16],
     "activation": "gelu", "optimizer": "adam", "batch_size": 64, "train_size": 512, "val_size": 500, "epochs": 2,
     "evals_per_epoch": 1, "impl": "custom", "workers": 1, "force": False}
HIGH, W = 0.03, 0.1


# ---------------------------------------------------------------------------------------------
# hand-made tables

def comparison_table(errors, n=5):
    """errors: {condition: mean final validation error}; a small spread that differs between conditions."""
    return pd.DataFrame([{"condition": c, "seed": s, "val_error": e + 0.002 * ((s * (1 + k)) % n - 2)}
                         for k, (c, e) in enumerate(errors.items()) for s in range(n)])


def sweep_table(trains, errors, n=5, conditions=("pre-LN", "post-LN")):
    """trains / errors: {(condition, warmup): share of runs that train / mean error} at the high rate."""
    rows = []
    for k, c in enumerate(conditions):
        for w in (W, 0.0):
            share, err = trains[c, w], errors[c, w]
            for s in range(n):
                rows.append({"condition": c, "lr": HIGH, "warmup": w, "seed": s, "trains": s < round(share * n),
                             "val_error": err + 0.003 * ((s * (2 + k + 2 * (w > 0))) % n - 2)})
    return pd.DataFrame(rows)


EVEN = {c: 0.18 for c in vit.CONDITIONS}
LN_BETTER = {"none": 0.25, "pre-LN": 0.15, "post-LN": 0.15, "pre-BN": 0.20, "post-BN": 0.20}
PLACEMENT = {("pre-LN", W): 1.0, ("pre-LN", 0.0): 1.0, ("post-LN", W): 0.0, ("post-LN", 0.0): 0.0}
NO_PLACEMENT = {k: 1.0 for k in PLACEMENT}
WARMUP_HELPS_POST = {("pre-LN", W): 0.20, ("pre-LN", 0.0): 0.21, ("post-LN", W): 0.35, ("post-LN", 0.0): 0.55}
WARMUP_SAME = {("pre-LN", W): 0.20, ("pre-LN", 0.0): 0.30, ("post-LN", W): 0.35, ("post-LN", 0.0): 0.45}


def verdicts(errors, trains, sweep_errors, bn=False, **kw):
    f = vit.family(comparison_table(errors), sweep_table(trains, sweep_errors, **kw), HIGH, W, bn=bn)
    return f.set_index("key")["verdict"]


def test_family_supports_what_the_tables_show():
    v = verdicts(LN_BETTER, PLACEMENT, WARMUP_HELPS_POST)
    assert len(v) == 9
    assert (v == "supported").all(), v


def test_family_verdicts_move_with_what_they_claim():
    v = verdicts(EVEN, NO_PLACEMENT, WARMUP_SAME)
    assert (v == "not established").all(), v
    bn_better = {**LN_BETTER, "pre-LN": 0.20, "post-LN": 0.20, "pre-BN": 0.15, "post-BN": 0.15}
    v = verdicts(bn_better, PLACEMENT, WARMUP_HELPS_POST)
    assert v["vit_ln_vs_bn_pre"] == v["vit_ln_vs_bn_post"] == "contradicted"
    assert v["vit_vs_none_pre_bn"] == "supported"
    worse = {**EVEN, "pre-LN": 0.25}  # pre-LN worse than none: the opposite of the prediction
    assert verdicts(worse, PLACEMENT, WARMUP_HELPS_POST)["vit_vs_none_pre_ln"] == "contradicted"
    post_first = {("pre-LN", W): 0.0, ("pre-LN", 0.0): 0.0, ("post-LN", W): 1.0, ("post-LN", 0.0): 1.0}
    v = verdicts(LN_BETTER, post_first, WARMUP_HELPS_POST)  # a one-sided test: never "contradicted"
    assert v["vit_pre_trains_warmup"] == v["vit_pre_trains_no_warmup"] == "not established"


def test_placement_rows_need_enough_runs():
    """With three runs a side, Fisher's one-sided p is at least 1/20: Holm over the family cannot reach 0.05."""
    v = verdicts(LN_BETTER, PLACEMENT, WARMUP_HELPS_POST, n=3)
    assert v["vit_pre_trains_warmup"] == "not established"


def test_batch_norm_placement_rows_join_with_the_bn_sweep():
    conds = ("pre-LN", "post-LN", "pre-BN", "post-BN")
    trains = {**PLACEMENT, ("pre-BN", W): 1.0, ("pre-BN", 0.0): 1.0, ("post-BN", W): 0.0, ("post-BN", 0.0): 1.0}
    errors = {**WARMUP_HELPS_POST, **{(c, w): 0.2 for c in ("pre-BN", "post-BN") for w in (W, 0.0)}}
    v = verdicts(LN_BETTER, trains, errors, bn=True, conditions=conds)
    assert len(v) == 11
    assert v["vit_pre_trains_warmup_bn"] == "supported" and v["vit_pre_trains_no_warmup_bn"] == "not established"


def test_warmup_gains_pair_runs_by_seed():
    t = pd.DataFrame([{"condition": "post-LN", "lr": HIGH, "warmup": w, "seed": s, "val_error": e + s}
                      for s in range(3) for w, e in ((W, 0.2), (0.0, 0.5))])
    assert vit.warmup_gains(t, "post-LN", HIGH, W) == pytest.approx([0.3, 0.3, 0.3])
    assert vit.warmup_gains(t, "pre-LN", HIGH, W) == []


# ---------------------------------------------------------------------------------------------
# runs: tables of Histories, fake Results

def history(condition, lr, seed, *, warmup=W, acc=0.8, loss=0.5, diverged=False, max_steps=0, lqc_drop=0.0):
    norm, position = vit.CONDITIONS[condition]
    h = History(config={"arch": "vit", "norm": norm, "norm_position": position, "lr": lr, "seed": seed,
                        "warmup": warmup, "epochs": 4, "max_steps": max_steps, "evals_per_epoch": 1},
                steps_per_epoch=10)
    n = max(1, (max_steps or 40) // 10)
    h.eval_step = [10 * (i + 1) for i in range(n)]
    h.eval_epoch = [i + 1.0 for i in range(n)]
    h.val_loss = [loss * (1 + lqc_drop * (n - i)) for i in range(n)]
    h.val_acc = [acc] * n
    h.test_acc = acc
    if diverged:
        h.diverged, h.diverged_step, h.val_loss[-1] = True, h.eval_step[-1], math.nan
    return h


def test_tabulate_counts_a_failed_run_at_chance_and_never_as_training():
    t = vit.tabulate([history("pre-LN", HIGH, 0), history("post-LN", HIGH, 0, acc=0.6),
                      history("none", HIGH, 0, diverged=True)], threshold=0.75).set_index("condition")
    assert list(t["trains"]) == [True, False, False]
    assert t.loc["none", "failed"] and t.loc["none", "final_val_acc"] == pytest.approx(0.1)
    assert t.loc["none", "val_error"] == pytest.approx(0.9) and t.loc["none", "test_error"] == pytest.approx(0.9)
    assert t.loc["pre-LN", "val_error"] == pytest.approx(0.2)


def test_condition_of_reads_the_norm_and_its_place():
    for c in vit.CONDITIONS:
        assert vit.condition_of(vit.config(P, c, 0.01, 0).to_dict()) == c
    assert vit.condition_of({"norm": "none", "norm_position": "after"}) == "none"


def test_plateaus_take_the_median_change_per_condition():
    t = vit.tabulate([history("pre-LN", 0.01, s) for s in range(3)] +
                     [history("post-LN", 0.01, s, lqc_drop=0.2) for s in range(3)], 0.75)
    got = vit.plateaus(t)
    assert got["pre-LN"] == (pytest.approx(0.0), "plateaued") and got["post-LN"][1] == "still falling"


def fake_run(best_rate):
    """run(configs) -> Results whose best validation loss is lowest at best_rate[condition] (log distance)."""
    calls = []

    def run(configs):
        calls.append(configs)
        out = []
        for c in configs:
            cond = vit.condition_of(c.to_dict())
            loss = 0.5 + abs(math.log(c.lr / best_rate[cond]))
            h = history(cond, c.lr, c.seed, warmup=c.warmup, loss=loss, max_steps=c.max_steps)
            h.config = c.to_dict()
            out.append(Result(h))
        return out
    return run, calls


def test_tuning_halves_the_grid_on_the_tuning_seeds_at_each_budget():
    best = {"none": 0.003, "pre-LN": 0.03, "post-LN": 0.01, "pre-BN": 0.01, "post-BN": 0.003}
    run, calls = fake_run(best)
    selected, rungs, results = vit.tune(P, run)
    assert selected == best
    assert [b for b, _ in rungs] == [0.25, 0.5] and len(calls) == 2
    assert len(calls[0]) == 5 * 3 and len(calls[1]) == 5 * 2 and len(results) == 25
    full = vit.steps(P)
    assert {c.max_steps for c in calls[0]} == {round(0.25 * full)} and {c.max_steps for c in calls[1]} == {round(0.5 * full)}
    assert {c.seed for cs in calls for c in cs} == set(P["tuning_seeds"]) and {c.warmup for c in calls[0]} == {W}
    table = protocol.rungs_table(rungs, selected, full)
    assert (table["halving"] == "selected").sum() == 5 and (table[table["rung"] == 1]["halving"] == "kept").sum() == 10


def test_plan_runs_every_condition_and_counts_a_shared_config_once():
    selected = {"none": 0.01, "pre-LN": HIGH, "post-LN": 0.01, "pre-BN": 0.01, "post-BN": 0.01}
    comparison, sweep, planned = vit.plan(P, selected)
    assert {vit.condition_of(c.to_dict()) for c in comparison} == set(vit.CONDITIONS)
    assert len(comparison) == 5 * 5 and {c.seed for c in comparison} == set(P["seeds"])
    assert {vit.condition_of(c.to_dict()) for c in sweep} == {"pre-LN", "post-LN"}
    assert {(c.lr, c.warmup) for c in sweep} == {(HIGH, W), (HIGH, 0.0)} and len(sweep) == 2 * 2 * 5
    assert len(planned) == len(comparison) + len(sweep) - 5  # pre-LN at its selected rate with warmup: shared
    assert all(c.max_steps == 0 and c.arch == "vit" and c.hidden == (16, 16) for c in planned)
    assert not {c.seed for c in planned} & set(P["tuning_seeds"])
    _, sweep_bn, _ = vit.plan({**P, "sweep_bn": True}, selected)
    assert {vit.condition_of(c.to_dict()) for c in sweep_bn} == {"pre-LN", "post-LN", "pre-BN", "post-BN"}


@pytest.mark.parametrize("change, message", [
    ({"hidden": [16, 32]}, "parameter 'hidden' = [16, 32]: the ViT needs one width per block"),
    ({"hidden": [18, 18]}, "divisible by its 4 heads"),
    ({"warmup": 0.0}, "parameter 'warmup' = 0.0: must be above 0"),
    ({"acc_threshold": 0.05}, "parameter 'acc_threshold' = 0.05: must be above chance"),
    ({"tuning_seeds": [0]}, "parameter 'tuning_seeds' = [0]: shares seed(s) [0] with 'seeds'"),
    ({"sweep_lrs": []}, "parameter 'sweep_lrs' = []: must be a non-empty list"),
    ({"sweep_bn": "yes"}, "parameter 'sweep_bn' = 'yes': must be true or false"),
])
def test_check_refuses_bad_parameters_with_one_line(change, message):
    with pytest.raises(params.ParameterError, match=None) as e:
        vit.check({**P, **change})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_figures_draw():
    curves = pd.DataFrame([{"condition": c, "seed": s, "epoch": e, "val_loss": 1 / e, "val_error": 0.2 + 0.1 / e}
                           for c in vit.CONDITIONS for s in range(3) for e in (1, 2, 3)])
    fig = study_figures.condition_curves(curves, vit.styles())
    assert len(fig.axes) == 2 and fig.axes[0].get_ylabel() and len(fig.legends) == 1
    runs = vit.tabulate([history(c, lr, s, warmup=w, acc=0.8 if c == "pre-LN" else 0.5)
                         for c in ("pre-LN", "post-LN") for lr in (0.01, HIGH) for w in (W, 0.0) for s in range(3)], 0.75)
    fig = study_figures.condition_sweep(runs, 0.75, W, vit.styles())
    assert [ax.get_title() for ax in fig.axes] == ["with warmup (10% of the steps)", "without warmup"]
