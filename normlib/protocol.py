"""The protocol of the main comparison (steps 1-5): which trials run, and how each condition gets its
learning rate.

A fair protocol (Dodge et al. 2019: every condition gets the same tuning budget):
1. tuning, by successive halving (Jamieson & Talwalkar 2016; Li et al. 2017, Hyperband's inner loop) over
   the grid `lrs`: every condition trains at every rate of the grid for the first budget of
   `tuning_budgets` (a fraction of the full run), on the tuning seeds; the better half of its rates (the
   lowest mean best validation loss over the tuning seeds; validation data only; a failed run counts at
   chance, ln 10) trains again at the next budget, and so on; at the last rung the best rate is selected.
   Every rung is a complete run of its budget (its own schedule, decayed to 0 at its end, as
   Protocol.config makes it), so the rates are compared on annealed runs, not on the middle of a long one;
   `tuning_budgets: [1.0]` is the full grid (every rate at the full budget);
2. the primary comparison: every condition at its own selected rate, on `seeds` (disjoint from the
   tuning seeds: nothing was chosen on them);
3. confirmation: the same on `confirm_seeds` with another train/validation split (`confirm_split_seed`).
`lr` set to a number skips 1: every condition trains at that rate.

Everything else (optimizer, momentum, weight decay, batch size, schedule, warmup, widths, activation, norm
placement, init scale, evaluations per epoch, data sizes, epochs) is a notebook parameter, the same
for every condition. Training notebooks write a record of the protocol they ran
(results/steps/<notebook>.json) that their analysis notebooks read, so a profile that changes the
protocol of step 1 changes what step 2 analyses, without training step 1's runs again.
"""
import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from normlib import metrics, params
from normlib.paths import results_dir, write_atomic
from normlib.data import N_TRAIN
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
    tuning_budgets: tuple = (0.25, 0.5)  # successive halving: the rungs' budgets, fractions of the full run
    train_size: int = 0
    val_size: int = 5000
    mlp_epochs: int = 2
    cnn_epochs: int = 1
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: float = 0.0
    hidden: tuple = (256, 256, 256)
    channels: tuple = (8, 16)
    cnn_hidden: int = 256               # the CNN's fully connected layer
    activation: str = "relu"
    norm_position: str = "before"
    init_scale: float | None = None
    evals_per_epoch: int = 4
    impl: str = "custom"

    @classmethod
    def from_params(cls, P):
        """The protocol of a notebook's parameters (names outside the protocol are ignored), validated by
        normlib.params (one-line ParameterError, e.g. when the seed sets overlap)."""
        names = {f.name for f in fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.validate(P).items() if k in names}
        return cls(**values)

    def to_dict(self):
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def config(self, arch, norm, lr, seed, split_seed=0, budget=1.0):
        """The TrainConfig of one run of this protocol; budget < 1: a run of that fraction of the full run's
        steps (max_steps), with the schedule (and warmup) over those steps: a tuning rung."""
        epochs = {"mlp": self.mlp_epochs, "cnn": self.cnn_epochs}[arch]
        steps = (self.train_size or N_TRAIN - self.val_size) // self.batch_size * epochs
        return TrainConfig(arch=arch, norm=norm, impl=self.impl, activation=self.activation,
                           norm_position=self.norm_position, hidden=(self.cnn_hidden,) if arch == "cnn" else self.hidden,
                           channels=self.channels, init_scale=self.init_scale,
                           data_init=norm == "weight" and self.impl == "custom", optimizer=self.optimizer, lr=lr,
                           schedule=self.schedule, warmup=self.warmup, momentum=self.momentum,
                           weight_decay=self.weight_decay, batch_size=self.batch_size, epochs=epochs,
                           max_steps=0 if budget >= 1 else max(1, round(budget * steps)), seed=seed,
                           split_seed=split_seed, train_size=self.train_size, val_size=self.val_size,
                           evals_per_epoch=self.evals_per_epoch)

    def rung(self, alive, budget):
        """The tuning runs of one rung: each condition {(arch, norm): rates} at its rates, on the tuning seeds."""
        return [self.config(arch, norm, lr, seed, budget=budget) for (arch, norm), rates in alive.items()
                for lr in rates for seed in self.tuning_seeds]

    def tuning_plan(self, norms):
        """[(budget, rates per condition)] of successive halving when no rung is decided by ties: how many runs
        each rung holds (the progress total); empty when lr is set."""
        if self.lr is not None:
            return []
        return [(b, n) for b, n in zip(self.tuning_budgets, halving_sizes(len(self.lrs), len(self.tuning_budgets)))]

    def runs(self, norms, lrs, which="primary"):
        """The runs of the primary comparison ("primary") or of its confirmation ("confirm"), each condition
        at its rate in lrs: {(arch, norm): lr}."""
        seeds, split = (self.seeds, 0) if which == "primary" else (self.confirm_seeds, self.confirm_split_seed)
        return [self.config(arch, norm, lrs[arch, norm], seed, split) for arch in self.archs for norm in norms
                for seed in seeds]


# ----------------------------------------------------------------------------
# successive halving


def halving_sizes(n_rates, n_rungs):
    """Rates alive at each rung: all at the first, then the better half (rounded up) of the previous rung's;
    the rungs stop once one rate is left (it needs no more runs)."""
    sizes = [n_rates]
    while len(sizes) < n_rungs and sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes if sizes[-1] > 1 or len(sizes) == 1 else sizes[:-1]


def successive_halving(rates, budgets, evaluate):
    """Successive halving over `rates` for several conditions at once. evaluate(alive, budget) -> {condition:
    {rate: score}} runs the rung (alive: {condition: rates}; lower scores are better) and is called once per
    rung, so that a rung's runs go out together. Every rate at budgets[0]; the better half (rounded up, ties
    to the lower rate) at the next budget; after the last rung (or once one rate is left) the best is
    selected. Returns ({condition: selected rate}, rungs), rungs = [(budget, {condition: {rate: score}})].
    With budgets [1.0] it is the full grid at the full budget."""
    alive, rungs = {c: sorted(r) for c, r in rates.items()}, []
    for i, budget in enumerate(budgets):
        if i and all(len(r) == 1 for r in alive.values()):
            break
        scores = evaluate(alive, budget)
        rungs.append((budget, scores))
        ranked = {c: sorted(alive[c], key=lambda lr: (scores[c][lr], lr)) for c in alive}
        last = i == len(budgets) - 1
        alive = {c: r[:1] if last else r[:math.ceil(len(r) / 2)] for c, r in ranked.items()}
    return {c: r[0] for c, r in alive.items()}, rungs


def rungs_table(rungs, selected, budget_steps):
    """The table of successive_halving's rungs (budget_steps: the steps of a full run): one row per rung,
    condition and rate: the budget, its steps, the score and what successive halving did with the rate:
    kept for the next rung, dropped, selected."""
    rows = []
    for i, (budget, scores) in enumerate(rungs):
        later = rungs[i + 1][1] if i + 1 < len(rungs) else None
        for cond, by_lr in scores.items():
            for lr, score in sorted(by_lr.items()):
                fate = ("kept" if lr in later[cond] else "dropped") if later else \
                    ("selected" if lr == selected[cond] else "dropped")
                rows.append({"rung": i + 1, "budget": f"{budget:g}", "steps": max(1, round(budget * budget_steps))
                             if budget < 1 else budget_steps, "condition": cond, "learning rate": f"{lr:g}",
                             "mean best validation loss": score, "halving": fate})
    return pd.DataFrame(rows)


def rate_scores(histories):
    """{(arch, norm): {lr: mean best validation loss over the tuning seeds}} (failed runs at chance)."""
    means = tuning_table(histories).groupby(["arch", "norm", "lr"])["best_val_loss"].mean()
    out = {}
    for (arch, norm, lr), v in means.items():
        out.setdefault((arch, norm), {})[float(lr)] = float(v)
    return out


def select_lrs(histories, proto):
    """{(arch, norm): lr}: the rate of the grid with the lowest mean best validation loss over the tuning
    seeds (failed runs at chance) among `histories` (one rung); every condition at proto.lr when it is set."""
    if proto.lr is not None:
        return {(h.config["arch"], h.config["norm"]): proto.lr for h in histories}
    return {c: min(s, key=lambda lr: (s[lr], lr)) for c, s in rate_scores(histories).items()}


def tuning_table(histories):
    """One row per tuning run: arch, norm, lr, seed, its steps (the rung's budget), the best validation loss
    and accuracy of its curve under the failure rule (metrics.completed_curve), and whether it failed."""
    rows = []
    for h in histories:
        c = metrics.completed_curve(h)
        i = int(np.argmin(c.val_loss)) if len(c.val_loss) else None
        rows.append({"arch": h.config["arch"], "norm": h.config["norm"], "lr": h.config["lr"],
                     "seed": h.config["seed"], "steps": c.planned, "failed": c.failed,
                     "best_val_loss": float(c.val_loss[i]) if i is not None else metrics.CHANCE_LOSS,
                     "best_val_acc": float(c.val_acc[i]) if i is not None else metrics.CHANCE_ACC})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------
# the record a training notebook leaves for its analysis notebook


def record_path(notebook):
    return results_dir() / "steps" / f"{notebook}.json"


def write_record(notebook, proto, norms, lrs, rungs=()):
    """What a training notebook ran: its protocol, its conditions, their selected rates and the tuning rungs
    (budget, condition, rate, score)."""
    record = {"protocol": proto.to_dict(), "norms": list(norms),
              "lrs": [{"arch": a, "norm": n, "lr": lr} for (a, n), lr in lrs.items()],
              "rungs": [{"budget": b, "arch": a, "norm": n, "lr": lr, "score": v} for b, scores in rungs
                        for (a, n), by_lr in scores.items() for lr, v in by_lr.items()]}
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
    example = proto.config(proto.archs[0], "none", proto.lr or proto.lrs[0], proto.seeds[0]).to_dict()
    how = {"arch": ", ".join(proto.archs), "norm": "the condition", "seed": "the seed set",
           "split_seed": f"0 (confirmation: {proto.confirm_split_seed})", "data_init": "True for weight norm",
           "epochs": f"MLP {proto.mlp_epochs}, CNN {proto.cnn_epochs}",
           "hidden": f"MLP {list(proto.hidden)}, CNN [{proto.cnn_hidden}]",
           "max_steps": "0 (tuning rungs: " + ", ".join(f"{b:g}" for b in proto.tuning_budgets) + " of the steps)"
           if proto.lr is None else "0",
           "lr": "selected per condition from " + ", ".join(f"{x:g}" for x in proto.lrs) if proto.lr is None
           else f"{proto.lr:g} for every condition"}
    return pd.DataFrame([{"field": f.name, "steps 1-5": how.get(f.name, repr(example[f.name])),
                          "meaning": comments.get(f.name, "")} for f in fields(TrainConfig)])
