"""Validation of notebook and pipeline parameters.

Every notebook validates its papermill parameters in the cell after the parameters
cell, and the pipeline validates a whole profile before running anything:

    params = normlib.params.validate(dict(epochs=epochs, norms=norms, seeds=seeds))

A bad value stops with one line that names the parameter, the value and what is allowed:

    parameter 'batch_size' = 0: must be a positive integer
"""
import difflib
import math
import os
import tempfile
from pathlib import Path

ARCHS = ("mlp", "cnn", "vit")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu")
NORM_POSITIONS = ("before", "after")  # normalization before or after the activation
FASHION_TRAIN = 60_000  # Fashion-MNIST training images (train + validation split)


class ParameterError(ValueError):
    """A parameter value that is not allowed; the message is one line."""


# ----------------------------------------------------------------------------
# checkers: value -> normalized value, or raise ValueError("<what is allowed>")

def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive_int(v):
    if not (_is_int(v) and v > 0):
        raise ValueError("must be a positive integer")
    return v


def nonneg_int(v):
    if not (_is_int(v) and v >= 0):
        raise ValueError("must be a non-negative integer")
    return v


def positive_float(v):
    if not (_is_number(v) and v > 0):
        raise ValueError("must be a positive number")
    return float(v)


def boolean(v):
    if not isinstance(v, bool):
        raise ValueError("must be true or false")
    return v


def choice(allowed, what):
    def check(v):
        if v not in allowed:
            raise ValueError(f"unknown {what} {v!r} (allowed: {', '.join(allowed)})")
        return v
    return check


def subset(allowed, what):
    """A non-empty list of distinct values from `allowed`; order kept."""
    def check(v):
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"must be a non-empty list of {what}s (allowed: {', '.join(allowed)})")
        for x in v:
            if x not in allowed:
                raise ValueError(f"unknown {what} {x!r} (allowed: {', '.join(allowed)})")
        if len(set(v)) != len(v):
            raise ValueError(f"must list each {what} once (allowed: {', '.join(allowed)})")
        return list(v)
    return check


def norm_kinds():
    """The kinds of the registry normlib.norms.NORMS (imported on first use: params stays free of torch)."""
    from normlib.norms import NORM_KINDS
    return NORM_KINDS


def impls():
    """The layers' implementations, normlib.norms.IMPLS (imported on first use, as norm_kinds)."""
    from normlib.norms import IMPLS
    return IMPLS


def norm_kind(v):
    return choice(norm_kinds(), "norm")(v)


def norm_kind_list(v):
    return subset(norm_kinds(), "norm")(v)


def impl(v):
    return choice(impls(), "impl")(v)


def list_of(item, what):
    """A non-empty list of distinct values, each passing `item`."""
    def check(v):
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"must be a non-empty list of distinct {what}")
        try:
            out = [item(x) for x in v]
        except ValueError:
            raise ValueError(f"must be a non-empty list of distinct {what}") from None
        if len(set(out)) != len(out):
            raise ValueError(f"must be a non-empty list of distinct {what}")
        return out
    return check


def val_size(v):
    if not (_is_int(v) and 0 < v < FASHION_TRAIN):
        raise ValueError(f"must be an integer between 1 and {FASHION_TRAIN - 1}")
    return v


def train_size(v):
    if not (_is_int(v) and v >= 0):
        raise ValueError("must be a non-negative integer (0 = all images not held out for validation)")
    return v


def fraction(v):
    if not (_is_number(v) and 0 < v < 1):
        raise ValueError("must be a number between 0 and 1")
    return float(v)


def dropout(v):
    if not (_is_number(v) and 0 <= v < 1):
        raise ValueError("must be a number in [0, 1) (0: no dropout)")
    return float(v)


def warmup(v):
    if not (_is_number(v) and 0 <= v < 1):
        raise ValueError("must be a number in [0, 1) (the fraction of the steps spent warming up; 0: none)")
    return float(v)


def momentum(v):
    if not (_is_number(v) and 0 <= v < 1):
        raise ValueError("must be a number in [0, 1)")
    return float(v)


def nonneg_float(v):
    if not (_is_number(v) and v >= 0):
        raise ValueError("must be a non-negative number")
    return float(v)


def optional(rule, meaning):
    """None (null in YAML), meaning `meaning`, or a value that passes `rule`."""
    def check(v):
        if v is None:
            return None
        try:
            return rule(v)
        except ValueError as e:
            raise ValueError(f"{e}, or null ({meaning})") from None
    return check


def widths(count=None):
    """A list of positive integer widths: `count` of them, or one or more."""
    def check(v):
        if not (isinstance(v, (list, tuple)) and len(v) == (count or len(v)) > 0 and all(_is_int(w) and w > 0 for w in v)):
            raise ValueError(f"must be a list of {count or 'one or more'} positive integers")
        return list(v)
    return check


def greater_than_one(v):
    if not (_is_number(v) and v > 1):
        raise ValueError("must be a number greater than 1")
    return float(v)


def budgets(v):
    """Increasing fractions of the full run, each in (0, 1]: the rungs of successive halving."""
    ok = isinstance(v, (list, tuple)) and v and all(_is_number(b) and 0 < b <= 1 for b in v)
    if not (ok and all(a < b for a, b in zip(v, v[1:]))):
        raise ValueError("must be a non-empty increasing list of fractions in (0, 1] (the rungs' budgets; [1.0]: "
                         "the full grid)")
    return [float(b) for b in v]


def seed_list_or_empty(v):
    """A list of distinct non-negative integers, possibly empty (no extra seeds)."""
    if isinstance(v, (list, tuple)) and not v:
        return []
    return list_of(nonneg_int, "non-negative integers")(v)


def extra_norm_list(v):
    """Conditions beside none, batch and layer (e.g. [weight, group]); may be empty."""
    extra = tuple(k for k in norm_kinds() if k not in ("none", "batch", "layer"))
    if isinstance(v, (list, tuple)) and not v:
        return []
    return subset(extra, "extra norm")(v)


RULES = {
    "archs": subset(ARCHS, "arch"),
    "arch": choice(ARCHS, "arch"),
    "norms": norm_kind_list,
    "norm": norm_kind,
    "seeds": list_of(nonneg_int, "non-negative integers"),
    "split_seed": nonneg_int,
    "train_size": train_size,
    "val_size": val_size,
    "epochs": positive_int,
    "mlp_epochs": positive_int,
    "cnn_epochs": positive_int,
    "evals_per_epoch": positive_int,
    "batch_size": positive_int,
    "batch_sizes": list_of(positive_int, "positive integers"),
    "lr": optional(positive_float, "where a notebook selects each condition's rate"),
    "lrs": list_of(positive_float, "positive numbers"),
    "tuning_budgets": budgets,
    "tuning_seeds": list_of(nonneg_int, "non-negative integers"),
    "confirm_seeds": list_of(nonneg_int, "non-negative integers"),
    "confirm_split_seed": positive_int,
    "extra_norms": extra_norm_list,
    "momentum": momentum,
    "warmup": warmup,
    "weight_decay": nonneg_float,
    "schedule": choice(SCHEDULES, "schedule"),
    "hidden": widths(),
    "channels": widths(2),
    "cnn_hidden": positive_int,
    "init_scale": optional(positive_float, "PyTorch's default initialization"),
    "norm_eps": positive_float,
    "dropout": dropout,
    "data_init": boolean,
    "max_steps": nonneg_int,
    "seed": nonneg_int,
    "device": choice(DEVICES, "device"),
    "optimizer": choice(OPTIMIZERS, "optimizer"),
    "impl": impl,
    "activation": choice(ACTIVATIONS, "activation"),
    "activations": subset(ACTIVATIONS, "activation"),
    "norm_position": choice(NORM_POSITIONS, "norm_position"),
    "init_scales": list_of(positive_float, "positive numbers"),
    "workers": nonneg_int,  # 0 = one per core
    "force": boolean,
    # declared by one or two notebooks (which check them again); here so that the pipeline
    # refuses a bad value before any notebook trains
    "repeats": positive_int,            # implementation_check: timed calls per layer and shape
    "base_lr": positive_float,          # study_batch_size, study_claims: learning rate at batch size 32
    "bs_train_size": train_size,        # study_claims: the batch-size study's runs
    "bs_epochs": positive_int,          # study_claims
    "bs_seeds": list_of(nonneg_int, "non-negative integers"),  # study_claims
    "bs_evals_per_epoch": positive_int,  # study_claims
    "margin": fraction,                 # studies: equivalence / non-inferiority margin on an error rate
    "depth": positive_int,              # study_init_scale: hidden layers
    "small_scale": positive_float,      # study_init_scale: scales up to this get the epsilon runs
    "eps_values": list_of(positive_float, "positive numbers"),  # study_init_scale
    "acc_threshold": fraction,          # study_init_scale, study_learning_rate: accuracy that counts as trained
    "extra_lrs": list_of(positive_float, "positive numbers"),  # study_learning_rate: rates above the main grid
    "extra_seeds": seed_list_or_empty,  # study_learning_rate: seeds beside the main comparison's tuning seeds
    "lr_margin": fraction,              # study_learning_rate: accuracy margin around the best rate
    "sweep_lrs": list_of(positive_float, "positive numbers"),  # study_transformer: the sweep's rates
    "sweep_bn": boolean,                # study_transformer: the sweep runs pre-BN and post-BN too
    "record_every": positive_int,       # study_activation_drift
    "probe_size": positive_int,         # study_activation_drift
    "unit": nonneg_int,                 # study_activation_drift
    "multipliers": list_of(positive_float, "positive numbers"),  # study_landscape: probe step sizes
    "probe_every": positive_int,        # study_landscape, study_init_scale, study_claims
    "grad_factor": greater_than_one,    # study_claims: a gradient issue is a spread across layers above this
    "overfit_epochs": positive_int,     # study_claims: epochs of the batch + layer norm runs
    "rnn_hidden": positive_int,         # study_recurrent: hidden units of the RNN
    "show_benchmark": boolean,          # cost: show results/benchmark.json when it exists
}


def _one_line(v):
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def unknown_name(name, known, what="parameter"):
    """The one-line error for a name that is not known, with close matches."""
    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ParameterError(f"unknown {what} {name!r} (known: {', '.join(sorted(known))}){hint}")


def check(name, value, where=None):
    """One value against its rule (RULES[name]): the normalized value, or ParameterError naming it
    ("parameter 'lr' = -1: must be a positive number", or with where="TrainConfig", "TrainConfig.lr = -1: ...")."""
    try:
        return RULES[name](value)
    except ValueError as e:
        label = f"{where}.{name}" if where else f"parameter {name!r}"
        raise ParameterError(f"{label} = {_one_line(value)}: {e}") from None


def validate(params: dict, *, known: set | None = None) -> dict:
    """Check `params` against RULES; return a new, normalized dict.

    Names without a rule pass unchanged; with `known`, any other name is an error.
    Raises ParameterError with one line naming the parameter, value and what is allowed.
    """
    out = {}
    for name, value in params.items():
        if known is not None and name not in known:
            raise unknown_name(name, known)
        out[name] = check(name, value) if name in RULES else value
    sets = {k: out[k] for k in ("seeds", "confirm_seeds", "tuning_seeds") if k in out and out[k] is not None}
    for a, b in (("seeds", "confirm_seeds"), ("seeds", "tuning_seeds"), ("confirm_seeds", "tuning_seeds")):
        shared = sorted(set(sets.get(a, ())) & set(sets.get(b, ())))
        if shared:
            raise ParameterError(f"parameter {b!r} = {list(sets[b])}: shares seed(s) {shared} with {a!r}; the sets "
                                 f"must be disjoint (nothing is chosen on the seeds that test it)")
    train, val = out.get("train_size", 0), out.get("val_size")
    if train + (val or 0) > FASHION_TRAIN:
        if val is None:  # the notebook's default val_size is added to it
            raise ParameterError(f"parameter 'train_size' = {train}: must be at most {FASHION_TRAIN} "
                                 f"minus val_size (the images held out for validation)")
        raise ParameterError(f"parameter 'train_size' = {train}: train_size + val_size = {train} + {val} = "
                             f"{train + val} must be at most {FASHION_TRAIN}")
    return out


def check_writable(path, name: str) -> Path:
    """Create directory `path` if needed and check a file can be written in it."""
    path = Path(path)
    label = f"parameter {name!r} = {str(path)!r}" if name.isidentifier() else f"{name} {str(path)!r}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-probe-")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ParameterError(f"{label}: cannot create or write this directory ({e.strerror or e})") from None
    return path


def of_notebook(notebook, namespace):
    """The validated parameters of a notebook: the names its parameters cell declares (notebooks/<notebook>.ipynb,
    as papermill reads them), taken from `namespace` (the notebook's globals()). One cell replaces a
    hand-written dict of every name, which could forget one."""
    import papermill

    from normlib.paths import notebooks_dir

    names = papermill.inspect_notebook(str(notebooks_dir() / f"{notebook}.ipynb"))
    return validate({name: namespace[name] for name in names})
