"""Activation drift (Ioffe & Szegedy 2015, Fig. 1b-c): the percentiles of one unit's input over training,
at the input *to* the normalization and at the sigmoid's input (which the normalization fixes by
construction), in a three-layer sigmoid MLP.

The page's family: each norm against no normalization on both drift measures (how far the median moved,
how much the spread changed) of the input to the normalization; what the literature reports for batch
norm's rows (`reported`: Ioffe & Szegedy's Fig. 1 shows the drift removed, in a figure without a number, so
the size is the control's own drift, measured here).
"""
from types import SimpleNamespace

import numpy as np
import pandas as pd

from normlib import study_figures
from normlib.figures import norm_label
from normlib.metrics import completed_curve
from normlib.report import glue_figure, glue_values
from normlib.studies import common
from normlib.studies.common import NORMS, difference, final_error, glue_family, level_text, runs_text, seed_count
from normlib.studies.literature import Reported, glue_literature
from normlib.train import TrainConfig
from normlib.trials import run_trials, trial

LAYERS = {"norm3": "input to the normalization", "act3": "input to the sigmoid"}  # the probed layers
METRICS = ("median_shift", "spread_change")


def trials(P):
    """norm x seed of the sigmoid MLP (100, 100, 100) at a constant rate, each probed for the percentiles
    of its units' inputs at both LAYERS every record_every steps."""
    configs = [TrainConfig(norm=n, activation="sigmoid", hidden=(100, 100, 100), schedule="constant", seed=s,
                           batch_size=P["batch_size"], lr=P["lr"], epochs=P["epochs"], train_size=P["train_size"],
                           val_size=P["val_size"], impl=P["impl"]) for n in NORMS for s in P["seeds"]]
    return [trial(c, "drift", every=P["record_every"], probe_size=P["probe_size"], layers=list(LAYERS))
            for c in configs]


def traces(results, unit=0, layer="act3"):
    """Long table of one unit's percentile traces at one layer: norm, seed, step, quantile, value."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        values = p.get("by_layer", {}).get(layer, p["values"] if p.get("layer") == layer else [])
        for step, q in zip(p["step"], values):
            for quantile, per_unit in zip(p["quantiles"], q):
                rows.append({"norm": h.config["norm"], "seed": h.config["seed"], "step": step, "layer": layer,
                             "quantile": quantile, "value": per_unit[unit]})
    return pd.DataFrame(rows)


def measures(values):
    """values: (records, 3 quantiles, units). Per unit, in units of its mean 15-85 spread over the records
    (a scale-free measure: the layers compared need not share a scale): how far the median moved from the
    first record to the last; and |log| of the ratio of the last spread to the first. Both averaged over the
    units."""
    v = np.asarray(values, dtype=float)
    median, width = v[:, 1], np.maximum(v[:, 2] - v[:, 0], 1e-12)  # (T, units)
    return {"median_shift": float(np.mean(np.abs(median[-1] - median[0]) / width.mean(0))),
            "spread_change": float(np.mean(np.abs(np.log(width[-1] / width[0]))))}


def tabulate(results):
    """One row per run and probed layer (LAYERS): the drift measures, final validation accuracy."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        by_layer = p.get("by_layer") or {p["layer"]: p["values"]}
        for layer, values in by_layer.items():
            rows.append({"norm": h.config["norm"], "seed": h.config["seed"], "layer": layer,
                         **measures(values), "final_val_acc": 1 - final_error(h),
                         "diverged": completed_curve(h).failed})
    return pd.DataFrame(rows)


def family(table):
    """Each norm against no normalization on both drift measures of the input to the normalization (the
    informative quantity: the sigmoid's input is fixed by construction in a batch-normalized network)."""
    t = table[table["layer"] == "norm3"]
    rows = []
    for norm in ("batch", "layer"):
        for m in METRICS:
            rows.append(difference(f"drift_{m}_{norm}", f"{norm_label(norm)}: the {m.replace('_', ' ')} of the input to "
                                   "the normalization is smaller than without normalization",
                                   t[t["norm"] == norm][m], t[t["norm"] == "none"][m], predicted=-1, unit="plain"))
    return common.family(rows)


def reported(table):
    """The effect behind Ioffe & Szegedy's Fig. 1b-c, taken at the input to the normalization: batch norm
    removes the drift, a difference as large as the control's own drift (its mean over runs, measured here;
    the figure gives no number)."""
    t = table[(table["layer"] == "norm3") & (table["norm"] == "none")]
    first = ("Ioffe & Szegedy (2015, Fig. 1b-c) show the percentiles drifting without batch norm and steady with it, "
             "in a figure without a number; the drift removed is a difference as large as the control's own drift "
             "(measured here), ")
    return tuple(Reported(f"drift_{m}_batch", float(t[m].mean()),
                          (first if i == 0 else "") + f"for the {m.replace('_', ' ')}") for i, m in enumerate(METRICS))


def page(P):
    """The drift page. Glues the family, each measure per norm and layer, n_*, figures fig_drift (the
    normalization's input and the sigmoid's for one unit and seed) and fig_drift_measures."""
    results = run_trials(trials(P), workers=P["workers"], force=P["force"])
    table = tabulate(results)
    fam = family(table)
    glue_family(fam)
    glue_literature(fam, reported(table))
    unit = min(P["unit"], 99)
    glue_values({**seed_count(P), "drift_unit": unit, "drift_seed": P["seeds"][0], "drift_runs": runs_text(results),
                 "drift_steps": len(results[0].history.step_loss), "drift_n_diverged": int(table["diverged"].sum() / 2),
                 **{f"drift_{m}_{n}_{layer}": level_text(table[(table["norm"] == n) & (table["layer"] == layer)][m], "plain")
                    for m in METRICS for n in NORMS for layer in LAYERS}})
    frames = pd.concat([traces([r for r in results if r.history.config["seed"] == P["seeds"][0]], unit, layer)
                        for layer in LAYERS])
    glue_figure("fig_drift", study_figures.percentile_grid(frames, LAYERS))
    glue_figure("fig_drift_measures", study_figures.points(table.assign(layer=table["layer"].map(LAYERS)), "norm",
                                                           "median_shift", hue="norm", col="layer", order=list(NORMS)))
    summary = pd.DataFrame([{"condition": norm_label(n), "layer": LAYERS[layer],
                             "median shift (initial spreads)": level_text(g["median_shift"], "plain"),
                             "spread change, |log ratio|": level_text(g["spread_change"], "plain")}
                            for (n, layer), g in table.groupby(["norm", "layer"], sort=False)])
    return SimpleNamespace(verdicts=common.family_table(fam), summary=summary, table=table, family=fam)
