"""Loss landscape (Santurkar et al. 2018, Fig. 4): along the gradient at probed steps of training, the
range of the loss, how far the gradient changes (its predictiveness) and the effective beta-smoothness.

The page's family: each norm against no normalization on the three measures, on a log scale (smaller
is smoother, as Santurkar et al. find for batch norm); what the literature reports for batch norm's rows
(`reported`).
"""
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd

from normlib import study_figures
from normlib.figures import norm_label
from normlib.report import glue_figure, glue_value, glue_values
from normlib.studies import common
from normlib.studies.common import NORMS, difference, glue_family, level_text, outcome, runs_text, seed_count
from normlib.studies.literature import Reported, glue_literature
from normlib.trials import run_trials, trial

METRICS = ("loss_range", "grad_change", "beta")
NAMES = {"loss_range": "loss range", "grad_change": "gradient predictiveness", "beta": "beta-smoothness"}


def trials(P):
    """norm x seed at a constant rate, each probed every probe_every steps at the step multipliers."""
    configs = [common.config(P, norm=n, seed=s, schedule="constant") for n in NORMS for s in P["seeds"]]
    return [trial(c, "landscape", every=P["probe_every"], multipliers=P["multipliers"]) for c in configs]


def records(results):
    """Long table of the probe records: norm, seed, step and the three measures (inf -> NaN)."""
    frames = []
    for r in results:
        h, p = r.history, r.probe
        f = pd.DataFrame({k: p[k] for k in ("step", "loss", "grad_norm", *METRICS)})
        frames.append(f.assign(norm=h.config["norm"], seed=h.config["seed"]))
    return pd.concat(frames, ignore_index=True).replace([np.inf, -np.inf], np.nan)


def tabulate(results):
    """One row per trial: the median over probed steps of each measure (inf counts as the largest)."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        row = {"norm": h.config["norm"], "seed": h.config["seed"], "diverged": h.diverged}
        row.update({m: float(np.median(p[m])) if p[m] else float("nan") for m in METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def family(table):
    """Each norm against no normalization on the three measures (log scale: they span decades; smaller is
    smoother, as Santurkar et al. find for batch norm)."""
    rows = []
    for norm in ("batch", "layer"):
        for m in METRICS:
            rows.append(difference(f"landscape_{m}_{norm}", f"{norm_label(norm)}: smaller {NAMES[m]} than "
                                   "without normalization (log10)", np.log10(table[table["norm"] == norm][m]),
                                   np.log10(table[table["norm"] == "none"][m]), predicted=-1, unit="plain"))
    return common.family(rows)


def reported():
    """Santurkar et al. (2018, Fig. 4) show all three measures smaller with batch norm (VGG on CIFAR-10), in
    figures without a table: the effect taken from them is a factor of 2, log10(2) = 0.301."""
    first = ("Santurkar et al. (2018, Fig. 4) show all three measures smaller with batch norm, in figures without a "
             "table; taking a factor of 2 (0.301 in log10), ")
    return tuple(Reported(f"landscape_{m}_batch", math.log10(2), (first if i == 0 else "") + f"for the {NAMES[m]}")
                 for i, m in enumerate(METRICS))


def page(P):
    """The landscape page: trials, the family (glued), each measure per norm, figure fig_landscape."""
    results = run_trials(trials(P), workers=P["workers"], force=P["force"])
    frame, table = records(results), tabulate(results)
    fam = family(table)
    glue_family(fam)
    glue_literature(fam, reported())
    glue_values({**seed_count(P), "land_runs": runs_text(results), "land_n_diverged": int(table["diverged"].sum()),
                 "land_n_probes": int(frame.groupby(["norm", "seed"]).size().min()),
                 "land_n_nonfinite": int(frame[list(METRICS)].isna().any(axis=1).sum()),
                 "land_eta_min": float(P["lr"] * min(P["multipliers"])), "land_eta_max": float(P["lr"] * max(P["multipliers"])),
                 **{f"land_{m}_{n}": level_text(table[table["norm"] == n][m], "ratio") for m in METRICS
                    for n in NORMS}})
    words = dict(zip(fam["key"], fam["verdict"]))
    for n in ("batch", "layer"):
        smoother = [NAMES[m] for m in METRICS if words[f"landscape_{m}_{n}"] == "supported"]
        rougher = [NAMES[m] for m in METRICS if words[f"landscape_{m}_{n}"] == "contradicted"]
        glue_value(f"landscape_verdict_{n}", outcome(smoother, rougher, yes=f"smoother with {norm_label(n)} in",
                                                     no=f"rougher with {norm_label(n)} in"))
    glue_figure("fig_landscape", study_figures.panels(frame, "step", list(METRICS), logy=METRICS))
    return SimpleNamespace(verdicts=common.family_table(fam), table=table, family=fam)
