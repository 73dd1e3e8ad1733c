"""A small vision transformer (normlib.models.ViT: 16 patches of 7 x 7, Dosovitskiy et al. 2021) with layer
norm and batch norm before the residual branches (pre-LN, pre-BN) and after the residual sums (post-LN,
post-BN), and without normalization (Xiong et al. 2020, fig. 1; batch norm over the batch and the tokens,
Shen et al. 2020, sec. 3). The tutorial's claim "layer norm suits sequence models", on a sequence of tokens.

Trials. (a) Tuning: successive halving (normlib.protocol.successive_halving) over the grid `lrs` for every
condition, on the tuning seeds, with warmup; a rung is the same run with max_steps = its budget's share of
the steps (its own schedule), scored by the mean best validation loss over the tuning seeds (a failed run
at chance). (b) The comparison: every condition at its selected rate on `seeds` (disjoint from the tuning
seeds), with warmup. (c) The sweep: pre-LN and post-LN (and pre-BN, post-BN with sweep_bn) at each rate
of `sweep_lrs`, with warmup and without, on `seeds`. Identical configs are one cached trial, so a sweep run
at a condition's selected rate with warmup is its comparison run.

A run *trains* when its final validation accuracy (failure rule: a non-finite run at chance) reaches
acc_threshold: runs that blow up or stall stay finite, so "did not diverge" is not "trained".

The family, declared before the runs (Holm over all rows): layer norm against batch norm at each placement
(final validation error; predicted: layer norm lower); at the highest sweep rate, the pre-norm trains in more
runs than the post-norm, with warmup and without (Fisher's exact test, one-sided); warmup lowers post-LN's
error at that rate more than pre-LN's (Welch on the per-seed gains, Xiong et al. 2020: post-LN needs
warmup); every normalized condition against none, each at its selected rate (final validation error).
"""
from types import SimpleNamespace

import pandas as pd

from normlib import conclusions, metrics, params, study_figures
from normlib.data import N_TRAIN
from normlib.figures import NORM_COLORS
from normlib.metrics import CHANCE_ACC, completed_curve
from normlib.models import HEADS
from normlib.protocol import curves_frame, rungs_table, successive_halving, tuning_table
from normlib.report import glue_figure, glue_values
from normlib.studies import common
from normlib.studies.common import difference, glue_family, level_text, list_text, points, runs_text, shares
from normlib.trials import run_trials

CONDITIONS = {  # condition -> (norm, norm_position): "before" = pre-norm, "after" = post-norm
    "none": ("none", "before"),
    "pre-LN": ("layer", "before"),
    "post-LN": ("layer", "after"),
    "pre-BN": ("batch", "before"),
    "post-BN": ("batch", "after"),
}
PLACEMENTS = {"LN": ("pre-LN", "post-LN"), "BN": ("pre-BN", "post-BN")}  # the swept pairs (pre, post)


def condition_of(config):
    """The condition of a TrainConfig's dict (every placement of no normalization is the same network)."""
    if config["norm"] == "none":
        return "none"
    return next(c for c, v in CONDITIONS.items() if v == (config["norm"], config["norm_position"]))


def swept(P):
    """The conditions of the sweep: pre-LN and post-LN, and pre-BN and post-BN with sweep_bn."""
    return [c for pair, conds in PLACEMENTS.items() if pair == "LN" or P["sweep_bn"] for c in conds]


# ---------------------------------------------------------------------------------------------
# the trials

def check(P):
    """The validated parameters (normlib.params: e.g. seeds disjoint from tuning_seeds), and what this study
    needs beyond the rules: the ViT's widths, a warmup to compare with none, a threshold above chance."""
    P = params.validate(P)
    if len(set(P["hidden"])) != 1 or P["hidden"][0] % HEADS:
        raise params.ParameterError(f"parameter 'hidden' = {P['hidden']}: the ViT needs one width per block, all "
                                    f"equal and divisible by its {HEADS} heads")
    if P["warmup"] <= 0:
        raise params.ParameterError(f"parameter 'warmup' = {P['warmup']}: must be above 0 (the study compares "
                                    f"training with this warmup and without)")
    if P["acc_threshold"] <= CHANCE_ACC:
        raise params.ParameterError(f"parameter 'acc_threshold' = {P['acc_threshold']}: must be above chance "
                                    f"({CHANCE_ACC:.0%}), or every run trains")
    return P


def steps(P):
    """Optimizer steps of a full run (the trainer drops the last partial batch of an epoch)."""
    return (P["train_size"] or N_TRAIN - P["val_size"]) // P["batch_size"] * P["epochs"]


def config(P, condition, lr, seed, *, warmup=None, budget=1.0):
    """The TrainConfig of one run: the ViT of P in `condition` at peak rate lr; warmup: P's unless given;
    budget < 1: a tuning rung, max_steps = that share of the full run's steps (its own schedule)."""
    norm, position = CONDITIONS[condition]
    return common.config(P, arch="vit", norm=norm, norm_position=position, lr=lr, seed=seed,
                         warmup=P["warmup"] if warmup is None else warmup,
                         max_steps=0 if budget >= 1 else max(1, round(budget * steps(P))))


def rung_scores(histories):
    """{condition: {lr: mean best validation loss over the tuning seeds}} (a failed run at chance)."""
    t = tuning_table(histories).assign(condition=[condition_of(h.config) for h in histories])
    means = t.groupby(["condition", "lr"])["best_val_loss"].mean()
    return {c: {float(lr): float(v) for (cond, lr), v in means.items() if cond == c} for c in CONDITIONS
            if c in set(t["condition"])}


def tune(P, run):
    """Successive halving over P["lrs"] for every condition on the tuning seeds: ({condition: rate},
    rungs [(budget, {condition: {rate: score}})], the rungs' Results). run: configs -> Results."""
    done = []

    def evaluate(alive, budget):
        results = run([config(P, c, lr, s, budget=budget) for c, rates in alive.items() for lr in rates
                       for s in P["tuning_seeds"]])
        done.extend(results)
        return rung_scores([r.history for r in results])

    selected, rungs = successive_halving({c: P["lrs"] for c in CONDITIONS}, P["tuning_budgets"], evaluate)
    return selected, rungs, done


def plan(P, selected):
    """(comparison, sweep, planned): every condition at its selected rate on the seeds, with warmup; the swept
    conditions at every sweep rate, with warmup and without, on the seeds; planned: both, each config once."""
    comparison = [config(P, c, selected[c], s) for c in CONDITIONS for s in P["seeds"]]
    sweep = [config(P, c, lr, s, warmup=w) for c in swept(P) for lr in P["sweep_lrs"]
             for w in (P["warmup"], 0.0) for s in P["seeds"]]
    return comparison, sweep, list(dict.fromkeys(comparison + sweep))


# ---------------------------------------------------------------------------------------------
# the measures

def tabulate(histories, threshold):
    """One row per run: condition, rate, warmup, seed; the final validation accuracy and error, the best
    validation loss and the test error (failure rule: a failed run at chance); failed (non-finite), trains
    (final accuracy >= threshold), last_quarter_change (plateau evidence)."""
    rows = []
    for h in histories:
        c = completed_curve(h)
        acc = float(c.val_acc[-1]) if len(c.val_acc) else CHANCE_ACC
        rows.append({"condition": condition_of(h.config), "lr": h.config["lr"], "warmup": h.config["warmup"],
                     "seed": h.config["seed"], "final_val_acc": acc, "val_error": 1 - acc,
                     "best_val_loss": float(c.val_loss.min()) if len(c.val_loss) else metrics.CHANCE_LOSS,
                     "test_error": 1 - CHANCE_ACC if c.failed else 1 - float(h.test_acc), "failed": c.failed,
                     "trains": acc >= threshold, "last_quarter_change": metrics.last_quarter_change(c)})
    return pd.DataFrame(rows)


def warmup_gains(sweep, condition, lr, warmup):
    """Per seed, the final validation error without warmup minus with it, at rate lr (positive: warmup helps)."""
    t = sweep[(sweep["condition"] == condition) & (sweep["lr"] == lr)].pivot_table(
        index="seed", columns="warmup", values="val_error")
    return (t[0.0] - t[warmup]).dropna().tolist() if {0.0, warmup} <= set(t.columns) else []


def family(comparison, sweep, high_lr, warmup, bn=False):
    """The declared family (module docstring); comparison and sweep: tabulate's tables; high_lr: the highest
    sweep rate; bn: the sweep has pre-BN and post-BN too (their placement rows join the family)."""
    err = lambda c: comparison[comparison["condition"] == c]["val_error"]  # noqa: E731
    at = lambda c, w: sweep[(sweep["condition"] == c) & (sweep["lr"] == high_lr) & (sweep["warmup"] == w)]  # noqa: E731
    rows = [difference(f"vit_ln_vs_bn_{p}", f"{p}-LN's final validation error lower than {p}-BN's (each at its "
                       "selected rate)", err(f"{p}-LN"), err(f"{p}-BN"), predicted=-1) for p in ("pre", "post")]
    for pair in ("LN", "BN") if bn else ("LN",):
        pre, post = PLACEMENTS[pair]
        suffix = "" if pair == "LN" else "_bn"
        for w, arm, words in ((warmup, "warmup", "with warmup"), (0.0, "no_warmup", "without warmup")):
            rows.append(shares(f"vit_pre_trains_{arm}{suffix}", f"at rate {high_lr:g} {words}, {pre} trains in more "
                               f"runs than {post}", at(pre, w)["trains"], at(post, w)["trains"]))
    rows.append(difference("vit_warmup_post_more", f"at rate {high_lr:g}, warmup lowers post-LN's final validation "
                           "error more than pre-LN's", warmup_gains(sweep, "post-LN", high_lr, warmup),
                           warmup_gains(sweep, "pre-LN", high_lr, warmup), predicted=1))
    for c in list(CONDITIONS)[1:]:
        rows.append(difference(f"vit_vs_none_{key(c)}", f"{c}'s final validation error lower "
                               "than without normalization (each at its selected rate)", err(c), err("none"),
                               predicted=-1))
    return common.family(rows)


def plateaus(comparison):
    """Per condition at its selected rate: the median relative change of the validation loss over the last
    quarter and its verdict (normlib.metrics.plateau)."""
    return {c: metrics.plateau(g["last_quarter_change"]) for c, g in comparison.groupby("condition", sort=False)}


# ---------------------------------------------------------------------------------------------
# the figures (normlib.study_figures): colour = the norm (the book's palette), line style = the placement

def style(condition):
    norm, position = CONDITIONS[condition]
    post = position == "after" and norm != "none"
    return {"color": NORM_COLORS.get(norm, "#333333"), "ls": "--" if post else "-", "marker": "^" if post else "o"}


def styles():
    return {c: style(c) for c in CONDITIONS}


# ---------------------------------------------------------------------------------------------
# the page

def key(condition):
    """"pre-LN" -> "pre_ln": the condition in a glue key."""
    return condition.lower().replace("-", "_")


def findings(P, selected, comparison, sweep, fam, plateau):
    """The page's glued numbers and sentences besides the family's (vit_* keys, n_seeds)."""
    claim = lambda prefix, words, yes, no: common.claim_words(fam, prefix, words, yes, no)  # noqa: E731
    normalized = list(CONDITIONS)[1:]
    return {
        **common.seed_count(P), "n_tuning_seeds": len(P["tuning_seeds"]), "vit_steps": steps(P),
        "vit_epochs": P["epochs"], "vit_train_size": P["train_size"] or N_TRAIN - P["val_size"],
        "vit_width": P["hidden"][0], "vit_depth": len(P["hidden"]), "vit_batch_size": P["batch_size"],
        "vit_grid": list_text(P["lrs"]), "vit_budgets": list_text(P["tuning_budgets"]),
        "vit_sweep_lrs": list_text(P["sweep_lrs"]), "vit_high_lr": float(max(P["sweep_lrs"])),
        "vit_warmup": points(P["warmup"], False), "vit_swept": list_text(swept(P), "{}"),
        "vit_threshold": points(P["acc_threshold"], False),
        "vit_selected": "; ".join(f"{c} {lr:g}" for c, lr in selected.items()),
        **{f"vit_err_{key(c)}": level_text(g["val_error"]) for c, g in comparison.groupby("condition", sort=False)},
        "vit_plateau": "; ".join(f"{c} {100 * ch:+.1f}% ({v})" for c, (ch, v) in plateau.items()),
        "vit_n_plateaued": sum(v == "plateaued" for _, v in plateau.values()), "vit_n_conditions": len(plateau),
        "vit_n_failed": int(comparison["failed"].sum() + sweep["failed"].sum()),
        "vit_n_not_training": int((~comparison["trains"]).sum()),
        "vit_claim_ln_vs_bn": claim("vit_ln_vs_bn_", {"pre": "the pre-norm placement", "post": "the post-norm "
                                    "placement"}, "supported at", "contradicted at"),
        "vit_claim_placement": claim("vit_pre_trains_", {"warmup": "with warmup", "no_warmup": "without warmup"},
                                     "supported", "contradicted"),
        "vit_claim_warmup": fam.set_index("key").loc["vit_warmup_post_more", "verdict"],
        "vit_claim_norm": claim("vit_vs_none_", {key(c): c for c in normalized}, "supported for", "contradicted for"),
    }


def tables(selected, comparison, sweep, plateau):
    """(summary, sweep summary): per condition at its selected rate, and per swept condition, rate and warmup."""
    summary = pd.DataFrame([{"condition": c, "learning rate": f"{selected[c]:g}",
                             "final validation error": level_text(g["val_error"]),
                             "test error": level_text(g["test_error"]),
                             "best validation loss": level_text(g["best_val_loss"], "loss"),
                             "runs that train": f"{int(g['trains'].sum())} of {len(g)}",
                             "diverged": int(g["failed"].sum()),
                             "last-quarter change (median)": f"{100 * plateau[c][0]:+.1f}%",
                             "plateau": plateau[c][1]} for c, g in comparison.groupby("condition", sort=False)])
    by_rate = pd.DataFrame([{"condition": c, "learning rate": f"{lr:g}", "warmup": points(w, False),
                             "final validation accuracy": level_text(g["final_val_acc"]),
                             "runs that train": f"{int(g['trains'].sum())} of {len(g)}",
                             "diverged": int(g["failed"].sum())}
                            for (c, lr, w), g in sweep.groupby(["condition", "lr", "warmup"], sort=False)])
    return summary, by_rate


def conclusion_rows(fam):
    """The family's verdicts between the norms, for the conclusions' table (normlib.conclusions): layer norm
    against batch norm and each against none, at each placement (the placement verdicts are the page's own)."""
    pairs = {"vit_ln_vs_bn_pre": ("layer", "batch", "pre"), "vit_ln_vs_bn_post": ("layer", "batch", "post"),
             **{f"vit_vs_none_{key(c)}": (CONDITIONS[c][0], "none", "pre" if CONDITIONS[c][1] == "before" else "post")
                for c in list(CONDITIONS)[1:]}}
    return [row for k, (a, b, placement) in pairs.items()
            for row in conclusions.from_family(fam, "vit", f"final validation error ({placement}-norm)", {k: (a, b)})]


def page(P):
    """The transformer page: tuning, comparison and sweep; glues the family (vit_* keys), findings, the cost
    and the figures fig_vit_curves and fig_vit_sweep; returns the tables it shows."""
    P = check(P)
    run = lambda configs: run_trials(configs, workers=P["workers"], force=P["force"])  # noqa: E731
    selected, rungs, tuned = tune(P, run)
    comparison_cfgs, sweep_cfgs, planned = plan(P, selected)
    results = dict(zip(planned, run(planned)))
    histories = lambda configs: [results[c].history for c in configs]  # noqa: E731
    comparison = tabulate(histories(comparison_cfgs), P["acc_threshold"])
    sweep = tabulate(histories(sweep_cfgs), P["acc_threshold"])
    fam = family(comparison, sweep, max(P["sweep_lrs"]), P["warmup"], bn=P["sweep_bn"])
    glue_family(fam)
    conclusions.write("study_transformer", conclusion_rows(fam))
    plateau = plateaus(comparison)
    everything = tuned + list(results.values())
    glue_values({**findings(P, selected, comparison, sweep, fam, plateau), "vit_runs": runs_text(everything),
                 "vit_core_seconds": float(sum(r.history.wall_time for r in everything)),
                 "vit_n_trials": len(everything),
                 "vit_n_shared": len(comparison_cfgs) + len(sweep_cfgs) - len(planned)})
    curves = curves_frame(histories(comparison_cfgs), keys=("norm", "norm_position", "seed"))
    curves = curves.assign(condition=[condition_of(r) for r in curves.to_dict("records")],
                           val_error=1 - curves["val_acc"])
    glue_figure("fig_vit_curves", study_figures.condition_curves(curves, styles()))
    shown = list(dict.fromkeys(sweep_cfgs + [c for c in comparison_cfgs if condition_of(c.to_dict()) in swept(P)]))
    glue_figure("fig_vit_sweep", study_figures.condition_sweep(tabulate(histories(shown), P["acc_threshold"]),
                                                               P["acc_threshold"], P["warmup"], styles()))
    summary, by_rate = tables(selected, comparison, sweep, plateau)
    return SimpleNamespace(verdicts=common.family_table(fam), summary=summary, sweep=by_rate,
                           rungs=rungs_table(rungs, selected, steps(P)), comparison=comparison, sweep_runs=sweep,
                           family=fam, selected=selected)
