"""The study's protocol: which trials each notebook runs, and the tables they produce.

Training notebooks and analysis notebooks build their trial lists with the same functions,
so an analysis notebook asks the result cache for exactly the trials its training notebook
ran (and recomputes them only if they are absent). One fixed protocol for every condition:
SGD with momentum 0.9, learning rate 0.05 decayed to 0 by a cosine over the run, batch 128,
PyTorch's default initialization.
"""
import pandas as pd

from normlib.train import TrainConfig

PROTOCOL = dict(optimizer="sgd", lr=0.05, schedule="cosine", momentum=0.9, batch_size=128)


def condition_configs(archs, norms, seeds, *, mlp_epochs, cnn_epochs, train_size=0, val_size=5000,
                      impl="custom", evals_per_epoch=4, **overrides):
    """One TrainConfig per (arch, norm, seed), in that order, on the fixed protocol."""
    epochs = {"mlp": mlp_epochs, "cnn": cnn_epochs}
    return [TrainConfig(**{**PROTOCOL, "arch": arch, "norm": norm, "seed": seed, "epochs": epochs[arch],
                           "train_size": train_size, "val_size": val_size, "impl": impl,
                           "evals_per_epoch": evals_per_epoch, **overrides})
            for arch in archs for norm in norms for seed in seeds]


def label(h, keys=("arch", "norm", "seed")):
    return {k: h.config[k] for k in keys}


def curves_frame(histories, keys=("arch", "norm", "seed")):
    """Long table of the evaluation curves: one row per (trial, evaluation)."""
    rows = []
    for h in histories:
        for i, step in enumerate(h.eval_step):
            rows.append({**label(h, keys), "step": step, "epoch": h.eval_epoch[i],
                         "train_loss": h.train_loss[i], "train_acc": h.train_acc[i],
                         "val_loss": h.val_loss[i], "val_acc": h.val_acc[i]})
    return pd.DataFrame(rows)


def steps_frame(histories, keys=("arch", "norm", "seed"), every=1, window=20):
    """Per-step training loss (running mean over `window` steps), every `every`-th step, per trial."""
    frames = []
    for h in histories:
        loss = pd.Series(h.step_loss, dtype=float)
        f = pd.DataFrame({"step": range(1, len(loss) + 1), "loss": loss,
                          "smoothed": loss.rolling(window, min_periods=1).mean(),
                          "grad_norm": pd.Series(h.step_grad_norm, dtype=float)})
        f = f.iloc[::every].assign(**label(h, keys), epoch=lambda d: d.step / h.steps_per_epoch)
        frames.append(f)
    return pd.concat(frames, ignore_index=True)


def protocol_table():
    """The training protocol generated from the code: every TrainConfig field, its default, the value
    the trials of steps 1-5 use (PROTOCOL, condition_configs' defaults, or a notebook parameter) and
    the comment that documents the field in train.py."""
    import inspect
    import re
    from dataclasses import fields

    comments, field = {}, None
    for line in inspect.getsource(TrainConfig).splitlines():  # "    name: type = default  # comment"
        m = re.match(r" {4}(\w+):[^#]*#\s*(.+)$", line)
        if m:
            field, comments[m[1]] = m[1], m[2]
        elif field and line.strip().startswith("#"):  # a comment continued on the next line
            comments[field] += " " + line.strip().lstrip("#").strip()
        else:
            field = None
    steps = {**PROTOCOL, "evals_per_epoch": inspect.signature(condition_configs).parameters["evals_per_epoch"].default}
    per_notebook = ("arch", "norm", "seed", "epochs", "train_size", "val_size", "impl")
    rows = [{"field": f.name, "default": repr(f.default),
             "steps 1-5": "notebook parameter" if f.name in per_notebook else repr(steps.get(f.name, f.default)),
             "meaning": comments.get(f.name, "")} for f in fields(TrainConfig)]
    return pd.DataFrame(rows)
