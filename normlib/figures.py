"""Figures for the report: functions of tables, one palette for the whole book.

Every figure has labelled axes (with units), a legend, 95% seed bands where there are
seeds (Student-t intervals of the mean, the same as the tables': seed_band), and a white background so it stays readable in the book's dark mode. Each
function returns the matplotlib Figure (glue the Figure, then close it).

Here: the palette and labels, the band and legend helpers every figure uses, and the figures of the
main comparison (steps 1-5) and of the set-up pages; the studies' figures are in normlib.study_figures.
"""
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats

from normlib.metrics import mean_ci, metric_bounds
from normlib.norms import NORMS

# colour and name of every normalization kind (from the registry), and of model variants that are not kinds
NORM_COLORS = {**{kind: n.colour for kind, n in NORMS.items()}, "batch+layer": "#d62728"}
NORM_LABELS = {**{kind: n.label for kind, n in NORMS.items()}, "batch+layer": "batch + layer norm"}
ARCH_LABELS = {"mlp": "MLP", "cnn": "CNN", "vit": "ViT"}
METRIC_LABELS = {
    "train_loss": "training loss (cross-entropy)", "val_loss": "validation loss (cross-entropy)",
    "train_acc": "training accuracy", "val_acc": "validation accuracy", "test_acc": "test accuracy",
    "test_loss": "test loss (cross-entropy)", "loss": "training loss (cross-entropy)",
    "smoothed": "training loss, 20-step mean (cross-entropy)", "grad_norm": "gradient norm (L2)",
    "final_val_loss": "final validation loss", "steps_to_loss": "steps to target validation loss",
    "volatility": "step-to-step volatility of log loss", "grad_norm_cv": "gradient-norm CV",
    "val_error": "validation error (1 - accuracy)",
}


def norm_label(name):
    """The name a reader sees for a normalization kind or a model variant ("batch norm", "batch + layer norm")."""
    return NORM_LABELS.get(name, str(name))


def set_style():
    """Seaborn theme used by every notebook; white figure background for dark mode."""
    sns.set_theme(context="notebook", style="whitegrid")
    plt.rcParams.update({"figure.facecolor": "white", "savefig.facecolor": "white", "figure.dpi": 100,
                         "legend.frameon": True})


def palette(norms):
    return {n: NORM_COLORS.get(n, "#333333") for n in norms}


def shared_legend(fig, ax):
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend():
        ax.get_legend().remove()
    fig.legend(handles, [NORM_LABELS.get(t, t) for t in labels], loc="upper center",
               ncol=len(labels), bbox_to_anchor=(0.5, 1.02), title=None)


def seed_band(frame, x, y, hue="norm", level=0.95):
    """Per (hue, x) value: the mean of y over the rows (the seeds) and its Student-t interval, the
    interval metrics.mean_ci gives for the same values, clipped to metrics.metric_bounds(y). Non-finite
    values (a diverged run) are left out; a single value has no band. Vectorized: per-step curves of
    thousands of points take milliseconds (seaborn's bootstrap took minutes)."""
    d = frame[[hue, x, y]].copy()
    d[y] = pd.to_numeric(d[y], errors="coerce")
    d = d[np.isfinite(d[y])]
    out = d.groupby([hue, x], sort=False)[y].agg(["mean", "std", "count"]).reset_index()
    out = out.sort_values([hue, x], kind="stable", key=lambda c: c if c.name == x else c.map(
        {h: i for i, h in enumerate(dict.fromkeys(frame[hue]))}))
    n = out["count"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + level / 2, np.where(n > 1, n - 1, np.nan)) * out["std"].to_numpy() / np.sqrt(n)
    low, high = metric_bounds(y) or (-np.inf, np.inf)
    out["lo"] = np.clip(out["mean"] - half, low, high)
    out["hi"] = np.clip(out["mean"] + half, low, high)
    return out


def band_plot(ax, frame, x, y, hue="norm", marker=None):
    """One line per hue value (mean over seeds) with its 95% band (seed_band), in the book's colours."""
    band = seed_band(frame, x, y, hue)
    for name, g in band.groupby(hue, sort=False):
        color = NORM_COLORS.get(name, "#333333")
        ax.plot(g[x], g["mean"], color=color, label=name, marker=marker, markersize=4 if marker else None, lw=1.6)
        if g["lo"].notna().any():
            ax.fill_between(g[x], g["lo"], g["hi"], color=color, alpha=0.2, lw=0)


def finish(fig, axes, top):
    """The shared legend above the panels (norm names spelled out) and the layout."""
    shared_legend(fig, axes[0])
    for ax in axes[1:]:
        if ax.get_legend():
            ax.get_legend().remove()
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def mark_diverged(ax, frame, x, y, hue, diverged):
    """Diverged runs (bool column `diverged`) as an x at the top of the panel, at their x value."""
    if diverged is None or not frame[diverged].any():
        return
    top = frame[y].max() if frame[y].notna().any() else 1.0
    for norm, g in frame[frame[diverged]].groupby(hue):
        ax.scatter(g[x], [top] * len(g), marker="x", s=70, color=NORM_COLORS.get(norm, "#333"),
                   label=f"{NORM_LABELS.get(norm, norm)} diverged", zorder=5)


def curves(frame, y, *, x="epoch", col="arch", hue="norm", logy=False, title=None, levels=None):
    """Mean curve per condition with a 95% band across seeds, one panel per `col` value; levels:
    {panel: value} drawn as a dotted line (the convergence level of steps 2, 4 and 5)."""
    panels = list(dict.fromkeys(frame[col])) if col else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        band_plot(ax, frame if panel is None else frame[frame[col] == panel], x, y, hue,
                   marker="o" if x == "epoch" else None)
        ax.set_xlabel({"epoch": "epoch (passes over the training set)", "step": "step (mini-batches)"}.get(x, x))
        ax.set_ylabel(METRIC_LABELS.get(y, y))
        ax.set_title(ARCH_LABELS.get(panel, panel) if panel is not None else (title or ""))
        if levels and panel in levels:
            ax.axhline(levels[panel], color="#444444", ls=":", lw=1.2)
            ax.annotate("convergence level", (1.0, levels[panel]), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize="small", color="#444444")
        if logy:
            ax.set_yscale("log")
    return finish(fig, axes[0], 0.93)


def intervals(summary, metric, *, col="arch", hue="norm", xlabel=None):
    """Mean and 95% CI of one metric per condition (rows of metrics.summarize), one panel per col."""
    data = summary[summary["metric"] == metric]
    panels = list(dict.fromkeys(data[col])) if col else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 0.6 + 0.45 * data[hue].nunique()),
                             squeeze=False)
    for ax, panel in zip(axes[0], panels):
        d = data if panel is None else data[data[col] == panel]
        ys = np.arange(len(d))
        for yi, (_, r) in zip(ys, d.iterrows()):
            color = NORM_COLORS.get(r[hue], "#333333")
            err = [[r["mean"] - r["lo"]], [r["hi"] - r["mean"]]] if np.isfinite(r["lo"]) else None
            ax.errorbar(r["mean"], yi, xerr=err, fmt="o", color=color, capsize=4, markersize=7)
        ax.set_yticks(ys, [NORM_LABELS.get(v, v) for v in d[hue]])
        ax.set_xlabel(xlabel or METRIC_LABELS.get(metric, metric) + " (mean, 95% CI)")
        ax.set_title(ARCH_LABELS.get(panel, panel) if panel is not None else "")
        ax.invert_yaxis()
    fig.tight_layout()
    return fig


def notebook_times(times):
    """Horizontal bars: seconds per notebook (rows of provenance.notebook_times), coloured by what
    this run did with it (executed or reused)."""
    colors = {"executed": "#1f77b4", "reused": "#9e9e9e", "not in this run": "#d9d9d9"}
    fig, ax = plt.subplots(figsize=(7.5, 0.6 + 0.32 * max(len(times), 1)))
    y = np.arange(len(times))
    ax.barh(y, times["seconds"].fillna(0), color=[colors.get(s, "#333") for s in times["this run"]])
    ax.set_yticks(y, times["notebook"])
    ax.invert_yaxis()
    ax.set_xlabel("execution time (seconds)")
    for status, color in colors.items():
        if (times["this run"] == status).any():
            ax.barh([], [], color=color, label=f"{status} in this run" if status != "not in this run" else status)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def examples(images, labels, classes, per_row=5):
    """One image per class: images (N, 1, H, W), labels (N,), classes: names indexed by label."""
    picks = [int((labels == c).nonzero()[0]) for c in range(len(classes))]
    rows = -(-len(picks) // per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(1.6 * per_row, 1.8 * rows), squeeze=False)
    for ax, i in zip(axes.flat, picks):
        ax.imshow(images[i, 0], cmap="gray_r")
        ax.set_title(classes[int(labels[i])], fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# the main comparison (normlib.steps)

MEASURE_LABELS = {
    "steps_to_level": "steps to the convergence level", "spike": "spike (largest rise before the best, share of progress)",
    "setback": "setback (largest rise, share of progress)",
    "best_test_loss": "test loss at the best-validation checkpoint", "best_val_loss": "best validation loss",
}


def lr_curves(tuning, selected):
    """Best validation loss against the learning rate, per network (panels) and condition, at the first
    rung of the tuning (every rate, the shortest budget): mean and 95% band over the tuning seeds, a failed
    run at chance (ln 10) and marked x; the rates of later rungs (longer budgets) as hollow points; a star
    at each condition's selected rate, at the last rung it ran. tuning: protocol.tuning_table (its "steps"
    column tells the rungs apart); selected: {(arch, norm): lr}."""
    archs = list(dict.fromkeys(tuning["arch"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(5.4 * len(archs), 3.9), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        d = tuning[tuning["arch"] == arch]
        first, later = d[d["steps"] == d["steps"].min()], d[d["steps"] > d["steps"].min()]
        band_plot(ax, first, "lr", "best_val_loss", marker="o")
        mark_diverged(ax, first, "lr", "best_val_loss", "norm", "failed")
        for (norm, steps), g in later.groupby(["norm", "steps"], sort=False):
            means = g.groupby("lr")["best_val_loss"].mean()
            ax.scatter(means.index, means.to_numpy(), marker="o", s=40, facecolor="none",
                       edgecolor=NORM_COLORS.get(norm, "#333"), zorder=5)
        for norm, g in d.groupby("norm", sort=False):
            lr = selected.get((arch, norm))
            if lr is not None:
                last = g[g["steps"] == g["steps"].max()]
                ax.scatter([lr], [last[last["lr"] == lr]["best_val_loss"].mean()], marker="*", s=220,
                           color=NORM_COLORS.get(norm, "#333"), edgecolor="black", zorder=6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate (peak of the schedule)")
        ax.set_ylabel("best validation loss (tuning seeds)")
        ax.set_title(ARCH_LABELS.get(arch, arch))
    return finish(fig, axes[0], 0.9)


def criteria(measures, names=("steps_to_level", "spike", "best_test_loss")):
    """The primary measure of each criterion (columns) per network (rows): every run as a dot (a diverged
    one as x), the mean with its 95% interval as a diamond, per condition."""
    archs = list(dict.fromkeys(measures["arch"]))
    fig, axes = plt.subplots(len(archs), len(names), figsize=(4.2 * len(names), 0.9 + 0.55 * 
                             measures["norm"].nunique() * len(archs)), squeeze=False)
    for i, arch in enumerate(archs):
        d = measures[measures["arch"] == arch]
        norms = list(dict.fromkeys(d["norm"]))
        for ax, name in zip(axes[i], names):
            for y, norm in enumerate(norms):
                g = d[d["norm"] == norm]
                color = NORM_COLORS.get(norm, "#333")
                jitter = np.linspace(-0.12, 0.12, len(g)) if len(g) > 1 else np.zeros(len(g))
                ok = ~g["diverged"].to_numpy(bool)
                ax.scatter(g[name].to_numpy()[ok], y + jitter[ok], color=color, alpha=0.6, s=18)
                ax.scatter(g[name].to_numpy()[~ok], y + jitter[~ok], color=color, marker="x", s=40)
                m, lo, hi = mean_ci(g[name].tolist())
                if np.isfinite(m):
                    err = [[m - lo], [hi - m]] if np.isfinite(lo) else None
                    ax.errorbar(m, y - 0.3, xerr=err, fmt="D", color=color, capsize=3, markersize=6)
            ax.set_yticks(range(len(norms)), [NORM_LABELS.get(n, n) for n in norms])
            ax.invert_yaxis()
            ax.set_title(f"{ARCH_LABELS.get(arch, arch)}: {MEASURE_LABELS.get(name, name)}", fontsize="small")
    fig.tight_layout()
    return fig


def verdict_intervals(table, names=("steps_to_level", "spike", "best_test_loss")):
    """The primary comparisons as a forest plot: per measure (panels), each network x pair's difference
    (first - second) with its Welch 95% interval; filled when the verdict was confirmed on fresh seeds,
    hollow when it was established but not confirmed, grey when not established."""
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 0.8 + 0.42 * len(table) / len(names)),
                             squeeze=False)
    short = {"none": "none", "batch": "BN", "layer": "LN"}
    for ax, name in zip(axes[0], names):
        d = table[table["measure"] == name].reset_index(drop=True)
        for y, r in d.iterrows():
            color = {"confirmed": "#1f77b4", "not confirmed": "#ff7f0e"}.get(r["confirmation"], "#9e9e9e")
            face = color if r["confirmation"] == "confirmed" else "white"
            err = [[r["diff"] - r["diff_lo"]], [r["diff_hi"] - r["diff"]]] if np.isfinite(r["diff_lo"]) else None
            ax.errorbar(r["diff"], y, xerr=err, fmt="o", color=color, mfc=face, capsize=3)
        ax.axvline(0, color="#444", lw=0.8)
        ax.set_yticks(range(len(d)), [f"{ARCH_LABELS.get(r['network'], r['network'])}: "
                                      f"{short.get(r['first'], r['first'])} - {short.get(r['second'], r['second'])}"
                                      for _, r in d.iterrows()])
        ax.invert_yaxis()
        ax.set_title(MEASURE_LABELS.get(name, name), fontsize="small")
        ax.set_xlabel("difference (first - second), 95% CI")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, mfc=f, label=t) for c, f, t in
               (("#1f77b4", "#1f77b4", "confirmed on fresh seeds"), ("#ff7f0e", "white", "established, not confirmed"),
                ("#9e9e9e", "white", "not established"))]
    fig.legend(handles=handles, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 1.02))
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def note(text):
    """A small figure holding only a sentence (where a page's figure has nothing to draw)."""
    fig, ax = plt.subplots(figsize=(6, 0.8))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig
