"""What every study uses: the formats of its numbers, the rows of its family of verdicts, the family
itself, the wording of verdicts, and the small helpers every page function calls.

Verdicts. Each page declares its family of verdicts (`family`): every row a question with the test that
answers it, Holm's adjustment over the family (Holm 1979), the smallest effect its test detects at these
seeds (80% power at the level Holm's first step uses, alpha / m, from the observed spread; for an
equivalence, the smallest margin it could establish), and a verdict worded no stronger than the test:
a difference is "supported" / "contradicted" only with a Holm-adjusted p < 0.05 in the direction the claim
predicts / the opposite one, else "not established"; an equivalence ("flat", "no more than") needs two
one-sided tests within a stated margin (TOST, Schuirmann 1987), else "not established". The effect size
of a difference follows the report's one rule, normlib.stats.effect_size (through `standardized_effect`):
Hedges' g only when both groups spread and overlap (|g| <= 4), else the raw difference and its interval
alone. A run that diverged counts at chance (the failure rule of normlib.metrics.completed_curve), never
dropped.

What the literature reports for a family's key rows, against what its tests detect: normlib.studies.literature.
"""
import math

import numpy as np
import pandas as pd
from scipy import stats

from normlib import metrics, verdicts
from normlib.metrics import CHANCE_ACC, completed_curve, mean_ci
from normlib.report import glue_values
from normlib.stats import (ALPHA, POWER, detectable, detectable_share, finite, holm, mean_se, spread_test, tost,
                           welch_se)
from normlib.train import TrainConfig

NORMS = ("none", "batch", "layer")  # the conditions of every study
RESOLUTION = 1e-9  # a group whose SD is at or below this has no spread: no standardized effect (stats.effect_size)


# ---------------------------------------------------------------------------------------------
# formats: a difference of error rates reads in percentage points

def points(v, signed=True):
    """0.123 -> '+12.3 points' (a difference of two rates), or '12.3%' unsigned (a rate)."""
    if not np.isfinite(v):
        return "n/a"
    return f"{100 * v:+.1f} points" if signed else f"{100 * v:.1f}%"


FORMATS = {  # unit -> (format of a number in an estimate, suffix, format of a level)
    "points": (lambda v: f"{100 * v:+.1f}", " points", lambda v: f"{100 * v:.1f}%"),
    "ratio": (lambda v: f"{v:.3g}", "", lambda v: f"{v:.3g}"),
    "plain": (lambda v: f"{v:+.3g}", "", lambda v: f"{v:.3g}"),
    "loss": (lambda v: f"{v:+.3f}", "", lambda v: f"{v:.3f}"),
}


def estimate_text(est, lo, hi, unit):
    """'+12.3 [+9.8, +14.8] points': an estimate and its interval in the unit's format."""
    f, suffix, _ = FORMATS[unit]
    if not np.isfinite(est):
        return "n/a"
    interval = f" [{f(lo)}, {f(hi)}]" if np.isfinite(lo) and np.isfinite(hi) else ""
    return f"{f(est)}{interval}{suffix}"


def margin_text(m, unit="points"):
    """A margin on a difference: '3.0 points', or the number."""
    return f"{100 * m:.1f} points" if unit == "points" else f"{m:.3g}"


def level_text(values, unit="points"):
    """Mean and 95% interval of a sample, in a unit's level format: '12.3% [10.1%, 14.5%]'."""
    m, lo, hi = mean_ci(values)
    f = FORMATS[unit][2]
    if not np.isfinite(m):
        return "n/a"
    return f(m) + (f" [{f(lo)}, {f(hi)}]" if np.isfinite(lo) else "")


def list_text(values, fmt="{:g}"):
    """'2, 4 and 8', or 'none'."""
    items = [fmt.format(v) for v in values]
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def p_text(p):
    """'= 0.012', '< 0.001' or 'n/a'."""
    return "n/a" if not np.isfinite(p) else "< 0.001" if p < 0.001 else f"= {p:.3f}"


# ---------------------------------------------------------------------------------------------
# the rows of a family of verdicts

def standardized_effect(a, b):
    """The comparison of two samples behind a difference row, and the one rule for its effect size:
    mean(a) - mean(b) with its Welch 95% interval and Welch's p (normlib.verdicts.compare), Hedges' g only
    where normlib.stats.effect_size shows one (both samples spread, SD above RESOLUTION, and overlap, |g| <= 4),
    else NaN. Keys: diff, diff_lo, diff_hi, p, hedges_g, n_first, n_second (finite values of a and b)."""
    ga, gb = (pd.DataFrame({"value": finite(x), "diverged": False}) for x in (a, b))
    return verdicts.compare(ga, gb, "value", verdicts.Measure("", "", True, RESOLUTION, column="value"))


def difference(key, question, a, b, *, predicted=1, unit="points", names=("first", "second")):
    """mean(a) - mean(b) with its Welch 95% interval and p, and its effect size (standardized_effect);
    predicted: the sign the claim predicts (+1 or -1)."""
    c = standardized_effect(a, b)
    se, df = welch_se(a, b)
    return {"key": key, "question": question, "test": "Welch t-test", "kind": "difference", "estimate": c["diff"],
            "lo": c["diff_lo"], "hi": c["diff_hi"], "p": c["p"], "n": f"{c['n_first']} vs {c['n_second']}",
            "n_min": min(c["n_first"], c["n_second"]), "predicted": predicted, "unit": unit, "margin": math.nan,
            "hedges_g": c["hedges_g"], "names": names, **power_fields("two-sided", se, df)}


def equivalence(key, question, a, b, margin, *, unit="points", names=("first", "second")):
    """mean(a) - mean(b) within +-margin: TOST, its p and the 90% Welch interval."""
    t = tost(a, b, margin)
    na, nb = len(finite(a)), len(finite(b))
    return {"key": key, "question": question, "test": f"TOST, margin ±{margin_text(margin, unit)}",
            "kind": "equivalence", "estimate": t["diff"], "lo": t["lo"], "hi": t["hi"], "p": t["p"],
            "n": f"{na} vs {nb}", "n_min": min(na, nb), "predicted": 0, "unit": unit, "margin": margin,
            "hedges_g": math.nan, "names": names, **power_fields("equivalence", *welch_se(a, b))}


def noninferior(key, question, a, b, margin, *, unit="points", lower_is_better=True, names=("first", "second")):
    """a no worse than b by more than margin: one of TOST's one-sided tests (H0: a is worse by margin or more)."""
    t = tost(a, b, margin)
    na, nb = len(finite(a)), len(finite(b))
    return {"key": key, "question": question, "test": f"non-inferiority, margin {margin_text(margin, unit)}",
            "kind": "noninferior", "estimate": t["diff"], "lo": t["lo"], "hi": t["hi"],
            "p": t["p_upper"] if lower_is_better else t["p_lower"], "n": f"{na} vs {nb}", "n_min": min(na, nb),
            "predicted": -1 if lower_is_better else 1, "unit": unit, "margin": margin, "hedges_g": math.nan,
            "names": names, **power_fields("one-sided", *welch_se(a, b))}


def paired(key, question, a, b, *, predicted=1, unit="points"):
    """mean(a - b) over pairs measured on the same runs: paired t-test, 95% interval."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    est, lo, hi = mean_ci(d)
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) > 1 and np.ptp(d) > 0 else math.nan
    return {"key": key, "question": question, "test": "paired t-test", "kind": "difference", "estimate": est,
            "lo": lo, "hi": hi, "p": p, "n": f"{len(d)} runs", "n_min": len(d), "predicted": predicted,
            "unit": unit, "margin": math.nan, "hedges_g": math.nan, "names": ("", ""), **power_fields("two-sided", *mean_se(d))}


def spread(key, question, a, b, *, predicted=1, unit="points"):
    """SD(a) - SD(b) with the Brown-Forsythe test of equal spread."""
    s = spread_test(a, b)
    na, nb = len(finite(a)), len(finite(b))
    return {"key": key, "question": question, "test": "Brown-Forsythe", "kind": "difference",
            "estimate": s["sd_a"] - s["sd_b"], "lo": math.nan, "hi": math.nan, "p": s["p"], "n": f"{na} vs {nb}",
            "n_min": min(na, nb), "predicted": predicted, "unit": unit, "margin": math.nan, "hedges_g": math.nan,
            "names": ("", ""), **power_fields("none", math.nan, math.nan)}


def shares(key, question, a, b, *, predicted=1):
    """The share of successes (booleans, e.g. runs that train) in a against b: Fisher's exact test, one-sided
    in the predicted direction (+1: a higher), declared before the runs; the estimate is the difference of
    shares, in points."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    table = [[int(a.sum()), len(a) - int(a.sum())], [int(b.sum()), len(b) - int(b.sum())]]
    p = (stats.fisher_exact(table, alternative="greater" if predicted > 0 else "less").pvalue
         if len(a) and len(b) else math.nan)
    est = a.mean() - b.mean() if len(a) and len(b) else math.nan
    return {"key": key, "question": question, "test": "Fisher's exact test, one-sided", "kind": "difference",
            "estimate": float(est), "lo": math.nan, "hi": math.nan, "p": float(p), "n": f"{len(a)} vs {len(b)} runs",
            "n_min": min(len(a), len(b)), "predicted": predicted, "unit": "points", "margin": math.nan,
            "hedges_g": math.nan, "names": ("", ""), "power_kind": "shares", "se": math.nan, "df": math.nan,
            "shares": (len(a), len(b), float(b.mean()) if len(b) else math.nan)}


def power_fields(kind, se, df):
    """What family() needs to state the smallest effect the row's test detects (stats.detectable)."""
    return {"power_kind": kind, "se": se, "df": df, "shares": None}


def per_seed_differences(table, measure, norm, other, where):
    """measure(norm) - measure(other) seed by seed, at the rows matching `where` (a difference of two
    independent runs per seed: the seed fixes nothing they share, it only pairs them)."""
    t = table
    for k, v in where.items():
        t = t[t[k] == v]
    a = t[t["norm"] == norm].set_index("seed")[measure]
    b = t[t["norm"] == other].set_index("seed")[measure]
    return (a - b).dropna().tolist()


# ---------------------------------------------------------------------------------------------
# the family, for the reader and for glue

def family(rows, alpha=ALPHA):
    """The rows (difference / equivalence / noninferior / paired / spread) as one family: Holm-adjusted p
    over all of them, and per row the verdict ("supported", "contradicted", "not established") and a
    sentence with the estimate and the test."""
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    t["p_holm"] = holm(t["p"])
    t["family_size"] = len(t)  # Holm's first level is alpha / family_size
    t["detectable"] = [_detectable(r, alpha / len(t)) for r in t.itertuples()]
    words, texts = [], []
    for r in t.itertuples():
        est = estimate_text(r.estimate, r.lo, r.hi, r.unit)
        ok = r.n_min >= metrics.MIN_SEEDS and r.p_holm < alpha
        if r.n_min < metrics.MIN_SEEDS:
            word, why = "not established", f"{r.n_min} finite result(s) on one side; a test needs {metrics.MIN_SEEDS}"
        elif r.kind in ("equivalence", "noninferior"):
            word = "supported" if ok else "not established"
            why = f"{est} (90% interval), {r.test}, Holm p {p_text(r.p_holm)}"
        else:
            sign = np.sign(r.estimate) if np.isfinite(r.estimate) else 0
            word = ("supported" if sign == r.predicted else "contradicted") if ok and sign else "not established"
            g = f", Hedges' |g| = {abs(r.hedges_g):.2f}" if np.isfinite(r.hedges_g) else ""
            why = f"{est}, {r.test}, Holm p {p_text(r.p_holm)}{g}"
        words.append(word)
        texts.append(f"{word} ({why})")
    t["verdict"], t["text"] = words, texts
    return t


def _detectable(r, alpha):
    """The smallest effect the row's test detects with POWER at level alpha (NaN for a test of spreads)."""
    if r.power_kind == "none":
        return math.nan
    if r.power_kind == "shares":
        return detectable_share(*r.shares, alpha=alpha)
    return detectable(r.se, r.df, alpha, kind=r.power_kind)


def detectable_text(value, unit, kind="two-sided"):
    """'12.3 points' (a difference), '±12.3 points' (an equivalence margin), or 'n/a'."""
    if not np.isfinite(value):
        return "n/a"
    f, suffix, _ = FORMATS[unit]
    return ("±" if kind == "equivalence" else "") + f(value).lstrip("+") + suffix


def family_table(fam):
    """A family for the reader: question, test, estimate [95% CI, or 90% for TOST], n, p, Holm p, the
    smallest effect its test detects at these seeds, verdict."""
    return pd.DataFrame([{"question": r.question, "test": r.test,
                          "estimate [interval]": estimate_text(r.estimate, r.lo, r.hi, r.unit), "n": r.n,
                          "p": p_text(r.p).replace("= ", ""), "Holm p": p_text(r.p_holm).replace("= ", ""),
                          f"detectable ({POWER:.0%} power)": detectable_text(r.detectable, r.unit, r.power_kind),
                          "verdict": r.verdict} for r in fam.itertuples()])


def detectable_sentence(fam, listed=8):
    """One line for the page: what its tests can detect at these seeds, row by row for up to `listed` rows, else
    the range per unit (the family table has each). The level is each family's alpha / m (a page may join
    several families, each Holm-adjusted over itself)."""
    rows = [r for r in fam.itertuples() if np.isfinite(r.detectable)]
    if not rows:
        return "no test of this page has a stated power (tests of spread only)"
    sizes = sorted({int(m) for m in fam.get("family_size", [len(fam)])}, reverse=True)
    level = f"{ALPHA:g} / {sizes[0]}" if len(sizes) == 1 else f"{ALPHA:g} / m, m = {list_text(sizes)} in its family"
    if len(rows) <= listed:
        parts = [f"{r.question}: {detectable_text(r.detectable, r.unit, r.power_kind)}" for r in rows]
    else:
        parts = []
        for unit in dict.fromkeys(r.unit for r in rows):
            for kinds in (("equivalence",), ("two-sided", "one-sided", "shares")):
                x = [r for r in rows if r.unit == unit and r.power_kind in kinds]
                if x:
                    lo, hi = min(x, key=lambda r: r.detectable), max(x, key=lambda r: r.detectable)
                    parts.append(f"{detectable_text(lo.detectable, unit, lo.power_kind)} to "
                                 f"{detectable_text(hi.detectable, unit, hi.power_kind)} ({len(x)} tests"
                                 f"{', margins' if kinds == ('equivalence',) else ''}{UNIT_WORDS.get(unit, '')})")
        parts[-1] += "; the table gives each test's"
    return (f"with {POWER:.0%} power at the level Holm's first step uses ({level}), from the spread "
            f"observed across seeds, these tests detect true effects of at least: " + "; ".join(parts))


UNIT_WORDS = {"plain": ", in the unit of the measure", "loss": ", in loss", "ratio": ""}


def glue_family(fam, prefix=""):
    """Glue each row: {key} the verdict sentence, {key}_verdict the word, {key}_estimate the estimate,
    {key}_detectable the smallest effect its test detects; and n_verdicts, n_supported, detectable_text."""
    for r in fam.itertuples():
        glue_values({f"{prefix}{r.key}": r.text, f"{prefix}{r.key}_verdict": r.verdict,
                     f"{prefix}{r.key}_estimate": estimate_text(r.estimate, r.lo, r.hi, r.unit),
                     f"{prefix}{r.key}_detectable": detectable_text(r.detectable, r.unit, r.power_kind)})
    glue_values({f"{prefix}n_verdicts": len(fam), f"{prefix}n_supported": int((fam["verdict"] == "supported").sum()),
                 f"{prefix}detectable_text": detectable_sentence(fam)})


def outcome(supporting, contradicting, yes="supported for", no="contradicted for"):
    """One verdict over several cases from those where it was established to hold / to fail."""
    if supporting and contradicting:
        return f"mixed: {yes} {list_text(supporting, '{}')}; {no} {list_text(contradicting, '{}')}"
    if supporting:
        return f"{yes} {list_text(supporting, '{}')}"
    if contradicting:
        return f"{no} {list_text(contradicting, '{}')}"
    return "not established: no difference is established by these seeds"


def claim_words(fam, prefix, cases, yes, no):
    """One sentence over the rows whose key starts with prefix: the cases (key suffix -> words) supported,
    contradicted and not established, e.g. "supported for A; not established for B"."""
    got = {r.key[len(prefix):]: r.verdict for r in fam.itertuples() if r.key.startswith(prefix)}
    sup = [w for k, w in cases.items() if got.get(k) == "supported"]
    con = [w for k, w in cases.items() if got.get(k) == "contradicted"]
    rest = [w for k, w in cases.items() if k in got and got[k] == "not established"]
    if not (sup or con):
        return f"not established for any case ({list_text(rest, '{}')})" if rest else "not established"
    parts = ([f"{yes} {list_text(sup, '{}')}"] if sup else []) + ([f"{no} {list_text(con, '{}')}"] if con else [])
    return "; ".join(parts + ([f"not established for {list_text(rest, '{}')}"] if rest else []))


# ---------------------------------------------------------------------------------------------
# what every page function calls

def config(P, **fixed):
    """A TrainConfig from the parameters the studies share (names of TrainConfig found in P), with `fixed`."""
    names = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{**{k: (tuple(v) if isinstance(v, list) else v) for k, v in P.items() if k in names},
                          **fixed})


def final_error(h):
    """1 - the last validation accuracy under the failure rule (a failed run: 90%, chance)."""
    c = completed_curve(h)
    return 1 - float(c.val_acc[-1]) if len(c.val_acc) else 1 - CHANCE_ACC


def runs_text(results):
    """'12 trials, 3.4 minutes of training'."""
    n = len(results)
    return f"{n} trials, {sum(r.history.wall_time for r in results) / 60:.1f} minutes of training"


def seed_count(P):
    """The glue value every page states: n_seeds, the number of seeds in P."""
    return {"n_seeds": len(P["seeds"])}
