"""A tutorial's claims about normalization, each tested on small MLPs: (1) normalization before the
activation causes gradient issues; (2) batch and layer norm together are unnecessary and can overfit;
(3) batch norm suits large batches, layer norm small ones; (4) normalization helps sigmoid and tanh
networks as much as ReLU ones; (5) very small batches make normalization noisy and unstable.

Claims 1 and 4 share one set of runs (position_trials), claim 2 has its own (together_trials), and
claims 3 and 5 read the batch-size study's runs (normlib.studies.batch_size). One family over every
claim, Holm-adjusted together; what the literature reports for claim 3 (`reported`: Wu & He 2018).
"""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy import stats

from normlib import study_figures
from normlib.figures import norm_label
from normlib.metrics import CHANCE_ACC, completed_curve, mean_ci
from normlib.report import glue_figure, glue_values
from normlib.stats import finite, mean_se
from normlib.studies import batch_size, common
from normlib.studies.common import (NORMS, claim_words, difference, final_error, glue_family, level_text, margin_text,
                                    noninferior, runs_text, seed_count, spread)
from normlib.studies.literature import Reported, glue_literature
from normlib.trials import run_trials, trial

BOTH = "batch+layer"  # the network with both norms in every block (normlib.models.batch_and_layer)


def mlp_config(P, **fixed):
    """The claims' MLP on the claims' data (the names of P that are TrainConfig fields), with `fixed`."""
    return common.config(P, hidden=tuple(P["hidden"]), evals_per_epoch=1, **fixed)


# ---------------------------------------------------------------------------------------------
# claims 1 and 4: the position of the norm, and the activation

def position_trials(P):
    """Claims 1 and 4 share these runs: batch and layer norm before and after the activation (relu,
    sigmoid), with tanh before it, and no normalization with each activation; every run records each
    linear layer's gradient RMS (probes.GradRMSProbe)."""
    combos = ([(n, a, pos) for n in ("batch", "layer") for a in ("relu", "sigmoid") for pos in ("before", "after")]
              + [(n, "tanh", "before") for n in ("batch", "layer")] + [("none", a, "before") for a in P["activations"]])
    combos = [c for c in combos if c[1] in P["activations"]]
    return [trial(mlp_config(P, norm=n, activation=a, norm_position=pos, seed=s), "grad_rms",
                  every=P["probe_every"]) for n, a, pos in combos for s in P["seeds"]]


def gradient_table(results):
    """One row per run: the gradient spread across layers, log10(max / min over the linear layers of the
    gradient RMS), its median over the records; which layer had the largest and the smallest RMS (the
    first and last layer: index 0 and -1); final validation error."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        rms = np.asarray(p["rms"], dtype=float)  # records x layers
        ok = np.all(np.isfinite(rms) & (rms > 0), axis=1)
        spreads = np.log10(rms[ok].max(1) / rms[ok].min(1)) if ok.any() else np.array([np.nan])
        med = np.median(rms[ok], axis=0) if ok.any() else np.full(rms.shape[1], np.nan)
        rows.append({"norm": h.config["norm"], "activation": h.config["activation"],
                     "position": h.config["norm_position"], "seed": h.config["seed"],
                     "grad_spread": float(np.median(spreads)), "first_over_last": float(med[0] / med[-1]),
                     "val_error": final_error(h), "diverged": completed_curve(h).failed})
    return pd.DataFrame(rows)


def position_rows(table, factor):
    """Claim 1, per norm and activation: with the norm before the activation, is the gradient spread across
    layers established above `factor` (a gradient issue) or below it (none); and is it larger than with the
    norm after the activation."""
    rows = []
    lf = math.log10(factor)
    for (norm, act), t in table[table["norm"] != "none"].groupby(["norm", "activation"], sort=False):
        b, a = t[t["position"] == "before"]["grad_spread"], t[t["position"] == "after"]["grad_spread"]
        if not len(a):
            continue
        x = finite(b)
        est, lo, hi = mean_ci(x)
        p = float(stats.ttest_1samp(x, lf).pvalue) if len(x) > 1 and np.ptp(x) > 0 else math.nan
        rows.append({"key": f"claim_position_{norm}_{act}", "question": f"{norm_label(norm)} before {act}: gradient spread "
                     f"across layers above a factor {factor:g} (a gradient issue)", "test": "one-sample t-test (log10)",
                     "kind": "difference", "estimate": est - lf, "lo": lo - lf, "hi": hi - lf, "p": p,
                     "n": f"{len(x)} runs", "n_min": len(x), "predicted": 1, "unit": "plain", "margin": math.nan,
                     "hedges_g": math.nan, "names": ("", ""), **common.power_fields("two-sided", *mean_se(x))})
        rows.append(difference(f"claim_position_{norm}_{act}_vs_after", f"{norm_label(norm)} with {act}: larger gradient "
                               "spread (log10) before the activation than after it", b, a, predicted=1, unit="plain"))
    return rows


def activation_rows(table, margin):
    """Claim 4, per activation and norm (norm before the activation): the normalized network's validation
    error no worse than the unnormalized one's by more than `margin` (non-inferiority)."""
    t = table[table["position"] == "before"]
    return [noninferior(f"claim_activation_{norm}_{act}", f"{norm_label(norm)} with {act}: validation error no worse "
                        "than without normalization", t[(t["norm"] == norm) & (t["activation"] == act)]["val_error"],
                        t[(t["norm"] == "none") & (t["activation"] == act)]["val_error"], margin)
            for act in dict.fromkeys(t["activation"]) for norm in ("batch", "layer")]


def spread_values(grads):
    """Glue values of the gradient spreads: the largest mean factor of a normalized condition and which one,
    and the factor of each activation without normalization (claims_spread_none_<activation>)."""
    means = 10 ** grads.groupby(["norm", "activation", "position"])["grad_spread"].mean()
    normed = means.drop("none", level="norm", errors="ignore")
    (norm, act, pos), top = normed.idxmax(), float(normed.max())
    return {"claims_largest_spread": top, "claims_largest_spread_condition": f"{norm_label(norm)} {pos} {act}",
            **{f"claims_spread_none_{a}": float(v) for (n, a, _), v in means.items() if n == "none"}}


# ---------------------------------------------------------------------------------------------
# claim 2: both norms together

def together_trials(P):
    """Claim 2: batch norm, layer norm and both in every block (normlib.models.batch_and_layer); each run
    evaluates the training set at the end, in evaluation mode, for the generalization gap."""
    return [trial(mlp_config(P, norm="batch" if n == BOTH else n, seed=s, epochs=P["overfit_epochs"]),
                  "train_eval", model=BOTH if n == BOTH else "standard") for n in ("batch", "layer", BOTH)
            for s in P["seeds"]]


def gap_table(trials, results, condition=lambda t: t.model if t.model != "standard" else t.config.norm):
    """One row per run (Trials with the train_eval probe): condition, seed, final validation error and loss,
    training loss in evaluation mode, the generalization gap (validation - training loss)."""
    rows = []
    for t, r in zip(trials, results):
        h, p = r.history, r.probe
        ok = bool(h.val_loss) and not completed_curve(h).failed and p.get("loss")
        rows.append({"condition": condition(t), "norm": h.config["norm"], "seed": h.config["seed"],
                     "val_error": final_error(h), "train_loss": float(p["loss"][-1]) if ok else math.nan,
                     "val_loss": float(h.val_loss[-1]) if ok else math.nan,
                     "gap": float(h.val_loss[-1] - p["loss"][-1]) if ok else math.nan,
                     "test_error": 1 - float(h.test_acc) if ok else 1 - CHANCE_ACC, "diverged": not ok})
    return pd.DataFrame(rows)


def together_rows(table, margin):
    """Claim 2: 'unnecessary': each single norm no worse than the pair by more than `margin` (non-inferiority:
    the pair gains less than the margin); 'can overfit': the pair's gap larger than each single norm's."""
    get = lambda c, m: table[table["condition"] == c][m]  # noqa: E731
    rows = [noninferior(f"claim_together_unnecessary_{n}", f"{norm_label(n)} alone: validation error no worse than "
                        "with both norms (the pair gains less than the margin)", get(n, "val_error"),
                        get(BOTH, "val_error"), margin) for n in ("batch", "layer")]
    rows += [difference(f"claim_together_overfit_{n}", f"the pair's generalization gap is larger than {norm_label(n)}'s",
                        get(BOTH, "gap"), get(n, "gap"), predicted=1, unit="loss") for n in ("batch", "layer")]
    return rows


# ---------------------------------------------------------------------------------------------
# claims 3 and 5: batch sizes, from the batch-size study's runs

def batch_claim_rows(table):
    """Claims 3 and 5 from the batch-size study's runs. 3: 'batch norm performs better with large batches,
    layer norm with small ones'. 5: 'normalization with very small batches introduces noise and
    instability': at the smallest batch, each norm against no normalization on the setback (instability)
    and on the spread of the final error across seeds (noise)."""
    small, large = table["batch_size"].min(), table["batch_size"].max()
    at = lambda n, bs, m="val_error": table[(table["norm"] == n) & (table["batch_size"] == bs)][m]  # noqa: E731
    rows = [difference("claim_batch_bn_large", f"batch norm's error lower at batch {large} than at {small}",
                       at("batch", large), at("batch", small), predicted=-1),
            difference("claim_batch_ln_small", f"at batch {small}, layer norm's error lower than batch norm's",
                       at("layer", small), at("batch", small), predicted=-1),
            difference("claim_batch_bn_at_large", f"at batch {large}, batch norm's error lower than layer norm's",
                       at("batch", large), at("layer", large), predicted=-1)]
    for n in ("batch", "layer"):
        rows.append(difference(f"claim_small_unstable_{n}", f"at batch {small}, {norm_label(n)}'s setback larger than "
                               "without normalization", at(n, small, "setback"), at("none", small, "setback"),
                               predicted=1, unit="plain"))
        rows.append(spread(f"claim_small_noisy_{n}", f"at batch {small}, {norm_label(n)}'s final error spreads more across "
                           "seeds than without normalization", at(n, small), at("none", small)))
    return rows


def reported():
    """Wu & He (2018; ResNet-50 on ImageNet, the shape to reproduce, not the values) for claim 3: Fig. 1, batch
    norm's error 23.6% at 32 images per batch and 34.7% at 2, group norm's (no batch statistics, like layer norm)
    about 24.1% at both; Table 1, at 32: batch norm 23.6%, layer norm 25.3%."""
    return (Reported("claim_batch_bn_large", 0.111, "Wu & He (2018, Fig. 1) report batch norm's error 11.1 points "
                     "lower at 32 images per batch than at 2"),
            Reported("claim_batch_ln_small", 0.106, "at 2 images per batch, group norm's error (no batch statistics, "
                     "like layer norm) about 10.6 points below batch norm's"),
            Reported("claim_batch_bn_at_large", 0.017, "at 32, batch norm's error 1.7 points below layer norm's (their "
                     "Table 1)"))


# ---------------------------------------------------------------------------------------------
# the page

def verdict_sentences(fam, acts, activations):
    """One sentence per claim (claim_*_verdict and the like) from the family's rows."""
    return {
        "claim_position_verdict": claim_words(fam, "claim_position_", {f"{n}_{a}": f"{norm_label(n)} with {a}"
                                                                       for n in ("batch", "layer") for a in acts},
                                              "supported (a gradient spread above the factor) for",
                                              "contradicted (a spread established below the factor) for"),
        "claim_activation_verdict": claim_words(fam, "claim_activation_", {f"{n}_{a}": f"{norm_label(n)} with {a}"
                                                                           for a in activations
                                                                           for n in ("batch", "layer")},
                                                "supported (no worse than without normalization) for", "contradicted for"),
        "claim_together_unnecessary": claim_words(fam, "claim_together_unnecessary_", {"batch": "batch norm alone",
                                                                                       "layer": "layer norm alone"},
                                                  "supported: the pair gains less than the margin over", "contradicted for"),
        "claim_together_overfit": claim_words(fam, "claim_together_overfit_", {"batch": "batch norm", "layer": "layer norm"},
                                              "supported: the pair's gap is larger than that of",
                                              "contradicted: the pair's gap is smaller than that of"),
        "claim_batch_verdict": claim_words(fam, "claim_batch_", {"bn_large": "batch norm better at the large batch",
                                                                 "ln_small": "layer norm better at the small batch",
                                                                 "bn_at_large": "batch norm better at the large batch "
                                                                                "than layer norm"},
                                           "supported in part:", "contradicted in part:"),
        "claim_small_verdict": claim_words(fam, "claim_small_", {f"{k}_{n}": f"{norm_label(n)} ({w})" for n in ("batch", "layer")
                                                                 for k, w in (("unstable", "instability"), ("noisy", "noise"))},
                                           "supported for", "contradicted for")}


def page(P):
    """The claims page (claims 1-5): trials, one family over every claim (Holm), a sentence per claim
    (claim_*_verdict), figures fig_claim_position, fig_claim_activation, fig_claim_together, fig_claim_batch,
    fig_claim_small."""
    pos, tog = position_trials(P), together_trials(P)
    bs = batch_size.trials({**P, "seeds": P["bs_seeds"], "batch_sizes": P["batch_sizes"], "train_size": P["bs_train_size"],
                            "epochs": P["bs_epochs"], "evals_per_epoch": P["bs_evals_per_epoch"]})
    results = run_trials(pos + tog + bs, workers=P["workers"], force=P["force"])
    grads = gradient_table(results[:len(pos)])
    gaps = gap_table(tog, results[len(pos):len(pos) + len(tog)])
    batch = batch_size.tabulate(results[len(pos) + len(tog):])
    fam = common.family(position_rows(grads, P["grad_factor"]) + activation_rows(grads, P["margin"])
                        + together_rows(gaps, P["margin"]) + batch_claim_rows(batch))
    glue_family(fam)
    glue_literature(fam, reported())
    acts = [a for a in P["activations"] if a in ("relu", "sigmoid")]
    glue_values({
        **seed_count(P), "claims_runs": runs_text(results), "grad_factor": float(P["grad_factor"]),
        "claims_margin": margin_text(P["margin"]), "claims_bs_small": int(batch["batch_size"].min()),
        "claims_bs_large": int(batch["batch_size"].max()), "claims_n_bs_seeds": len(P["bs_seeds"]),
        **spread_values(grads), **verdict_sentences(fam, acts, P["activations"]),
        **{f"claim_gap_{c.replace('+', '_')}": level_text(gaps[gaps["condition"] == c]["gap"], "loss")
           for c in dict.fromkeys(gaps["condition"])},
        **{f"claim_err_{c.replace('+', '_')}": level_text(gaps[gaps["condition"] == c]["val_error"])
           for c in dict.fromkeys(gaps["condition"])}})
    glue_figure("fig_claim_position", study_figures.points(grads[grads["norm"] != "none"], "position", "grad_spread",
                                                           col="activation", order=["before", "after"],
                                                           hline=math.log10(P["grad_factor"])))
    glue_figure("fig_claim_activation", study_figures.points(grads[grads["position"] == "before"], "activation",
                                                             "val_error"))
    glue_figure("fig_claim_together", study_figures.points(
        gaps.melt(id_vars=["condition", "seed"], value_vars=["val_error", "gap"], var_name="measure")
        .rename(columns={"condition": "norm"}), "norm", "value", hue="norm", col="measure",
        order=["batch", "layer", BOTH], sharey=False))
    small = batch[batch["batch_size"] == batch["batch_size"].min()]
    glue_figure("fig_claim_batch", study_figures.points(batch[batch["norm"] != "none"], "batch_size", "val_error"))
    glue_figure("fig_claim_small", study_figures.points(small, "norm", "setback", hue="norm", order=list(NORMS)))
    return SimpleNamespace(verdicts=common.family_table(fam), family=fam, grads=grads, gaps=gaps, batch=batch)
