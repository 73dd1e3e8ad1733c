"""Figures of the studies beyond the assignment (normlib.studies): functions of their tables, in the
book's palette and with the axis labels of normlib.figures.

- sweep: a measure against a swept parameter (batch size, learning rate), per condition.
- panels: several measures against one parameter, one panel each (init scale, loss landscape).
- points: every seed as a dot and the mean with its 95% interval, per category (the claims, drift).
- percentile_traces, percentile_grid: a unit's input percentiles over training (Ioffe & Szegedy 2015,
  Fig. 1b-c), for one layer or several.
- statistics_modes: batch norm's error with running, batch and population statistics.
"""
import matplotlib.pyplot as plt
import seaborn as sns

from normlib.figures import (ARCH_LABELS, METRIC_LABELS, NORM_COLORS, NORM_LABELS, band_plot, finish,
                             mark_diverged, palette, seed_band, shared_legend)
from normlib import metrics
from normlib.metrics import CHANCE_ACC, mean_ci, metric_bounds

STUDY_LABELS = {
    "val_error": "validation error (1 - accuracy)", "best_val_acc": "best validation accuracy",
    "final_val_acc": "final validation accuracy", "final_train_loss": "final training loss (cross-entropy)",
    "loss_range": "loss range along the gradient", "grad_change": "gradient predictiveness (max L2 change)",
    "beta": "effective beta-smoothness", "grad_imbalance": "|log10(first / last layer gradient norm)|",
    "gap": "validation - training loss", "batch_size": "batch size (examples per step)",
    "lr": "learning rate", "init_scale": "weight-initialization scale (std)",
    "step": "step (mini-batches)", "position": "normalization position", "norm": "normalization",
    "grad_spread": "gradient spread, log10(max / min layer RMS)", "effective_step": "effective step, mean ||dW|| / ||W||",
    "signal_kept_deep": "var / (var + eps), deepest norm, at init",
    "rep_dims": "dimensions of the last hidden representation, end",
    "weight_rank": "stable rank of hidden weights, end", "median_shift": "median shift (in mean 15-85 spreads)",
    "setback": "setback (largest rise of the validation loss)", "activation": "activation", "condition": "regularizer",
    "value": "value",
}


def axis_label(name):
    return STUDY_LABELS.get(name, METRIC_LABELS.get(name, name))


def sweep(frame, x, y, *, hue="norm", logx=True, xlabel=None, ylabel=None, diverged=None, col=None, hline=None):
    """y against a swept parameter x, per condition, 95% band over seeds; diverged runs marked with x;
    hline: a dotted reference level (e.g. an accuracy threshold)."""
    panels = list(dict.fromkeys(frame[col])) if col else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 3.9), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        d = frame if panel is None else frame[frame[col] == panel]
        band_plot(ax, d, x, y, hue, marker="o")
        mark_diverged(ax, d, x, y, hue, diverged)
        if hline is not None:
            ax.axhline(hline, color="#444444", ls=":", lw=1.2)
        if logx:
            ax.set_xscale("log", base=2 if x == "batch_size" else 10)
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel or METRIC_LABELS.get(y, y))
        ax.set_title(ARCH_LABELS.get(panel, panel) if panel is not None else "")
    return finish(fig, axes[0], 0.92)


def panels(frame, x, ys, *, hue="norm", logx=False, logy=(), diverged=None):
    """One panel per metric in ys: the metric against x per condition, mean and 95% band over seeds.
    logy: metrics drawn on a log scale; diverged: a bool column, diverged runs marked x at the panel top."""
    fig, axes = plt.subplots(1, len(ys), figsize=(4.8 * len(ys), 3.9), squeeze=False)
    for ax, y in zip(axes[0], ys):
        band_plot(ax, frame, x, y, hue, marker="o" if x != "step" else None)
        mark_diverged(ax, frame, x, y, hue, diverged)
        if logx:
            ax.set_xscale("log", base=2 if x == "batch_size" else 10)
        if y in logy:
            ax.set_yscale("log")
        ax.set_xlabel(axis_label(x))
        ax.set_ylabel(axis_label(y))
    return finish(fig, axes[0], 0.88)


def quantile_band(ax, d, color):
    """A median line inside its band: d has one column per quantile (low, middle, high), indexed by step."""
    lo, mid, hi = (d[q] for q in sorted(d.columns))
    ax.fill_between(d.index, lo, hi, color=color, alpha=0.25)
    ax.plot(d.index, lo, "--", color=color, lw=1.0, label="15th and 85th percentiles")
    ax.plot(d.index, hi, "--", color=color, lw=1.0)
    ax.plot(d.index, mid, "-", color=color, lw=1.6, label="median")


def percentile_traces(frame, *, col="norm"):
    """Ioffe & Szegedy 2015, Fig. 1b-c: one unit's input percentiles over training (rows of
    studies.activation_drift.traces for one seed), one panel per condition; 15th-85th band, median line."""
    panels_ = list(dict.fromkeys(frame[col]))
    fig, axes = plt.subplots(1, len(panels_), figsize=(4.6 * len(panels_), 3.6), squeeze=False, sharey=True)
    for ax, panel in zip(axes[0], panels_):
        d = frame[frame[col] == panel].pivot_table(index="step", columns="quantile", values="value")
        quantile_band(ax, d, NORM_COLORS.get(panel, "#333"))
        ax.set_title(NORM_LABELS.get(panel, panel))
        ax.set_xlabel(axis_label("step"))
    axes[0][0].set_ylabel("input to the sigmoid")
    axes[0][0].legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def statistics_modes(frame, x="batch_size"):
    """Batch norm's validation error against x with the three ways of normalizing at test time (rows of
    studies.batch_size.tabulate): running statistics, statistics of batches of the training size, population
    statistics of the final weights; mean and 95% band over seeds."""
    modes = {"val_error": ("running statistics (inference)", "#1f77b4"),
             "batch_stats_error": ("statistics of batches of the training size", "#ff7f0e"),
             "population_error": ("statistics of batches of 500 (population)", "#2ca02c")}
    long = frame.melt(id_vars=[x, "seed"], value_vars=list(modes), var_name="mode", value_name="error")
    band = seed_band(long, x, "error", hue="mode")
    fig, ax = plt.subplots(figsize=(6.4, 3.9))
    for mode, g in band.groupby("mode", sort=False):
        name, color = modes[mode]
        ax.plot(g[x], g["mean"], marker="o", color=color, label=name, lw=1.6)
        ax.fill_between(g[x], g["lo"], g["hi"], color=color, alpha=0.2, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel("batch norm: validation error")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def percentile_grid(frame, layers, *, col="norm"):
    """percentile_traces for several probed layers: one row of panels per layer (layers: {name: label}),
    one column per condition; each row shares its y axis."""
    conds = list(dict.fromkeys(frame[col]))
    fig, axes = plt.subplots(len(layers), len(conds), figsize=(4.4 * len(conds), 3.0 * len(layers)), squeeze=False)
    for i, (layer, label) in enumerate(layers.items()):
        for ax, cond in zip(axes[i], conds):
            d = frame[(frame["layer"] == layer) & (frame[col] == cond)].pivot_table(index="step", columns="quantile",
                                                                                    values="value")
            quantile_band(ax, d, NORM_COLORS.get(cond, "#333"))
            ax.set_title(f"{NORM_LABELS.get(cond, cond)}: {label}", fontsize="small")
            ax.set_xlabel(axis_label("step"))
    axes[0][0].legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def points(frame, x, y, *, hue="norm", col=None, order=None, logy=False, hline=None, sharey=True):
    """Each seed as a dot and the mean with its 95% Student-t CI (seaborn pointplot), per x category and hue,
    one panel per col value (its y axis shared unless sharey=False); hline: a dotted reference level."""
    panels_ = list(dict.fromkeys(frame[col])) if col else [None]
    width = max(4.6, 2.0 * frame[x].nunique())
    fig, axes = plt.subplots(1, len(panels_), figsize=(width * len(panels_), 3.8), squeeze=False, sharey=sharey)
    hues = list(dict.fromkeys(frame[hue]))
    for ax, panel in zip(axes[0], panels_):
        d = frame if panel is None else frame[frame[col] == panel]
        kw = dict(data=d, x=x, y=y, hue=hue, hue_order=hues, order=order, palette=palette(hues), ax=ax)
        sns.stripplot(**kw, dodge=len(hues) > 1 and hue != x, alpha=0.6, size=5, legend=False)
        dodge = 0.8 - 0.8 / len(hues) if len(hues) > 1 and hue != x else False  # centred on the strips' columns
        sns.pointplot(**kw, dodge=dodge, errorbar=lambda v: mean_ci(v, bounds=metric_bounds(y))[1:],
                      linestyle="none", capsize=0.1, marker="D")  # the tables' Student-t interval
        if hline is not None:
            ax.axhline(hline, color="#444444", ls=":", lw=1.2)
        ax.set_xlabel(axis_label(x))
        ax.set_ylabel(axis_label(y) if panel is None or sharey else axis_label(panel))
        ax.set_title(axis_label(panel) if panel is not None else "")
        if logy:
            ax.set_yscale("log")
        if hue == x:  # the x axis already names the conditions
            ax.set_xticks(ax.get_xticks(), [NORM_LABELS.get(t.get_text(), t.get_text()) for t in ax.get_xticklabels()])
            if ax.get_legend():
                ax.get_legend().remove()
    if hue != x:
        shared_legend(fig, axes[0][0])
    for ax in axes[0][1:]:
        if ax.get_legend():
            ax.get_legend().remove()
    fig.tight_layout(rect=(0, 0, 1, 0.9) if hue != x else None)
    return fig


# ----------------------------------------------------------------------------
# conditions that are a norm and a placement (the transformer study)

def _legend(fig, ax, top):
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def condition_curves(curves, styles):
    """Validation loss and error over the epochs per condition (the transformer study's) at its selected rate:
    mean and 95% band over the seeds (normlib.figures.seed_band), drawn up to chance. curves: curves_frame with
    condition and val_error columns; styles: {condition: plot style (color, ls, marker)}."""
    fig, axes = plt.subplots(1, 2, figsize=(10.8, 3.9))
    for ax, y in zip(axes, ("val_loss", "val_error")):
        for cond, g in seed_band(curves, "epoch", y, hue="condition").groupby("condition", sort=False):
            s = styles[cond]
            ax.plot(g["epoch"], g["mean"], label=cond, lw=1.6, markersize=3, **s)
            ax.fill_between(g["epoch"], g["lo"], g["hi"], color=s["color"], alpha=0.15, lw=0)
        ax.set_xlabel("epoch (passes over the training set)")
        ax.set_ylabel(METRIC_LABELS[y])
        ax.set_ylim(0, metrics.CHANCE_LOSS if y == "val_loss" else 1 - CHANCE_ACC)  # up to chance
    return _legend(fig, axes[0], 0.9)


def condition_sweep(table, threshold, warmup, styles):
    """Final validation accuracy against the peak rate per condition, with warmup and without (panels): every
    run a dot (a failed one at chance), the mean over seeds a line; the dotted line is the accuracy that
    counts as training. styles: {condition: plot style}."""
    fig, axes = plt.subplots(1, 2, figsize=(10.8, 3.9), sharex=True, sharey=True)
    for ax, (w, title) in zip(axes, ((warmup, f"with warmup ({warmup:.0%} of the steps)"), (0.0, "without warmup"))):
        d = table[table["warmup"] == w]
        for cond, g in d.groupby("condition", sort=False):
            s = styles[cond]
            mean = g.groupby("lr")["final_val_acc"].mean()
            ax.plot(mean.index, mean.to_numpy(), label=cond, lw=1.4, markersize=7, **s)
            ax.scatter(g["lr"], g["final_val_acc"], color=s["color"], marker=s["marker"], s=16, alpha=0.5)
        ax.axhline(threshold, color="#444444", ls=":", lw=1.2)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (peak of the cosine schedule)")
        ax.set_title(title)
    axes[0].set_ylabel("final validation accuracy")
    return _legend(fig, axes[0], 0.88)
