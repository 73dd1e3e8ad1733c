"""Batch size (Wu & He 2018, Fig. 1): equal examples per run, the learning rate scaled linearly (Goyal et
al. 2017), batch sizes up to where the no-normalization control still trains; batch norm evaluated with
its running statistics and with the statistics of batches (the train/test discrepancy).

The page's family: batch norm's rise at the smallest batch beyond the control's, layer norm's flatness
relative to the control (TOST), and the mechanism (running against batch statistics, paired); what the
literature reports for the first two (`reported`: Wu & He 2018, Fig. 1).
"""
import math
from types import SimpleNamespace

import pandas as pd

from normlib import metrics, study_figures
from normlib.figures import norm_label
from normlib.metrics import completed_curve
from normlib.report import glue_figure, glue_values
from normlib.studies import common
from normlib.studies.common import (NORMS, difference, equivalence, final_error, glue_family, level_text, list_text,
                                    margin_text, paired, per_seed_differences, runs_text, seed_count)
from normlib.studies.literature import Reported, glue_literature
from normlib.trials import run_trials, trial

BASE_BATCH = 32  # the batch size at which base_lr is the learning rate


def trials(P):
    """norm x batch size x seed; lr = base_lr * batch / 32 (Goyal et al. 2017) and `epochs` passes over
    `train_size` images at every batch size (equal examples); each trial evaluates batch norm's
    statistics three ways at the end (probes.BatchStatsProbe)."""
    return [trial(common.config(P, norm=norm, batch_size=bs, lr=P["base_lr"] * bs / BASE_BATCH, seed=seed,
                                hidden=tuple(P["hidden"])), "batch_stats")
            for norm in NORMS for bs in sorted(P["batch_sizes"]) for seed in P["seeds"]]


def tabulate(results):
    """One row per run: validation error (running statistics, failure rule), with batch statistics of
    the training batch size and with population statistics (NaN for a failed run), setback, steps."""
    rows = []
    for r in results:
        h, c = r.history, completed_curve(r.history)
        probe = r.probe or {}
        err = lambda mode: 1 - probe[mode]["acc"] if mode in probe and not c.failed else math.nan  # noqa: E731
        rows.append({"norm": h.config["norm"], "batch_size": h.config["batch_size"], "seed": h.config["seed"],
                     "lr": h.config["lr"], "steps": c.planned, "val_error": final_error(h),
                     "batch_stats_error": err("batch"), "population_error": err("population"),
                     "setback": metrics.setback(c), "diverged": c.failed})
    return pd.DataFrame(rows)


def family(table, margin):
    """The page's verdicts: batch norm's rise at the smallest batch beyond the control's (difference in
    differences), layer norm's flatness relative to the control (TOST within margin), and the mechanism
    (batch norm at the smallest batch: running minus batch statistics, paired)."""
    small, large = int(table["batch_size"].min()), int(table["batch_size"].max())
    did = {n: (per_seed_differences(table, "val_error", n, "none", {"batch_size": small}),
               per_seed_differences(table, "val_error", n, "none", {"batch_size": large})) for n in ("batch", "layer")}
    bn = table[(table["norm"] == "batch") & (table["batch_size"] == small)]
    return common.family([
        difference("bs_bn_collapse", f"batch norm's error rises from batch {large} to {small} more than the "
                   "control's (difference in differences)", *did["batch"], predicted=1),
        equivalence("bs_ln_flat", f"layer norm's error changes from batch {large} to {small} as the control's "
                    "does (difference in differences within the margin)", *did["layer"], margin),
        paired("bs_bn_mechanism", f"batch norm at batch {small}: error with running statistics minus error with "
               "the statistics of batches of its training size", bn["val_error"], bn["batch_stats_error"]),
    ])


def reported():
    """What Wu & He (2018, Fig. 1) report for the family's first two rows (ResNet-50 on ImageNet, per-GPU batch
    32 -> 2; the shape to reproduce, not the values): batch norm's error rises by 11.1 points while group norm's,
    which like layer norm uses no batch statistics, stays flat."""
    return (Reported("bs_bn_collapse", 0.111, "Wu & He (2018, Fig. 1) report batch norm's ImageNet error rising from "
                     "23.6% at 32 images per batch to 34.7% at 2 while group norm's stays near 24.1%, a difference in "
                     "differences of about 11 points"),
            Reported("bs_ln_flat", 0.0, "they find group norm, which like layer norm uses no batch statistics, flat "
                     "across batch sizes"))


def summary(table):
    """Per norm and batch size: learning rate, steps, errors (running, batch statistics) and setback."""
    rows = []
    for (norm, bs), g in table.groupby(["norm", "batch_size"], sort=False):
        rows.append({"condition": norm_label(norm), "batch size": int(bs), "learning rate": f"{g['lr'].iloc[0]:.3g}",
                     "steps": int(g["steps"].iloc[0]), "validation error": level_text(g["val_error"]),
                     "with batch statistics": level_text(g["batch_stats_error"]) if norm == "batch" else "same",
                     "setback": level_text(g["setback"], "plain"),
                     "diverged": f"{int(g['diverged'].sum())} of {len(g)}"})
    return pd.DataFrame(rows)


def page(P):
    """The batch-size page: trials, verdicts (glued with bs_*), the control's range, figures
    fig_batch_size and fig_bn_statistics. Returns SimpleNamespace(verdicts, summary, table, family)."""
    results = run_trials(trials(P), workers=P["workers"], force=P["force"])
    table = tabulate(results)
    fam = family(table, P["margin"])
    glue_family(fam)
    glue_literature(fam, reported())
    small, large = int(table["batch_size"].min()), int(table["batch_size"].max())
    means = table.groupby(["norm", "batch_size"])["val_error"].mean()
    glue_values({**seed_count(P), "bs_small": small, "bs_large": large, "bs_list": list_text(sorted(P["batch_sizes"])),
                 "bs_examples": P["epochs"] * (P["train_size"] or 55_000), "bs_margin": margin_text(P["margin"]),
                 "bs_steps_small": int(table[table["batch_size"] == small]["steps"].iloc[0]),
                 "bs_steps_large": int(table[table["batch_size"] == large]["steps"].iloc[0]),
                 "bs_control_range": margin_text(float(means["none"].max() - means["none"].min())),
                 "bs_runs": runs_text(results), "bs_n_diverged": int(table["diverged"].sum()),
                 **{f"bs_{n}_{end}": level_text(table[(table["norm"] == n) & (table["batch_size"] == bs)]["val_error"])
                    for n in NORMS for end, bs in (("small", small), ("large", large))},
                 **{f"bs_bn_{mode}_small": level_text(table[(table["norm"] == "batch") & (table["batch_size"] == small)]
                                                      [f"{mode}_error"])
                    for mode in ("batch_stats", "population")}})
    glue_figure("fig_batch_size", study_figures.sweep(table, "batch_size", "val_error", diverged="diverged",
                                                      xlabel="batch size (examples per step)",
                                                      ylabel="final validation error"))
    glue_figure("fig_bn_statistics", study_figures.statistics_modes(table[table["norm"] == "batch"]))
    return SimpleNamespace(verdicts=common.family_table(fam), summary=summary(table), table=table, family=fam)
