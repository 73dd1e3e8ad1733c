"""The studies beyond the assignment: their trials, a cached runner for probed trials, and the
statistics behind each study's verdicts.

- Batch size (Wu & He 2018, Fig. 1; Ba et al. 2016, sec. 6.7): the learning rate scales linearly
  with the batch (Goyal et al. 2017) and every batch size sees the same number of examples.
- Learning rate (Ioffe & Szegedy 2015, sec. 3.3: batch norm "enables higher learning rates").
- Weight-initialization scale (cs231n assignment 2, BatchNormalization notebook).
- Activation drift (Ioffe & Szegedy 2015, Fig. 1b-c) and loss landscape (Santurkar et al. 2018,
  Fig. 4): trials with a probe (normlib.trials.Trial), whose Results carry the probe's record.
- Claims of a tutorial: normalization before the activation, batch and layer norm together,
  and which norm suits which batch size.
Every "better" comes from normlib.metrics.verdict (95% intervals across seeds do not overlap)
with Welch's p and Hedges' g beside it; otherwise the difference is "not established".
"""
import math

import numpy as np
import pandas as pd

from normlib.figures import NORM_LABELS
from normlib.metrics import format_ci, mean_ci, metric_bounds, trials_table, verdict
from normlib.params import ParameterError, validate
from normlib.train import TrainConfig
from normlib.trials import trial

NORMS = ("none", "batch", "layer")
PROTOCOL = dict(optimizer="sgd", lr=0.05, schedule="cosine", momentum=0.9, batch_size=128)  # the studies' default run
BASE_BATCH = 128  # the batch size at which base_lr is the learning rate


# ---------------------------------------------------------------------------------------------
# parameters and trial lists

def validate_study(values, rules):
    """normlib.params.validate for the standard names, plus study-specific {name: checker}
    (checkers from normlib.params, e.g. positive_float). One-line errors, as validate's."""
    out = validate({k: v for k, v in values.items() if k not in rules})
    for name, rule in rules.items():
        try:
            out[name] = rule(values[name])
        except ValueError as e:
            raise ParameterError(f"parameter {name!r} = {values[name]!r}: {e}") from None
    return out


def unit_interval(v):
    """A checker for validate_study: a number in (0, 1)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
        raise ValueError("must be a number between 0 and 1")
    return float(v)


def sweep_configs(norms, name, values, seeds, **fixed):
    """One TrainConfig per (norm, value of the TrainConfig field `name`, seed), on the study protocol
    (PROTOCOL) with `fixed` overrides."""
    return [TrainConfig(**{**PROTOCOL, **fixed, "norm": norm, name: value, "seed": seed})
            for norm in norms for value in values for seed in seeds]


def batch_size_configs(norms, batch_sizes, seeds, *, base_lr=0.05, **fixed):
    """sweep_configs over batch_size with lr = base_lr * batch_size / 128 (linear scaling); the
    number of examples seen is epochs * train_size at every batch size."""
    return [TrainConfig(**{**PROTOCOL, **fixed, "norm": norm, "batch_size": bs, "lr": base_lr * bs / BASE_BATCH,
                           "seed": seed})
            for norm in norms for bs in batch_sizes for seed in seeds]


def examples_seen(h):
    """Training examples the run went through (the last partial batch of an epoch is dropped)."""
    return len(h.step_loss) * h.config["batch_size"]


# ---------------------------------------------------------------------------------------------
# sweeps: tables and the points where one condition is established worse than another

def sweep_table(histories, x):
    """metrics.trials_table keyed by (norm, x, seed), plus validation error (final and best)."""
    t = trials_table(histories, keys=("norm", x, "seed"))
    t["val_error"] = 1 - t["final_val_acc"]
    t["best_val_error"] = 1 - t["best_val_acc"]
    return t


def sweep_summary(table, x, metric):
    """Per (norm, x): mean and 95% CI of metric across seeds, and how many seeds diverged."""
    rows = []
    for (norm, value), g in table.groupby(["norm", x], sort=False):
        m, lo, hi = mean_ci(g[metric].tolist(), bounds=metric_bounds(metric))
        rows.append({"norm": norm, x: value, "mean": m, "lo": lo, "hi": hi, "n_seeds": len(g),
                     "n_diverged": int(g["diverged"].sum())})
    return pd.DataFrame(rows)


def compare(a, b, names, higher_is_better=False):
    """metrics.verdict of samples a and b with names (name_a, name_b): winner (a name or 'tie'),
    Welch p, Hedges' g (of a - b), the difference of means, the test in words ("test") and a
    sentence with the verdict ("text"; the effect size there is |g|, the winner gives the sign)."""
    winner, d = verdict(list(a), list(b), names, higher_is_better)
    if d["n_a"] < 2 or d["n_b"] < 2:
        test = f"{min(d['n_a'], d['n_b'])} finite result(s) for one condition; a test needs at least 2 seeds"
        text = f"not established: {test}"
    else:
        test = f"{p_text(d['p'])}, {effect_text(d['g'])}"
        text = (f"not established: the 95% intervals overlap ({test})" if winner == "tie"
                else f"{_label(winner)} better ({test})")
    return {"winner": winner, "p": d["p"], "g": d["g"], "diff": d["diff"], "test": test, "text": text}


def p_text(p):
    """'Welch p = 0.031'; below 1e-6 'Welch p < 1e-06' (the t model says no more than that)."""
    return "Welch p < 1e-06" if p < 1e-6 else f"Welch p = {p:.2g}"


def effect_text(g):
    """"Hedges' |g| = 1.23", or, when the seeds of both conditions agree almost exactly (metrics.welch
    gives no g), that the effect size is undefined."""
    if not math.isfinite(g):
        return "Hedges' g undefined (no spread within the conditions)"
    return f"Hedges' |g| = {abs(g):.2f}"


def _label(name):
    return NORM_LABELS.get(name, str(name))


def _samples(table, metric, **where):
    t = table
    for k, v in where.items():
        t = t[t[k] == v]
    return t[metric].tolist()


def worse_points(table, x, metric, norm, other, higher_is_better=False):
    """The values of x at which `norm` is established worse than `other` on metric."""
    return [v for v in sorted(table[x].unique())
            if compare(_samples(table, metric, norm=norm, **{x: v}), _samples(table, metric, norm=other, **{x: v}),
                       ("a", "b"), higher_is_better)["winner"] == "b"]


def worse_than_own_best(table, x, metric, norm, higher_is_better=False):
    """The values of x at which `norm` is established worse than at its own best x (by mean)."""
    t = table[table["norm"] == norm]
    means = t.groupby(x)[metric].mean().dropna()
    if means.empty:
        return []
    best = means.idxmax() if higher_is_better else means.idxmin()
    return [v for v in sorted(t[x].unique()) if v != best and
            compare(_samples(t, metric, **{x: v}), _samples(t, metric, **{x: best}), ("a", "b"),
                    higher_is_better)["winner"] == "b"]


def good_points(table, x, norm, metric=None, threshold=None):
    """The values of x at which no seed of `norm` diverged and, with a metric, its mean reaches threshold."""
    out = []
    for v, g in table[table["norm"] == norm].groupby(x):
        if g["diverged"].any():
            continue
        if metric is not None and not g[metric].mean() >= threshold:
            continue
        out.append(v)
    return sorted(out)


def list_text(values, fmt="{:g}"):
    """'2, 4 and 8', or 'none'."""
    items = [fmt.format(v) for v in values]
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def ci_text(values, fmt="{:.3f}"):
    """'mean [lo, hi]' across seeds; a percentage format marks a fraction (accuracy, error rate), whose
    interval is clipped to [0, 1]."""
    return format_ci(*mean_ci(values, bounds=(0.0, 1.0) if fmt.endswith("%}") else None), fmt)


def batch_size_findings(table, metric="val_error"):
    """Glue values of the batch-size study (keys do not depend on the batch sizes swept): errors at
    the smallest and largest batch, where each norm is established worse than its own best, where
    batch norm is established worse than layer norm and the reverse, and the tests at both ends."""
    small, large = int(table["batch_size"].min()), int(table["batch_size"].max())
    out = {"bs_small": small, "bs_large": large}
    for norm in NORMS:
        for end, bs in (("small", small), ("large", large)):
            out[f"{norm}_error_{end}"] = ci_text(_samples(table, metric, norm=norm, batch_size=bs), "{:.2%}")
        out[f"bs_where_{norm}_above_its_best"] = list_text(worse_than_own_best(table, "batch_size", metric, norm))
    for norm, key in (("batch", "bn"), ("layer", "ln")):
        rises = worse_than_own_best(table, "batch_size", metric, norm)
        out[f"{key}_trend"] = (f"{_label(norm)}'s error is established above its best at batch "
                               f"size{'s' if len(rises) > 1 else ''} {list_text(rises)}" if rises else
                               f"{_label(norm)}'s error is flat within the seeds' resolution: no batch size "
                               "is established worse than its best")
    out["bs_where_bn_worse_than_ln"] = list_text(worse_points(table, "batch_size", metric, "batch", "layer"))
    out["bs_where_ln_worse_than_bn"] = list_text(worse_points(table, "batch_size", metric, "layer", "batch"))
    for end, bs in (("small", small), ("large", large)):
        c = compare(_samples(table, metric, norm="layer", batch_size=bs),
                    _samples(table, metric, norm="batch", batch_size=bs), ("layer", "batch"))
        out[f"{end}_ln_vs_bn"], out[f"{end}_ln_vs_bn_diff"] = c["text"], float(c["diff"])
    for norm, key in (("batch", "bn"), ("layer", "ln")):
        out[f"{key}_small_vs_large"] = compare(_samples(table, metric, norm=norm, batch_size=small),
                                               _samples(table, metric, norm=norm, batch_size=large),
                                               ("the smallest batch", "the largest batch"))["text"]
    return out


def learning_rate_findings(table, acc_threshold, metric="final_val_acc"):
    """Glue values of the learning-rate study, per norm: the highest learning rate at which no seed
    diverged, the lowest at which one did, the highest at which the mean metric also reaches
    acc_threshold; each norm's stable limit relative to the baseline's; and, at the baseline's
    highest stable learning rate, each norm vs the baseline on the metric."""
    top_lr = float(table["lr"].max())
    out, tops = {}, {}
    for norm in NORMS:
        for kind, points in (("stable", good_points(table, "lr", norm)),
                             ("trained", good_points(table, "lr", norm, metric, acc_threshold))):
            top = float(max(points)) if points else float("nan")
            tops[norm, kind] = top
            out[f"max_{kind}_lr_{norm}"] = top
            out[f"max_{kind}_lr_{norm}_text"] = ("none in the sweep" if not points else
                                                 f"{top:g} (top of the sweep: the limit lies higher)"
                                                 if top == top_lr else f"{top:g}")
        diverged = table.loc[(table["norm"] == norm) & table["diverged"], "lr"]
        out[f"min_diverged_lr_{norm}_text"] = f"{diverged.min():g}" if len(diverged) else "none in the sweep"
        out[f"best_acc_{norm}"] = float(table[table["norm"] == norm].groupby("lr")[metric].mean().max())
    base_lr = tops["none", "stable"] if math.isfinite(tops["none", "stable"]) else float(table["lr"].min())
    for norm in ("batch", "layer"):
        ratio = tops[norm, "stable"] / tops["none", "stable"]
        out[f"stable_lr_ratio_{norm}"] = ratio
        out[f"stable_lr_ratio_{norm}_text"] = (
            "not defined (a norm without a stable learning rate in the sweep)" if not math.isfinite(ratio) else
            f"at least {ratio:.3g} times (its limit lies above the sweep)" if tops[norm, "stable"] == top_lr else
            "the same as" if ratio == 1 else f"{ratio:.3g} times")
        out[f"at_none_max_lr_{norm}_vs_none"] = compare(
            _samples(table, metric, norm=norm, lr=base_lr), _samples(table, metric, norm="none", lr=base_lr),
            (norm, "none"), higher_is_better=True)["text"]
    out["lr_compared"] = base_lr
    return out


def init_scale_findings(table, acc_threshold, metric="best_val_acc"):
    """Glue values of the init-scale study: per norm the scales that train (no seed diverged, mean
    metric >= acc_threshold) and, at the smallest and largest scale, each norm vs the baseline."""
    small, large = float(table["init_scale"].min()), float(table["init_scale"].max())
    out = {"scale_small": small, "scale_large": large}
    for norm in NORMS:
        trained = good_points(table, "init_scale", norm, metric, acc_threshold)
        out[f"n_trained_{norm}"] = len(trained)
        out[f"trained_scales_{norm}"] = list_text(trained)
    for end, scale in (("small", small), ("large", large)):
        for norm in ("batch", "layer"):
            out[f"{end}_{norm}_vs_none"] = compare(_samples(table, metric, norm=norm, init_scale=scale),
                                                   _samples(table, metric, norm="none", init_scale=scale),
                                                   (norm, "none"), higher_is_better=True)["text"]
    return out


# ---------------------------------------------------------------------------------------------
# activation drift (Ioffe & Szegedy 2015, Fig. 1b-c)

def drift_frame(results, unit=0):
    """Long table of one unit's percentile traces: norm, seed, step, quantile, value."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        for step, q in zip(p["step"], p["values"]):
            for quantile, per_unit in zip(p["quantiles"], q):
                rows.append({"norm": h.config["norm"], "seed": h.config["seed"], "step": step,
                             "quantile": quantile, "value": per_unit[unit]})
    return pd.DataFrame(rows)


def drift_table(results):
    """One row per trial: how far the sigmoid inputs of the probed layer moved over training,
    averaged over its units: |change of the median| and |log change of the 15-85 spread|
    between the first and the last record, and the same for the median between the midpoint
    and the end (late drift)."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        v = np.asarray(p["values"])  # (T, Q, units), quantiles (0.15, 0.5, 0.85)
        median, spread = v[:, 1], v[:, 2] - v[:, 0]  # (T, units)
        mid = len(v) // 2
        rows.append({"norm": h.config["norm"], "seed": h.config["seed"],
                     "median_shift": float(np.abs(median[-1] - median[0]).mean()),
                     "late_median_shift": float(np.abs(median[-1] - median[mid]).mean()),
                     "spread_change": float(np.abs(np.log(spread[-1] / spread[0])).mean()),
                     "final_val_acc": float(h.val_acc[-1]) if h.val_acc and not h.diverged else float("nan"),
                     "diverged": h.diverged})
    return pd.DataFrame(rows)


DRIFT_METRICS = ("median_shift", "late_median_shift", "spread_change")


def drift_findings(table):
    """Glue values of the drift study: each measure per norm (mean [CI]), each norm vs the baseline
    (less drift is better), and a verdict on batch norm's stabilizing the inputs (both measures)."""
    out = {}
    for m in DRIFT_METRICS:
        for norm in NORMS:
            out[f"{m}_{norm}"] = ci_text(_samples(table, m, norm=norm))
        for norm in ("batch", "layer"):
            out[f"{m}_{norm}_vs_none"] = compare(_samples(table, m, norm=norm), _samples(table, m, norm="none"),
                                                 (norm, "none"))["text"]
    wins = {m: compare(_samples(table, m, norm="batch"), _samples(table, m, norm="none"), ("batch", "none"))["winner"]
            for m in ("median_shift", "spread_change")}
    stable = [m.replace("_", " ") for m, w in wins.items() if w == "batch"]
    drifting = [m.replace("_", " ") for m, w in wins.items() if w == "none"]
    out["drift_verdict"] = outcome(stable, drifting, yes="reproduced: batch norm drifts less in",
                                   no="not reproduced: batch norm drifts more in")
    return out


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
        row = {"norm": h.config["norm"], "seed": h.config["seed"], "diverged": h.diverged,
               "final_val_acc": float(h.val_acc[-1]) if h.val_acc and not h.diverged else float("nan")}
        row.update({m: float(np.median(p[m])) if p[m] else float("nan") for m in LANDSCAPE_METRICS})
        rows.append(row)
    return pd.DataFrame(rows)


def landscape_findings(table):
    """Glue values of the landscape study: each measure per norm (mean [CI] over seeds of the per-run
    median), each norm vs the baseline (lower is smoother), and per norm a verdict over the three."""
    out = {}
    for m in LANDSCAPE_METRICS:
        for norm in NORMS:
            out[f"{m}_{norm}"] = ci_text(_samples(table, m, norm=norm), "{:.3g}")
    for norm in ("batch", "layer"):
        wins = {}
        for m in LANDSCAPE_METRICS:
            c = compare(_samples(table, m, norm=norm), _samples(table, m, norm="none"), (norm, "none"))
            out[f"{m}_{norm}_vs_none"], wins[m] = c["text"], c["winner"]
        smoother = [LANDSCAPE_NAMES[m] for m, w in wins.items() if w == norm]
        rougher = [LANDSCAPE_NAMES[m] for m, w in wins.items() if w == "none"]
        out[f"landscape_verdict_{norm}"] = outcome(smoother, rougher, yes=f"smoother with {_label(norm)} in",
                                                   no=f"rougher with {_label(norm)} in")
    return out


# ---------------------------------------------------------------------------------------------
# the tutorial's claims, each answered from the numbers

def outcome(supporting, contradicting, yes="supported for", no="contradicted for"):
    """Overall verdict on a claim from the cases where it was established to hold / to fail."""
    if supporting and contradicting:
        return f"mixed: {yes} {list_text(supporting, '{}')}; {no} {list_text(contradicting, '{}')}"
    if supporting:
        return f"{yes} {list_text(supporting, '{}')}"
    if contradicting:
        return f"{no} {list_text(contradicting, '{}')}"
    return "not established: no difference is established by these seeds"


def position_trials(seeds, **fixed):
    """Claim 1: batch and layer norm, with ReLU and sigmoid, before and after the activation; each
    trial records the first and last layer's gradient norms."""
    return [trial(TrainConfig(**{**PROTOCOL, **fixed, "norm": norm, "activation": act, "norm_position": pos,
                                 "seed": seed}), "layer_grads")
            for norm in ("batch", "layer") for act in ("relu", "sigmoid") for pos in ("before", "after")
            for seed in seeds]


def together_trials(seeds, **fixed):
    """Claim 2: batch norm, layer norm and both in every block; each trial evaluates the training set
    at the end (evaluation mode) for the generalization gap."""
    both = "batch+layer"
    return [trial(TrainConfig(**{**PROTOCOL, **fixed, "norm": "batch" if name == both else name, "seed": seed}),
                  "train_eval", model=both if name == both else "standard")
            for name in ("batch", "layer", both) for seed in seeds]


def position_table(results):
    """Claim 1, one row per trial: final validation accuracy and the gradient balance
    log10(||grad first layer|| / ||grad last layer||) (median over steps; 0 = equal norms)."""
    rows = []
    for r in results:
        h, p = r.history, r.probe
        ratio = np.log10(np.asarray(p["first"]) / np.asarray(p["last"]))
        ratio = ratio[np.isfinite(ratio)]
        med = float(np.median(ratio)) if len(ratio) else float("nan")
        rows.append({"norm": h.config["norm"], "activation": h.config["activation"],
                     "position": h.config["norm_position"], "seed": h.config["seed"],
                     "final_val_acc": float(h.val_acc[-1]) if h.val_acc and not h.diverged else float("nan"),
                     "grad_balance": med, "grad_imbalance": abs(med), "diverged": h.diverged})
    return pd.DataFrame(rows)


def claim_position(table):
    """'Normalization before the activation can lead to gradient issues': per (norm, activation),
    before vs after on the gradient imbalance |log10 ratio| (lower is healthier; this decides the
    verdict), with accuracy and diverged runs reported beside it.
    Returns (rows for a table, {glue key: value})."""
    rows, glued, support, contra = [], {}, [], []
    for (norm, act), t in table.groupby(["norm", "activation"], sort=False):
        where = f"{_label(norm)} with {act}"
        b, a = t[t["position"] == "before"], t[t["position"] == "after"]
        names = ("the norm before the activation", "the norm after the activation")
        grad = compare(b["grad_imbalance"], a["grad_imbalance"], names)
        acc = compare(b["final_val_acc"], a["final_val_acc"], names, higher_is_better=True)
        diverged = (int(b["diverged"].sum()), int(a["diverged"].sum()))
        if grad["winner"] == names[1]:  # the gradients are less balanced with the norm before the activation
            support.append(where)
        elif grad["winner"] == names[0]:
            contra.append(where)
        rows.append({"norm": _label(norm), "activation": act,
                     "imbalance before": ci_text(b["grad_imbalance"]), "imbalance after": ci_text(a["grad_imbalance"]),
                     "gradients": grad["text"], "val acc before": ci_text(b["final_val_acc"], "{:.2%}"),
                     "val acc after": ci_text(a["final_val_acc"], "{:.2%}"), "accuracy": acc["text"],
                     "diverged before/after": f"{diverged[0]}/{diverged[1]}"})
        key = f"claim_position_{norm}_{act}"
        glued.update({f"{key}_grad": grad["text"], f"{key}_acc": acc["text"],
                      f"{key}_imbalance_before": float(b["grad_imbalance"].mean()),
                      f"{key}_imbalance_after": float(a["grad_imbalance"].mean())})
    glued["claim_position_verdict"] = outcome(
        support, contra, yes="supported (a larger gradient imbalance with the norm before the activation) for",
        no="contradicted (a smaller gradient imbalance with the norm before the activation) for")
    largest = table.groupby(["norm", "activation", "position"])["grad_imbalance"].mean().max()
    glued["claim_position_largest_factor"] = float(10 ** largest)  # first / last gradient norm, or its inverse
    return pd.DataFrame(rows), glued


def together_table(trials, results):
    """Claim 2, one row per trial (Trials with the train_eval probe, and their results): final
    validation accuracy and the generalization gap (validation loss - training loss, both in
    evaluation mode, at the end of training)."""
    rows = []
    for t, r in zip(trials, results):
        h, p = r.history, r.probe
        ok = bool(h.val_loss) and not h.diverged
        rows.append({"norm": t.model if t.model != "standard" else h.config["norm"],
                     "seed": h.config["seed"], "final_val_acc": float(h.val_acc[-1]) if ok else float("nan"),
                     "final_train_loss": float(p["loss"][-1]) if ok else float("nan"),
                     "final_val_loss": float(h.val_loss[-1]) if ok else float("nan"),
                     "gap": float(h.val_loss[-1] - p["loss"][-1]) if ok else float("nan"), "diverged": h.diverged})
    return pd.DataFrame(rows)


def claim_together(table, singles=("batch", "layer"), both="batch+layer"):
    """'Batch and layer norm together are unnecessary and can lead to overfitting': the pair vs the
    more accurate single norm on accuracy; the pair's generalization gap vs each single norm's."""
    acc = lambda n: _samples(table, "final_val_acc", norm=n)  # noqa: E731
    gap = lambda n: _samples(table, "gap", norm=n)  # noqa: E731
    best = max(singles, key=lambda n: np.nanmean(acc(n)) if np.isfinite(acc(n)).any() else -1)
    gain = compare(acc(both), acc(best), (both, best), higher_is_better=True)
    if gain["winner"] == both:
        unnecessary = f"contradicted: the pair is more accurate than {_label(best)} alone ({gain['test']})"
    elif gain["winner"] == best:
        unnecessary = f"supported: the pair is less accurate than {_label(best)} alone ({gain['test']})"
    else:
        unnecessary = (f"consistent with the claim: no gain over {_label(best)} alone is established "
                       f"(the 95% intervals overlap; {gain['test']})")
    gaps = {n: compare(gap(both), gap(n), (both, n)) for n in singles}
    larger = [_label(n) for n in singles if gaps[n]["winner"] == n]      # the single norm has the smaller gap
    smaller = [_label(n) for n in singles if gaps[n]["winner"] == both]
    if smaller:
        overfit = f"contradicted: the pair's gap is smaller than that of {list_text(smaller, '{}')}"
    elif len(larger) == len(singles):
        overfit = f"supported: the pair's gap is larger than that of {list_text(larger, '{}')}"
    elif larger:
        overfit = (f"not established: the pair's gap is larger than that of {list_text(larger, '{}')} but not "
                   "established larger than the other single norm's, so the pair overfits no more than that norm alone")
    else:
        overfit = "not established: no difference in the gap is established by these seeds"
    glued = {"claim_together_unnecessary": unnecessary, "claim_together_overfit": overfit,
             "claim_together_best_single": _label(best), "claim_together_acc_p": gain["p"],
             "claim_together_acc_g": gain["g"]}
    for n in (*singles, both):
        key = n.replace("+", "_")
        glued[f"claim_together_acc_{key}"] = ci_text(acc(n), "{:.2%}")
        glued[f"claim_together_gap_{key}"] = ci_text(gap(n))
    for n in singles:
        glued[f"claim_together_gap_vs_{n}"] = gaps[n]["text"]
    return glued


def claim_batch_size(table, metric="val_error"):
    """'Batch norm performs better with larger batch sizes, layer norm with small ones', on the
    smallest and largest batch size of a batch-size sweep (lower metric is better): batch norm at
    the largest vs the smallest batch; layer vs batch norm at the smallest; batch vs layer at the largest."""
    small, large = table["batch_size"].min(), table["batch_size"].max()
    s = lambda norm, bs: _samples(table, metric, norm=norm, batch_size=bs)  # noqa: E731
    ends = ("the largest batch", "the smallest batch")
    bn_large = compare(s("batch", large), s("batch", small), ends)
    ln_small = compare(s("layer", small), s("batch", small), ("layer", "batch"))
    bn_at_large = compare(s("batch", large), s("layer", large), ("batch", "layer"))
    ln_flat = compare(s("layer", small), s("layer", large), ends[::-1])
    parts = {"batch norm better at the largest than at the smallest batch": bn_large["winner"],
             "layer norm better than batch norm at the smallest batch": ln_small["winner"],
             "batch norm better than layer norm at the largest batch": bn_at_large["winner"]}
    wanted = (ends[0], "layer", "batch")
    support = [p for (p, w), good in zip(parts.items(), wanted) if w == good]
    contra = [p for (p, w), good in zip(parts.items(), wanted) if w not in ("tie", good)]
    return {"claim_batch_verdict": outcome(support, contra),
            "claim_batch_bn_large_vs_small": bn_large["text"], "claim_batch_ln_vs_bn_small": ln_small["text"],
            "claim_batch_bn_vs_ln_large": bn_at_large["text"], "claim_batch_ln_small_vs_large": ln_flat["text"],
            "claim_batch_small": int(small), "claim_batch_large": int(large),
            **{f"claim_batch_{n}_{k}": ci_text(s(n, bs), "{:.2%}")
               for n in ("batch", "layer") for k, bs in (("small", small), ("large", large))}}
