"""Comparisons of conditions and the verdicts the book states (issue 13), over per-run measures
(metrics.measures_table, one row per run, failed runs included at chance level).

The family of primary comparisons is declared before any result is seen: per network, each criterion's
primary measure (PRIMARY: steps to the loss level, spike, test loss at the best-validation checkpoint;
lower is better for all three) and three pairs (PRIMARY_PAIRS: batch norm vs none, layer norm vs none,
batch norm vs layer norm). Each comparison states both groups' n and number of failed (diverged) runs,
their means with 95% Student-t intervals, the difference first minus second with its Welch 95% interval
and Welch's p, and Holm's step-down adjustment of p over the whole family (Holm 1979). The verdict is
computed from the adjusted p and worded no stronger than the test: "batch norm lower" (or "higher" for
a measure where higher is better), or "not established", never "the same". Hedges' g follows the
report's one rule, normlib.stats.effect_size: given only when both groups spread more than the measure's
resolution and overlap (|g| <= 4); with ~zero spread in one group, or groups far apart, a standardized
effect (|g| = 137) measures the spread, not the effect, and the raw difference with its interval stands
alone. Every other comparison (secondary measures, other
conditions such as weight or group norm, spreads tested with Brown-Forsythe, divergence rates tested with
Fisher's exact test) is exploratory: the same columns, unadjusted p, labelled so.

Confirmation: the same table on a second, disjoint seed set (and another data-split seed). A
comparison established in the first set is "confirmed" when the second set gives the same sign with a
Holm-adjusted p < 0.05, Holm over the comparisons established in the first set; else "not confirmed";
"not established" when the first set did not establish it. Headlines come only from confirmed verdicts.

Equivalence ("no difference") is a claim of its own: normlib.stats.tost, two one-sided Welch tests
within a stated margin (Schuirmann 1987); Holm's adjustment and the Brown-Forsythe test are in
normlib.stats too. Which condition wins a criterion comes from the pairwise verdicts (winners: the
condition established better than every other), so one failing outlier condition cannot erase the
verdicts between the others, as rank_conditions' overlap rule did.
"""
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from normlib.metrics import MIN_SEEDS, format_ci, mean_ci, metric_bounds, welch, welch_ci
from normlib.stats import ALPHA, detectable, effect_size, finite, holm, spread_test, welch_se

LABELS = {"none": "no normalization", "batch": "batch norm", "layer": "layer norm", "weight": "weight norm",
          "group": "group norm", "batch+layer": "batch + layer norm"}
SHORT = {"none": "none", "batch": "BN", "layer": "LN", "weight": "WN", "group": "GN", "batch+layer": "BN+LN"}


@dataclass(frozen=True)
class Measure:
    criterion: str
    label: str                    # what it is, in the reader's words
    lower_is_better: bool
    resolution: float             # a spread at or below this counts as none (no Hedges' g: stats.effect_size)
    fmt: str = "{:.3f}"           # format of a value; differences get a sign
    test: str = "Welch"           # Welch (means) | Brown-Forsythe (spreads) | Fisher (rates of failed runs)
    column: str | None = None     # the per-run column, when it differs from the measure's name


MEASURES = {
    "steps_to_level": Measure("convergence speed", "steps to the validation-loss level (restricted mean)", True,
                              1.0, "{:.0f}"),
    "seconds_to_level": Measure("convergence speed", "seconds to the level (steps x mean step time)", True,
                                1e-3, "{:.1f}"),
    "log_loss_auc": Measure("convergence speed", "mean log validation loss over training", True, 1e-4),
    "spike": Measure("stability", "largest recovered rise of the validation loss (before its best), share of "
                     "progress", True, 1e-4),
    "setback": Measure("stability", "largest rise of the validation loss over the whole run, share of progress",
                       True, 1e-4),
    "failure_rate": Measure("stability", "share of runs that diverged", True, 0.0, "{:.2f}", "Fisher",
                            "diverged"),
    "final_val_loss_sd": Measure("stability", "spread across seeds of the final validation loss (SD)", True,
                                 1e-4, test="Brown-Forsythe", column="final_val_loss"),
    "best_test_loss": Measure("final loss", "test loss at the best-validation checkpoint", True, 1e-4),
    "best_test_acc": Measure("final loss", "test accuracy at the best-validation checkpoint", False, 1e-4,
                             "{:.2%}"),
    "final_val_loss": Measure("final loss", "validation loss at the end of training", True, 1e-4),
}
PRIMARY = ("steps_to_level", "spike", "best_test_loss")  # one per criterion, declared before any result
SECONDARY = tuple(m for m in MEASURES if m not in PRIMARY)
PRIMARY_PAIRS = (("batch", "none"), ("layer", "none"), ("batch", "layer"))


# ---------------------------------------------------------------------------------------------
# one comparison, and tables of them

def _group(table, network, condition):
    return table[(table["arch"] == network) & (table["norm"] == condition)]


def horizon(*groups):
    """The planned steps of the runs in these groups (the horizon steps_to_level is censored at), or None."""
    steps = [g["planned_steps"] for g in groups if "planned_steps" in g]
    return float(pd.concat(steps).max()) if steps else None


def compare(ga, gb, name, measure):
    """The numbers of one comparison of two groups of runs (rows of a measures table) on one measure:
    per group n, n diverged (and n reached, for steps), mean and 95% CI; diff = first - second with its
    Welch 95% CI, p of the measure's test, and Hedges' g where stats.effect_size shows one (both groups
    spread above the resolution and overlap, |g| <= 4), else NaN."""
    col = measure.column or name
    a, b = finite(ga[col]), finite(gb[col])
    out = {"n_first": len(a), "diverged_first": int(ga["diverged"].sum()),
           "n_second": len(b), "diverged_second": int(gb["diverged"].sum()),
           "reached_first": int(ga["reached"].sum()) if "reached" in ga and name == "steps_to_level" else None,
           "reached_second": int(gb["reached"].sum()) if "reached" in gb and name == "steps_to_level" else None,
           "test": measure.test, "hedges_g": math.nan, "no_spread": False}
    if measure.test == "Brown-Forsythe":
        s = spread_test(a, b)
        return {**out, "mean_first": s["sd_a"], "lo_first": math.nan, "hi_first": math.nan, "mean_second": s["sd_b"],
                "lo_second": math.nan, "hi_second": math.nan, "diff": s["sd_a"] - s["sd_b"], "diff_lo": math.nan,
                "diff_hi": math.nan, "p": s["p"]}
    if measure.test == "Fisher":
        fa, fb = int(a.sum()), int(b.sum())
        p = stats.fisher_exact([[fa, len(a) - fa], [fb, len(b) - fb]]).pvalue if len(a) and len(b) else math.nan
        ra, rb = fa / len(a) if len(a) else math.nan, fb / len(b) if len(b) else math.nan
        return {**out, "mean_first": ra, "lo_first": math.nan, "hi_first": math.nan, "mean_second": rb,
                "lo_second": math.nan, "hi_second": math.nan, "diff": ra - rb, "diff_lo": math.nan,
                "diff_hi": math.nan, "p": float(p)}
    bounds = metric_bounds(name, horizon(ga, gb))  # the values it can take: its intervals are clipped to them
    ma, loa, hia = mean_ci(a, bounds=bounds)
    mb, lob, hib = mean_ci(b, bounds=bounds)
    diff, lo, hi = welch_ci(a, b)
    w = welch(a, b)
    sd = [x.std(ddof=1) if len(x) > 1 else 0.0 for x in (a, b)]
    # no spread on either side (every run of both conditions at the same value, e.g. a loss that never rose):
    # a test would read a difference of constants as certain, or divide by zero; no verdict is stated
    no_spread = len(a) > 1 and len(b) > 1 and max(sd) <= measure.resolution
    return {**out, "mean_first": ma, "lo_first": loa, "hi_first": hia, "mean_second": mb, "lo_second": lob,
            "hi_second": hib, "diff": diff, "diff_lo": lo, "diff_hi": hi, "p": math.nan if no_spread else w["p"],
            "hedges_g": effect_size(a, b, measure.resolution), "no_spread": no_spread}


NO_SPREAD = "not testable: no spread in either condition"


def verdict_text(first, second, diff, p_decide, n_first, n_second, measure, alpha=ALPHA, no_spread=False):
    """(winner, text): the better condition and "batch norm lower" / "layer norm higher" when p_decide <
    alpha with at least MIN_SEEDS runs a side; ("", NO_SPREAD) when neither condition's runs spread (the
    measure did not vary: nothing to compare); else ("", "not established")."""
    if no_spread:
        return "", NO_SPREAD
    if not (p_decide < alpha) or min(n_first, n_second) < MIN_SEEDS or diff == 0:
        return "", "not established"
    winner = first if (diff < 0) == measure.lower_is_better else second
    return winner, f"{LABELS.get(winner, winner)} {'lower' if measure.lower_is_better else 'higher'}"


def comparison_table(table, measures, pairs, family, networks=None, adjust=True, alpha=ALPHA):
    """One row per network x measure x pair (first, second): the numbers of compare, p_holm (Holm over
    all rows when adjust, else NaN), the verdict from p_holm (adjust) or p, the family's name, and
    `detectable`: the smallest true difference its Welch test finds with 80% power at these runs' spread,
    at the level Holm's first step uses (alpha / family size; alpha when not adjusted); NaN for the tests
    of spreads and rates."""
    networks = list(dict.fromkeys(table["arch"])) if networks is None else list(networks)
    rows = []
    for network in networks:
        for name in measures:
            m = MEASURES[name]
            for first, second in pairs:
                ga, gb = _group(table, network, first), _group(table, network, second)
                if ga.empty or gb.empty:
                    continue
                se, df = welch_se(ga[m.column or name], gb[m.column or name]) if m.test == "Welch" else (math.nan,) * 2
                rows.append({"family": family, "network": network, "criterion": m.criterion, "measure": name,
                             "better": "lower" if m.lower_is_better else "higher", "first": first,
                             "second": second, **compare(ga, gb, name, m), "se": se, "df": df})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"]) if adjust else math.nan
    level = alpha / len(out) if adjust else alpha
    out["detectable"] = [detectable(se, df, level) for se, df in zip(out["se"], out["df"])]
    decide = out["p_holm"] if adjust else out["p"]
    verdicts = [verdict_text(r.first, r.second, r.diff, p, r.n_first, r.n_second, MEASURES[r.measure], alpha,
                             bool(r.no_spread)) for r, p in zip(out.itertuples(), decide)]
    out["winner"] = [w for w, _ in verdicts]
    out["verdict"] = [v for _, v in verdicts]
    out["established"] = out["winner"] != ""
    return out


def primary_table(table, networks=None, alpha=ALPHA):
    """The pre-declared family: PRIMARY measures x PRIMARY_PAIRS x networks, Holm-adjusted over all of it."""
    return comparison_table(table, PRIMARY, PRIMARY_PAIRS, "primary", networks, adjust=True, alpha=alpha)


def exploratory_table(table, conditions=None, networks=None, alpha=ALPHA):
    """Every comparison outside the primary family, unadjusted (family "exploratory: no multiplicity
    control"): SECONDARY measures on every pair of conditions, and PRIMARY measures on the pairs that
    are not PRIMARY_PAIRS (e.g. weight norm vs none). conditions: default every norm in the table."""
    conditions = list(dict.fromkeys(table["norm"])) if conditions is None else list(conditions)
    order = {c: i for i, c in enumerate(("batch", "layer", "weight", "group", "batch+layer", "none"))}
    ranked = sorted(conditions, key=lambda c: order.get(c, len(order) - 1.5))
    pairs = [(a, b) for i, a in enumerate(ranked) for b in ranked[i + 1:]]
    family = "exploratory: no multiplicity control"
    parts = [comparison_table(table, SECONDARY, pairs, family, networks, adjust=False, alpha=alpha),
             comparison_table(table, PRIMARY, [p for p in pairs if p not in PRIMARY_PAIRS], family, networks,
                              adjust=False, alpha=alpha)]
    return pd.concat([p for p in parts if not p.empty], ignore_index=True)


def condition_summary(table, measures=PRIMARY + ("seconds_to_level", "log_loss_auc", "best_test_acc",
                                                 "final_val_loss", "last_quarter_change"), by=("arch", "norm")):
    """Per network x condition x measure: n runs, n diverged, n reached the level (steps only), the mean
    and its 95% CI (for steps: the restricted mean, within [0, horizon]), and the SD across seeds."""
    rows = []
    for key, g in table.groupby(list(by), sort=False):
        for name in (m for m in measures if m in g):
            bounds = metric_bounds(name, horizon(g))
            x = finite(g[name])
            mean, lo, hi = mean_ci(x, bounds=bounds)
            rows.append({**dict(zip(by, key)), "measure": name, "n": len(g), "diverged": int(g["diverged"].sum()),
                         "reached": int(g["reached"].sum()) if name == "steps_to_level" else None,
                         "mean": mean, "lo": lo, "hi": hi, "sd": float(x.std(ddof=1)) if len(x) > 1 else math.nan})
    out = pd.DataFrame(rows)
    return out.astype({"reached": "Int64"}) if len(out) else out


def criterion_correlations(table, measures=PRIMARY):
    """Spearman correlations between measures across all runs of each network: how far the criteria are
    distinct outcomes (with a cosine schedule, speed and final loss are largely one)."""
    return {network: g[list(measures)].corr(method="spearman") for network, g in table.groupby("arch", sort=False)}


# ---------------------------------------------------------------------------------------------
# confirmation on fresh seeds, headlines, winners

KEY = ["network", "measure", "first", "second"]


def confirm(first, fresh, alpha=ALPHA):
    """Merge a primary table with the same table on fresh seeds (and another split). Per comparison:
    "confirmed" when established in `first` and, in `fresh`, of the same sign with a Holm p < alpha, Holm
    over the comparisons established in `first`; "not confirmed" otherwise; "not established" when
    `first` did not establish it. claim: the verdict when confirmed, NO_SPREAD for a measure that did not
    vary in either condition, else "not established"."""
    cols = ["diff", "diff_lo", "diff_hi", "p", "n_first", "diverged_first", "n_second", "diverged_second", "se", "df"]
    cols = [c for c in cols if c in fresh]
    out = first.merge(fresh[KEY + cols].rename(columns={c: c + "_fresh" for c in cols}), on=KEY, how="left")
    family = out["established"].to_numpy(bool)
    out["p_confirm"] = math.nan
    out.loc[family, "p_confirm"] = holm(out.loc[family, "p_fresh"])
    if "se_fresh" in out:  # what the fresh seeds could confirm: 80% power at Holm's first level over the family
        level = alpha / max(1, int(family.sum()))
        out["detectable_fresh"] = [detectable(se, df, level) if f else math.nan
                                   for se, df, f in zip(out["se_fresh"], out["df_fresh"], family)]
    same_sign = np.sign(out["diff_fresh"]) == np.sign(out["diff"])
    ok = family & same_sign.to_numpy(bool) & (out["p_confirm"] < alpha).to_numpy(bool)
    out["confirmation"] = np.where(~family, "not established", np.where(ok, "confirmed", "not confirmed"))
    out["claim"] = np.where(ok | (out["verdict"] == NO_SPREAD).to_numpy(bool), out["verdict"], "not established")
    out["confirmed_winner"] = np.where(ok, out["winner"], "")
    return out


def confirm_runs(first_runs, fresh_runs, alpha=ALPHA):
    """confirm(primary_table(first_runs), primary_table(fresh_runs)) for two measures tables, after
    checking that the fresh runs are fresh: no seed in common, other data-split seeds, and the same
    convergence level (measure the fresh Histories with the first set's levels)."""
    shared = set(first_runs["seed"]) & set(fresh_runs["seed"])
    if shared:
        raise ValueError(f"confirm_runs: seeds {sorted(shared)} are in both sets; the fresh set must be disjoint")
    if "split_seed" in first_runs and set(first_runs["split_seed"]) & set(fresh_runs["split_seed"]):
        raise ValueError("confirm_runs: the fresh set must use another data-split seed")
    levels = [t.groupby("arch")["level"].first() for t in (first_runs, fresh_runs) if "level" in t]
    if len(levels) == 2 and not levels[0].equals(levels[1]):
        raise ValueError("confirm_runs: measure the fresh runs at the first set's convergence levels "
                         "(metrics.measures_table(fresh, levels=...))")
    return confirm(primary_table(first_runs, alpha=alpha), primary_table(fresh_runs, alpha=alpha), alpha)


def headlines(confirmed, network_labels=None):
    """One sentence per confirmed comparison, e.g. "MLP, convergence speed: batch norm lower than no
    normalization on steps to the validation-loss level (restricted mean), -412 [-530, -294] (first seed
    set), confirmed on fresh seeds." Nothing else becomes a headline."""
    network_labels = network_labels or {}
    out = []
    for r in confirmed[confirmed["confirmation"] == "confirmed"].itertuples():
        m = MEASURES[r.measure]
        other = r.second if r.winner == r.first else r.first
        out.append(f"{network_labels.get(r.network, r.network)}, {m.criterion}: {r.verdict} than "
                   f"{LABELS.get(other, other)} on {m.label}, {format_ci(r.diff, r.diff_lo, r.diff_hi, _signed(m))}"
                   f" ({SHORT.get(r.first, r.first)} - {SHORT.get(r.second, r.second)}, first seed set), "
                   "confirmed on fresh seeds.")
    return out


def winners(pairwise, winner_col="winner"):
    """Per network x measure, the condition established better than every other condition it was compared
    with in `pairwise` (a comparison table; winner_col "winner", or "confirmed_winner" of confirm), else
    "": so a condition that fails badly against everyone does not erase the verdicts between the others."""
    rows = []
    for (network, measure), g in pairwise.groupby(["network", "measure"], sort=False):
        conditions = list(dict.fromkeys([*g["first"], *g["second"]]))
        best = ""
        for c in conditions:
            beats = {r.second if r.first == c else r.first for r in g.itertuples()
                     if c in (r.first, r.second) and getattr(r, winner_col) == c}
            if beats == set(conditions) - {c}:
                best = c
        m = MEASURES[measure]
        rows.append({"network": network, "criterion": m.criterion, "measure": measure, "winner": best,
                     "verdict": f"{LABELS.get(best, best)} best" if best else "not established"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# glue values and the reader's table

def _signed(measure):
    return measure.fmt.replace("{:", "{:+")


def _plain(v):
    if v is None:
        return None
    if hasattr(v, "item"):
        v = v.item()
    return v


def values_to_glue(cmp, prefix=""):
    """Plain Python values (float, int, str, bool) of a comparison table for myst-nb glue, per row:
    {prefix}{network}_{measure}_{first}_vs_{second}_ + diff, diff_lo, diff_hi, ci ("-0.031 [-0.045, -0.017]"),
    p, p_holm, n_{c}, diverged_{c}, verdict ("batch norm lower" | "not established"), and, for a merged
    table (confirm), confirmation and claim. Verdict texts are separate from numbers."""
    out = {}
    for r in cmp.to_dict("records"):
        base = f"{prefix}{r['network']}_{r['measure']}_{r['first']}_vs_{r['second']}_"
        m = MEASURES[r["measure"]]
        for k in ("diff", "diff_lo", "diff_hi", "p", "p_holm"):
            out[base + k] = float(r[k])
        out[base + "ci"] = format_ci(r["diff"], r["diff_lo"], r["diff_hi"], _signed(m))
        for side in ("first", "second"):
            out[f"{base}n_{r[side]}"] = int(r[f"n_{side}"])
            out[f"{base}diverged_{r[side]}"] = int(r[f"diverged_{side}"])
        out[base + "verdict"] = str(r["verdict"])
        for k in ("confirmation", "claim"):
            if k in r:
                out[base + k] = str(r[k])
    return {k: _plain(v) for k, v in out.items()}


def summary_values_to_glue(summary, prefix=""):
    """Plain Python values of a condition_summary for glue: {prefix}{arch}_{measure}_{norm} ("mean [lo, hi]"
    in the measure's format), and _mean (float), _n, _diverged and, for steps, _reached (int)."""
    out = {}
    for r in summary.to_dict("records"):
        base = f"{prefix}{r['arch']}_{r['measure']}_{r['norm']}"
        fmt = MEASURES[r["measure"]].fmt if r["measure"] in MEASURES else "{:.3f}"
        out[base] = format_ci(r["mean"], r["lo"], r["hi"], fmt)
        out[base + "_mean"], out[base + "_n"], out[base + "_diverged"] = float(r["mean"]), int(r["n"]), int(r["diverged"])
        if r["reached"] is not None and not pd.isna(r["reached"]):
            out[base + "_reached"] = int(r["reached"])
    return out


def short_verdict(r):
    """ "BN lower" / "not established" / NO_SPREAD: the verdict with short condition names."""
    if not r["winner"]:
        return NO_SPREAD if r["verdict"] == NO_SPREAD else "not established"
    return SHORT.get(r["winner"], r["winner"]) + r["verdict"][len(LABELS.get(r["winner"], r["winner"])):]


SHORT_MEASURES = {"steps_to_level": "steps to the level", "seconds_to_level": "seconds to the level",
                  "log_loss_auc": "area under the val. curve", "spike": "spike (before the best)",
                  "setback": "setback (whole run)", "failure_rate": "share diverged",
                  "final_val_loss_sd": "SD of final val. loss", "best_test_loss": "test loss (best checkpoint)",
                  "best_test_acc": "test accuracy (best checkpoint)", "final_val_loss": "final val. loss"}


def reader_table(cmp):
    """A comparison table for the reader: short headers and names, formatted strings (shown without an
    index). The p column is Holm-adjusted for the primary family ("Holm p") and raw otherwise ("p")."""
    rows = []
    for r in cmp.to_dict("records"):
        m = MEASURES[r["measure"]]
        adjusted = r["family"] == "primary"
        a, b = SHORT.get(r["first"], r["first"]), SHORT.get(r["second"], r["second"])
        p = r["p_holm"] if adjusted else r["p"]
        row = {"network": str(r["network"]).upper(), "criterion": r["criterion"],
               "measure": SHORT_MEASURES.get(r["measure"], r["measure"]), "comparison": f"{a} - {b}",
               "difference [95% CI]": format_ci(r["diff"], r["diff_lo"], r["diff_hi"], _signed(m)),
               "Holm p" if adjusted else "p": "n/a" if not np.isfinite(p) else "< 0.001" if p < 0.001 else f"{p:.3f}",
               "detectable (80% power)": m.fmt.format(r["detectable"]) if np.isfinite(r.get("detectable", math.nan))
               else "n/a",
               "verdict": short_verdict(r), "n (diverged)": f"{r['n_first']} ({r['diverged_first']}), "
                                                            f"{r['n_second']} ({r['diverged_second']})"}
        if "confirmation" in r:
            row["fresh seeds"] = r["confirmation"]
            d = r.get("detectable_fresh", math.nan)
            row["detectable on fresh seeds"] = m.fmt.format(d) if np.isfinite(d) else ""
        rows.append(row)
    return pd.DataFrame(rows)


def reader_winners(won):
    """verdicts.winners for the reader: network, criterion, measure, winner (or "not established")."""
    return pd.DataFrame([{"network": str(r["network"]).upper(), "criterion": r["criterion"],
                          "measure": SHORT_MEASURES.get(r["measure"], r["measure"]), "winner": r["verdict"]}
                         for r in won.to_dict("records")])


def reader_line(r):
    """One comparison as a line: "BN - none: -0.031 [-0.045, -0.017], Holm p = 0.002, BN lower"."""
    t = reader_table(pd.DataFrame([r])).iloc[0]
    name = "Holm p" if "Holm p" in t else "p"
    p = t[name] if t[name].startswith(("<", "n/a")) else f"= {t[name]}"
    return f"{t['comparison']}: {t['difference [95% CI]']}, {name} {p}, {t['verdict']}"
