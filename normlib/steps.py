"""The five steps of the study, one function per kind of page, so that each notebook of steps 1-5 is a
narrated script of a few calls:

- train_step(notebook, norm, P): steps 1 (batch norm) and 3 (layer norm): tune, select each condition's
  learning rate, train the primary and confirmation runs, record what ran, glue the curves;
- analyse_step(source, norm): steps 2 and 4: that norm against no normalization on the three criteria;
- compare_step(P): step 5: batch norm against layer norm, the whole table of primary verdicts, winners,
  exploratory conditions.

Every verdict of every page comes from one table, `verdict_table`: the pre-declared family of primary
comparisons (normlib.verdicts), Holm-adjusted as a whole and confirmed on fresh seeds, computed from the
same runs wherever it is asked for. Its glued keys are "verdict__{network}__{measure}__{first}__{second}"
on every page that states a verdict, so a test can check that no two pages disagree.
"""
import html
import math
from types import SimpleNamespace

import pandas as pd

from normlib import conclusions, figures, metrics, verdicts
from normlib.protocol import (PRIMARY_NORMS, Protocol, curves_frame, rate_scores, read_record, steps_frame,
                              successive_halving, tuning_table, write_record)
from normlib.report import glue_figure, glue_html, glue_value, glue_values
from normlib import progress
from normlib.trials import run_configs

NETWORKS = figures.ARCH_LABELS


# ----------------------------------------------------------------------------
# the runs of a protocol


def run_protocol(proto, norms, workers=0, force=False):
    """Tune (successive halving over proto.lrs, protocol.successive_halving), select and train `norms` under
    `proto`: SimpleNamespace(tuning (the Histories of every rung), rungs ([(budget, {(arch, norm): {lr:
    score}})]), lrs ({(arch, norm): lr}), primary, confirm)."""
    conditions = [(arch, norm) for arch in proto.archs for norm in norms]
    n_tuning = sum(size for _, size in proto.tuning_plan(norms)) * len(conditions) * len(proto.tuning_seeds)
    progress.expect(n_tuning + len(conditions) * (len(proto.seeds) + len(proto.confirm_seeds)))
    tuning = []

    def evaluate(alive, budget):  # one rung: its runs go to the pool together
        histories = run_configs(proto.rung(alive, budget), workers=workers, force=force)
        tuning.extend(histories)
        return rate_scores(histories)

    if proto.lr is None:
        lrs, rungs = successive_halving({c: proto.lrs for c in conditions}, proto.tuning_budgets, evaluate)
    else:
        lrs, rungs = {c: proto.lr for c in conditions}, []
    primary, confirm = proto.runs(norms, lrs, "primary"), proto.runs(norms, lrs, "confirm")
    done = run_configs(primary + confirm, workers=workers, force=force)
    return SimpleNamespace(tuning=tuning, rungs=rungs, lrs=lrs, primary=done[:len(primary)],
                           confirm=done[len(primary):])


def lr_summary(lrs, grid=None):
    """How the rates were chosen and what they are: with the grid they were tuned on, 'each condition at
    its own rate, selected from the grid by successive halving on separate tuning seeds (MLP: no
    normalization 0.1, batch norm 0.03; CNN: ...)', a rate at the edge of the grid marked "(edge of the
    grid)"; without (lr set), 'every condition at the rate this run set, 0.1 (no tuning)'."""
    if not grid:
        return f"every condition at the rate this run set, {', '.join(sorted({f'{lr:g}' for lr in lrs.values()}))} (no tuning)"
    by_arch = {}
    for (arch, norm), lr in lrs.items():
        edge = proto_edge(lr, grid)
        by_arch.setdefault(arch, []).append(f"{figures.norm_label(norm)} {lr:g}" + (" (edge of the grid)" if edge else ""))
    rates = "; ".join(f"{NETWORKS.get(a, a)}: {', '.join(v)}" for a, v in by_arch.items())
    return f"each condition at its own rate, selected from the grid by successive halving on separate tuning seeds ({rates})"


def proto_edge(lr, grid):
    return len(grid) > 1 and lr in (min(grid), max(grid))


def lr_table(runs, proto):
    """The tuning of each network and condition: the rates of each rung (its budget in steps) with their mean
    best validation loss over the tuning seeds, the selected rate, failed tuning runs, and whether the
    selected rate lies at the edge of the grid."""
    if not runs.tuning:
        return pd.DataFrame([{"network": NETWORKS[a], "condition": figures.norm_label(n), "learning rate": f"{lr:g} (set)"}
                             for (a, n), lr in runs.lrs.items()])
    t = tuning_table(runs.tuning)
    rows = []
    for (arch, norm), lr in runs.lrs.items():
        g = t[(t["arch"] == arch) & (t["norm"] == norm)]
        row = {"network": NETWORKS[arch], "condition": figures.norm_label(norm), "selected rate": f"{lr:g}"}
        for i, (steps, rung) in enumerate(g.groupby("steps", sort=True)):
            means = rung.groupby("lr")["best_val_loss"].mean()
            row[f"rung {i + 1}: steps"] = int(steps)
            row[f"rung {i + 1}: best val loss by rate"] = ", ".join(f"{x:g}: {v:.3f}" for x, v in means.items())
        row["failed tuning runs"] = f"{int(g['failed'].sum())} of {len(g)}"
        row["at the grid's edge"] = "yes: the best rate may lie beyond it" if proto_edge(lr, proto.lrs) else "no"
        rows.append(row)
    return pd.DataFrame(rows)


def tuning_text(proto, runs):
    """How the rates were tuned, in one sentence with the numbers of this run."""
    if not runs.tuning:
        return f"no tuning: every condition trained at the rate this run set, {proto.lr:g}"
    sizes = [len(next(iter(scores.values()))) for _, scores in runs.rungs]
    rungs = "; ".join(f"{n} rate{'s' if n > 1 else ''} at {b:.0%} of the steps" for (b, _), n in zip(runs.rungs, sizes))
    full = len(proto.lrs) * len(proto.tuning_seeds)
    spent = sum(b * n for (b, _), n in zip(runs.rungs, sizes)) * len(proto.tuning_seeds)
    return (f"successive halving over {len(proto.lrs)} rates on {len(proto.tuning_seeds)} tuning seed(s) ({rungs}; the "
            f"better half of each rung goes on): {spent:.2g} full-run equivalents per condition, against {full} for "
            f"the whole grid at the full budget")


def train_step(notebook, norm, P):
    """Step 1 (norm "batch") or 3 ("layer"): the runs of none and `norm` under the notebook's protocol,
    recorded for the analysis notebook. Glues: n_trials, n_seeds, n_confirm_seeds, n_tuning_runs,
    train_minutes, n_diverged, evals_per_epoch, lr_{arch}_{c}, smoothing_window, tuning_text, plateau_text,
    figures fig_lr, fig_val_loss, fig_train_loss, fig_step_loss. Returns the tables to show (lrs, runs,
    plateau)."""
    proto = Protocol.from_params(P)
    norms = ("none", norm)
    runs = run_protocol(proto, norms, P.get("workers", 0), P.get("force", False))
    write_record(notebook, proto, norms, runs.lrs, runs.rungs)
    everything = runs.tuning + runs.primary + runs.confirm
    glue_values({"n_trials": len(everything), "n_seeds": len(proto.seeds), "n_confirm_seeds": len(proto.confirm_seeds),
                 "n_tuning_runs": len(runs.tuning), "train_minutes": sum(h.wall_time for h in everything) / 60,
                 "n_diverged": sum(metrics.failed(h) for h in everything), "evals_per_epoch": proto.evals_per_epoch,
                 "smoothing_window": 20, "lr_summary": lr_summary(runs.lrs, None if proto.lr else proto.lrs),
                 "tuning_text": tuning_text(proto, runs),
                 **{f"lr_{a}_{n}": float(lr) for (a, n), lr in runs.lrs.items()}})
    glue_figure("fig_lr", figures.lr_curves(tuning_table(runs.tuning), runs.lrs) if runs.tuning
                else figures.note(f"No tuning: every condition trained at the learning rate {proto.lr:g}."))
    curves = curves_frame(runs.primary)
    glue_figure("fig_val_loss", figures.curves(curves, "val_loss"))
    glue_figure("fig_train_loss", figures.curves(curves, "train_loss"))
    glue_figure("fig_step_loss", figures.curves(steps_frame(runs.primary, window=20), "smoothed", x="step", logy=True))
    measures = metrics.measures_table(runs.primary)
    glue_value("plateau_text", plateau_text(measures))
    summary = verdicts.condition_summary(measures, ("best_test_acc", "final_val_loss"))
    return SimpleNamespace(lrs=lr_table(runs, proto), runs=summary_table(summary), plateau=plateau_table(measures),
                           proto=proto, runs_of=runs)


# ----------------------------------------------------------------------------
# the verdicts: one table for every page


def verdict_table(proto, norms=PRIMARY_NORMS, workers=0):
    """The runs of `norms` under `proto` (read from the cache; computed if absent), measured, compared:
    SimpleNamespace(runs, measures (primary seed set), fresh (confirmation set, at the primary set's
    convergence levels), levels, summary, table (primary family, Holm, merged with its confirmation),
    exploratory, correlations)."""
    runs = run_protocol(proto, norms, workers)
    primary_norms = [n for n in norms if n in PRIMARY_NORMS]
    levels = metrics.convergence_levels([h for h in runs.primary if h.config["norm"] in primary_norms])
    measures = metrics.measures_table(runs.primary, levels)
    fresh = metrics.measures_table(runs.confirm, levels)
    primary = verdicts.primary_table(measures[measures["norm"].isin(primary_norms)])
    confirmation = verdicts.primary_table(fresh[fresh["norm"].isin(primary_norms)])
    table = verdicts.confirm(primary, confirmation)
    return SimpleNamespace(runs=runs, measures=measures, fresh=fresh, levels=levels, table=table,
                           summary=verdicts.condition_summary(measures),
                           exploratory=verdicts.exploratory_table(measures),
                           correlations=verdicts.criterion_correlations(measures))


def glue_verdicts(v, pairs=None):
    """Glue the verdicts of v.table (only `pairs` of it, if given) under the shared keys
    verdict__{network}__{measure}__{first}__{second} (the confirmed claim, or "not established") and
    verdicts.values_to_glue's numbers; the per-condition summary; the levels."""
    t = v.table if pairs is None else v.table[[(a, b) in pairs for a, b in zip(v.table["first"], v.table["second"])]]
    glue_values(verdicts.values_to_glue(t))
    for r in t.itertuples():
        glue_value(f"verdict__{r.network}__{r.measure}__{r.first}__{r.second}", str(r.claim))
    glue_values(verdicts.summary_values_to_glue(v.summary))
    glue_values({f"{arch}_level": float(level) for arch, level in v.levels.items()})


def results_html(table):
    """The primary verdicts as one compact table (the introduction's): a row per network and criterion,
    a column per pair, each cell the difference with its 95% interval, the verdict, and whether fresh
    seeds confirmed it."""
    pairs = verdicts.PRIMARY_PAIRS
    head = "".join(f"<th>{html.escape(verdicts.SHORT[a])} vs {html.escape(verdicts.SHORT[b])}</th>" for a, b in pairs)
    body = []
    for (network, measure), g in table.groupby(["network", "measure"], sort=False):
        m = verdicts.MEASURES[measure]
        cells = []
        for a, b in pairs:
            r = g[(g["first"] == a) & (g["second"] == b)]
            if r.empty:
                cells.append("<td></td>")
                continue
            r = r.iloc[0]
            ci = metrics.format_ci(r["diff"], r["diff_lo"], r["diff_hi"], verdicts._signed(m))
            verdict = verdicts.short_verdict(r)
            status = {"confirmed": "confirmed", "not confirmed": "not confirmed on fresh seeds"}.get(r["confirmation"], "")
            text = f"<b>{html.escape(verdict)}</b>" if r["confirmation"] == "confirmed" else html.escape(verdict)
            cells.append(f"<td>{html.escape(ci)}<br>{text}{'<br><i>' + status + '</i>' if status else ''}</td>")
        label = f"{html.escape(m.criterion)}<br><small>{html.escape(verdicts.SHORT_MEASURES.get(measure, measure))}</small>"
        body.append(f"<tr><td>{html.escape(NETWORKS.get(network, network))}</td><td>{label}</td>{''.join(cells)}</tr>")
    return (f'<div class="normlab-table"><table><thead><tr><th>network</th><th>criterion</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def protocol_params(proto):
    """The protocol a page analysed, compactly: parameter and value, two pairs to a row."""
    shown = {"lr": "selected per condition" if proto.lr is None else proto.lr,
             "init_scale": "PyTorch's default" if proto.init_scale is None else proto.init_scale}
    items = [(k, shown.get(k, ", ".join(map(str, v)) if isinstance(v, list) else v)) for k, v in proto.to_dict().items()]
    half = (len(items) + 1) // 2
    rows = [{"parameter": a[0], "value": str(a[1]), " parameter": b[0] if b else "", " value": str(b[1]) if b else ""}
            for a, b in zip(items[:half], items[half:] + [None])]
    return pd.DataFrame(rows)


def findings_html(rows):
    """The verdicts of rows of v.table as an HTML list, one item per network and criterion: the verdict,
    the difference with its 95% interval, Holm's p and what the fresh seeds said."""
    items = []
    for r in rows.to_dict("records"):
        m = verdicts.MEASURES[r["measure"]]
        fresh = {"confirmed": "confirmed on fresh seeds", "not confirmed": "not confirmed on fresh seeds",
                 "not established": "nothing to confirm"}[r["confirmation"]]
        items.append(f"<li><b>{NETWORKS.get(r['network'], r['network'])}, {m.criterion}</b> ({html.escape(m.label)}): "
                     f"{html.escape(verdicts.reader_line(r))}; {fresh}.</li>")
    return "<ul>" + "".join(items) + "</ul>"


def plateaus(measures):
    """{(arch, norm): (median run's relative change of the validation loss over the last quarter, verdict)}
    over the primary seeds (metrics.plateau)."""
    return {key: metrics.plateau(g["last_quarter_change"]) for key, g in measures.groupby(["arch", "norm"], sort=False)}


def plateau_table(measures):
    """Per network and condition: the median run's last-quarter change, the range over runs, the verdict."""
    rows = []
    for (arch, norm), (change, verdict) in plateaus(measures).items():
        x = measures[(measures["arch"] == arch) & (measures["norm"] == norm)]["last_quarter_change"]
        rows.append({"network": NETWORKS.get(arch, arch), "condition": figures.norm_label(norm), "runs": len(x),
                     "last quarter, median run": f"{change:+.1%}",
                     "range over runs": f"{math.expm1(x.min()):+.1%} to {math.expm1(x.max()):+.1%}",
                     f"plateau (within ±{metrics.PLATEAU_TOLERANCE:.0%})": verdict})
    return pd.DataFrame(rows)


def plateau_text(measures):
    """One sentence: every condition plateaued (with the range of the median changes), or which did not."""
    found = plateaus(measures)
    bad = {k: v for k, v in found.items() if v[1] != "plateaued"}
    tol = f"within ±{metrics.PLATEAU_TOLERANCE:.0%}"
    if not bad:
        changes = [c for c, _ in found.values()]
        return (f"every condition plateaued: over the last quarter of its steps the median run's validation loss "
                f"changed by {min(changes):+.1%} to {max(changes):+.1%} ({tol})")
    return ("not every condition plateaued: " + "; ".join(f"{NETWORKS.get(a, a)} {figures.norm_label(n)} {v} "
                                                         f"({c:+.1%} over the last quarter)" for (a, n), (c, v) in bad.items())
            + f" (a plateau: {tol})")


def detectable_text(table):
    """What the primary comparisons can detect, per criterion and network: the largest over the pairs of the
    smallest difference each detects with 80% power at Holm's first level (verdicts.comparison_table), and
    on the fresh seeds for the comparisons to confirm."""
    parts = []
    for measure, g in table.groupby("measure", sort=False):
        m = verdicts.MEASURES[measure]
        by = [f"{NETWORKS.get(n, n)} {m.fmt.format(d)}" for n, d in g.groupby("network", sort=False)["detectable"].max().items()
              if math.isfinite(d)]
        if by:
            parts.append(f"{verdicts.SHORT_MEASURES.get(measure, measure)} {', '.join(by)}")
    fresh = table["detectable_fresh"].dropna() if "detectable_fresh" in table else []
    return ("with 80% power at the level Holm's first step uses (0.05 / " + str(len(table)) + "), from the spread of "
            "these runs, a comparison detects a true difference of at least (the largest over its pairs): "
            + "; ".join(parts) + (f"; the fresh seeds detect, for the {len(fresh)} comparisons they confirm or not, "
                                  "the sizes in the table's last column" if len(fresh) else ""))


def levels_text(levels):
    """'MLP 0.361, CNN 0.334'"""
    return ", ".join(f"{NETWORKS.get(a, a)} {level:.3f}" for a, level in levels.items())


def summary_table(summary):
    """condition_summary for the reader: one row per network x condition, one column per measure."""
    rows = {}
    for r in summary.itertuples():
        key = (NETWORKS.get(r.arch, r.arch), figures.norm_label(r.norm))
        row = rows.setdefault(key, {"network": key[0], "condition": key[1], "runs": r.n, "diverged": r.diverged})
        m = verdicts.MEASURES.get(r.measure)
        text = metrics.format_ci(r.mean, r.lo, r.hi, m.fmt if m else "{:.3f}")
        if r.measure == "steps_to_level" and r.reached is not None and not pd.isna(r.reached):
            text += f" ({r.reached} reached)"
        row[m.label if m else r.measure.replace("_", " ")] = text
    return pd.DataFrame(list(rows.values()))


def analyse_step(source, norm, workers=0):
    """Step 2 (norm "batch", source "step1_bn_training") or 4 ("layer", "step3_ln_training"): `norm`
    against no normalization under the protocol the training notebook ran. The primary family needs all
    three conditions, so the other norm's runs under that protocol are read (or trained) too.
    Glues the pair's verdicts, the summary, the levels, n_seeds and the figures fig_val_loss, fig_criteria.
    Returns SimpleNamespace(verdicts (reader's table of this pair), summary, exploratory, v)."""
    proto, _ = read_record(source)
    v = verdict_table(proto, workers=workers)
    pair = [(norm, "none")]
    glue_verdicts(v, pair)
    rows = v.table[(v.table["first"] == norm) & (v.table["second"] == "none")]
    glue_values({"n_seeds": len(proto.seeds), "n_confirm_seeds": len(proto.confirm_seeds),
                 "confirm_split_seed": proto.confirm_split_seed, "levels_text": levels_text(v.levels),
                 "detectable_text": detectable_text(v.table),
                 "n_confirmed": int((rows["confirmation"] == "confirmed").sum()), "n_comparisons": len(rows)})
    glue_html("findings", findings_html(rows))
    mine = [h for h in v.runs.primary if h.config["norm"] in ("none", norm)]
    glue_figure("fig_val_loss", figures.curves(curves_frame(mine), "val_loss", levels=v.levels))
    glue_figure("fig_criteria", figures.criteria(v.measures[v.measures["norm"].isin(["none", norm])]))
    explore = v.exploratory[(v.exploratory["first"].isin([norm, "none"])) & (v.exploratory["second"].isin([norm, "none"]))]
    return SimpleNamespace(protocol=protocol_params(proto), verdicts=verdicts.reader_table(rows),
                           summary=summary_table(v.summary[v.summary["norm"].isin(["none", norm])]),
                           exploratory=verdicts.reader_table(explore) if len(explore) else pd.DataFrame(), v=v)


def accuracy_text(summary):
    """Test accuracy at the best-validation checkpoint per network and condition: 'MLP: no normalization
    87.10% [86.8%, 87.4%], ...; CNN: ...'."""
    acc = summary[summary["measure"] == "best_test_acc"]
    parts = {}
    for r in acc.itertuples():
        parts.setdefault(r.arch, []).append(f"{figures.norm_label(r.norm)} {metrics.format_ci(r.mean, r.lo, r.hi, '{:.2%}')}")
    return "; ".join(f"{NETWORKS.get(a, a)}: {', '.join(v)}" for a, v in parts.items())


def compare_step(P, sources=("step1_bn_training", "step3_ln_training")):
    """Step 5: under the protocol step 1 ran (step 3's, when it differs, is named in protocol_note), every
    condition on every criterion: the
    whole primary table with its confirmation, the winners per criterion, batch norm vs layer norm,
    exploratory conditions (P["extra_norms"], e.g. weight and group norm).
    Glues every verdict (shared keys), headlines (confirmed only), winners, and figures."""
    protos = [read_record(s)[0] for s in sources]
    proto = protos[0]  # step 1's protocol: the comparison's, for every condition
    differ = [k for k, a in protos[0].to_dict().items() if protos[1].to_dict()[k] != a]
    glue_value("protocol_note", "Steps 1 and 3 ran the same protocol." if not differ else
               f"Steps 1 and 3 ran different protocols ({', '.join(differ)} differ): this page compares every "
               f"condition under step 1's, so its layer-norm runs are not step 3's (they are trained here if absent).")
    extra = tuple(P.get("extra_norms", ()))
    v = verdict_table(proto, PRIMARY_NORMS + extra, P.get("workers", 0))
    glue_verdicts(v)
    conclusions.write("step5_comparison", conclusions.from_primary_table(v.table))  # for the conclusions' table
    lines = verdicts.headlines(v.table, NETWORKS)
    won = verdicts.winners(v.table, "confirmed_winner")
    glue_values({"n_seeds": len(proto.seeds), "n_confirm_seeds": len(proto.confirm_seeds),
                 "n_primary": len(v.table), "n_established": int(v.table["established"].sum()),
                 "detectable_text": detectable_text(v.table),
                 "n_confirmed": int((v.table["confirmation"] == "confirmed").sum()),
                 "headlines": "\n".join(f"- {line}" for line in lines) or "- none: no primary verdict was confirmed",
                 **{f"winner__{r.network}__{r.measure}": r.verdict for r in won.itertuples()},
                 "extra_norms": ", ".join(figures.norm_label(n) for n in extra) or "none (the full profile adds weight and group norm)"})
    glue_values({"levels_text": levels_text(v.levels), "accuracy_text": accuracy_text(v.summary),
                 "budget_text": f"the MLP ({' x '.join(map(str, proto.hidden))}) for {proto.mlp_epochs} epoch(s) and the "
                                f"CNN ({' and '.join(map(str, proto.channels))} channels, a fully connected layer of "
                                f"{proto.cnn_hidden}) for {proto.cnn_epochs} epoch(s), on {proto.train_size or '55,000'} "
                                f"training images",
                 "lr_summary": lr_summary(v.runs.lrs, None if proto.lr else proto.lrs),
                 "tuning_text": tuning_text(proto, v.runs)})
    glue_value("plateau_text", plateau_text(v.measures))
    glue_html("headlines_html", "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>" if lines else
              "<p>No primary verdict was confirmed on the fresh seeds.</p>")
    glue_html("results_table", results_html(v.table))
    glue_html("findings", findings_html(v.table))
    glue_figure("fig_val_loss", figures.curves(curves_frame(v.runs.primary), "val_loss", levels=v.levels))
    glue_figure("fig_criteria", figures.criteria(v.measures))
    glue_figure("fig_verdicts", figures.verdict_intervals(v.table))
    glue_figure("fig_lr", figures.lr_curves(tuning_table(v.runs.tuning), v.runs.lrs) if v.runs.tuning
                else figures.note(f"No tuning: every condition trained at the learning rate {proto.lr:g}."))
    return SimpleNamespace(protocol=protocol_params(proto), table=verdicts.reader_table(v.table),
                           winners=verdicts.reader_winners(won), summary=summary_table(v.summary),
                           plateau=plateau_table(v.measures),
                           exploratory=verdicts.reader_table(v.exploratory) if len(v.exploratory) else pd.DataFrame(),
                           correlations=v.correlations, v=v)
