"""The tutorial's claim that layer normalization suits recurrent networks (Ba, Kiros & Hinton 2016, sec.
3.1): a row-by-row tanh RNN on Fashion-MNIST (normlib.models.RowRNN) without normalization, with layer
norm in the recurrence, and with batch norm with statistics per time step (Cooijmans et al. 2016).

The page's family: layer norm against no normalization and against per-step batch norm on the final
validation error, and per-step batch norm against none for context; what the literature reports for the
rows against none (`reported`). Every run trains until its validation loss plateaus: the page shows, per
norm, the median run's change of the validation loss over the last quarter of its steps (metrics.plateau).
"""
from types import SimpleNamespace

import pandas as pd

from normlib import conclusions, figures, metrics, steps
from normlib.data import N_TRAIN
from normlib.figures import norm_label
from normlib.metrics import CHANCE_ACC, completed_curve
from normlib.models import row_rnn
from normlib.protocol import curves_frame
from normlib.report import glue_figure, glue_values
from normlib.studies import common
from normlib.studies.common import NORMS, difference, final_error, glue_family, level_text, runs_text, seed_count
from normlib.studies.literature import Reported, glue_literature
from normlib.trials import run_trials, trial


def trials(P):
    """norm x seed of the row-by-row RNN (normlib.models.RowRNN): no normalization, layer norm in the
    recurrence, batch norm with statistics per time step."""
    return [trial(common.config(P, norm=n, seed=s, hidden=(P["rnn_hidden"],)), model="rnn") for n in NORMS
            for s in P["seeds"]]


def family(table):
    """Layer norm against no normalization and against per-step batch norm on the final validation error
    (and per-step batch norm against none, for context)."""
    at = lambda n: table[table["norm"] == n]["val_error"]  # noqa: E731
    return common.family([difference("rnn_ln_vs_none", "layer norm's error lower than without normalization",
                                     at("layer"), at("none"), predicted=-1),
                          difference("rnn_ln_vs_bn", "layer norm's error lower than per-step batch norm's",
                                     at("layer"), at("batch"), predicted=-1),
                          difference("rnn_bn_vs_none", "per-step batch norm's error lower than without normalization",
                                     at("batch"), at("none"), predicted=-1)])


def reported():
    """What the literature reports for normalization in a recurrence, against none (error points): Cooijmans et
    al. (2016, Table 1) for per-step batch norm in an LSTM on pixel-by-pixel MNIST; for layer norm Ba et al. (2016)
    show faster training in figures, without an error on such a task, so the same size stands for it."""
    cooijmans = ("Cooijmans et al. (2016, Table 1) report a test error of 4.6% for their batch-normalized LSTM against "
                 "9.8% without on permuted pixel-by-pixel MNIST, 5.2 points (1.0% against 1.1% unpermuted)")
    return (Reported("rnn_bn_vs_none", 0.052, cooijmans),
            Reported("rnn_ln_vs_none", 0.052, "Ba et al. (2016) show layer norm speeding up recurrent networks in "
                     "figures, without an error on such a task; taking the same 5.2 points for it"))


def plateaus(hs):
    """One row per run: norm, seed and the change of its validation loss over the last quarter of its steps
    (metrics.last_quarter_change, a log ratio), as steps.plateau_table and steps.plateau_text read them."""
    return pd.DataFrame([{"arch": "RNN", "norm": h.config["norm"], "seed": h.config["seed"],
                          "last_quarter_change": metrics.last_quarter_change(completed_curve(h))} for h in hs])


def page(P):
    """The recurrent page: trials, family (glued, with the literature's effect), errors per norm, the plateau
    evidence (rnn_plateau_*, page.plateau), curves figure fig_recurrent."""
    planned = trials(P)
    results = run_trials(planned, workers=P["workers"], force=P["force"])
    hs = [r.history for r in results]
    table = pd.DataFrame([{"norm": h.config["norm"], "seed": h.config["seed"], "val_error": final_error(h),
                           "diverged": completed_curve(h).failed, "test_error": 1 - float(h.test_acc)
                           if not completed_curve(h).failed else 1 - CHANCE_ACC} for h in hs])
    fam = family(table)
    glue_family(fam)
    conclusions.write("study_recurrent", conclusions.from_family(fam, "rnn", "final validation error", {
        "rnn_ln_vs_none": ("layer", "none"), "rnn_ln_vs_bn": ("layer", "batch"), "rnn_bn_vs_none": ("batch", "none")}))
    glue_literature(fam, reported())
    changes = plateaus(hs)
    glue_values({**seed_count(P), "rnn_runs": runs_text(results), "rnn_steps": int(max(len(h.step_loss) for h in hs)),
                 "rnn_hidden": P["rnn_hidden"], "rnn_n_diverged": int(table["diverged"].sum()),
                 "rnn_batch_size": P["batch_size"], "rnn_epochs": P["epochs"], "rnn_lr": float(P["lr"]),
                 "rnn_train_size": int(P["train_size"] or N_TRAIN - P["val_size"]),
                 "rnn_plateau_text": steps.plateau_text(changes),
                 "rnn_plateau_tolerance": f"±{metrics.PLATEAU_TOLERANCE:.0%}",
                 "rnn_weights": sum(w.numel() for w in row_rnn(planned[0].config).parameters()),  # none's
                 **{f"rnn_plateau_{n}": "{:+.1%} ({})".format(*metrics.plateau(g["last_quarter_change"]))
                    for n, g in changes.groupby("norm", sort=False)},
                 **{f"rnn_err_{n}": level_text(table[table["norm"] == n]["val_error"]) for n in NORMS}})
    curves = curves_frame(hs, keys=("norm", "seed")).assign(val_error=lambda d: 1 - d["val_acc"], arch="rnn")
    glue_figure("fig_recurrent", figures.curves(curves, "val_error", x="step", col=None, title="RNN, row by row"))
    summary = pd.DataFrame([{"condition": norm_label(n), "validation error": level_text(g["val_error"]),
                             "test error": level_text(g["test_error"]), "diverged": int(g["diverged"].sum())}
                            for n, g in table.groupby("norm", sort=False)])
    return SimpleNamespace(verdicts=common.family_table(fam), summary=summary, table=table, family=fam,
                           plateau=steps.plateau_table(changes))
