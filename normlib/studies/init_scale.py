"""Initialization scale (cs231n assignment 2: a deep MLP trained from weights of every scale), and what
explains the failures: weight norms, the effective step of scale-invariant layers, the norms' epsilon
against the variance of their input, and the dimensions of the representation entering the output layer.

The page's families, each Holm-adjusted over itself: which scales train (per norm and scale, a mean best
validation accuracy established above the threshold plus a margin, or below it minus the margin), and
the epsilon (does a smaller epsilon raise the accuracy at the small scales); what the literature reports for
the control at the extreme scales (`reported`: cs231n, the network without normalization fails there).
"""
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy import stats

from normlib import study_figures
from normlib.figures import norm_label
from normlib.metrics import CHANCE_ACC, completed_curve, mean_ci
from normlib.report import glue_figure, glue_values
from normlib.stats import finite, mean_se
from normlib.studies import common
from normlib.studies.common import (NORMS, difference, glue_family, level_text, list_text, margin_text, points,
                                    runs_text, seed_count)
from normlib.studies.literature import Reported, glue_literature
from normlib.train import TrainConfig
from normlib.trials import run_trials, trial


def trials(P):
    """norm x scale x seed of a deep MLP (depth hidden layers of 50), probed for weight norms, effective
    steps and the variance of the norms' inputs; and, at the scales up to small_scale, batch and layer norm
    with each epsilon of eps_values (the default epsilon's runs are the sweep's own)."""
    base = common.config(P, hidden=(50,) * P["depth"], evals_per_epoch=1)
    sweep = [replace(base, norm=n, init_scale=s, seed=seed) for n in NORMS for s in sorted(P["init_scales"])
             for seed in P["seeds"]]
    eps = [replace(base, norm=n, init_scale=s, seed=seed, norm_eps=e) for n in ("batch", "layer")
           for s in sorted(P["init_scales"]) if s <= P["small_scale"] for e in P["eps_values"] if e != base.norm_eps
           for seed in P["seeds"]]
    return [trial(c, "scales", every=P["probe_every"]) for c in sweep + eps]


def tabulate(results):
    """One row per run: best validation accuracy, final training loss, and from the probe, over the hidden
    layers: the mean relative update ||dW||/||W|| over training (the effective step), the weight norm's
    growth (last / first), and the share of the norm input's variance that survives epsilon,
    var / (var + eps), at the first record, in the deepest normalized layer (its statistic: per example for
    layer norm, per feature for batch norm); at the last record, the participation ratio of the
    representation entering the output layer (rep_dims: how many dimensions the examples spread over) and
    the mean stable rank of the hidden-to-hidden weights (weight_rank; the first layer, from the image, and
    the output layer left out)."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        c = completed_curve(h)
        upd = np.asarray(p["update"], dtype=float)[1:, :-1]  # records x hidden layers (the output layer left out)
        wn = np.asarray(p["weight_norm"], dtype=float)
        norm, eps = h.config["norm"], h.config["norm_eps"]
        var = np.asarray(p["var_example" if norm == "layer" else "var_batch"], dtype=float)  # records x norms
        kept = var[0] / (var[0] + eps) if norm != "none" else np.ones(var.shape[1])
        rows.append({"norm": norm, "init_scale": h.config["init_scale"], "eps": eps, "seed": h.config["seed"],
                     "best_val_acc": float(c.val_acc.max()) if len(c.val_acc) else CHANCE_ACC,
                     "final_train_loss": float(h.train_loss[-1]) if h.train_loss and not c.failed else math.nan,
                     "effective_step": float(np.nanmean(upd)) if upd.size else math.nan,
                     "weight_growth": float(np.mean(wn[-1, :-1] / wn[0, :-1])),
                     "signal_kept_deep": float(kept[-1]), "signal_kept_first": float(kept[0]),
                     "rep_dims": float(p["rep_dims"][-1]),
                     "weight_rank": float(np.mean(np.asarray(p["stable_rank"], dtype=float)[-1, 1:-1])),
                     "diverged": c.failed})
    return pd.DataFrame(rows)


def family(table, threshold, default_eps, margin=0.0):
    """Two families, each Holm-adjusted over itself: which scales train (per norm and scale, is the mean
    best validation accuracy established above threshold + margin, trains, or below threshold - margin,
    fails; a mean within the margin of the threshold stays undecided, so that a run whose seeds sit near
    the threshold cannot flip between verdicts: one-sample t-tests, one-sided towards the nearer boundary,
    p doubled since the data pick the side); and the epsilon (per normalization at each small scale run
    with a smaller epsilon, does it raise the accuracy: Welch)."""
    rows = []
    main = table[table["eps"] == default_eps]
    for (norm, scale), g in main.groupby(["norm", "init_scale"], sort=True):
        x = finite(g["best_val_acc"])
        est, lo, hi = mean_ci(x)
        rows.append({"key": f"init_{norm}_{scale_key(scale)}", "question": f"{norm_label(norm)} at scale {scale:g} trains: "
                     f"mean best validation accuracy above {threshold:.0%} + {margin_text(margin)} (contradicted: "
                     f"below {threshold:.0%} - {margin_text(margin)})", "test": "one-sample t-test, indifference zone",
                     "kind": "difference", "estimate": est - threshold, "lo": lo - threshold, "hi": hi - threshold,
                     "p": zone_p(x, threshold, margin), "n": f"{len(x)} runs", "n_min": len(x), "predicted": 1,
                     "unit": "points", "margin": margin, "hedges_g": math.nan, "names": ("", ""),
                     **common.power_fields("two-sided", *mean_se(x))})
    eps_rows = []
    for (norm, scale, eps), g in table[table["eps"] != default_eps].groupby(["norm", "init_scale", "eps"]):
        ref = main[(main["norm"] == norm) & (main["init_scale"] == scale)]["best_val_acc"]
        eps_rows.append(difference(f"init_eps_{norm}_{scale_key(scale)}_{scale_key(eps)}",
                                   f"{norm_label(norm)} at scale {scale:g}: epsilon {eps:g} instead of {default_eps:g} "
                                   "raises the best validation accuracy", g["best_val_acc"], ref))
    return pd.concat([common.family(rows), common.family(eps_rows)], ignore_index=True)


def reported(scales, threshold, margin):
    """cs231n (assignment 2, batch normalization): without normalization the deep network fails at the
    extreme scales of the sweep, its best validation accuracy at chance (10%), while batch norm trains over most
    of it. The rows "no normalization at the smallest / largest scale trains" then lie below the lower boundary
    of the indifference zone by threshold - margin - 10%."""
    size = threshold - margin - CHANCE_ACC
    return tuple(Reported(f"init_none_{scale_key(s)}", -size, f"cs231n's sweep finds the network without "
                          f"normalization failing at {end} scale (at chance, 10%), {margin_text(size)} below the "
                          f"lower boundary of {points(threshold - margin, False)}, at scale {s:g}")
                 for end, s in (("the smallest", min(scales)), ("the largest", max(scales))))


def zone_p(x, threshold, margin):
    """p that the mean lies beyond threshold +- margin on the side of the sample mean: 2 x the one-sided
    one-sample t-test against that boundary (at most 1); a sample without spread gives 0 when it lies
    beyond the boundary, 1 otherwise."""
    if len(x) < 2:
        return math.nan
    m = x.mean()
    bound = threshold + margin if m >= threshold else threshold - margin
    alternative = "greater" if m >= threshold else "less"
    if np.ptp(x) == 0:
        return 0.0 if (m > bound if alternative == "greater" else m < bound) else 1.0
    return float(min(1.0, 2 * stats.ttest_1samp(x, bound, alternative=alternative).pvalue))


def scale_key(v):
    """A number as a glue-key part: 1e-05 -> '1em05', 0.5 -> '0p5'."""
    return f"{v:g}".replace(".", "p").replace("-", "m")


def status(fam, table, default_eps):
    """Per norm: the scales at which it trains / fails (established) and those left undecided."""
    out = {}
    for norm in NORMS:
        rows = [r for r in fam.itertuples() if r.key.startswith(f"init_{norm}_")]
        scales = sorted(table[(table["norm"] == norm) & (table["eps"] == default_eps)]["init_scale"].unique())
        by = dict(zip(scales, rows))
        for word, verdict in (("trains", "supported"), ("fails", "contradicted"), ("undecided", "not established")):
            out[f"init_{word}_{norm}"] = list_text([s for s, r in by.items() if r.verdict == verdict])
    return out


def page(P):
    """The init-scale page: the sweep and its family (trains / fails per scale), the mechanism in numbers
    (effective step, weight growth, signal kept by epsilon, dimensions of the representation and stable rank
    of the weights), figures fig_init_scale and fig_init_mechanism."""
    results = run_trials(trials(P), workers=P["workers"], force=P["force"])
    table = tabulate(results)
    eps0 = TrainConfig().norm_eps
    fam = family(table, P["acc_threshold"], eps0, P["margin"])
    glue_family(fam)
    glue_literature(fam, reported(P["init_scales"], P["acc_threshold"], P["margin"]))
    main = table[table["eps"] == eps0]
    small, large = float(main["init_scale"].min()), float(main["init_scale"].max())
    at = lambda n, s, col, e=eps0: table[(table["norm"] == n) & (table["init_scale"] == s) & (table["eps"] == e)][col]  # noqa: E731
    values = {**seed_count(P), **status(fam, table, eps0), "init_small": small, "init_large": large,
              "init_depth": P["depth"], "init_lr": P["lr"], "init_threshold": points(P["acc_threshold"], False),
              "init_margin": margin_text(P["margin"]),
              "init_runs": runs_text(results), "init_n_scales": len(P["init_scales"]), "init_eps0": eps0,
              "init_eps_values": list_text([e for e in P["eps_values"] if e != eps0]),
              "init_steps": int(max(len(r.history.step_loss) for r in results)),
              "init_n_eps_tests": int(fam["key"].str.startswith("init_eps_").sum()),
              "init_n_scale_tests": int((~fam["key"].str.startswith("init_eps_")).sum())}
    for n in NORMS:
        for end, s in (("small", small), ("large", large)):
            values[f"init_acc_{n}_{end}"] = level_text(at(n, s, "best_val_acc"))
            values[f"init_step_{n}_{end}"] = level_text(at(n, s, "effective_step"), "ratio")
            values[f"init_growth_{n}_{end}"] = level_text(at(n, s, "weight_growth"), "ratio")
            values[f"init_kept_{n}_{end}"] = level_text(at(n, s, "signal_kept_deep"), "ratio")
            values[f"init_dims_{n}_{end}"] = level_text(at(n, s, "rep_dims"), "ratio")
            values[f"init_rank_{n}_{end}"] = level_text(at(n, s, "weight_rank"), "ratio")
        means = main[main["norm"] == n].groupby("init_scale")["best_val_acc"].mean()
        best = float(means.idxmax())
        values[f"init_best_scale_{n}"] = best
        values[f"init_step_{n}_best"] = level_text(at(n, best, "effective_step"), "ratio")
        values[f"init_dims_{n}_best"] = level_text(at(n, best, "rep_dims"), "ratio")
    other = [e for e in P["eps_values"] if e != eps0]
    for n in ("batch", "layer"):
        e = other[0] if other else eps0
        values[f"init_acc_{n}_small_eps"] = level_text(at(n, small, "best_val_acc", e))
        values[f"init_kept_{n}_small_eps"] = level_text(at(n, small, "signal_kept_deep", e), "ratio")
        row = fam[fam["key"] == f"init_eps_{n}_{scale_key(small)}_{scale_key(e)}"]
        values[f"init_eps_{n}"] = row["text"].iloc[0] if len(row) else "not tested (no other epsilon in eps_values)"
    glue_values(values)
    glue_figure("fig_init_scale", study_figures.panels(main, "init_scale", ["best_val_acc", "final_train_loss"],
                                                       logx=True, logy=("final_train_loss",), diverged="diverged"))
    glue_figure("fig_init_mechanism", study_figures.panels(main, "init_scale",
                                                           ["effective_step", "signal_kept_deep", "rep_dims"],
                                                           logx=True, logy=("effective_step", "signal_kept_deep")))
    summary = pd.DataFrame([{"condition": norm_label(n), "scale": f"{s:g}", "epsilon": f"{e:g}",
                             "best validation accuracy": level_text(g["best_val_acc"]),
                             "effective step (mean ||dW||/||W||)": level_text(g["effective_step"], "ratio"),
                             "weight norm, last / first": level_text(g["weight_growth"], "ratio"),
                             "signal kept by epsilon, deepest norm": level_text(g["signal_kept_deep"], "ratio")
                             if n != "none" else "",
                             "representation dimensions, end": level_text(g["rep_dims"], "ratio"),
                             "stable rank of hidden weights, end": level_text(g["weight_rank"], "ratio"),
                             "diverged": int(g["diverged"].sum())}
                            for (n, s, e), g in table.groupby(["norm", "init_scale", "eps"], sort=False)])
    return SimpleNamespace(verdicts=common.family_table(fam), summary=summary, table=table, family=fam)
