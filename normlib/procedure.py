"""The pages about how the report was made: the procedure chapter (data, protocol, measures, the
parameters and workers of the run, software and hardware) and the cost appendix (execution times,
trials and where they trained, the benchmark). Each function glues what its page states and returns
the tables it shows; the facts come from normlib.provenance (the run manifest, the status files, the
machine) and from the code (normlib.protocol, normlib.verdicts, normlib.metrics)."""
from types import SimpleNamespace

import pandas as pd
import torch

from normlib import figures, metrics, params, provenance, verdicts
from normlib.data import CLASSES, load_fashion_mnist
from normlib.protocol import Protocol, protocol_table
from normlib.report import glue_figure, glue_value, glue_values
from normlib.trials import THREADS


def class_counts(splits):
    counts = pd.DataFrame({name: torch.bincount(y, minlength=len(CLASSES)).tolist()
                           for name, y in (("training", splits.y_train), ("validation", splits.y_val),
                                           ("test", splits.y_test))}, index=list(CLASSES))
    counts.loc["total"] = counts.sum()
    return counts.rename_axis("class").reset_index()


def measure_definitions():
    """The measures of the main comparison: criterion, measure, primary or secondary, which is better."""
    return pd.DataFrame([{"criterion": m.criterion, "measure": m.label,
                          "role": "primary" if name in verdicts.PRIMARY else "secondary (exploratory)",
                          "better": "lower" if m.lower_is_better else "higher", "test": m.test}
                         for name, m in verdicts.MEASURES.items()]).sort_values(["criterion", "role"])


def protocol_text(proto):
    """The protocol of steps 1-5 in one paragraph."""
    budgets = ", ".join(f"{b:.0%}" for b in proto.tuning_budgets)
    lr = (f"each condition at its own learning rate, selected from {', '.join(f'{x:g}' for x in proto.lrs)} by "
          f"successive halving on {len(proto.tuning_seeds)} tuning seed(s) (rungs at {budgets} of the steps)"
          if proto.lr is None else f"every condition at the learning rate {proto.lr:g}")
    warmup = f" after a linear warmup over {proto.warmup:.0%} of the steps" if proto.warmup else ""
    return (f"{proto.optimizer.upper()} (momentum {proto.momentum:g}, weight decay {proto.weight_decay:g}), "
            f"batch {proto.batch_size}, a {proto.schedule} schedule{warmup}, {lr}; the MLP "
            f"({' x '.join(map(str, proto.hidden))}) for {proto.mlp_epochs} and the CNN ({' and '.join(map(str, proto.channels))} "
            f"channels, a fully connected layer of {proto.cnn_hidden}) for {proto.cnn_epochs} epoch(s) on "
            f"{proto.train_size or 'all 55,000'} training images, the validation set evaluated {proto.evals_per_epoch} "
            f"times per epoch; "
            f"{len(proto.seeds)} seeds per condition in the comparison ({', '.join(map(str, proto.seeds))}) and "
            f"{len(proto.confirm_seeds)} in its confirmation ({', '.join(map(str, proto.confirm_seeds))}, split seed "
            f"{proto.confirm_split_seed}).")


def page(P):
    """The procedure chapter. With a pipeline run's manifest that describes this execution, the protocol
    and parameters of that run; on its own, every notebook's defaults."""
    splits = load_fashion_mnist(val_size=P["val_size"], train_size=P["train_size"])
    counts = class_counts(splits)
    total = counts.set_index("class").loc["total"]
    glue_values({"n_train": int(total["training"]), "n_val": int(total["validation"]), "n_test": int(total["test"]),
                 "data_fingerprint": splits.fingerprint, "pixel_mean": splits.mean, "pixel_std": splits.std})
    glue_figure("fig_examples", figures.examples(splits.x_train, splits.y_train, CLASSES))

    manifest = provenance.load_manifest()
    if not provenance.manifest_applies(manifest, "procedure", P):
        manifest = None
    proto = Protocol.from_params(params.validate(provenance.run_values(manifest, "step1_bn_training")))
    glue_values({"arch_mlp_hidden": " x ".join(map(str, proto.hidden)), "arch_cnn_c1": int(proto.channels[0]),
                 "arch_cnn_c2": int(proto.channels[1]), "arch_cnn_fc": int(proto.cnn_hidden)})  # the architecture chapter's
    glue_values({"protocol_text": protocol_text(proto), "n_seeds": len(proto.seeds),
                 "n_confirm_seeds": len(proto.confirm_seeds), "seeds": ", ".join(map(str, proto.seeds)),
                 "failure_rule": (f"A run that diverges (its loss becomes infinite or NaN) is a failed run: from then "
                                  f"on it counts as a classifier at chance, validation and test loss ln 10 = "
                                  f"{metrics.CHANCE_LOSS:.3f} and accuracy {metrics.CHANCE_ACC:.0%}. It never "
                                  f"reaches the convergence level, its setback is 1 and its test loss that of chance.")})
    if manifest:
        glue_values({"profile_name": manifest.get("profile", ""), "profile_description": manifest.get("description", ""),
                     "run_source": f"This report was built by the pipeline with profile {manifest.get('profile', '?')} "
                                   f"({manifest.get('description', '')}), started {manifest.get('started', '?')}"
                                   + (f", with overrides {', '.join(manifest['overrides'])}" if manifest.get("overrides") else "")
                                   + "." + provenance.reused_note(manifest)})
    else:
        glue_values({"profile_name": "none", "profile_description": "no pipeline run: every notebook with its defaults",
                     "run_source": "No run manifest describes this execution (the notebook ran on its own, not "
                                   "through the pipeline), so the tables show every notebook's default parameters."})
    pool = (manifest or {}).get("pool")
    glue_values({"pool_text": f"The trials of this run went to {pool['kind']} ({pool['scheduler']})." if pool else
                 "No notebook of this run trained (every result came from the cache), or the notebooks ran on "
                 "their own, each with its own local workers.", "trial_threads": THREADS})
    versions, machine = provenance.software_versions(), provenance.hardware()
    glue_values({f"{name.replace('-', '_')}_version": v for name, v in versions.items()})
    glue_values({("os_name" if k == "os" else k): v for k, v in machine.items()})
    software = pd.DataFrame([{"what": k, "value": v} for k, v in {**versions, **machine}.items()])
    return SimpleNamespace(counts=counts, protocol=protocol_table(proto), measures=measure_definitions(),
                           parameters=provenance.notebook_parameters(manifest), workers=provenance.pool_table(manifest),
                           software=software)


def cost_page(P):
    """The cost appendix: notebook times of this run, trials per notebook and host, the benchmark."""
    manifest = provenance.load_manifest()
    times = provenance.notebook_times(manifest, exclude=("cost",))
    ran, reused = times[times["this run"] == "executed"], times[times["this run"] == "reused"]
    glue_values({"profile": (manifest or {}).get("profile", "none (notebooks run on their own)"),
                 "n_executed": len(ran), "n_reused": len(reused),
                 "executed_minutes": float(ran["seconds"].sum()) / 60, "all_minutes": float(times["seconds"].sum()) / 60,
                 "executed_wall_minutes": provenance.span_minutes(ran) if len(ran) else 0.0})
    glue_figure("fig_times", figures.notebook_times(times))
    trained, distinct = provenance.trained_once()
    by_kind = provenance.trials_by_kind()
    glue_values({"n_trained": trained, "n_distinct": distinct,
                 "trained_once": "each was trained once" if trained == distinct else
                 f"{trained - distinct} of them twice or more (the same trial trained by two notebooks)",
                 "train_minutes_all": float(by_kind["training minutes"].sum()) if len(by_kind) else 0.0})
    bench = provenance.load_benchmark() if P["show_benchmark"] else None
    glue_value("benchmark_summary", provenance.benchmark_summary(bench))
    glue_value("levers_text", provenance.levers_text(bench))
    return SimpleNamespace(times=times.round({"seconds": 1}), trials=provenance.trials_by_notebook(), kinds=by_kind,
                           benchmark=provenance.benchmark_table(bench) if bench else pd.DataFrame())
