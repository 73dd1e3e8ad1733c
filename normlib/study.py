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
