"""Learning rate (Ioffe & Szegedy 2015, sec. 3.3: batch norm allows higher rates): the main comparison's
tuning runs, extended to rates above its grid; a rate "trains" when the run reaches a stated validation
accuracy.

The page's family, declared before the runs: at the rates above the main grid, does each norm train in
more runs than no normalization (Fisher's exact test, one-sided; Holm over the two); what the literature
reports for batch norm's row (`reported`: Ioffe & Szegedy 2015).
"""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd

from normlib import study_figures
from normlib.figures import norm_label
from normlib.metrics import CHANCE_ACC, completed_curve
from normlib.protocol import read_record
from normlib.report import glue_figure, glue_values
from normlib.studies import common
from normlib.studies.common import NORMS, glue_family, level_text, list_text, margin_text, points, runs_text
from normlib.studies.literature import Reported, glue_literature
from normlib.trials import run_trials


def configs(P):
    """(configs, protocol, n shared): the first rung of the tuning of steps 1 and 3 (their records' protocols,
    Protocol.rung: every rate of the grid at the first budget of successive halving, on the tuning seeds) for
    none, batch and layer norm on P["arch"], and the extra rates (extra_lrs) at the same budget on the tuning
    seeds and the extra seeds (extra_seeds: the test of higher rates is decided there)."""
    protos = {n: read_record(source)[0] for n, source in (("batch", "step1_bn_training"), ("layer", "step3_ln_training"))}
    proto = protos["batch"]
    budget = proto.tuning_budgets[0]
    grid = sorted(set(proto.lrs) | set(P["extra_lrs"]))
    seeds = lambda lr: list(dict.fromkeys([*proto.tuning_seeds, *(P["extra_seeds"] if lr not in proto.lrs else [])]))  # noqa: E731
    out = [protos.get(norm, proto).config(P["arch"], norm, lr, seed, budget=budget) for norm in NORMS
           for lr in grid for seed in seeds(lr)]
    tuned = {c for norm, p in (("none", proto), ("batch", proto), ("layer", protos["layer"]))
             for c in p.rung({(P["arch"], norm): p.lrs}, p.tuning_budgets[0])}
    return out, proto, sum(c in tuned for c in out)


def tabulate(histories, threshold):
    """One row per run: final validation accuracy under the failure rule, best validation loss, failed,
    stuck (finite but at most 12% accuracy: no better than chance), trains (final accuracy >= threshold)."""
    rows = []
    for h in histories:
        c = completed_curve(h)
        acc = float(c.val_acc[-1]) if len(c.val_acc) else CHANCE_ACC
        rows.append({"norm": h.config["norm"], "lr": h.config["lr"], "seed": h.config["seed"],
                     "final_val_acc": acc, "best_val_loss": float(c.val_loss.min()) if len(c.val_loss) else math.log(10),
                     "failed": c.failed, "stuck": not c.failed and acc <= CHANCE_ACC + 0.02,
                     "trains": acc >= threshold, "steps": c.planned})
    return pd.DataFrame(rows)


def findings(table, margin):
    """Per norm: the best rate (highest mean final accuracy), the rates within `margin` of it, the rates at
    which every seed trains, and the highest of those; the ratio of each norm's highest to the control's."""
    out, top = {}, {}
    for norm in NORMS:
        t = table[table["norm"] == norm]
        acc = t.groupby("lr")["final_val_acc"].mean()
        best = float(acc.idxmax())
        usable = sorted(float(lr) for lr, g in t.groupby("lr") if g["trains"].all())
        top[norm] = max(usable) if usable else math.nan
        out.update({f"lr_best_{norm}": best, f"lr_best_acc_{norm}": float(acc.max()),
                    f"lr_near_{norm}": list_text(sorted(float(x) for x in acc[acc >= acc.max() - margin].index)),
                    f"lr_usable_{norm}": list_text(usable),
                    f"lr_top_{norm}": ("none of the grid" if not usable else
                                       f"{top[norm]:g} (the top of the grid: the limit lies higher)"
                                       if top[norm] == table["lr"].max() else f"{top[norm]:g}"),
                    f"lr_failed_{norm}": int(t["failed"].sum()), f"lr_stuck_{norm}": int(t["stuck"].sum())})
    for norm in ("batch", "layer"):
        ratio = top[norm] / top["none"]
        at_top = top[norm] == table["lr"].max()
        out[f"lr_ratio_{norm}"] = ("not defined (a condition trains at no rate of the grid)" if not np.isfinite(ratio)
                                   else f"at least {ratio:.3g} times (its limit lies above the grid)" if at_top
                                   else f"{ratio:.3g} times")
    return out


def family(table, extra_lrs):
    """The pre-declared test of 'higher learning rates': over the extra rates (above the main grid), the
    share of runs that train, each norm against the control (Fisher's exact test, one-sided in the direction
    the claim predicts, declared before the runs; Holm over the two)."""
    ext = table[table["lr"].isin(extra_lrs)]
    rows = []
    for norm in ("batch", "layer"):
        rows.append(common.shares(f"lr_higher_{norm}", f"at the rates above the main grid, {norm_label(norm)} trains in "
                                  "more runs than no normalization", ext[ext["norm"] == norm]["trains"],
                                  ext[ext["norm"] == "none"]["trains"]))
    return common.family(rows)


def reported():
    """Ioffe & Szegedy (2015, sec. 3.3 and 4.2.1): batch norm "enables higher learning rates"; their batch-normalized
    Inception trains at 5 and 30 times the baseline's rate, and they report no baseline run at those rates. The claim
    in full: at such rates every run trains with batch norm and none without, a rise of 100 points in the share."""
    return (Reported("lr_higher_batch", 1.0, "Ioffe & Szegedy (2015, sec. 4.2.1) train batch-normalized Inception at 5 "
                     "and 30 times the baseline's rate, with no baseline run there; the claim in full, every run "
                     "training with batch norm and none without, is a rise of 100 points in the share that trains"),)


def page(P):
    """The learning-rate page. Glues lr_* (per norm: best rate, rates near it, usable rates, their top,
    failed and stuck runs), the family, n_shared / n_trials, the figure fig_learning_rate."""
    planned, proto, shared = configs(P)
    results = run_trials(planned, workers=P["workers"], force=P["force"])
    table = tabulate([r.history for r in results], P["acc_threshold"])
    fam = family(table, P["extra_lrs"])
    glue_family(fam)
    glue_literature(fam, reported())
    glue_values({**findings(table, P["lr_margin"]), "n_trials": len(results), "n_shared": shared,
                 "n_seeds": int(table.groupby(["norm", "lr"]).size().min()),
                 "n_seeds_extra": int(table[table["lr"].isin(P["extra_lrs"])].groupby(["norm", "lr"]).size().min()),
                 "lr_steps": int(table["steps"].max()),
                 "lr_grid": list_text(sorted(table["lr"].unique())), "lr_extra": list_text(sorted(P["extra_lrs"])),
                 "lr_threshold": points(P["acc_threshold"], False), "lr_margin": margin_text(P["lr_margin"]),
                 "lr_runs": runs_text(results), "lr_batch_size": proto.batch_size,
                 "lr_train_size": proto.train_size or 55_000})
    glue_figure("fig_learning_rate", study_figures.sweep(table, "lr", "final_val_acc", diverged="failed",
                                                         xlabel="learning rate (peak of the cosine schedule)",
                                                         ylabel="final validation accuracy", hline=P["acc_threshold"]))
    summary = pd.DataFrame([{"condition": norm_label(n), "learning rate": f"{lr:g}",
                             "final validation accuracy": level_text(g["final_val_acc"]),
                             "runs that train": f"{int(g['trains'].sum())} of {len(g)}",
                             "diverged": int(g["failed"].sum()), "stuck at chance": int(g["stuck"].sum())}
                            for (n, lr), g in table.groupby(["norm", "lr"], sort=False)])
    return SimpleNamespace(verdicts=common.family_table(fam), summary=summary, table=table, family=fam)
