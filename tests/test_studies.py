"""Tests of normlib.studies: the rows and families every study uses (normlib.studies.common), each
study's trials, tables and declared family on hand-made runs whose verdict is known, the table of
studies against the notebooks and the book, the studies' figures and the pages' text. Nothing is
trained but one small run on synthetic data."""
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from normlib import study_figures
from normlib.data import Splits
from normlib.studies import (STUDIES, activation_drift, batch_size, claims, common, init_scale, landscape,
                             learning_rate, literature, recurrent, regularization)
from normlib.train import History, train
from normlib.trials import Result

matplotlib.use("Agg")


def fake_data(n=256, seed=0):
    """Splits of random 28x28 'images' whose class is readable from their mean brightness."""
    g = torch.Generator().manual_seed(seed)

    def part(m):
        y = torch.randint(0, 10, (m,), generator=g)
        x = torch.randn(m, 1, 28, 28, generator=g) + (y.float() / 5).view(-1, 1, 1, 1)
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = part(n), part(64), part(64)
    return Splits(xt, yt, xv, yv, xs, ys, 0.0, 1.0, "fake")


# ---------------------------------------------------------------------------------------------
# the verdict rows and families

def spread_around(centre, n=5, width=0.01):
    return list(centre + width * np.linspace(-1, 1, n))


def test_difference_is_supported_contradicted_or_not_established():
    f = common.family([common.difference("up", "a higher", spread_around(0.5), spread_around(0.3), predicted=1),
                        common.difference("down", "a lower", spread_around(0.5), spread_around(0.3), predicted=-1),
                        common.difference("tie", "a higher", spread_around(0.5, width=0.3), spread_around(0.45),
                                           predicted=1)])
    assert list(f["verdict"]) == ["supported", "contradicted", "not established"]
    assert f.iloc[0]["text"].startswith("supported (+20.0 [") and "Holm p" in f.iloc[0]["text"]
    assert (f["p_holm"] >= f["p"]).all()


def test_holm_can_take_a_verdict_away():
    one = [common.difference("x", "q", spread_around(0.50, width=0.02), spread_around(0.47, width=0.02))]
    alone = common.family(one)
    many = common.family(one + [common.difference(f"n{i}", "q", spread_around(0.5), spread_around(0.5))
                                 for i in range(20)])
    assert alone.iloc[0]["verdict"] == "supported" and many.iloc[0]["verdict"] == "not established"


def test_too_few_seeds_is_not_established():
    f = common.family([common.difference("x", "q", [0.9, 0.91], [0.1, 0.11])])
    assert f.iloc[0]["verdict"] == "not established" and "a test needs 3" in f.iloc[0]["text"]


def test_equivalence_needs_the_interval_inside_the_margin():
    close = common.equivalence("eq", "same", spread_around(0.300), spread_around(0.305), margin=0.03)
    far = common.equivalence("eq", "same", spread_around(0.30), spread_around(0.36), margin=0.03)
    wide = common.equivalence("eq", "same", spread_around(0.30, width=0.2), spread_around(0.30, width=0.2), 0.03)
    f = common.family([close, far, wide])
    assert list(f["verdict"]) == ["supported", "not established", "not established"]
    assert "TOST, margin ±3.0 points" in f.iloc[0]["text"]


def test_noninferiority_is_one_sided():
    better = common.noninferior("ni", "a no worse", spread_around(0.20), spread_around(0.30), margin=0.02)
    worse = common.noninferior("ni", "a no worse", spread_around(0.35), spread_around(0.30), margin=0.02)
    f = common.family([better, worse])
    assert list(f["verdict"]) == ["supported", "not established"]


def test_paired_test_reads_the_differences_of_the_same_runs():
    a = [0.5, 0.6, 0.7, 0.8, 0.9]
    r = common.paired("m", "q", a, [v - 0.1 + 0.001 * i for i, v in enumerate(a)])
    assert r["estimate"] == pytest.approx(0.098) and r["p"] < 0.001
    # the same numbers as unpaired groups would not separate
    assert common.difference("m", "q", a, [v - 0.1 for v in a])["p"] > 0.05


def test_family_table_and_glue_keys():
    f = common.family([common.difference("k", "question", spread_around(0.5), spread_around(0.3))])
    t = common.family_table(f)
    assert list(t.columns) == ["question", "test", "estimate [interval]", "n", "p", "Holm p", "detectable (80% power)",
                               "verdict"]
    assert t.iloc[0]["n"] == "5 vs 5" and t.iloc[0]["detectable (80% power)"].endswith(" points")


def test_every_row_states_what_its_test_detects_at_the_familys_level():
    """The smallest detectable effect shrinks with the spread, grows with the family (Holm's alpha / m), and
    an equivalence states the smallest margin it could establish."""
    tight, loose = spread_around(0.5, width=0.01), spread_around(0.5, width=0.05)
    one = common.family([common.difference("a", "q", tight, spread_around(0.3, width=0.01))])
    wide = common.family([common.difference("a", "q", loose, spread_around(0.3, width=0.05))])
    many = common.family([common.difference(f"a{i}", "q", tight, spread_around(0.3, width=0.01)) for i in range(6)])
    assert 0 < one["detectable"].iloc[0] < wide["detectable"].iloc[0]
    assert many["detectable"].iloc[0] > one["detectable"].iloc[0]
    eq = common.family([common.equivalence("e", "q", tight, spread_around(0.5, width=0.01), margin=0.03)])
    assert common.family_table(eq).iloc[0]["detectable (80% power)"].startswith("±")
    share = common.family([common.shares("s", "q", [True] * 5, [False] * 5)])
    assert 0 < share["detectable"].iloc[0] <= 1 and share["verdict"].iloc[0] == "supported"
    assert "detect true effects of at least" in common.detectable_sentence(many)


def test_the_effect_size_rule_needs_spread_on_both_sides():
    # groups that spread and overlap (width 0.1: |g| about 2.3; at width 0.01 the groups lie 20 SDs apart and
    # the rule, normlib.stats.effect_size, shows no g)
    both = common.standardized_effect(spread_around(0.5, width=0.1), spread_around(0.3, width=0.1))
    assert both["diff"] == pytest.approx(0.2) and both["hedges_g"] > 0 and both["n_first"] == 5
    assert math.isnan(common.standardized_effect([0.5] * 5, spread_around(0.3))["hedges_g"])  # one side without spread
    row = common.difference("k", "q", [0.5] * 5, spread_around(0.3))
    assert math.isnan(row["hedges_g"]) and "Hedges" not in common.family([row]).iloc[0]["text"]
    assert "Hedges' |g| = " in common.family([common.difference("k", "q", spread_around(0.5, width=0.1),
                                                                spread_around(0.3, width=0.1))]).iloc[0]["text"]
    far = common.standardized_effect(spread_around(0.5), spread_around(0.3))  # both spread, 20 SDs apart
    assert math.isnan(far["hedges_g"]) and far["diff_lo"] < 0.2 < far["diff_hi"]


def glued(monkeypatch):
    """What the pages' helpers glue (common.glue_values), collected in a dict."""
    got = {}
    monkeypatch.setattr(common, "glue_values", got.update)
    return got


def test_no_glued_sentence_states_a_standardized_effect_without_spread_or_overlap(monkeypatch):
    """Today's absurd cases: the drift of batch norm's input near-constant against the control's (|g| = 60), a
    layer norm far below the control (|g| > 4 though both spread), batch norm's collapse many SDs beyond the
    control's (|g| = 11). Their glued sentences state the raw difference and its interval, never Hedges' g, which
    stays where both groups spread and overlap (stats.effect_size)."""
    from normlib import metrics, stats
    got = glued(monkeypatch)
    rows = [{"norm": n, "seed": s, "layer": "norm3", "median_shift": m + 0.3 * s, "spread_change": c + w * s}
            for n, m, c, w in (("none", 2.5, 3.6, 0.02), ("batch", 0.2, 0.02, 1e-12), ("layer", 1.9, 1.7, 0.02))
            for s in range(5)]
    drift, t = activation_drift.family(pd.DataFrame(rows)), pd.DataFrame(rows)
    common.glue_family(drift)
    bs = batch_size.family(bs_table(bn_small=0.5), margin=0.03)
    common.glue_family(bs)
    raw = lambda m, n: abs(metrics.welch(t[t["norm"] == n][m], t[t["norm"] == "none"][m])["g"])  # noqa: E731
    assert raw("spread_change", "batch") > 40 and raw("spread_change", "layer") > 4  # what the old rule printed
    assert raw("median_shift", "layer") < 4
    for key in ("drift_spread_change_batch", "drift_spread_change_layer", "drift_median_shift_batch",
                "bs_bn_collapse"):
        assert "Hedges" not in got[key] and " [" in got[key], key  # the raw difference with its interval
    assert "Hedges' |g| = " in got["drift_median_shift_layer"]  # both spread, the groups overlap: g is shown
    for fam in (drift, bs):  # no sentence anywhere shows a g the rule withholds
        for r in fam.itertuples():
            shown = "Hedges" in got[r.key]
            assert shown == bool(np.isfinite(r.hedges_g)) and (not shown or abs(r.hedges_g) <= stats.G_LIMIT)


def test_the_literatures_effect_is_detectable_or_not_at_these_seeds():
    """A reported effect at least the row's detectable one is detectable; a smaller one is not, with the seeds that
    would detect it; an equivalence needs its detectable margin (plus the reported difference) inside the margin."""
    fam = common.family([common.difference("d", "q", spread_around(0.5, width=0.05), spread_around(0.3, width=0.05)),
                         common.equivalence("e", "q", spread_around(0.3, width=0.01), spread_around(0.3, width=0.01),
                                            margin=0.03),
                         common.shares("s", "q", [True] * 5, [False] * 5)])
    det = fam.set_index("key")["detectable"]
    Reported = literature.Reported
    t = literature.literature(fam, [Reported("d", 2 * det["d"], "Big et al."), Reported("d", -det["d"] / 2, "Small"),
                                    Reported("e", 0.0, "Flat"), Reported("e", 0.029, "Almost"),
                                    Reported("s", 1.0, "All")])
    assert list(t["detectable"]) == [True, False, True, False, True]
    assert t["seeds"].iloc[1] == math.ceil(5 * 2 ** 2) and math.isnan(t["seeds"].iloc[4])
    text = literature.literature_sentence(t)
    assert text.startswith("Big et al.: an effect of that size") and "is detectable at these seeds" in text
    assert "Small: an effect of that size" in text and "not detectable at these seeds (the test detects" in text
    assert "about 20 runs per condition would" in text
    assert "flatness within the margin of ±3.0 points is establishable" in text
    assert literature.literature_sentence(literature.literature(fam, ()), "none reported") == "none reported"


def test_every_reported_effect_names_a_row_of_its_family():
    """Each study's `reported` (what the literature reports) sizes rows its family has, on the tests' tables."""
    lr = learning_rate.tabulate(lr_runs(), 0.7)
    init = init_table([("none", s, 1e-5, 0.1) for s in (1e-4, 1.0)])
    drift = pd.DataFrame([{"norm": n, "seed": s, "layer": "norm3", "median_shift": 1.0 + 0.1 * s,
                           "spread_change": 0.5} for n in ("none", "batch", "layer") for s in range(5)])
    land = pd.DataFrame([{"norm": n, "seed": s, "loss_range": 1 + s, "grad_change": 1 + s, "beta": 1 + s}
                         for n in ("none", "batch", "layer") for s in range(5)])
    rnn = pd.DataFrame([{"norm": n, "seed": s, "val_error": 0.3 + 0.01 * s} for n in ("none", "batch", "layer")
                        for s in range(5)])
    cases = [(batch_size.family(bs_table(), 0.03), batch_size.reported()),
             (learning_rate.family(lr, [1.0, 3.0]), learning_rate.reported()),
             (init_scale.family(init, 0.5, 1e-5, 0.1), init_scale.reported([1e-4, 1.0], 0.5, 0.1)),
             (activation_drift.family(drift), activation_drift.reported(drift)),
             (landscape.family(land), landscape.reported()),
             (regularization.family(pd.DataFrame(columns=["norm", "condition", "val_error", "gap"])),
              regularization.reported()),
             (recurrent.family(rnn), recurrent.reported()),
             (common.family(claims.batch_claim_rows(bs_table())), claims.reported())]
    for fam, reported in cases:
        assert {r.key for r in reported} <= set(fam["key"])
        t = literature.literature(fam, reported)
        assert len(t) == len(reported) and (t.empty or t["detectable"].dtype == bool)
    assert [r.effect for r in init_scale.reported([1e-4, 1.0], 0.5, 0.1)] == pytest.approx([-0.3, -0.3])
    assert activation_drift.reported(drift)[0].effect == pytest.approx(1.2)  # the control's own drift


SIZED = ("study_batch_size", "study_learning_rate", "study_init_scale", "study_activation_drift", "study_landscape",
         "study_regularization", "study_recurrent", "study_claims")  # sized against their literature (issue 20)


def markdown(name):
    import nbformat
    from normlib.paths import notebooks_dir
    return "\n".join(c.source for c in nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4).cells
                     if c.cell_type == "markdown")


def test_every_study_page_states_what_it_can_detect():
    """Every study page prints the smallest effect its tests detect at its seeds (glued from its family)."""
    for name in STUDIES:
        text = markdown(name)
        assert "{glue:text}`detectable_text:s`" in text or "_detectable:s`" in text, name


def test_every_sized_study_states_whether_the_literatures_effect_is_detectable():
    """The studies sized against their literature declare what it reports (reported) and their pages say
    whether it is detectable at their seeds; so does any other study that declares reported."""
    assert set(SIZED) <= set(STUDIES)
    for name, module in STUDIES.items():
        if name in SIZED or hasattr(module, "reported"):
            assert callable(module.reported) and "{glue:text}`literature_text:s`" in markdown(name), name


# ---------------------------------------------------------------------------------------------
# the table of studies

def test_the_table_lists_every_study_notebook_and_chapter():
    """STUDIES has one entry per study notebook (notebooks/study_*.ipynb) and per study chapter of _toc.yml,
    and each entry's module has the page function its notebook calls."""
    import nbformat
    from normlib.paths import ROOT, notebooks_dir
    from normlib.pipeline.book import toc_notebooks
    notebooks = {p.stem for p in notebooks_dir().glob("study_*.ipynb")}
    chapters = {n for n in toc_notebooks(ROOT) if n.startswith("study_")}
    assert set(STUDIES) == notebooks == chapters
    for name, module in STUDIES.items():
        assert callable(module.page) and module.__doc__, name
        code = "\n".join(c.source for c in nbformat.read(notebooks_dir() / f"{name}.ipynb", as_version=4).cells
                         if c.cell_type == "code")
        short = module.__name__.rsplit(".", 1)[1]
        assert f"from normlib.studies import {short}\n" in code and f"page = {short}.page(P)" in code, name


# ---------------------------------------------------------------------------------------------
# batch size

def bs_table(bn_small=0.5, ln_small=0.2, none_small=0.2, large=0.2, running_minus_batch=0.3, n=5):
    rows = []
    for k, (norm, small) in enumerate((("none", none_small), ("batch", bn_small), ("layer", ln_small))):
        for j, (bs, err) in enumerate(((2, small), (32, large))):
            for s in range(n):
                e = err + 0.004 * ((s * (1 + k + 2 * j)) % n - 2)  # seed noise that differs between conditions
                rows.append({"norm": norm, "batch_size": bs, "seed": s, "lr": 0.1, "steps": 100, "val_error": e,
                             "batch_stats_error": e - running_minus_batch + 0.002 * s, "population_error": e,
                             "setback": 0.01 * s, "diverged": False})
    return pd.DataFrame(rows)


def test_batch_size_verdicts_move_with_what_they_claim():
    f = batch_size.family(bs_table(), margin=0.03).set_index("key")
    assert f.loc["bs_bn_collapse", "verdict"] == "supported"
    assert f.loc["bs_ln_flat", "verdict"] == "supported"
    assert f.loc["bs_bn_mechanism", "verdict"] == "supported"
    # batch norm no worse than the control: no collapse; layer norm rising by 10 points: not flat
    f = batch_size.family(bs_table(bn_small=0.2, ln_small=0.3), margin=0.03).set_index("key")
    assert f.loc["bs_bn_collapse", "verdict"] == "not established"
    assert f.loc["bs_ln_flat", "verdict"] == "not established"
    # the control rising with layer norm: flat relative to it
    f = batch_size.family(bs_table(ln_small=0.3, none_small=0.3), margin=0.03).set_index("key")
    assert f.loc["bs_ln_flat", "verdict"] == "supported"
    # batch statistics worse than running ones: the mechanism is contradicted
    f = batch_size.family(bs_table(running_minus_batch=-0.2), margin=0.03).set_index("key")
    assert f.loc["bs_bn_mechanism", "verdict"] == "contradicted"


def test_batch_size_trials_scale_the_learning_rate_and_keep_the_examples():
    P = {"seeds": [0], "batch_sizes": [8, 2, 32], "train_size": 64, "val_size": 64, "epochs": 1, "base_lr": 0.1,
         "hidden": [8], "evals_per_epoch": 2, "impl": "custom"}
    trials = batch_size.trials(P)
    assert len(trials) == 9 and {t.probe for t in trials} == {"batch_stats"}
    assert [t.config.lr for t in trials[:3]] == pytest.approx([0.1 * 2 / 32, 0.1 * 8 / 32, 0.1])
    seen = {len(train(replace_device(t.config), fake_data(n=64)).step_loss) * t.config.batch_size for t in trials[:3]}
    assert seen == {64}


def replace_device(config):
    from dataclasses import replace
    return replace(config, device="cpu")


def test_per_seed_differences_pair_runs_by_seed():
    t = bs_table()
    d = common.per_seed_differences(t, "val_error", "batch", "none", {"batch_size": 2})
    by_seed = t[t["batch_size"] == 2].pivot(index="seed", columns="norm", values="val_error")
    assert d == pytest.approx(list(by_seed["batch"] - by_seed["none"])) and np.mean(d) == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------
# learning rate

def lr_history(norm, lr, seed, acc, diverged=False):
    return History(config={"norm": norm, "lr": lr, "seed": seed, "epochs": 1, "max_steps": 0, "evals_per_epoch": 1},
                   val_loss=[] if diverged else [1.0 - acc], val_acc=[] if diverged else [acc], eval_step=[] if diverged
                   else [10], steps_per_epoch=10, diverged=diverged, diverged_step=3 if diverged else None)


def lr_runs():
    hs = []
    for seed in (0, 1, 2):
        for lr in (0.1, 1.0, 3.0):
            hs.append(lr_history("none", lr, seed, 0.85, diverged=lr > 0.1))
            hs.append(lr_history("batch", lr, seed, {0.1: 0.86, 1.0: 0.87, 3.0: 0.80}[lr] + 0.001 * seed))
            hs.append(lr_history("layer", lr, seed, {0.1: 0.85, 1.0: 0.11, 3.0: 0.10}[lr]))
    return hs


def test_learning_rate_table_marks_failed_and_stuck_runs():
    t = learning_rate.tabulate(lr_runs(), threshold=0.7)
    none_hi = t[(t["norm"] == "none") & (t["lr"] == 3.0)]
    assert none_hi["failed"].all() and (none_hi["final_val_acc"] == 0.1).all() and not none_hi["trains"].any()
    assert t[(t["norm"] == "layer") & (t["lr"] == 3.0)]["stuck"].all()


def test_learning_rate_findings_best_near_and_usable_rates():
    out = learning_rate.findings(learning_rate.tabulate(lr_runs(), 0.7), margin=0.02)
    assert out["lr_best_batch"] == 1.0 and out["lr_near_batch"] == "0.1 and 1"
    assert out["lr_usable_batch"] == "0.1, 1 and 3" and out["lr_top_batch"].startswith("3 (the top of the grid")
    assert out["lr_usable_none"] == "0.1" and out["lr_failed_none"] == 6
    assert out["lr_usable_layer"] == "0.1" and out["lr_stuck_layer"] == 6
    assert out["lr_ratio_batch"] == "at least 30 times (its limit lies above the grid)"
    assert out["lr_ratio_layer"] == "1 times"


def test_learning_rate_family_counts_runs_that_train_above_the_grid():
    f = learning_rate.family(learning_rate.tabulate(lr_runs(), 0.7), extra_lrs=[1.0, 3.0]).set_index("key")
    assert f.loc["lr_higher_batch", "verdict"] == "supported"  # 6 of 6 against 0 of 6
    assert f.loc["lr_higher_layer", "verdict"] == "not established"  # 0 of 6 against 0 of 6


def test_learning_rate_configs_are_the_main_comparisons_tuning_configs(tmp_path, monkeypatch):
    from normlib import protocol
    monkeypatch.setenv("NORMLIB_RESULTS", str(tmp_path))
    proto = protocol.Protocol(archs=("mlp", "cnn"), tuning_seeds=(100, 101), lrs=(0.03, 0.1), train_size=1000)
    for source, norm in (("step1_bn_training", "batch"), ("step3_ln_training", "layer")):
        protocol.write_record(source, proto, ("none", norm), {})
    configs, _, shared = learning_rate.configs({"arch": "mlp", "extra_lrs": [1.0], "extra_seeds": [7]})
    assert len(configs) == 3 * (2 * 2 + 3) and shared == 3 * 2 * 2  # the extra seed only at the extra rate
    assert {c.seed for c in configs if c.lr == 1.0} == {100, 101, 7} and 7 not in {c.seed for c in configs if c.lr < 1}
    first_rung = set(proto.rung({(a, n): proto.lrs for a in proto.archs for n in ("none", "batch", "layer")},
                                proto.tuning_budgets[0]))
    assert {c for c in configs if c.lr in (0.03, 0.1) and c.seed in (100, 101)} <= first_rung
    # every rate at the first rung's budget (the MLP's: the CNN's rung has other steps)
    assert {c.max_steps for c in configs} == {c.max_steps for c in first_rung if c.arch == "mlp"}
    assert {c.arch for c in configs} == {"mlp"}


# ---------------------------------------------------------------------------------------------
# initialization scale

def init_table(rows):
    return pd.DataFrame([{"norm": n, "init_scale": s, "eps": e, "seed": i, "best_val_acc": acc + 0.005 * i,
                          "diverged": False} for n, s, e, acc in rows for i in range(5)])


def test_init_scale_family_trains_fails_and_undecided():
    t = init_table([("none", 1e-4, 1e-5, 0.1), ("none", 1.0, 1e-5, 0.8), ("batch", 1e-4, 1e-5, 0.8),
                    ("batch", 1.0, 1e-5, 0.2), ("layer", 1e-4, 1e-5, 0.2), ("layer", 1.0, 1e-5, 0.8),
                    ("layer", 1e-4, 1e-9, 0.8)])
    t.loc[(t["norm"] == "layer") & (t["init_scale"] == 1.0), "best_val_acc"] = [0.2, 0.8, 0.5, 0.9, 0.1]
    f = init_scale.family(t, 0.5, 1e-5)
    status = init_scale.status(f, t, 1e-5)
    assert status["init_trains_none"] == "1" and status["init_fails_none"] == "0.0001"
    assert status["init_trains_batch"] == "0.0001" and status["init_fails_batch"] == "1"
    assert status["init_undecided_layer"] == "1"  # a mean near the threshold with spread: undecided
    eps = f.set_index("key").loc["init_eps_layer_0p0001_1em09"]
    assert eps["verdict"] == "supported" and eps["estimate"] == pytest.approx(0.6)


def test_init_scale_margin_keeps_a_mean_near_the_threshold_undecided():
    t = init_table([("batch", 1e-4, 1e-5, 0.53), ("batch", 1.0, 1e-5, 0.62)])
    plain = init_scale.status(init_scale.family(t, 0.5, 1e-5), t, 1e-5)
    zoned = init_scale.status(init_scale.family(t, 0.5, 1e-5, margin=0.05), t, 1e-5)
    assert plain["init_trains_batch"] == "0.0001 and 1"
    assert zoned["init_trains_batch"] == "1" and zoned["init_undecided_batch"] == "0.0001"


def test_init_scale_table_reads_the_probe():
    p = {"update": [[np.nan] * 3, [0.1, 0.3, 9.0], [0.1, 0.3, 9.0]], "weight_norm": [[1, 2, 5], [2, 2, 5], [3, 4, 5]],
         "var_example": [[1e-5, 1e-6]] * 3, "var_batch": [[1.0, 1.0]] * 3, "layers": ["fc1", "fc2", "out"],
         "norms": ["norm1", "norm2"], "step": [1, 2, 3], "rep_dims": [9.0, 2.0, 1.5],
         "stable_rank": [[5, 5, 5], [5, 4, 5], [7, 2.5, 1]]}
    h = History(config={"norm": "layer", "norm_eps": 1e-5, "init_scale": 1e-4, "seed": 0, "epochs": 1,
                        "max_steps": 0, "evals_per_epoch": 1}, val_acc=[0.3], val_loss=[2.0], eval_step=[3],
                train_loss=[2.0], steps_per_epoch=3)
    r = init_scale.tabulate([Result(h, p)]).iloc[0]
    assert r["effective_step"] == pytest.approx(0.2)  # hidden layers only, records after the first
    assert r["weight_growth"] == pytest.approx((3 + 2) / 2)
    assert r["signal_kept_first"] == pytest.approx(0.5) and r["signal_kept_deep"] == pytest.approx(1e-6 / 1.1e-5)
    assert r["rep_dims"] == 1.5 and r["weight_rank"] == 2.5  # the last record; hidden-to-hidden weights only


# ---------------------------------------------------------------------------------------------
# drift, landscape

def probed(norm, seed, probe, diverged=False, **config):
    h = History(config={"norm": norm, "seed": seed, "activation": "relu", "norm_position": "before", "epochs": 1,
                        "max_steps": 0, "evals_per_epoch": 1, **config},
                val_acc=[0.5], val_loss=[1.0], eval_step=[10], steps_per_epoch=10, diverged=diverged)
    return Result(h, probe)


def test_drift_measures_are_in_units_of_the_mean_spread():
    # two units; unit 0's median moves 0 -> 2 with spreads 2, 2, 4 (mean 8/3); unit 1 stays
    values = [[[-1, -1], [0, 0], [1, 1]], [[0, -1], [1, 0], [2, 1]], [[0, -1], [2, 0], [4, 1]]]
    m = activation_drift.measures(values)
    assert m["median_shift"] == pytest.approx((2 / (8 / 3) + 0) / 2)
    assert m["spread_change"] == pytest.approx(math.log(2) / 2)
    rec = {"step": [1, 5, 9], "quantiles": [0.15, 0.5, 0.85], "layer": "norm3", "values": values,
           "by_layer": {"norm3": values, "act3": values}}
    t = activation_drift.tabulate([probed("none", 0, rec)])
    assert list(t["layer"]) == ["norm3", "act3"]
    frame = activation_drift.traces([probed("none", 0, rec)], unit=0, layer="act3")
    assert len(frame) == 9 and frame.query("step == 9 and quantile == 0.5")["value"].item() == 2


def test_drift_family_compares_the_input_to_the_normalization():
    rows = [{"norm": n, "seed": s, "layer": layer, "median_shift": shift + 0.01 * s, "spread_change": 0.5 + 0.01 * s}
            for n, shift in (("none", 1.0), ("batch", 0.2), ("layer", 1.0)) for s in range(5)
            for layer in ("norm3", "act3")]
    t = pd.DataFrame(rows)
    t.loc[(t["layer"] == "act3") & (t["norm"] == "layer"), "median_shift"] = 0.0  # ignored: not the norm's input
    f = activation_drift.family(t).set_index("key")
    assert f.loc["drift_median_shift_batch", "verdict"] == "supported"
    assert f.loc["drift_median_shift_layer", "verdict"] == "not established"
    assert f.loc["drift_spread_change_batch", "verdict"] == "not established"


def test_landscape_table_takes_medians_and_keeps_inf_as_largest():
    rec = {"step": [5, 10, 15], "loss": [2, 1, 1], "grad_norm": [1, 1, 1], "loss_range": [0.1, 0.3, float("inf")],
           "grad_change": [1, 2, 3], "beta": [4, 5, 6]}
    t = landscape.tabulate([probed("batch", 0, rec)])
    assert t.iloc[0]["loss_range"] == pytest.approx(0.3) and t.iloc[0]["beta"] == 5
    assert landscape.records([probed("batch", 0, rec)])["loss_range"].isna().sum() == 1


def test_landscape_family_on_a_log_scale():
    rows = [{"norm": n, "seed": s, "diverged": False, "loss_range": v * (1 + 0.01 * s), "grad_change": 1.0 + 0.01 * s,
             "beta": 1.0 + 0.01 * s} for n, v in (("none", 1.0), ("batch", 0.1), ("layer", 10.0)) for s in range(5)]
    f = landscape.family(pd.DataFrame(rows)).set_index("key")
    assert f.loc["landscape_loss_range_batch", "verdict"] == "supported"
    assert f.loc["landscape_loss_range_layer", "verdict"] == "contradicted"
    assert f.loc["landscape_beta_batch", "verdict"] == "not established"


# ---------------------------------------------------------------------------------------------
# the tutorial's claims

def grad_rows(spreads):
    return pd.DataFrame([{"norm": n, "activation": a, "position": pos, "seed": s, "grad_spread": v + 0.01 * s,
                          "val_error": err + 0.002 * s, "diverged": False}
                         for (n, a, pos), (v, err) in spreads.items() for s in range(5)])


def test_gradient_table_reads_the_spread_across_layers():
    rec = {"step": [1, 2, 3], "rms": [[1.0, 0.1, 0.5], [2.0, 0.2, 1.0], [4.0, 1.0, 1.0]], "layers": ["fc1", "fc2", "out"]}
    t = claims.gradient_table([probed("batch", 0, rec)])
    assert t.iloc[0]["grad_spread"] == pytest.approx(1.0)  # median of log10(10, 10, 4)
    assert t.iloc[0]["first_over_last"] == pytest.approx(2.0)


def test_claim_position_needs_a_spread_beyond_the_factor():
    t = grad_rows({("batch", "relu", "before"): (0.2, 0.1), ("batch", "relu", "after"): (0.19, 0.1),
                   ("layer", "relu", "before"): (1.5, 0.1), ("layer", "relu", "after"): (0.1, 0.1)})
    f = common.family(claims.position_rows(t, factor=10)).set_index("key")
    assert f.loc["claim_position_batch_relu", "verdict"] == "contradicted"  # a spread of 10^0.2: no issue
    assert f.loc["claim_position_layer_relu", "verdict"] == "supported"     # 10^1.5 > 10
    assert f.loc["claim_position_layer_relu_vs_after", "verdict"] == "supported"
    words = common.claim_words(common.family(claims.position_rows(t, 10)), "claim_position_",
                                {"batch_relu": "batch norm with relu", "layer_relu": "layer norm with relu"}, "yes", "no")
    assert words == "yes layer norm with relu; no batch norm with relu"
    assert common.claim_words(common.family(claims.position_rows(t, 10)), "claim_position_",
                               {"batch_relu": "A", "layer_relu": "B", "batch_relu_vs_after": "C"}, "yes", "no") \
        == "yes B; no A; not established for C"


def test_spread_values_name_the_largest_normalized_spread_and_the_controls():
    t = grad_rows({("batch", "relu", "before"): (0.5, 0.1), ("layer", "relu", "after"): (1.0, 0.1),
                   ("none", "relu", "before"): (2.0, 0.1), ("none", "sigmoid", "before"): (0.3, 0.1)})
    v = claims.spread_values(t)
    assert v["claims_largest_spread_condition"] == "layer norm after relu"
    assert v["claims_largest_spread"] == pytest.approx(10 ** 1.02)  # the mean of log10 over seeds 0..4
    assert v["claims_spread_none_relu"] == pytest.approx(10 ** 2.02)
    f = common.family([common.difference("claim_x_a", "q", spread_around(0.5, width=0.3), spread_around(0.5))])
    assert common.claim_words(f, "claim_x_", {"a": "A"}, "yes", "no") == "not established for any case (A)"
    assert common.claim_words(f, "claim_y_", {"a": "A"}, "yes", "no") == "not established"


def test_claim_activation_is_non_inferiority():
    t = grad_rows({("none", "tanh", "before"): (0.1, 0.20), ("batch", "tanh", "before"): (0.1, 0.21),
                   ("layer", "tanh", "before"): (0.1, 0.30)})
    f = common.family(claims.activation_rows(t, margin=0.03)).set_index("key")
    assert f.loc["claim_activation_batch_tanh", "verdict"] == "supported"
    assert f.loc["claim_activation_layer_tanh", "verdict"] == "not established"


def gap_rows(spec):
    return pd.DataFrame([{"condition": c, "norm": c.split("+")[0], "seed": s, "val_error": err + 0.002 * s,
                          "gap": gap + 0.002 * s} for c, (err, gap) in spec.items() for s in range(5)])


def test_claim_together_unnecessary_and_overfit():
    f = common.family(claims.together_rows(gap_rows({"batch": (0.20, 0.1), "layer": (0.25, 0.1),
                                                      "batch+layer": (0.20, 0.3)}), margin=0.02)).set_index("key")
    assert f.loc["claim_together_unnecessary_batch", "verdict"] == "supported"     # no gain over batch norm
    assert f.loc["claim_together_unnecessary_layer", "verdict"] == "not established"  # the pair beats layer norm
    assert f.loc["claim_together_overfit_batch", "verdict"] == "supported"
    f = common.family(claims.together_rows(gap_rows({"batch": (0.20, 0.3), "layer": (0.20, 0.3),
                                                      "batch+layer": (0.10, 0.1)}), margin=0.02)).set_index("key")
    assert f.loc["claim_together_unnecessary_batch", "verdict"] == "not established"  # the pair gains 10 points
    assert f.loc["claim_together_overfit_batch", "verdict"] == "contradicted"


def test_batch_claims_read_the_batch_size_runs():
    f = common.family(claims.batch_claim_rows(bs_table())).set_index("key")
    assert f.loc["claim_batch_bn_large", "verdict"] == "supported"
    assert f.loc["claim_batch_ln_small", "verdict"] == "supported"
    assert f.loc["claim_batch_bn_at_large", "verdict"] == "not established"
    assert f.loc["claim_small_unstable_batch", "verdict"] == "not established"  # same setbacks as the control


def regularization_runs(dropout_error):
    """Five seeds per norm and regularizer: weight decay changes nothing, dropout shrinks the gap to 0.1
    and gives `dropout_error` (against 0.30)."""
    rows = []
    for n in ("none", "batch", "layer"):
        for reg, err, gap in (("none", 0.30, 0.4), ("weight decay", 0.30, 0.4), ("dropout", dropout_error, 0.1)):
            rows += [{"norm": n, "condition": reg, "seed": s, "val_error": err + 0.002 * s, "gap": gap + 0.002 * s}
                     for s in range(5)]
    return pd.DataFrame(rows)


def test_regularization_family_asks_whether_a_regularizer_still_helps():
    f = regularization.family(regularization_runs(0.25)).set_index("key")
    assert f.loc["reg_batch_dropout_error", "verdict"] == "supported"
    assert f.loc["reg_layer_dropout_gap", "verdict"] == "supported"
    assert f.loc["reg_batch_weight_decay_error", "verdict"] == "not established"


def test_regularization_words_name_each_measure():
    f = regularization.family(regularization_runs(0.30))
    assert regularization.words(f, "batch") == ("validation error: no regularizer is established to help; "
                                                        "generalization gap narrowed by dropout")


def test_regularization_trials_set_one_regularizer_at_a_time():
    P = {"seeds": [0], "train_size": 100, "val_size": 100, "epochs": 1, "batch_size": 10, "lr": 0.1, "hidden": [8],
         "weight_decay": 1e-3, "dropout": 0.2, "impl": "custom"}
    trials = regularization.trials(P)
    assert [(t.config.weight_decay, t.config.dropout) for t in trials[:3]] == [(0.0, 0.0), (1e-3, 0.0), (0.0, 0.2)]
    assert [regularization.regularizer_of(t) for t in trials[:3]] == list(regularization.REGULARIZERS)


def test_recurrent_family():
    t = pd.DataFrame([{"norm": n, "seed": s, "val_error": e + 0.003 * s} for n, e in
                      (("none", 0.4), ("layer", 0.3), ("batch", 0.3)) for s in range(5)])
    f = recurrent.family(t).set_index("key")
    assert f.loc["rnn_ln_vs_none", "verdict"] == "supported"
    assert f.loc["rnn_ln_vs_bn", "verdict"] == "not established"
    assert f.loc["rnn_bn_vs_none", "verdict"] == "supported"
    trials = recurrent.trials({"seeds": [0, 1], "rnn_hidden": 16, "train_size": 64, "val_size": 64, "batch_size": 32})
    assert {t.model for t in trials} == {"rnn"} and {t.config.hidden for t in trials} == {(16,)}


def test_recurrent_plateau_evidence_per_norm():
    """Each run's change of the validation loss over the last quarter of its steps, as the main comparison's
    plateau table and sentence read it: a median run within 2% plateaued, else still falling."""
    from normlib import steps

    def run(norm, seed, losses):
        return History(config={"norm": norm, "seed": seed, "epochs": 1, "max_steps": 0, "evals_per_epoch": 4},
                       val_loss=losses, val_acc=[0.5] * 4, eval_step=[25, 50, 75, 100], steps_per_epoch=100)
    hs = [run(n, s, [1.0, 0.8, 0.70, 0.69 - 0.001 * s]) for n in ("none", "layer") for s in range(3)]
    hs += [run("batch", s, [1.0, 0.8, 0.70, 0.60]) for s in range(3)]
    changes = recurrent.plateaus(hs)
    assert list(changes.columns) == ["arch", "norm", "seed", "last_quarter_change"] and len(changes) == 9
    assert changes["last_quarter_change"].iloc[0] == pytest.approx(math.log(0.69 / 0.70))
    table = steps.plateau_table(changes).set_index("condition")
    assert table.loc["layer norm"].iloc[-1] == "plateaued" and table.loc["batch norm"].iloc[-1] == "still falling"
    assert steps.plateau_text(changes).startswith("not every condition plateaued: RNN batch norm still falling")


# ---------------------------------------------------------------------------------------------
# figures, and the pages' text

def test_study_figures_draw():
    t = bs_table()
    for fig in (study_figures.sweep(t, "batch_size", "val_error", diverged="diverged", hline=0.3),
                study_figures.statistics_modes(t[t["norm"] == "batch"]),
                study_figures.points(t, "batch_size", "val_error", hline=0.1),
                study_figures.points(t.melt(id_vars=["norm", "seed"], value_vars=["val_error", "setback"], var_name="m"),
                               "norm", "value", col="m", sharey=False)):
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes[0].get_ylabel()
    values = [[[-1, -1], [0, 0], [1, 1]]] * 3
    rec = {"step": [1, 2, 3], "quantiles": [0.15, 0.5, 0.85], "layer": "norm3", "values": values,
           "by_layer": {"norm3": values, "act3": values}}
    frame = pd.concat([activation_drift.traces([probed(n, 0, rec)], 0, layer) for n in ("none", "batch")
                       for layer in ("norm3", "act3")])
    assert len(study_figures.percentile_grid(frame, activation_drift.LAYERS).axes) == 4


NUMBER_WORDS = r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve|twenty)"


def test_no_study_page_types_a_count_of_seeds():
    """Seed counts on the study pages are glued from the runs: a typed "three seeds" goes stale when a
    profile changes the seeds."""
    import re
    import nbformat
    from normlib.paths import notebooks_dir
    pattern = re.compile(rf"\b{NUMBER_WORDS}\s+(?:fresh\s+|random\s+)?seeds?\b", re.IGNORECASE)
    typed = {}
    for path in sorted(notebooks_dir().glob("study_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                typed.setdefault(path.stem, []).extend(pattern.findall(cell.source))
    assert not {k: v for k, v in typed.items() if v}, f"typed seed counts (glue them): {typed}"
    assert pattern.search("over three seeds") and pattern.search("5 seeds") and not pattern.search("`n_seeds:d` seeds")
