"""Glue helpers: every number and verdict the book states is glued from a notebook by these.

Key scheme (all keys are glued as plain Python values):
  {arch}_{metric}_{norm}        "0.312 [0.301, 0.323]"  mean and 95% CI across seeds (str, use :s)
  {arch}_{metric}_{norm}_mean   0.312                   (float)
  {arch}_{metric}_winner        "batch norm" | "tie"    (str) per criterion metric
  {arch}_{metric}_p, _g         Welch p and Hedges' g of best vs runner-up (float)
  {arch}_{metric}_{key}         "batch norm" | "layer norm" | "tie (...)"  two conditions head to head (str)
  {arch}_{metric}_{key}_p, _g   Welch p and Hedges' g of that pair (float)
"""
import math

import matplotlib.pyplot as plt
from myst_nb import glue

from normlib import figures
from normlib.figures import METRIC_LABELS, NORM_LABELS
from normlib.metrics import compare_conditions, criteria_trials, format_ci, seed_spread, summarize
from normlib.study import curves_frame

FORMATS = {"test_acc": "{:.2%}", "final_val_acc": "{:.2%}", "best_val_acc": "{:.2%}", "steps_to_loss": "{:.0f}"}


def glue_value(key, value):
    """Glue a plain Python value (NumPy scalars do not format in the book); returns nothing, so a
    cell ending in glue_value(...) shows no output."""
    if hasattr(value, "item"):
        value = value.item()
    glue(key, value, display=False)


def glue_values(values):
    """glue_value for every {key: value} of a dict."""
    for key, value in values.items():
        glue_value(key, value)


def winner_label(winner):
    return "tie (difference not established)" if winner == "tie" else NORM_LABELS.get(winner, winner)


def glue_comparison(cmp, arch, conditions, prefix=""):
    """Glue every cell of a metrics.compare_conditions table for one arch; return {key: value}."""
    out = {}
    for _, r in cmp.iterrows():
        metric, fmt = r["metric"], FORMATS.get(r["metric"], "{:.3f}")
        base = f"{prefix}{arch}_{metric}"
        for c in conditions:
            out[f"{base}_{c}"] = format_ci(r[f"{c}_mean"], r[f"{c}_lo"], r[f"{c}_hi"], fmt)
            out[f"{base}_{c}_mean"] = float(r[f"{c}_mean"])
        out[f"{base}_winner"] = winner_label(r["winner"])
        for stat, col in (("p", "welch_p"), ("g", "hedges_g")):
            v = r.get(col, float("nan"))
            out[f"{base}_{stat}"] = float(v) if v is not None and not _isnan(v) else float("nan")
    for k, v in out.items():
        glue_value(k, v)
    return out


def _isnan(v):
    try:
        return math.isnan(v)
    except TypeError:
        return False


def readable_table(cmp, conditions):
    """compare_conditions as a reader's table: one column per condition with 'mean [lo, hi]'."""
    import pandas as pd
    rows = []
    for _, r in cmp.iterrows():
        fmt = FORMATS.get(r["metric"], "{:.3f}")
        row = {"criterion": r["criterion"], "measure": r["measures"]}
        for c in conditions:
            row[NORM_LABELS.get(c, c)] = format_ci(r[f"{c}_mean"], r[f"{c}_lo"], r[f"{c}_hi"], fmt)
        row["winner"] = winner_label(r["winner"])
        p = r.get("welch_p", float("nan"))
        row["Welch p (best vs next)"] = "n/a" if p is None or _isnan(p) else f"{p:.3g}"
        rows.append(row)
    return pd.DataFrame(rows)


def findings(cmp, arch, conditions, n_seeds):
    """Markdown bullet list: per criterion metric, the numbers and the verdict, computed from cmp."""
    from normlib.figures import ARCH_LABELS
    lines = [f"**{ARCH_LABELS.get(arch, arch)}**, {n_seeds} seeds per condition:", ""]
    for _, r in cmp.iterrows():
        fmt = FORMATS.get(r["metric"], "{:.3f}")
        values = "; ".join(f"{NORM_LABELS.get(c, c)} {format_ci(r[f'{c}_mean'], r[f'{c}_lo'], r[f'{c}_hi'], fmt)}"
                           for c in conditions)
        if r["winner"] == "tie":
            verdict = "**tie**: the 95% intervals overlap, so the difference is not established by these seeds"
        else:
            verdict = f"**{NORM_LABELS.get(r['winner'], r['winner'])} is better**"
        p, g = r.get("welch_p", float("nan")), r.get("hedges_g", float("nan"))
        test = "" if p is None or _isnan(p) else f" (Welch p = {p:.2g}, Hedges' g = {g:.2f})"
        lines.append(f"- *{r['criterion']}*, {r['measures']}: {values}; {verdict}{test}.")
    return "\n".join(lines)


def glue_figure(key, fig):
    """Glue a Figure (not an Axes) for a {glue:figure} directive, then close it."""
    glue(key, fig, display=False)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Steps 2 and 4: one normalization against the baseline

PAIR_FIGURES = {"steps_to_loss": "fig_speed", "volatility": "fig_volatility", "final_val_loss": "fig_final_val_loss",
                "test_acc": "fig_test_acc"}


def speed_text(speedup):
    """A ratio of steps (reference / condition) in words: '1.3 times sooner', '1.2 times later' (a ratio
    below 1, turned around so that it reads as a number above 1), or 'as soon' within rounding."""
    if not math.isfinite(speedup) or speedup <= 0:
        return "at no comparable point"
    if round(speedup, 1) == 1.0 and round(1 / speedup, 1) == 1.0:
        return "as soon (a ratio of 1.0)"
    return f"{speedup:.1f} times sooner" if speedup > 1 else f"{1 / speedup:.1f} times later"


def analyse_pair(histories, norm, reference="none"):
    """`norm` against `reference` on the study's criteria, per arch of the histories (steps 2 and 4).
    Glues every number and figure those pages state:
      glue_comparison's keys for both conditions ({arch}_{metric}_{c}, _mean, _winner, _p, _g);
      {arch}_val_loss_sd_{c}  standard deviation across seeds of the final validation loss;
      {arch}_target_loss      the convergence target (the reference's mean final validation loss);
      {arch}_speedup          mean steps to the target, reference / norm (censored runs count in full);
      {arch}_speedup_text     the same in words: "1.3 times sooner", "1.2 times later" (speed_text);
      {arch}_reached_{c}      runs of condition c that reached the target (int);
      {arch}_findings         markdown bullets, one per criterion measure; n_seeds (int);
      figures fig_val_loss, fig_speed, fig_volatility, fig_final_val_loss, fig_test_acc.
    Returns {"table": criteria_trials, "comparisons": {arch: compare_conditions},
             "tables": {arch: readable_table}, "spread": seed_spread, "findings": {arch: markdown}}."""
    conditions = [reference, norm]
    archs = list(dict.fromkeys(h.config["arch"] for h in histories))
    n_seeds = len({h.config["seed"] for h in histories})
    table = criteria_trials(histories, reference=reference)
    comparisons = {arch: compare_conditions(table, conditions, arch) for arch in archs}
    for arch, cmp in comparisons.items():
        glue_comparison(cmp, arch, conditions)
        t = table[table["arch"] == arch]
        steps = t.groupby("norm")["steps_to_loss"].mean()
        glue_value(f"{arch}_speedup", float(steps[reference] / steps[norm]))
        glue_value(f"{arch}_speedup_text", speed_text(float(steps[reference] / steps[norm])))
        glue_value(f"{arch}_target_loss", float(t["target_loss"].iloc[0]))
        for c in conditions:
            glue_value(f"{arch}_reached_{c}", int(t.loc[t["norm"] == c, "reached"].sum()))
    spread = seed_spread(table)
    for _, r in spread.iterrows():
        glue_value(f"{r['arch']}_val_loss_sd_{r['norm']}", float(r["final_val_loss_sd"]))
    glue_value("n_seeds", n_seeds)
    glue_figure("fig_val_loss", figures.curves(curves_frame(histories), "val_loss"))
    summary = summarize(table, ["arch", "norm"], list(PAIR_FIGURES))
    for metric, key in PAIR_FIGURES.items():
        glue_figure(key, figures.intervals(summary, metric))
    texts = {arch: findings(cmp, arch, conditions, n_seeds) for arch, cmp in comparisons.items()}
    for arch, text in texts.items():
        glue_value(f"{arch}_findings", text)
    return {"table": table, "comparisons": comparisons, "spread": spread, "findings": texts,
            "tables": {arch: readable_table(cmp, conditions) for arch, cmp in comparisons.items()}}


# ---------------------------------------------------------------------------------------------
# Step 5: two conditions head to head (metrics.head_to_head)

def glue_head_to_head(h2h, arch, key):
    """Glue a metrics.head_to_head table for one arch: {arch}_{metric}_{key} (the verdict's label),
    {arch}_{metric}_{key}_p and _g (Welch p, Hedges' g). Returns {key: value}."""
    out = {}
    for _, r in h2h.iterrows():
        base = f"{arch}_{r['metric']}_{key}"
        out[base] = winner_label(r["winner"])
        out[f"{base}_p"], out[f"{base}_g"] = float(r["welch_p"]), float(r["hedges_g"])
    for k, v in out.items():
        glue_value(k, v)
    return out


def head_to_head_summary(h2h, a, b):
    """One sentence: how many criterion measures each of a, b wins and how many are ties, naming them."""
    def named(winner):
        metrics = [METRIC_LABELS.get(m, m) for m in h2h.loc[h2h["winner"] == winner, "metric"]]
        return f"{len(metrics)}" + (f" ({', '.join(metrics)})" if metrics else "")

    n_ties = int((h2h["winner"] == "tie").sum())
    ties = ("none is a tie" if n_ties == 0 else
            f"{named('tie')} {'is a tie' if n_ties == 1 else 'are ties'} (overlapping 95% intervals: "
            f"the difference is not established by these seeds)")
    return (f"Of {len(h2h)} criterion measures, {NORM_LABELS.get(a, a)} wins {named(a)}, "
            f"{NORM_LABELS.get(b, b)} wins {named(b)} and {ties}.")


def readable_head_to_head(h2h, a, b):
    """metrics.head_to_head as a reader's table: both conditions' 'mean [lo, hi]', the difference a - b
    with its Welch 95% CI, the verdict, Welch p and Hedges' g."""
    import pandas as pd
    la, lb = NORM_LABELS.get(a, a), NORM_LABELS.get(b, b)
    rows = []
    for _, r in h2h.iterrows():
        fmt = FORMATS.get(r["metric"], "{:.3f}")
        rows.append({"criterion": r["criterion"], "measure": r["measures"],
                     la: format_ci(r[f"{a}_mean"], r[f"{a}_lo"], r[f"{a}_hi"], fmt),
                     lb: format_ci(r[f"{b}_mean"], r[f"{b}_lo"], r[f"{b}_hi"], fmt),
                     f"{la} - {lb} (Welch 95% CI)": format_ci(r["diff"], r["diff_lo"], r["diff_hi"], fmt),
                     "verdict": winner_label(r["winner"]),
                     "Welch p": "n/a" if _isnan(r["welch_p"]) else f"{r['welch_p']:.3g}",
                     "Hedges' g": "n/a" if _isnan(r["hedges_g"]) else f"{r['hedges_g']:.2f}"})
    return pd.DataFrame(rows)


def glue_difference(h2h, arch, metric, key, scale=1.0):
    """Glue the difference a - b of one metric of a metrics.head_to_head table for one arch:
    {arch}_{key}_diff, _diff_lo, _diff_hi (times scale; Welch 95% CI), _diff_ci ("+0.31 [-0.52, +1.14]"),
    _diff_p (Welch p), {arch}_{key}_difference_established: "established" when the study's verdict
    names a winner (non-overlapping 95% intervals), else "not established", and
    {arch}_{key}_difference_text, the same with its reason, including the case where the intervals
    overlap although Welch's test alone rejects equal means. Returns {key: value}."""
    r = h2h.set_index("metric").loc[metric]
    base = f"{arch}_{key}"
    out = {f"{base}_diff": scale * float(r["diff"]), f"{base}_diff_lo": scale * float(r["diff_lo"]),
           f"{base}_diff_hi": scale * float(r["diff_hi"]), f"{base}_diff_p": float(r["welch_p"]),
           f"{base}_difference_established": "not established" if r["winner"] == "tie" else "established"}
    out[f"{base}_diff_ci"] = format_ci(out[f"{base}_diff"], out[f"{base}_diff_lo"], out[f"{base}_diff_hi"], "{:+.2f}")
    p = out[f"{base}_diff_p"]
    if r["winner"] != "tie":
        text = f"established (the two 95% intervals do not overlap; Welch p = {p:.2g})"
    elif _isnan(p):
        text = "not established (too few seeds for a test)"
    elif p < 0.05:
        text = (f"not established by this report's rule, as the two 95% intervals overlap, although Welch's "
                f"test alone gives p = {p:.2g}")
    else:
        text = f"not established (the two 95% intervals overlap; Welch p = {p:.2g})"
    out[f"{base}_difference_text"] = text
    for k, v in out.items():
        glue_value(k, v)
    return out
