"""The studies beyond the assignment, one function per page (`*_page(P)`: run the page's trials, glue its
numbers, verdicts and figures, return the tables it shows), the trials of each, and the verdicts.

- Batch size (Wu & He 2018, Fig. 1): equal examples per run, the learning rate scaled linearly, batch
  sizes up to where the no-normalization control still trains; batch norm evaluated with its running
  statistics and with the statistics of batches (the train/test discrepancy).
- Learning rate (Ioffe & Szegedy 2015, sec. 3.3): the main comparison's tuning runs, extended to higher
  rates; a rate "trains" when the run reaches a stated validation accuracy.
- Initialization scale (cs231n assignment 2), with what explains the failures: weight norms, the
  effective step of scale-invariant layers, and the norms' epsilon against the variance of their input.
- Activation drift (Ioffe & Szegedy 2015, Fig. 1b-c): the input *to* the normalization over training,
  beside the sigmoid's input (which the normalization fixes by construction).
- Loss landscape (Santurkar et al. 2018, Fig. 4).
- A tutorial's claims: normalization before the activation and gradient issues, batch and layer norm
  together, batch sizes, sigmoid and tanh, regularization, recurrent networks.

Verdicts. Each page declares its family of verdicts (`family`): every row a question with the test that
answers it, Holm's adjustment over the family (Holm 1979), and a verdict worded no stronger than the test:
a difference is "supported" / "contradicted" only with a Holm-adjusted p < 0.05 in the direction the claim
predicts / the opposite one, else "not established"; an equivalence ("flat", "no more than") needs two
one-sided tests within a stated margin (TOST, Schuirmann 1987), else "not established". Hedges' g is given
only when both groups spread (normlib.verdicts.compare). A run that diverged counts at chance (the
failure rule of normlib.metrics.completed_curve), never dropped.
"""
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy import stats

from normlib import figures, metrics, verdicts
from normlib.figures import norm_label
from normlib.metrics import CHANCE_ACC, completed_curve, mean_ci
from normlib.report import glue_figure, glue_value, glue_values
from normlib.train import TrainConfig
from normlib.trials import run_trials, trial

NORMS = ("none", "batch", "layer")
ALPHA = verdicts.ALPHA
BASE_BATCH = 32  # the batch size at which the batch-size study's base_lr is the learning rate




def _n(P):
    return {"n_seeds": len(P["seeds"])}


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


def _finite(values):
    x = np.asarray([v for v in values if v is not None], dtype=float)
    return x[np.isfinite(x)]


# ---------------------------------------------------------------------------------------------
# the rows of a family of verdicts

def difference(key, question, a, b, *, predicted=1, unit="points", names=("first", "second")):
    """mean(a) - mean(b) with its Welch 95% interval and p (normlib.verdicts.compare, Hedges' g only when
    both spread); predicted: the sign the claim predicts (+1 or -1)."""
    ga, gb = (pd.DataFrame({"value": _finite(x), "diverged": False}) for x in (a, b))
    c = verdicts.compare(ga, gb, "value", verdicts.Measure("", "", True, 1e-9, column="value"))
    return {"key": key, "question": question, "test": "Welch t-test", "kind": "difference", "estimate": c["diff"],
            "lo": c["diff_lo"], "hi": c["diff_hi"], "p": c["p"], "n": f"{c['n_first']} vs {c['n_second']}",
            "n_min": min(c["n_first"], c["n_second"]), "predicted": predicted, "unit": unit, "margin": math.nan,
            "hedges_g": c["hedges_g"], "names": names}


def equivalence(key, question, a, b, margin, *, unit="points", names=("first", "second")):
    """mean(a) - mean(b) within +-margin: TOST, its p and the 90% Welch interval."""
    t = verdicts.tost(a, b, margin)
    na, nb = len(_finite(a)), len(_finite(b))
    return {"key": key, "question": question, "test": f"TOST, margin ±{margin_text(margin, unit)}",
            "kind": "equivalence", "estimate": t["diff"], "lo": t["lo"], "hi": t["hi"], "p": t["p"],
            "n": f"{na} vs {nb}", "n_min": min(na, nb), "predicted": 0, "unit": unit, "margin": margin,
            "hedges_g": math.nan, "names": names}


def noninferior(key, question, a, b, margin, *, unit="points", lower_is_better=True, names=("first", "second")):
    """a no worse than b by more than margin: one of TOST's one-sided tests (H0: a is worse by margin or more)."""
    t = verdicts.tost(a, b, margin)
    na, nb = len(_finite(a)), len(_finite(b))
    return {"key": key, "question": question, "test": f"non-inferiority, margin {margin_text(margin, unit)}",
            "kind": "noninferior", "estimate": t["diff"], "lo": t["lo"], "hi": t["hi"],
            "p": t["p_upper"] if lower_is_better else t["p_lower"], "n": f"{na} vs {nb}", "n_min": min(na, nb),
            "predicted": -1 if lower_is_better else 1, "unit": unit, "margin": margin, "hedges_g": math.nan,
            "names": names}


def paired(key, question, a, b, *, predicted=1, unit="points"):
    """mean(a - b) over pairs measured on the same runs: paired t-test, 95% interval."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    est, lo, hi = mean_ci(d)
    p = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) > 1 and np.ptp(d) > 0 else math.nan
    return {"key": key, "question": question, "test": "paired t-test", "kind": "difference", "estimate": est,
            "lo": lo, "hi": hi, "p": p, "n": f"{len(d)} runs", "n_min": len(d), "predicted": predicted,
            "unit": unit, "margin": math.nan, "hedges_g": math.nan, "names": ("", "")}


def spread(key, question, a, b, *, predicted=1, unit="points"):
    """SD(a) - SD(b) with the Brown-Forsythe test of equal spread."""
    s = verdicts.spread_test(a, b)
    na, nb = len(_finite(a)), len(_finite(b))
    return {"key": key, "question": question, "test": "Brown-Forsythe", "kind": "difference",
            "estimate": s["sd_a"] - s["sd_b"], "lo": math.nan, "hi": math.nan, "p": s["p"], "n": f"{na} vs {nb}",
            "n_min": min(na, nb), "predicted": predicted, "unit": unit, "margin": math.nan, "hedges_g": math.nan,
            "names": ("", "")}


def per_seed_differences(table, measure, norm, other, where):
    """measure(norm) - measure(other) seed by seed, at the rows matching `where` (a difference of two
    independent runs per seed: the seed fixes nothing they share, it only pairs them)."""
    t = table
    for k, v in where.items():
        t = t[t[k] == v]
    a = t[t["norm"] == norm].set_index("seed")[measure]
    b = t[t["norm"] == other].set_index("seed")[measure]
    return (a - b).dropna().tolist()


def family(rows, alpha=ALPHA):
    """The rows (difference / equivalence / noninferior / paired / spread) as one family: Holm-adjusted p
    over all of them, and per row the verdict ("supported", "contradicted", "not established") and a
    sentence with the estimate and the test."""
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    t["p_holm"] = verdicts.holm(t["p"])
    words, texts = [], []
    for r in t.itertuples():
        est = estimate_text(r.estimate, r.lo, r.hi, r.unit)
        ok = r.n_min >= metrics.MIN_SEEDS and r.p_holm < alpha
        if r.n_min < metrics.MIN_SEEDS:
            word, why = "not established", f"{r.n_min} finite result(s) on one side; a test needs {metrics.MIN_SEEDS}"
        elif r.kind in ("equivalence", "noninferior"):
            word = "supported" if ok else "not established"
            why = f"{est} (90% interval), {r.test}, Holm p {_p(r.p_holm)}"
        else:
            sign = np.sign(r.estimate) if np.isfinite(r.estimate) else 0
            word = ("supported" if sign == r.predicted else "contradicted") if ok and sign else "not established"
            g = f", Hedges' |g| = {abs(r.hedges_g):.2f}" if np.isfinite(r.hedges_g) else ""
            why = f"{est}, {r.test}, Holm p {_p(r.p_holm)}{g}"
        words.append(word)
        texts.append(f"{word} ({why})")
    t["verdict"], t["text"] = words, texts
    return t


def _p(p):
    return "n/a" if not np.isfinite(p) else "< 0.001" if p < 0.001 else f"= {p:.3f}"


def family_table(fam):
    """A family for the reader: question, test, estimate [95% CI, or 90% for TOST], n, p, Holm p, verdict."""
    return pd.DataFrame([{"question": r.question, "test": r.test,
                          "estimate [interval]": estimate_text(r.estimate, r.lo, r.hi, r.unit), "n": r.n,
                          "p": _p(r.p).replace("= ", ""), "Holm p": _p(r.p_holm).replace("= ", ""),
                          "verdict": r.verdict} for r in fam.itertuples()])


def glue_family(fam, prefix=""):
    """Glue each row: {key} the verdict sentence, {key}_verdict the word, {key}_estimate the estimate;
    and n_verdicts, n_supported."""
    for r in fam.itertuples():
        glue_values({f"{prefix}{r.key}": r.text, f"{prefix}{r.key}_verdict": r.verdict,
                     f"{prefix}{r.key}_estimate": estimate_text(r.estimate, r.lo, r.hi, r.unit)})
    glue_values({f"{prefix}n_verdicts": len(fam), f"{prefix}n_supported": int((fam["verdict"] == "supported").sum())})


def list_text(values, fmt="{:g}"):
    """'2, 4 and 8', or 'none'."""
    items = [fmt.format(v) for v in values]
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _final_error(h):
    """1 - the last validation accuracy under the failure rule (a failed run: 90%, chance)."""
    c = completed_curve(h)
    return 1 - float(c.val_acc[-1]) if len(c.val_acc) else 1 - CHANCE_ACC


def _runs_text(results):
    n = len(results)
    return f"{n} trials, {sum(r.history.wall_time for r in results) / 60:.1f} minutes of training"


def _config(P, **fixed):
    """A TrainConfig from the parameters the studies share (names of TrainConfig found in P), with `fixed`."""
    names = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{**{k: (tuple(v) if isinstance(v, list) else v) for k, v in P.items() if k in names},
                          **fixed})


# ---------------------------------------------------------------------------------------------
# batch size

def batch_size_trials(P):
    """norm x batch size x seed; lr = base_lr * batch / 32 (Goyal et al. 2017) and `epochs` passes over
    `train_size` images at every batch size (equal examples); each trial evaluates batch norm's
    statistics three ways at the end (probes.BatchStatsProbe)."""
    return [trial(_config(P, norm=norm, batch_size=bs, lr=P["base_lr"] * bs / BASE_BATCH, seed=seed,
                          hidden=tuple(P["hidden"])), "batch_stats")
            for norm in NORMS for bs in sorted(P["batch_sizes"]) for seed in P["seeds"]]


def batch_size_table(results):
    """One row per run: validation error (running statistics, failure rule), with batch statistics of
    the training batch size and with population statistics (NaN for a failed run), setback, steps."""
    rows = []
    for r in results:
        h, c = r.history, completed_curve(r.history)
        probe = r.probe or {}
        err = lambda mode: 1 - probe[mode]["acc"] if mode in probe and not c.failed else math.nan  # noqa: E731
        rows.append({"norm": h.config["norm"], "batch_size": h.config["batch_size"], "seed": h.config["seed"],
                     "lr": h.config["lr"], "steps": c.planned, "val_error": _final_error(h),
                     "batch_stats_error": err("batch"), "population_error": err("population"),
                     "setback": metrics.setback(c), "diverged": c.failed})
    return pd.DataFrame(rows)


def batch_size_family(table, margin):
    """The page's verdicts: batch norm's rise at the smallest batch beyond the control's (difference in
    differences), layer norm's flatness relative to the control (TOST within margin), and the mechanism
    (batch norm at the smallest batch: running minus batch statistics, paired)."""
    small, large = int(table["batch_size"].min()), int(table["batch_size"].max())
    did = {n: (per_seed_differences(table, "val_error", n, "none", {"batch_size": small}),
               per_seed_differences(table, "val_error", n, "none", {"batch_size": large})) for n in ("batch", "layer")}
    bn = table[(table["norm"] == "batch") & (table["batch_size"] == small)]
    return family([
        difference("bs_bn_collapse", f"batch norm's error rises from batch {large} to {small} more than the "
                   "control's (difference in differences)", *did["batch"], predicted=1),
        equivalence("bs_ln_flat", f"layer norm's error changes from batch {large} to {small} as the control's "
                    "does (difference in differences within the margin)", *did["layer"], margin),
        paired("bs_bn_mechanism", f"batch norm at batch {small}: error with running statistics minus error with "
               "the statistics of batches of its training size", bn["val_error"], bn["batch_stats_error"]),
    ])


def batch_size_summary(table):
    """Per norm and batch size: learning rate, steps, errors (running, batch statistics) and setback."""
    rows = []
    for (norm, bs), g in table.groupby(["norm", "batch_size"], sort=False):
        rows.append({"condition": norm_label(norm), "batch size": int(bs), "learning rate": f"{g['lr'].iloc[0]:.3g}",
                     "steps": int(g["steps"].iloc[0]), "validation error": level_text(g["val_error"]),
                     "with batch statistics": level_text(g["batch_stats_error"]) if norm == "batch" else "same",
                     "setback": level_text(g["setback"], "plain"),
                     "diverged": f"{int(g['diverged'].sum())} of {len(g)}"})
    return pd.DataFrame(rows)


def batch_size_page(P):
    """The batch-size page: trials, verdicts (glued with bs_*), the control's range, figures
    fig_batch_size and fig_bn_statistics. Returns SimpleNamespace(verdicts, summary, table)."""
    results = run_trials(batch_size_trials(P), workers=P["workers"], force=P["force"])
    table = batch_size_table(results)
    fam = batch_size_family(table, P["margin"])
    glue_family(fam)
    small, large = int(table["batch_size"].min()), int(table["batch_size"].max())
    means = table.groupby(["norm", "batch_size"])["val_error"].mean()
    glue_values({**_n(P), "bs_small": small, "bs_large": large, "bs_list": list_text(sorted(P["batch_sizes"])),
                 "bs_examples": P["epochs"] * (P["train_size"] or 55_000), "bs_margin": margin_text(P["margin"]),
                 "bs_steps_small": int(table[table["batch_size"] == small]["steps"].iloc[0]),
                 "bs_steps_large": int(table[table["batch_size"] == large]["steps"].iloc[0]),
                 "bs_control_range": margin_text(float(means["none"].max() - means["none"].min())),
                 "bs_runs": _runs_text(results), "bs_n_diverged": int(table["diverged"].sum()),
                 **{f"bs_{n}_{end}": level_text(table[(table["norm"] == n) & (table["batch_size"] == bs)]["val_error"])
                    for n in NORMS for end, bs in (("small", small), ("large", large))},
                 **{f"bs_bn_{mode}_small": level_text(table[(table["norm"] == "batch") & (table["batch_size"] == small)]
                                                      [f"{mode}_error"])
                    for mode in ("batch_stats", "population")}})
    glue_figure("fig_batch_size", figures.sweep(table, "batch_size", "val_error", diverged="diverged",
                                                xlabel="batch size (examples per step)",
                                                ylabel="final validation error"))
    glue_figure("fig_bn_statistics", figures.statistics_modes(table[table["norm"] == "batch"]))
    return SimpleNamespace(verdicts=family_table(fam), summary=batch_size_summary(table), table=table, family=fam)


# ---------------------------------------------------------------------------------------------
# learning rate: the main comparison's tuning runs, extended to higher rates

def learning_rate_configs(P):
    """(configs, protocol, n shared): the first rung of the tuning of steps 1 and 3 (their records' protocols,
    Protocol.rung: every rate of the grid at the first budget of successive halving, on the tuning seeds) for
    none, batch and layer norm on P["arch"], and the extra rates (extra_lrs) at the same budget on the tuning
    seeds and the extra seeds (extra_seeds: the test of higher rates is decided there)."""
    from normlib.protocol import read_record
    protos = {n: read_record(source)[0] for n, source in (("batch", "step1_bn_training"), ("layer", "step3_ln_training"))}
    proto = protos["batch"]
    budget = proto.tuning_budgets[0]
    grid = sorted(set(proto.lrs) | set(P["extra_lrs"]))
    seeds = lambda lr: list(dict.fromkeys([*proto.tuning_seeds, *(P["extra_seeds"] if lr not in proto.lrs else [])]))  # noqa: E731
    configs = [protos.get(norm, proto).config(P["arch"], norm, lr, seed, budget=budget) for norm in NORMS
               for lr in grid for seed in seeds(lr)]
    tuned = {c for norm, p in (("none", proto), ("batch", proto), ("layer", protos["layer"]))
             for c in p.rung({(P["arch"], norm): p.lrs}, p.tuning_budgets[0])}
    return configs, proto, sum(c in tuned for c in configs)


def learning_rate_table(histories, threshold):
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


def learning_rate_findings(table, margin):
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


def learning_rate_family(table, extra_lrs):
    """The pre-declared test of 'higher learning rates': over the extra rates (above the main grid), the
    share of runs that train, each norm against the control (Fisher's exact test, one-sided in the direction
    the claim predicts, declared before the runs; Holm over the two)."""
    ext = table[table["lr"].isin(extra_lrs)]
    rows = []
    for norm in ("batch", "layer"):
        a, b = ext[ext["norm"] == norm]["trains"], ext[ext["norm"] == "none"]["trains"]
        p = stats.fisher_exact([[int(a.sum()), len(a) - int(a.sum())], [int(b.sum()), len(b) - int(b.sum())]],
                               alternative="greater").pvalue if len(a) and len(b) else math.nan
        rows.append({"key": f"lr_higher_{norm}", "question": f"at the rates above the main grid, {norm_label(norm)} "
                     "trains in more runs than no normalization", "test": "Fisher's exact test, one-sided", "kind": "difference",
                     "estimate": a.mean() - b.mean() if len(a) and len(b) else math.nan, "lo": math.nan,
                     "hi": math.nan, "p": float(p), "n": f"{len(a)} vs {len(b)} runs", "n_min": min(len(a), len(b)),
                     "predicted": 1, "unit": "points", "margin": math.nan, "hedges_g": math.nan, "names": ("", "")})
    return family(rows)


def learning_rate_page(P):
    """The learning-rate page. Glues lr_* (per norm: best rate, rates near it, usable rates, their top,
    failed and stuck runs), the family, n_shared / n_trials, the figure fig_learning_rate."""
    configs, proto, shared = learning_rate_configs(P)
    results = run_trials(configs, workers=P["workers"], force=P["force"])
    table = learning_rate_table([r.history for r in results], P["acc_threshold"])
    fam = learning_rate_family(table, P["extra_lrs"])
    glue_family(fam)
    glue_values({**learning_rate_findings(table, P["lr_margin"]), "n_trials": len(results), "n_shared": shared,
                 "n_seeds": int(table.groupby(["norm", "lr"]).size().min()),
                 "n_seeds_extra": int(table[table["lr"].isin(P["extra_lrs"])].groupby(["norm", "lr"]).size().min()),
                 "lr_steps": int(table["steps"].max()),
                 "lr_grid": list_text(sorted(table["lr"].unique())), "lr_extra": list_text(sorted(P["extra_lrs"])),
                 "lr_threshold": points(P["acc_threshold"], False), "lr_margin": margin_text(P["lr_margin"]),
                 "lr_runs": _runs_text(results), "lr_batch_size": proto.batch_size,
                 "lr_train_size": proto.train_size or 55_000})
    glue_figure("fig_learning_rate", figures.sweep(table, "lr", "final_val_acc", diverged="failed",
                                                   xlabel="learning rate (peak of the cosine schedule)",
                                                   ylabel="final validation accuracy", hline=P["acc_threshold"]))
    summary = pd.DataFrame([{"condition": norm_label(n), "learning rate": f"{lr:g}",
                             "final validation accuracy": level_text(g["final_val_acc"]),
                             "runs that train": f"{int(g['trains'].sum())} of {len(g)}",
                             "diverged": int(g["failed"].sum()), "stuck at chance": int(g["stuck"].sum())}
                            for (n, lr), g in table.groupby(["norm", "lr"], sort=False)])
    return SimpleNamespace(verdicts=family_table(fam), summary=summary, table=table, family=fam)


# ---------------------------------------------------------------------------------------------
# initialization scale, and why it fails where it fails

def init_scale_trials(P):
    """norm x scale x seed of a deep MLP (depth hidden layers of 50), probed for weight norms, effective
    steps and the variance of the norms' inputs; and, at the scales up to small_scale, batch and layer norm
    with each epsilon of eps_values (the default epsilon's runs are the sweep's own)."""
    base = _config(P, hidden=(50,) * P["depth"], evals_per_epoch=1)
    sweep = [replace(base, norm=n, init_scale=s, seed=seed) for n in NORMS for s in sorted(P["init_scales"])
             for seed in P["seeds"]]
    eps = [replace(base, norm=n, init_scale=s, seed=seed, norm_eps=e) for n in ("batch", "layer")
           for s in sorted(P["init_scales"]) if s <= P["small_scale"] for e in P["eps_values"] if e != base.norm_eps
           for seed in P["seeds"]]
    return [trial(c, "scales", every=P["probe_every"]) for c in sweep + eps]


def init_scale_table(results):
    """One row per run: best validation accuracy, final training loss, and from the probe, over the hidden
    layers: the mean relative update ||dW||/||W|| over training (the effective step), the weight norm's
    growth (last / first), and the share of the norm input's variance that survives epsilon,
    var / (var + eps), at the first record, in the deepest normalized layer (its statistic: per example for
    layer norm, per feature for batch norm); at the last record, the participation ratio of the
    representation entering the output layer (rep_dims: how many dimensions the examples spread over) and
    the mean stable rank of the hidden-to-hidden weights (weight_rank; the first layer, from the image, and
    the output layer left out)."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        c = completed_curve(h)
        upd = np.asarray(p["update"], dtype=float)[1:, :-1]  # records x hidden layers (the output layer left out)
        wn = np.asarray(p["weight_norm"], dtype=float)
        norm, eps = h.config["norm"], h.config["norm_eps"]
        var = np.asarray(p["var_example" if norm == "layer" else "var_batch"], dtype=float)  # records x norms
        kept = var[0] / (var[0] + eps) if norm != "none" else np.ones(var.shape[1])
        rows.append({"norm": norm, "init_scale": h.config["init_scale"], "eps": eps, "seed": h.config["seed"],
                     "best_val_acc": float(c.val_acc.max()) if len(c.val_acc) else CHANCE_ACC,
                     "final_train_loss": float(h.train_loss[-1]) if h.train_loss and not c.failed else math.nan,
                     "effective_step": float(np.nanmean(upd)) if upd.size else math.nan,
                     "weight_growth": float(np.mean(wn[-1, :-1] / wn[0, :-1])),
                     "signal_kept_deep": float(kept[-1]), "signal_kept_first": float(kept[0]),
                     "rep_dims": float(p["rep_dims"][-1]),
                     "weight_rank": float(np.mean(np.asarray(p["stable_rank"], dtype=float)[-1, 1:-1])),
                     "diverged": c.failed})
    return pd.DataFrame(rows)


def init_scale_family(table, threshold, default_eps, margin=0.0):
    """Two families, each Holm-adjusted over itself: which scales train (per norm and scale, is the mean
    best validation accuracy established above threshold + margin, trains, or below threshold - margin,
    fails; a mean within the margin of the threshold stays undecided, so that a run whose seeds sit near
    the threshold cannot flip between verdicts: one-sample t-tests, one-sided towards the nearer boundary,
    p doubled since the data pick the side); and the epsilon (per normalization at each small scale run
    with a smaller epsilon, does it raise the accuracy: Welch)."""
    rows = []
    main = table[table["eps"] == default_eps]
    for (norm, scale), g in main.groupby(["norm", "init_scale"], sort=True):
        x = _finite(g["best_val_acc"])
        est, lo, hi = mean_ci(x)
        rows.append({"key": f"init_{norm}_{_scale_key(scale)}", "question": f"{norm_label(norm)} at scale {scale:g} trains: "
                     f"mean best validation accuracy above {threshold:.0%} + {margin_text(margin)} (contradicted: "
                     f"below {threshold:.0%} - {margin_text(margin)})", "test": "one-sample t-test, indifference zone",
                     "kind": "difference", "estimate": est - threshold, "lo": lo - threshold, "hi": hi - threshold,
                     "p": _zone_p(x, threshold, margin), "n": f"{len(x)} runs", "n_min": len(x), "predicted": 1,
                     "unit": "points", "margin": margin, "hedges_g": math.nan, "names": ("", "")})
    eps_rows = []
    for (norm, scale, eps), g in table[table["eps"] != default_eps].groupby(["norm", "init_scale", "eps"]):
        ref = main[(main["norm"] == norm) & (main["init_scale"] == scale)]["best_val_acc"]
        eps_rows.append(difference(f"init_eps_{norm}_{_scale_key(scale)}_{_scale_key(eps)}",
                                   f"{norm_label(norm)} at scale {scale:g}: epsilon {eps:g} instead of {default_eps:g} "
                                   "raises the best validation accuracy", g["best_val_acc"], ref))
    return pd.concat([family(rows), family(eps_rows)], ignore_index=True)


def _zone_p(x, threshold, margin):
    """p that the mean lies beyond threshold +- margin on the side of the sample mean: 2 x the one-sided
    one-sample t-test against that boundary (at most 1); a sample without spread gives 0 when it lies
    beyond the boundary, 1 otherwise."""
    if len(x) < 2:
        return math.nan
    m = x.mean()
    bound = threshold + margin if m >= threshold else threshold - margin
    alternative = "greater" if m >= threshold else "less"
    if np.ptp(x) == 0:
        return 0.0 if (m > bound if alternative == "greater" else m < bound) else 1.0
    return float(min(1.0, 2 * stats.ttest_1samp(x, bound, alternative=alternative).pvalue))


def _scale_key(v):
    return f"{v:g}".replace(".", "p").replace("-", "m")


def init_scale_status(fam, table, default_eps):
    """Per norm: the scales at which it trains / fails (established) and those left undecided."""
    out = {}
    for norm in NORMS:
        rows = [r for r in fam.itertuples() if r.key.startswith(f"init_{norm}_")]
        scales = sorted(table[(table["norm"] == norm) & (table["eps"] == default_eps)]["init_scale"].unique())
        by = dict(zip(scales, rows))
        for word, verdict in (("trains", "supported"), ("fails", "contradicted"), ("undecided", "not established")):
            out[f"init_{word}_{norm}"] = list_text([s for s, r in by.items() if r.verdict == verdict])
    return out


def init_scale_page(P):
    """The init-scale page: the sweep and its family (trains / fails per scale), the mechanism in numbers
    (effective step, weight growth, signal kept by epsilon, dimensions of the representation and stable rank
    of the weights), figures fig_init_scale and fig_init_mechanism."""
    results = run_trials(init_scale_trials(P), workers=P["workers"], force=P["force"])
    table = init_scale_table(results)
    eps0 = TrainConfig().norm_eps
    fam = init_scale_family(table, P["acc_threshold"], eps0, P["margin"])
    glue_family(fam)
    main = table[table["eps"] == eps0]
    small, large = float(main["init_scale"].min()), float(main["init_scale"].max())
    at = lambda n, s, col, e=eps0: table[(table["norm"] == n) & (table["init_scale"] == s) & (table["eps"] == e)][col]  # noqa: E731
    values = {**_n(P), **init_scale_status(fam, table, eps0), "init_small": small, "init_large": large,
              "init_depth": P["depth"], "init_lr": P["lr"], "init_threshold": points(P["acc_threshold"], False),
              "init_margin": margin_text(P["margin"]),
              "init_runs": _runs_text(results), "init_n_scales": len(P["init_scales"]), "init_eps0": eps0,
              "init_eps_values": list_text([e for e in P["eps_values"] if e != eps0]),
              "init_steps": int(max(len(r.history.step_loss) for r in results)),
              "init_n_eps_tests": int(fam["key"].str.startswith("init_eps_").sum()),
              "init_n_scale_tests": int((~fam["key"].str.startswith("init_eps_")).sum())}
    for n in NORMS:
        for end, s in (("small", small), ("large", large)):
            values[f"init_acc_{n}_{end}"] = level_text(at(n, s, "best_val_acc"))
            values[f"init_step_{n}_{end}"] = level_text(at(n, s, "effective_step"), "ratio")
            values[f"init_growth_{n}_{end}"] = level_text(at(n, s, "weight_growth"), "ratio")
            values[f"init_kept_{n}_{end}"] = level_text(at(n, s, "signal_kept_deep"), "ratio")
            values[f"init_dims_{n}_{end}"] = level_text(at(n, s, "rep_dims"), "ratio")
            values[f"init_rank_{n}_{end}"] = level_text(at(n, s, "weight_rank"), "ratio")
        means = main[main["norm"] == n].groupby("init_scale")["best_val_acc"].mean()
        best = float(means.idxmax())
        values[f"init_best_scale_{n}"] = best
        values[f"init_step_{n}_best"] = level_text(at(n, best, "effective_step"), "ratio")
        values[f"init_dims_{n}_best"] = level_text(at(n, best, "rep_dims"), "ratio")
    other = [e for e in P["eps_values"] if e != eps0]
    for n in ("batch", "layer"):
        e = other[0] if other else eps0
        values[f"init_acc_{n}_small_eps"] = level_text(at(n, small, "best_val_acc", e))
        values[f"init_kept_{n}_small_eps"] = level_text(at(n, small, "signal_kept_deep", e), "ratio")
        row = fam[fam["key"] == f"init_eps_{n}_{_scale_key(small)}_{_scale_key(e)}"]
        values[f"init_eps_{n}"] = row["text"].iloc[0] if len(row) else "not tested (no other epsilon in eps_values)"
    glue_values(values)
    glue_figure("fig_init_scale", figures.panels(main, "init_scale", ["best_val_acc", "final_train_loss"], logx=True,
                                                 logy=("final_train_loss",), diverged="diverged"))
    glue_figure("fig_init_mechanism", figures.panels(main, "init_scale", ["effective_step", "signal_kept_deep", "rep_dims"],
                                                     logx=True, logy=("effective_step", "signal_kept_deep")))
    summary = pd.DataFrame([{"condition": norm_label(n), "scale": f"{s:g}", "epsilon": f"{e:g}",
                             "best validation accuracy": level_text(g["best_val_acc"]),
                             "effective step (mean ||dW||/||W||)": level_text(g["effective_step"], "ratio"),
                             "weight norm, last / first": level_text(g["weight_growth"], "ratio"),
                             "signal kept by epsilon, deepest norm": level_text(g["signal_kept_deep"], "ratio")
                             if n != "none" else "",
                             "representation dimensions, end": level_text(g["rep_dims"], "ratio"),
                             "stable rank of hidden weights, end": level_text(g["weight_rank"], "ratio"),
                             "diverged": int(g["diverged"].sum())}
                            for (n, s, e), g in table.groupby(["norm", "init_scale", "eps"], sort=False)])
    return SimpleNamespace(verdicts=family_table(fam), summary=summary, table=table, family=fam)


# ---------------------------------------------------------------------------------------------
# activation drift (Ioffe & Szegedy 2015, Fig. 1b-c), at the normalization's input and the sigmoid's

DRIFT_LAYERS = {"norm3": "input to the normalization", "act3": "input to the sigmoid"}


def drift_frame(results, unit=0, layer="act3"):
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


def drift_measures(values):
    """values: (records, 3 quantiles, units). Per unit, in units of its mean 15-85 spread over the records
    (a scale-free measure: the layers compared need not share a scale): how far the median moved from the
    first record to the last; and |log| of the ratio of the last spread to the first. Both averaged over the
    units."""
    v = np.asarray(values, dtype=float)
    median, width = v[:, 1], np.maximum(v[:, 2] - v[:, 0], 1e-12)  # (T, units)
    return {"median_shift": float(np.mean(np.abs(median[-1] - median[0]) / width.mean(0))),
            "spread_change": float(np.mean(np.abs(np.log(width[-1] / width[0]))))}


def drift_table(results):
    """One row per run and probed layer (DRIFT_LAYERS): drift_measures, final validation accuracy."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        by_layer = p.get("by_layer") or {p["layer"]: p["values"]}
        for layer, values in by_layer.items():
            rows.append({"norm": h.config["norm"], "seed": h.config["seed"], "layer": layer,
                         **drift_measures(values), "final_val_acc": 1 - _final_error(h),
                         "diverged": completed_curve(h).failed})
    return pd.DataFrame(rows)


DRIFT_METRICS = ("median_shift", "spread_change")


def drift_family(table):
    """Each norm against no normalization on both drift measures of the input to the normalization (the
    informative quantity: the sigmoid's input is fixed by construction in a batch-normalized network)."""
    t = table[table["layer"] == "norm3"]
    rows = []
    for norm in ("batch", "layer"):
        for m in DRIFT_METRICS:
            rows.append(difference(f"drift_{m}_{norm}", f"{norm_label(norm)}: the {m.replace('_', ' ')} of the input to "
                                   "the normalization is smaller than without normalization",
                                   t[t["norm"] == norm][m], t[t["norm"] == "none"][m], predicted=-1, unit="plain"))
    return family(rows)


def drift_page(P):
    """The drift page. Glues the family, each measure per norm and layer, n_*, figures fig_drift (the
    normalization's input and the sigmoid's for one unit and seed) and fig_drift_measures."""
    configs = [TrainConfig(norm=n, activation="sigmoid", hidden=(100, 100, 100), schedule="constant", seed=s,
                           batch_size=P["batch_size"], lr=P["lr"], epochs=P["epochs"], train_size=P["train_size"],
                           val_size=P["val_size"], impl=P["impl"]) for n in NORMS for s in P["seeds"]]
    trials = [trial(c, "drift", every=P["record_every"], probe_size=P["probe_size"], layers=list(DRIFT_LAYERS))
              for c in configs]
    results = run_trials(trials, workers=P["workers"], force=P["force"])
    table = drift_table(results)
    fam = drift_family(table)
    glue_family(fam)
    unit = min(P["unit"], 99)
    glue_values({**_n(P), "drift_unit": unit, "drift_seed": P["seeds"][0], "drift_runs": _runs_text(results),
                 "drift_steps": len(results[0].history.step_loss), "drift_n_diverged": int(table["diverged"].sum() / 2),
                 **{f"drift_{m}_{n}_{layer}": level_text(table[(table["norm"] == n) & (table["layer"] == layer)][m], "plain")
                    for m in DRIFT_METRICS for n in NORMS for layer in DRIFT_LAYERS}})
    frames = pd.concat([drift_frame([r for r in results if r.history.config["seed"] == P["seeds"][0]], unit, layer)
                        for layer in DRIFT_LAYERS])
    glue_figure("fig_drift", figures.percentile_grid(frames, DRIFT_LAYERS))
    glue_figure("fig_drift_measures", figures.points(table.assign(layer=table["layer"].map(DRIFT_LAYERS)), "norm",
                                                     "median_shift", hue="norm", col="layer", order=list(NORMS)))
    summary = pd.DataFrame([{"condition": norm_label(n), "layer": DRIFT_LAYERS[layer],
                             "median shift (initial spreads)": level_text(g["median_shift"], "plain"),
                             "spread change, |log ratio|": level_text(g["spread_change"], "plain")}
                            for (n, layer), g in table.groupby(["norm", "layer"], sort=False)])
    return SimpleNamespace(verdicts=family_table(fam), summary=summary, table=table, family=fam)


# ---------------------------------------------------------------------------------------------
# loss landscape (Santurkar et al. 2018, Fig. 4)

LANDSCAPE_METRICS = ("loss_range", "grad_change", "beta")
LANDSCAPE_NAMES = {"loss_range": "loss range", "grad_change": "gradient predictiveness", "beta": "beta-smoothness"}


def landscape_frame(results):
    """Long table of the probe records: norm, seed, step and the three measures (inf -> NaN)."""
    frames = []
    for r in results:
        h, p = r.history, r.probe
        f = pd.DataFrame({k: p[k] for k in ("step", "loss", "grad_norm", *LANDSCAPE_METRICS)})
        frames.append(f.assign(norm=h.config["norm"], seed=h.config["seed"]))
    return pd.concat(frames, ignore_index=True).replace([np.inf, -np.inf], np.nan)


def landscape_table(results):
    """One row per trial: the median over probed steps of each measure (inf counts as the largest)."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        row = {"norm": h.config["norm"], "seed": h.config["seed"], "diverged": h.diverged}
        row.update({m: float(np.median(p[m])) if p[m] else float("nan") for m in LANDSCAPE_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def landscape_family(table):
    """Each norm against no normalization on the three measures (log scale: they span decades; smaller is
    smoother, as Santurkar et al. find for batch norm)."""
    rows = []
    for norm in ("batch", "layer"):
        for m in LANDSCAPE_METRICS:
            rows.append(difference(f"landscape_{m}_{norm}", f"{norm_label(norm)}: smaller {LANDSCAPE_NAMES[m]} than "
                                   "without normalization (log10)", np.log10(table[table["norm"] == norm][m]),
                                   np.log10(table[table["norm"] == "none"][m]), predicted=-1, unit="plain"))
    return family(rows)


def landscape_page(P):
    """The landscape page: trials, the family (glued), each measure per norm, figure fig_landscape."""
    configs = [_config(P, norm=n, seed=s, schedule="constant") for n in NORMS for s in P["seeds"]]
    trials = [trial(c, "landscape", every=P["probe_every"], multipliers=P["multipliers"]) for c in configs]
    results = run_trials(trials, workers=P["workers"], force=P["force"])
    frame, table = landscape_frame(results), landscape_table(results)
    fam = landscape_family(table)
    glue_family(fam)
    glue_values({**_n(P), "land_runs": _runs_text(results), "land_n_diverged": int(table["diverged"].sum()),
                 "land_n_probes": int(frame.groupby(["norm", "seed"]).size().min()),
                 "land_n_nonfinite": int(frame[list(LANDSCAPE_METRICS)].isna().any(axis=1).sum()),
                 "land_eta_min": float(P["lr"] * min(P["multipliers"])), "land_eta_max": float(P["lr"] * max(P["multipliers"])),
                 **{f"land_{m}_{n}": level_text(table[table["norm"] == n][m], "ratio") for m in LANDSCAPE_METRICS
                    for n in NORMS}})
    words = dict(zip(fam["key"], fam["verdict"]))
    for n in ("batch", "layer"):
        smoother = [LANDSCAPE_NAMES[m] for m in LANDSCAPE_METRICS if words[f"landscape_{m}_{n}"] == "supported"]
        rougher = [LANDSCAPE_NAMES[m] for m in LANDSCAPE_METRICS if words[f"landscape_{m}_{n}"] == "contradicted"]
        glue_value(f"landscape_verdict_{n}", outcome(smoother, rougher, yes=f"smoother with {norm_label(n)} in",
                                                     no=f"rougher with {norm_label(n)} in"))
    glue_figure("fig_landscape", figures.panels(frame, "step", list(LANDSCAPE_METRICS), logy=LANDSCAPE_METRICS))
    return SimpleNamespace(verdicts=family_table(fam), table=table, family=fam)


def outcome(supporting, contradicting, yes="supported for", no="contradicted for"):
    """One verdict over several cases from those where it was established to hold / to fail."""
    if supporting and contradicting:
        return f"mixed: {yes} {list_text(supporting, '{}')}; {no} {list_text(contradicting, '{}')}"
    if supporting:
        return f"{yes} {list_text(supporting, '{}')}"
    if contradicting:
        return f"{no} {list_text(contradicting, '{}')}"
    return "not established: no difference is established by these seeds"


# ---------------------------------------------------------------------------------------------
# the tutorial's claims

def claim_configs(P, **fixed):
    """The claims' MLP on the claims' data (the names of P that are TrainConfig fields), with `fixed`."""
    return _config(P, hidden=tuple(P["hidden"]), evals_per_epoch=1, **fixed)


def position_trials(P):
    """Claims 1 and 4 share these runs: batch and layer norm before and after the activation (relu,
    sigmoid), with tanh before it, and no normalization with each activation; every run records each
    linear layer's gradient RMS (probes.GradRMSProbe)."""
    combos = ([(n, a, pos) for n in ("batch", "layer") for a in ("relu", "sigmoid") for pos in ("before", "after")]
              + [(n, "tanh", "before") for n in ("batch", "layer")] + [("none", a, "before") for a in P["activations"]])
    combos = [c for c in combos if c[1] in P["activations"]]
    return [trial(claim_configs(P, norm=n, activation=a, norm_position=pos, seed=s), "grad_rms",
                  every=P["probe_every"]) for n, a, pos in combos for s in P["seeds"]]


def gradient_table(results):
    """One row per run: the gradient spread across layers, log10(max / min over the linear layers of the
    gradient RMS), its median over the records; which layer had the largest and the smallest RMS (the
    first and last layer: index 0 and -1); final validation error."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        rms = np.asarray(p["rms"], dtype=float)  # records x layers
        ok = np.all(np.isfinite(rms) & (rms > 0), axis=1)
        spread = np.log10(rms[ok].max(1) / rms[ok].min(1)) if ok.any() else np.array([np.nan])
        med = np.median(rms[ok], axis=0) if ok.any() else np.full(rms.shape[1], np.nan)
        rows.append({"norm": h.config["norm"], "activation": h.config["activation"],
                     "position": h.config["norm_position"], "seed": h.config["seed"],
                     "grad_spread": float(np.median(spread)), "first_over_last": float(med[0] / med[-1]),
                     "val_error": _final_error(h), "diverged": completed_curve(h).failed})
    return pd.DataFrame(rows)


def position_rows(table, factor):
    """Claim 1, per norm and activation: with the norm before the activation, is the gradient spread across
    layers established above `factor` (a gradient issue) or below it (none); and is it larger than with the
    norm after the activation."""
    rows = []
    lf = math.log10(factor)
    for (norm, act), t in table[table["norm"] != "none"].groupby(["norm", "activation"], sort=False):
        b, a = t[t["position"] == "before"]["grad_spread"], t[t["position"] == "after"]["grad_spread"]
        if not len(a):
            continue
        x = _finite(b)
        est, lo, hi = mean_ci(x)
        p = float(stats.ttest_1samp(x, lf).pvalue) if len(x) > 1 and np.ptp(x) > 0 else math.nan
        rows.append({"key": f"claim_position_{norm}_{act}", "question": f"{norm_label(norm)} before {act}: gradient spread "
                     f"across layers above a factor {factor:g} (a gradient issue)", "test": "one-sample t-test (log10)",
                     "kind": "difference", "estimate": est - lf, "lo": lo - lf, "hi": hi - lf, "p": p,
                     "n": f"{len(x)} runs", "n_min": len(x), "predicted": 1, "unit": "plain", "margin": math.nan,
                     "hedges_g": math.nan, "names": ("", "")})
        rows.append(difference(f"claim_position_{norm}_{act}_vs_after", f"{norm_label(norm)} with {act}: larger gradient "
                               "spread (log10) before the activation than after it", b, a, predicted=1, unit="plain"))
    return rows


def activation_rows(table, margin):
    """Claim 4, per activation and norm (norm before the activation): the normalized network's validation
    error no worse than the unnormalized one's by more than `margin` (non-inferiority)."""
    t = table[table["position"] == "before"]
    return [noninferior(f"claim_activation_{norm}_{act}", f"{norm_label(norm)} with {act}: validation error no worse "
                        "than without normalization", t[(t["norm"] == norm) & (t["activation"] == act)]["val_error"],
                        t[(t["norm"] == "none") & (t["activation"] == act)]["val_error"], margin)
            for act in dict.fromkeys(t["activation"]) for norm in ("batch", "layer")]


def together_trials(P):
    """Claim 2: batch norm, layer norm and both in every block (normlib.models.batch_and_layer); each run
    evaluates the training set at the end, in evaluation mode, for the generalization gap."""
    both = "batch+layer"
    return [trial(claim_configs(P, norm="batch" if n == both else n, seed=s, epochs=P["overfit_epochs"]),
                  "train_eval", model=both if n == both else "standard") for n in ("batch", "layer", both)
            for s in P["seeds"]]


def gap_table(trials, results, condition=lambda t: t.model if t.model != "standard" else t.config.norm):
    """One row per run (Trials with the train_eval probe): condition, seed, final validation error and loss,
    training loss in evaluation mode, the generalization gap (validation - training loss)."""
    rows = []
    for t, r in zip(trials, results):
        h, p = r.history, r.probe
        ok = bool(h.val_loss) and not completed_curve(h).failed and p.get("loss")
        rows.append({"condition": condition(t), "norm": h.config["norm"], "seed": h.config["seed"],
                     "val_error": _final_error(h), "train_loss": float(p["loss"][-1]) if ok else math.nan,
                     "val_loss": float(h.val_loss[-1]) if ok else math.nan,
                     "gap": float(h.val_loss[-1] - p["loss"][-1]) if ok else math.nan,
                     "test_error": 1 - float(h.test_acc) if ok else 1 - CHANCE_ACC, "diverged": not ok})
    return pd.DataFrame(rows)


def together_rows(table, margin):
    """Claim 2: 'unnecessary': each single norm no worse than the pair by more than `margin` (non-inferiority:
    the pair gains less than the margin); 'can overfit': the pair's gap larger than each single norm's."""
    both = "batch+layer"
    get = lambda c, m: table[table["condition"] == c][m]  # noqa: E731
    rows = [noninferior(f"claim_together_unnecessary_{n}", f"{norm_label(n)} alone: validation error no worse than "
                        "with both norms (the pair gains less than the margin)", get(n, "val_error"),
                        get(both, "val_error"), margin) for n in ("batch", "layer")]
    rows += [difference(f"claim_together_overfit_{n}", f"the pair's generalization gap is larger than {norm_label(n)}'s",
                        get(both, "gap"), get(n, "gap"), predicted=1, unit="loss") for n in ("batch", "layer")]
    return rows


def batch_claim_rows(table):
    """Claims 3 and 5 from the batch-size study's runs. 3: 'batch norm performs better with large batches,
    layer norm with small ones'. 5: 'normalization with very small batches introduces noise and
    instability': at the smallest batch, each norm against no normalization on the setback (instability)
    and on the spread of the final error across seeds (noise)."""
    small, large = table["batch_size"].min(), table["batch_size"].max()
    at = lambda n, bs, m="val_error": table[(table["norm"] == n) & (table["batch_size"] == bs)][m]  # noqa: E731
    rows = [difference("claim_batch_bn_large", f"batch norm's error lower at batch {large} than at {small}",
                       at("batch", large), at("batch", small), predicted=-1),
            difference("claim_batch_ln_small", f"at batch {small}, layer norm's error lower than batch norm's",
                       at("layer", small), at("batch", small), predicted=-1),
            difference("claim_batch_bn_at_large", f"at batch {large}, batch norm's error lower than layer norm's",
                       at("batch", large), at("layer", large), predicted=-1)]
    for n in ("batch", "layer"):
        rows.append(difference(f"claim_small_unstable_{n}", f"at batch {small}, {norm_label(n)}'s setback larger than "
                               "without normalization", at(n, small, "setback"), at("none", small, "setback"),
                               predicted=1, unit="plain"))
        rows.append(spread(f"claim_small_noisy_{n}", f"at batch {small}, {norm_label(n)}'s final error spreads more across "
                           "seeds than without normalization", at(n, small), at("none", small)))
    return rows


def spread_values(grads):
    """Glue values of the gradient spreads: the largest mean factor of a normalized condition and which one,
    and the factor of each activation without normalization (claims_spread_none_<activation>)."""
    means = 10 ** grads.groupby(["norm", "activation", "position"])["grad_spread"].mean()
    normed = means.drop("none", level="norm", errors="ignore")
    (norm, act, pos), top = normed.idxmax(), float(normed.max())
    return {"claims_largest_spread": top, "claims_largest_spread_condition": f"{norm_label(norm)} {pos} {act}",
            **{f"claims_spread_none_{a}": float(v) for (n, a, _), v in means.items() if n == "none"}}


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


def claims_page(P):
    """The claims page (claims 1-5): trials, one family over every claim (Holm), a sentence per claim
    (claim_*_verdict), figures fig_claim_position, fig_claim_activation, fig_claim_together, fig_claim_batch."""
    pos, tog = position_trials(P), together_trials(P)
    bs = batch_size_trials({**P, "seeds": P["bs_seeds"], "batch_sizes": P["batch_sizes"], "train_size": P["bs_train_size"],
                            "epochs": P["bs_epochs"], "evals_per_epoch": P["bs_evals_per_epoch"]})
    results = run_trials(pos + tog + bs, workers=P["workers"], force=P["force"])
    grads = gradient_table(results[:len(pos)])
    gaps = gap_table(tog, results[len(pos):len(pos) + len(tog)])
    batch = batch_size_table(results[len(pos) + len(tog):])
    fam = family(position_rows(grads, P["grad_factor"]) + activation_rows(grads, P["margin"])
                 + together_rows(gaps, P["margin"]) + batch_claim_rows(batch))
    glue_family(fam)
    acts = [a for a in P["activations"] if a in ("relu", "sigmoid")]
    glue_values({
        **_n(P), "claims_runs": _runs_text(results), "grad_factor": float(P["grad_factor"]),
        "claims_margin": margin_text(P["margin"]), "claims_bs_small": int(batch["batch_size"].min()),
        "claims_bs_large": int(batch["batch_size"].max()), "claims_n_bs_seeds": len(P["bs_seeds"]),
        **spread_values(grads),
        "claim_position_verdict": claim_words(fam, "claim_position_", {f"{n}_{a}": f"{norm_label(n)} with {a}"
                                                                       for n in ("batch", "layer") for a in acts},
                                              "supported (a gradient spread above the factor) for",
                                              "contradicted (a spread established below the factor) for"),
        "claim_activation_verdict": claim_words(fam, "claim_activation_", {f"{n}_{a}": f"{norm_label(n)} with {a}"
                                                                           for a in P["activations"]
                                                                           for n in ("batch", "layer")},
                                                "supported (no worse than without normalization) for", "contradicted for"),
        "claim_together_unnecessary": claim_words(fam, "claim_together_unnecessary_", {"batch": "batch norm alone",
                                                                                       "layer": "layer norm alone"},
                                                  "supported: the pair gains less than the margin over", "contradicted for"),
        "claim_together_overfit": claim_words(fam, "claim_together_overfit_", {"batch": "batch norm", "layer": "layer norm"},
                                              "supported: the pair's gap is larger than that of",
                                              "contradicted: the pair's gap is smaller than that of"),
        "claim_batch_verdict": claim_words(fam, "claim_batch_", {"bn_large": "batch norm better at the large batch",
                                                                 "ln_small": "layer norm better at the small batch",
                                                                 "bn_at_large": "batch norm better at the large batch "
                                                                                "than layer norm"},
                                           "supported in part:", "contradicted in part:"),
        "claim_small_verdict": claim_words(fam, "claim_small_", {f"{k}_{n}": f"{norm_label(n)} ({w})" for n in ("batch", "layer")
                                                                 for k, w in (("unstable", "instability"), ("noisy", "noise"))},
                                           "supported for", "contradicted for"),
        **{f"claim_gap_{c.replace('+', '_')}": level_text(gaps[gaps["condition"] == c]["gap"], "loss")
           for c in dict.fromkeys(gaps["condition"])},
        **{f"claim_err_{c.replace('+', '_')}": level_text(gaps[gaps["condition"] == c]["val_error"])
           for c in dict.fromkeys(gaps["condition"])}})
    glue_figure("fig_claim_position", figures.points(grads[grads["norm"] != "none"], "position", "grad_spread",
                                                     col="activation", order=["before", "after"],
                                                     hline=math.log10(P["grad_factor"])))
    glue_figure("fig_claim_activation", figures.points(grads[grads["position"] == "before"], "activation", "val_error"))
    glue_figure("fig_claim_together", figures.points(gaps.melt(id_vars=["condition", "seed"], value_vars=["val_error", "gap"],
                                                               var_name="measure").rename(columns={"condition": "norm"}),
                                                     "norm", "value", hue="norm", col="measure",
                                                     order=["batch", "layer", "batch+layer"], sharey=False))
    small = batch[batch["batch_size"] == batch["batch_size"].min()]
    glue_figure("fig_claim_batch", figures.points(batch[batch["norm"] != "none"], "batch_size", "val_error"))
    glue_figure("fig_claim_small", figures.points(small, "norm", "setback", hue="norm", order=list(NORMS)))
    return SimpleNamespace(verdicts=family_table(fam), family=fam, grads=grads, gaps=gaps, batch=batch)


# ---------------------------------------------------------------------------------------------
# claim: normalization is not a replacement for regularization

REGULARIZERS = ("none", "weight decay", "dropout")


def regularization_trials(P):
    """norm x regularizer (none, weight decay, dropout) x seed, on a small training set trained long enough
    to overfit; each run evaluates the training set at the end (the generalization gap)."""
    regs = {"none": {"weight_decay": 0.0, "dropout": 0.0}, "weight decay": {"weight_decay": P["weight_decay"], "dropout": 0.0},
            "dropout": {"weight_decay": 0.0, "dropout": P["dropout"]}}
    return [trial(_config(P, norm=n, seed=s, hidden=tuple(P["hidden"]), evals_per_epoch=1, **regs[reg]), "train_eval")
            for n in NORMS for reg in REGULARIZERS for s in P["seeds"]]


def regularizer_of(t):
    c = t.config
    return "weight decay" if c.weight_decay else "dropout" if c.dropout else "none"


def regularization_family(table):
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
    return family(rows)


def regularization_words(fam, norm):
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


def regularization_page(P):
    """The regularization page: trials, family, per (norm, regularizer) the error, gap and test error, a
    sentence per norm, figure fig_regularization."""
    trials = regularization_trials(P)
    results = run_trials(trials, workers=P["workers"], force=P["force"])
    table = gap_table(trials, results, condition=regularizer_of)
    fam = regularization_family(table)
    glue_family(fam)
    values = {**_n(P), "reg_runs": _runs_text(results), "reg_weight_decay": float(P["weight_decay"]),
              "reg_dropout": float(P["dropout"]), "reg_steps": int(max(len(r.history.step_loss) for r in results)),
              "reg_train_size": P["train_size"]}
    for n in ("batch", "layer"):
        values[f"reg_verdict_{n}"] = regularization_words(fam, n)
    for (n, reg), g in table.groupby(["norm", "condition"]):
        key = f"{n}_{reg.replace(' ', '_')}"
        values[f"reg_err_{key}"], values[f"reg_gap_{key}"] = level_text(g["val_error"]), level_text(g["gap"], "loss")
    glue_values(values)
    glue_figure("fig_regularization", figures.points(table.melt(id_vars=["norm", "condition", "seed"],
                                                                value_vars=["val_error", "gap"], var_name="measure"),
                                                     "condition", "value", col="measure", order=list(REGULARIZERS),
                                                     sharey=False))
    summary = pd.DataFrame([{"condition": norm_label(n), "regularizer": reg, "validation error": level_text(g["val_error"]),
                             "generalization gap": level_text(g["gap"], "loss"), "test error": level_text(g["test_error"]),
                             "diverged": int(g["diverged"].sum())}
                            for (n, reg), g in table.groupby(["norm", "condition"], sort=False)])
    return SimpleNamespace(verdicts=family_table(fam), summary=summary, table=table, family=fam)


# ---------------------------------------------------------------------------------------------
# claim: layer normalization suits recurrent networks

def recurrent_trials(P):
    """norm x seed of the row-by-row RNN (normlib.models.RowRNN): no normalization, layer norm in the
    recurrence, batch norm with statistics per time step."""
    return [trial(_config(P, norm=n, seed=s, hidden=(P["rnn_hidden"],)), model="rnn") for n in NORMS
            for s in P["seeds"]]


def recurrent_family(table):
    """Layer norm against no normalization and against per-step batch norm on the final validation error
    (and per-step batch norm against none, for context)."""
    at = lambda n: table[table["norm"] == n]["val_error"]  # noqa: E731
    return family([difference("rnn_ln_vs_none", "layer norm's error lower than without normalization",
                              at("layer"), at("none"), predicted=-1),
                   difference("rnn_ln_vs_bn", "layer norm's error lower than per-step batch norm's",
                              at("layer"), at("batch"), predicted=-1),
                   difference("rnn_bn_vs_none", "per-step batch norm's error lower than without normalization",
                              at("batch"), at("none"), predicted=-1)])


def recurrent_page(P):
    """The recurrent page: trials, family, errors per norm, curves figure fig_recurrent."""
    results = run_trials(recurrent_trials(P), workers=P["workers"], force=P["force"])
    hs = [r.history for r in results]
    table = pd.DataFrame([{"norm": h.config["norm"], "seed": h.config["seed"], "val_error": _final_error(h),
                           "diverged": completed_curve(h).failed, "test_error": 1 - float(h.test_acc)
                           if not completed_curve(h).failed else 1 - CHANCE_ACC} for h in hs])
    fam = recurrent_family(table)
    glue_family(fam)
    glue_values({**_n(P), "rnn_runs": _runs_text(results), "rnn_steps": int(max(len(h.step_loss) for h in hs)),
                 "rnn_hidden": P["rnn_hidden"], "rnn_n_diverged": int(table["diverged"].sum()),
                 **{f"rnn_err_{n}": level_text(table[table["norm"] == n]["val_error"]) for n in NORMS}})
    from normlib.protocol import curves_frame
    curves = curves_frame(hs, keys=("norm", "seed")).assign(val_error=lambda d: 1 - d["val_acc"], arch="rnn")
    glue_figure("fig_recurrent", figures.curves(curves, "val_error", x="step", col=None, title="RNN, row by row"))
    summary = pd.DataFrame([{"condition": norm_label(n), "validation error": level_text(g["val_error"]),
                             "test error": level_text(g["test_error"]), "diverged": int(g["diverged"].sum())}
                            for n, g in table.groupby("norm", sort=False)])
    return SimpleNamespace(verdicts=family_table(fam), summary=summary, table=table, family=fam)
