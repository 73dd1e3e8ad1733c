"""The tutorial's claim that normalization is not a replacement for regularization: batch and layer norm
networks with weight decay, with dropout and with neither, on a small training set trained long enough to
overfit; each run evaluates the training set at the end for the generalization gap.

The page's family: per norm and regularizer, does adding it lower the validation error, and does it
narrow the gap, of the normalized network. No source reports a size for these effects (`reported` is empty):
Ioffe & Szegedy (2015, sec. 4.2.1) removed dropout from batch-normalized Inception without a controlled test.
"""
from types import SimpleNamespace

import pandas as pd

from normlib import study_figures
from normlib.figures import norm_label
from normlib.report import glue_figure, glue_values
from normlib.studies import common
from normlib.studies.claims import gap_table
from normlib.studies.common import NORMS, difference, glue_family, level_text, list_text, runs_text, seed_count
from normlib.studies.literature import glue_literature
from normlib.trials import run_trials, trial

REGULARIZERS = ("none", "weight decay", "dropout")


def trials(P):
    """norm x regularizer (none, weight decay, dropout) x seed, on a small training set trained long enough
    to overfit; each run evaluates the training set at the end (the generalization gap)."""
    regs = {"none": {"weight_decay": 0.0, "dropout": 0.0}, "weight decay": {"weight_decay": P["weight_decay"], "dropout": 0.0},
            "dropout": {"weight_decay": 0.0, "dropout": P["dropout"]}}
    return [trial(common.config(P, norm=n, seed=s, hidden=tuple(P["hidden"]), evals_per_epoch=1, **regs[reg]),
                  "train_eval") for n in NORMS for reg in REGULARIZERS for s in P["seeds"]]


def regularizer_of(t):
    """The regularizer a Trial's config sets: "weight decay", "dropout" or "none"."""
    c = t.config
    return "weight decay" if c.weight_decay else "dropout" if c.dropout else "none"


def family(table):
    """Per norm (batch, layer) and regularizer: does adding it lower the validation error, and does it narrow
    the gap, of the normalized network (the claim: normalization does not make regularization redundant)."""
    rows = []
    at = lambda n, r, m: table[(table["norm"] == n) & (table["condition"] == r)][m]  # noqa: E731
    for n in ("batch", "layer"):
        for reg in REGULARIZERS[1:]:
            key = reg.replace(" ", "_")
            rows.append(difference(f"reg_{n}_{key}_error", f"{norm_label(n)}: {reg} lowers the validation error",
                                   at(n, reg, "val_error"), at(n, "none", "val_error"), predicted=-1))
            rows.append(difference(f"reg_{n}_{key}_gap", f"{norm_label(n)}: {reg} narrows the generalization gap",
                                   at(n, reg, "gap"), at(n, "none", "gap"), predicted=-1, unit="loss"))
    return common.family(rows)


def reported():
    """None: the tutorial's claim comes without a size, and Ioffe & Szegedy (2015, sec. 4.2.1) only report removing
    dropout from batch-normalized Inception, without a run that keeps it."""
    return ()


NO_SIZE = ("no source reports a size for these effects (Ioffe & Szegedy 2015, sec. 4.2.1, removed dropout from "
           "batch-normalized Inception without a run that keeps it)")


def words(fam, norm):
    """'validation error lowered by dropout (not established for weight decay); gap narrowed by ...'."""
    got = dict(zip(fam["key"], fam["verdict"]))
    parts = []
    for m, verb, noun in (("error", "lowered", "validation error"), ("gap", "narrowed", "generalization gap")):
        by = {v: [r for r in REGULARIZERS[1:] if got.get(f"reg_{norm}_{r.replace(' ', '_')}_{m}") == v]
              for v in ("supported", "contradicted", "not established")}
        text = f"{noun} {verb} by {list_text(by['supported'], '{}')}" if by["supported"] else f"{noun}: no regularizer is established to help"
        if by["contradicted"]:
            text += f", made worse by {list_text(by['contradicted'], '{}')}"
        parts.append(text)
    return "; ".join(parts)


def page(P):
    """The regularization page: trials, family, per (norm, regularizer) the error, gap and test error, a
    sentence per norm, figure fig_regularization."""
    planned = trials(P)
    results = run_trials(planned, workers=P["workers"], force=P["force"])
    table = gap_table(planned, results, condition=regularizer_of)
    fam = family(table)
    glue_family(fam)
    glue_literature(fam, reported(), none=NO_SIZE)
    values = {**seed_count(P), "reg_runs": runs_text(results), "reg_weight_decay": float(P["weight_decay"]),
              "reg_dropout": float(P["dropout"]), "reg_steps": int(max(len(r.history.step_loss) for r in results)),
              "reg_train_size": P["train_size"]}
    for n in ("batch", "layer"):
        values[f"reg_verdict_{n}"] = words(fam, n)
    for (n, reg), g in table.groupby(["norm", "condition"]):
        key = f"{n}_{reg.replace(' ', '_')}"
        values[f"reg_err_{key}"], values[f"reg_gap_{key}"] = level_text(g["val_error"]), level_text(g["gap"], "loss")
    glue_values(values)
    glue_figure("fig_regularization", study_figures.points(table.melt(id_vars=["norm", "condition", "seed"],
                                                                      value_vars=["val_error", "gap"], var_name="measure"),
                                                           "condition", "value", col="measure", order=list(REGULARIZERS),
                                                           sharey=False))
    summary = pd.DataFrame([{"condition": norm_label(n), "regularizer": reg, "validation error": level_text(g["val_error"]),
                             "generalization gap": level_text(g["gap"], "loss"), "test error": level_text(g["test_error"]),
                             "diverged": int(g["diverged"].sum())}
                            for (n, reg), g in table.groupby(["norm", "condition"], sort=False)])
    return SimpleNamespace(verdicts=common.family_table(fam), summary=summary, table=table, family=fam)
