"""The protocol of the main comparison (steps 1-5): which trials run, and how each condition gets its
learning rate.

A fair protocol (Dodge et al. 2019: every condition gets the same tuning budget):
1. tuning: every condition (none, batch, layer, and any exploratory one) trains at every learning
   rate of the grid `lrs`, on the tuning seeds;
2. selection: each condition, per network, gets the rate with the lowest mean best validation loss
   over its tuning seeds (validation data only; a failed run counts at chance, ln 10);
3. the primary comparison: every condition at its own selected rate, on `seeds` (disjoint from the
   tuning seeds: nothing was chosen on them);
4. confirmation: the same on `confirm_seeds` with another train/validation split (`confirm_split_seed`);
5. robustness: the tuning runs at the shared rate `fixed_lr` (a point of the grid), the fixed-rate
   comparison of earlier versions of this report, exploratory.
`lr` set to a number skips 1-2 and 5: every condition trains at that rate.

Everything else (optimizer, momentum, weight decay, batch size, schedule, widths, activation, norm
placement, init scale, evaluations per epoch, data sizes, epochs) is a notebook parameter, the same
for every condition. Training notebooks write a record of the protocol they ran
(results/steps/<notebook>.json) that their analysis notebooks read, so a profile that changes the
protocol of step 1 changes what step 2 analyses, without training step 1's runs again.
"""
import json
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import pandas as pd

from normlib import metrics, params
from normlib.paths import results_dir, write_atomic
from normlib.train import TrainConfig

PRIMARY_NORMS = ("none", "batch", "layer")


@dataclass(frozen=True)
class Protocol:
    archs: tuple = ("mlp", "cnn")
    seeds: tuple = (0, 1, 2)            # primary comparison
    confirm_seeds: tuple = (10, 11, 12)  # confirmation, on another split
    confirm_split_seed: int = 1
    tuning_seeds: tuple = (100,)
    lrs: tuple = (0.01, 0.03, 0.1, 0.3)  # the tuning grid
    lr: float | None = None             # None: selected per condition; a number: every condition at it
    fixed_lr: float = 0.1               # the robustness row's shared rate (a point of lrs)
    train_size: int = 0
    val_size: int = 5000
    mlp_epochs: int = 2
    cnn_epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    hidden: tuple = (256, 256, 256)
    channels: tuple = (8, 16)
    activation: str = "relu"
    norm_position: str = "before"
    init_scale: float | None = None
    evals_per_epoch: int = 4
    impl: str = "custom"

    @classmethod
    def from_params(cls, P):
        """The protocol of a notebook's parameters (names outside the protocol are ignored), validated by
        normlib.params (one-line ParameterError, e.g. when the seed sets overlap or fixed_lr is not in the grid)."""
        names = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.validate(P).items() if k in names}
        return cls(**values)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def config(self, arch, norm, lr, seed, split_seed=0):
        """The TrainConfig of one run of this protocol."""
        epochs = {"mlp": self.mlp_epochs, "cnn": self.cnn_epochs}[arch]
        return TrainConfig(arch=arch, norm=norm, impl=self.impl, activation=self.activation,
                           norm_position=self.norm_position, hidden=self.hidden, channels=self.channels,
                           init_scale=self.init_scale, data_init=norm == "weight" and self.impl == "custom",
                           optimizer=self.optimizer, lr=lr, schedule=self.schedule, momentum=self.momentum,
                           weight_decay=self.weight_decay, batch_size=self.batch_size, epochs=epochs, seed=seed,
                           split_seed=split_seed, train_size=self.train_size, val_size=self.val_size,
                           evals_per_epoch=self.evals_per_epoch)

    def tuning(self, norms):
        """The tuning runs: every condition at every rate of the grid, on the tuning seeds (none when lr is set)."""
        if self.lr is not None:
            return []
        return [self.config(arch, norm, lr, seed) for arch in self.archs for norm in norms
                for lr in self.lrs for seed in self.tuning_seeds]

    def runs(self, norms, lrs, which="primary"):
        """The runs of the primary comparison ("primary") or of its confirmation ("confirm"), each condition
        at its rate in lrs: {(arch, norm): lr}."""
        seeds, split = (self.seeds, 0) if which == "primary" else (self.confirm_seeds, self.confirm_split_seed)
        return [self.config(arch, norm, lrs[arch, norm], seed, split) for arch in self.archs for norm in norms
                for seed in seeds]


def select_lrs(histories, proto):
    """{(arch, norm): lr}: the rate of the grid with the lowest mean best validation loss over the tuning
    seeds (failed runs at chance); every condition at proto.lr when it is set."""
    if proto.lr is not None:
        return {(h.config["arch"], h.config["norm"]): proto.lr for h in histories}
    table = tuning_table(histories)
    means = table.groupby(["arch", "norm", "lr"])["best_val_loss"].mean().reset_index()
    best = means.loc[means.groupby(["arch", "norm"])["best_val_loss"].idxmin()]
    return {(r.arch, r.norm): float(r.lr) for r in best.itertuples()}


def tuning_table(histories):
    """One row per tuning run: arch, norm, lr, seed, the best validation loss and accuracy of its curve
    under the failure rule (metrics.completed_curve), and whether it failed."""
    rows = []
    for h in histories:
        c = metrics.completed_curve(h)
        i = int(np.argmin(c.val_loss)) if len(c.val_loss) else None
        rows.append({"arch": h.config["arch"], "norm": h.config["norm"], "lr": h.config["lr"],
                     "seed": h.config["seed"], "failed": c.failed,
                     "best_val_loss": float(c.val_loss[i]) if i is not None else metrics.CHANCE_LOSS,
                     "best_val_acc": float(c.val_acc[i]) if i is not None else metrics.CHANCE_ACC})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------
# the record a training notebook leaves for its analysis notebook


def record_path(notebook):
    return results_dir() / "steps" / f"{notebook}.json"


def write_record(notebook, proto, norms, lrs):
    """What a training notebook ran: its protocol, its conditions and their selected rates."""
    record = {"protocol": proto.to_dict(), "norms": list(norms),
              "lrs": [{"arch": a, "norm": n, "lr": lr} for (a, n), lr in lrs.items()]}
    write_atomic(record_path(notebook), json.dumps(record, indent=1))
    return record


def read_record(notebook):
    """(Protocol, norms) that `notebook` ran; ParameterError (one line) when it has not run."""
    try:
        record = json.loads(record_path(notebook).read_text())
    except (OSError, ValueError):
        raise params.ParameterError(f"no record of {notebook} in {record_path(notebook).parent}: run that "
                                    f"notebook first (make report runs every notebook in order)") from None
    return Protocol.from_params(record["protocol"]), record["norms"]


# ----------------------------------------------------------------------------
# tables of runs


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


def protocol_table(proto):
    """Every TrainConfig field, the value the runs of steps 1-5 use under `proto` (or how it is set) and the
    comment that documents the field in train.py."""
    import inspect
    import re

    comments, field = {}, None
    for line in inspect.getsource(TrainConfig).splitlines():  # "    name: type = default  # comment"
        m = re.match(r" {4}(\w+):[^#]*#\s*(.+)$", line)
        if m:
            field, comments[m[1]] = m[1], m[2]
        elif field and line.strip().startswith("#"):  # a comment continued on the next line
            comments[field] += " " + line.strip().lstrip("#").strip()
        else:
            field = None
    example = proto.config(proto.archs[0], "none", proto.lr or proto.fixed_lr, proto.seeds[0]).to_dict()
    how = {"arch": ", ".join(proto.archs), "norm": "the condition", "seed": "the seed set",
           "split_seed": f"0 (confirmation: {proto.confirm_split_seed})", "data_init": "True for weight norm",
           "epochs": f"MLP {proto.mlp_epochs}, CNN {proto.cnn_epochs}",
           "lr": "selected per condition from " + ", ".join(f"{x:g}" for x in proto.lrs) if proto.lr is None
           else f"{proto.lr:g} for every condition"}
    return pd.DataFrame([{"field": f.name, "steps 1-5": how.get(f.name, repr(example[f.name])),
                          "meaning": comments.get(f.name, "")} for f in fields(TrainConfig)])


def with_lr(configs, lr):
    return [replace(c, lr=lr) for c in configs]
