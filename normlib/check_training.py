"""The implementation check's measurements beyond the numbers (normlib.check): what each from-scratch layer
costs next to torch's built-in (time_forward_backward, timing_comparison: the C++ kernel, the reference
pair and torch's, forward plus backward), and how the MLP trains with it (training_configs,
training_comparison, loss_difference_figure: the custom and the built-in layers from one seed, against
the built-in from another seed for scale).
"""
import statistics
import time

import numpy as np
import pandas as pd
import torch
from torch import nn

from normlib.check import CHECK_KINDS, _check_kernel, _check_kind, kernel_backend, kernels_of
from normlib.figures import ARCH_LABELS, norm_label
from normlib.metrics import run_metrics
from normlib.norms import NORMS, make_norm


def time_forward_backward(kind, impl, shape, repeats=20, dtype=torch.float32, groups=8, seed=0, kernel=None):
    """Median seconds of one forward + backward (input gradient included) through the layer of kind
    and impl ("custom" | "torch") in train mode, on an input of shape; grads are reset between calls.
    For a kind that reparameterizes the layer (weight norm) it is the wrapped Linear(C, C) / Conv2d(C, C, 3, padding=1).
    kernel ("cpp" | "python"): which from-scratch implementation a custom layer uses (default: as configured)."""
    if kernel is not None and impl == "custom":
        _check_kernel(kind, kernel)
        with kernel_backend(kernel):
            return time_forward_backward(kind, impl, shape, repeats, dtype, groups, seed)
    _check_kind(kind)
    torch.manual_seed(seed)
    c, wrap = shape[1], NORMS[kind].wrap
    if wrap:  # a reparameterized layer (weight norm): the layer itself
        module = wrap(nn.Linear(c, c) if len(shape) == 2 else nn.Conv2d(c, c, 3, padding=1), impl)
    else:
        module = make_norm(kind, shape[1:], impl=impl, groups=groups)
    module = module.to(dtype).train()
    x = (5 * torch.randn(shape, dtype=dtype) + 12).requires_grad_()
    dy = torch.randn(module(x).shape, dtype=dtype)
    times = []
    for i in range(repeats + 2):  # two warm-up calls
        x.grad = None
        module.zero_grad(set_to_none=True)
        start = time.perf_counter()
        module(x).backward(dy)
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def training_comparison(histories):
    """The custom and the built-in layers trained from one seed (0), and the built-in again from another (1):
    the Histories of condition_configs(..., [0], impl="custom") + condition_configs(..., [0, 1], impl="torch").
    Returns (table, diffs, numbers): per layer the final validation loss and test accuracy and the gaps
    custom vs torch and seed 0 vs seed 1 (display-ready); the |loss difference| at every step of both
    comparisons (a long table for loss_difference_figure; equal losses left out); and the numbers glued:
    per kind impl_diff_loss_*, impl_diff_acc_*, seed_diff_loss_*, seed_diff_acc_*, and impl_first_step_diff_max,
    impl_step_diff_max, impl_diff_loss_max, impl_diff_acc_max, seed_diff_loss_min, n_impl_below_seed,
    n_train_kinds."""
    run = {(h.config["norm"], h.config["impl"], h.config["seed"]): h for h in histories}
    kinds = list(dict.fromkeys(h.config["norm"] for h in histories))
    rows, diffs, numbers = [], [], {}
    for kind in kinds:
        custom, torch0, torch1 = run[kind, "custom", 0], run[kind, "torch", 0], run[kind, "torch", 1]
        m = {name: run_metrics(h) for name, h in (("custom", custom), ("torch", torch0), ("torch 1", torch1))}
        loss, acc = ({name: r[metric] for name, r in m.items()} for metric in ("final_val_loss", "test_acc"))
        rows.append({"layer": norm_label(kind), "val loss, custom": loss["custom"], "val loss, torch": loss["torch"],
                     "|custom - torch|": abs(loss["custom"] - loss["torch"]),
                     "|seed 0 - seed 1|": abs(loss["torch"] - loss["torch 1"]),
                     "test acc, custom": acc["custom"], "test acc, torch": acc["torch"],
                     "|custom - torch| (points)": 100 * abs(acc["custom"] - acc["torch"]),
                     "|seed 0 - seed 1| (points)": 100 * abs(acc["torch"] - acc["torch 1"])})
        numbers.update({f"impl_diff_loss_{kind}": rows[-1]["|custom - torch|"],
                        f"impl_diff_acc_{kind}": rows[-1]["|custom - torch| (points)"],
                        f"seed_diff_loss_{kind}": rows[-1]["|seed 0 - seed 1|"],
                        f"seed_diff_acc_{kind}": rows[-1]["|seed 0 - seed 1| (points)"]})
        for name, (a, b) in {"custom vs torch, seed 0": (custom, torch0), "seed 0 vs seed 1, torch": (torch0, torch1)}.items():
            d = np.abs(np.array(a.step_loss) - np.array(b.step_loss))
            diffs.append(pd.DataFrame({"step": np.arange(1, len(d) + 1), "|loss difference|": np.where(d > 0, d, np.nan),
                                       "norm": kind, "comparison": name}))
    table = pd.DataFrame(rows).set_index("layer")
    diffs = pd.concat(diffs, ignore_index=True)
    impl = diffs.loc[diffs["comparison"] == "custom vs torch, seed 0"]
    numbers.update({
        "impl_first_step_diff_max": float(impl.loc[impl["step"] == 1, "|loss difference|"].fillna(0).max()),
        "impl_step_diff_max": float(impl["|loss difference|"].fillna(0).max()),
        "impl_diff_loss_max": float(table["|custom - torch|"].max()),
        "impl_diff_acc_max": float(table["|custom - torch| (points)"].max()),
        "seed_diff_loss_min": float(table["|seed 0 - seed 1|"].min()),
        "n_impl_below_seed": int((table["|custom - torch|"] < table["|seed 0 - seed 1|"]).sum()),
        "n_train_kinds": len(kinds)})
    return table.round(4).reset_index(), diffs, numbers


def loss_difference_figure(diffs):
    """The |loss difference| per step of training_comparison, one panel per comparison, one log scale for both."""
    from normlib import figures

    fig = figures.curves(diffs, "|loss difference|", x="step", col="comparison", logy=True)
    lows, highs = zip(*(ax.get_ylim() for ax in fig.axes))
    for ax in fig.axes:
        ax.set_ylim(min(lows), max(highs))
    return fig


TIMED = {"C++ kernel": ("custom", "cpp"), "reference pair": ("custom", "python"), "torch": ("torch", None)}


def timing_comparison(shapes, repeats, threads=1, kinds=CHECK_KINDS):
    """time_forward_backward of every kind's implementations (TIMED: the C++ kernel where there is one,
    the reference pair, torch's) at shapes {"mlp": (N, C), "cnn": (N, C, H, W)}, on `threads` torch
    threads. Returns (table, numbers): milliseconds and the ratios to torch, "as used" (the C++ kernel
    where there is one, else the pair) and of the pair (display-ready), and time_ratio_{kind}_{net},
    time_ratio_min/_max (as used), pair_ratio_min/_max, timing_repeats, timing_threads."""

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        timing = pd.DataFrame([{"layer": kind, "at": net, "impl": name,
                                "ms": 1e3 * time_forward_backward(kind, impl, shape, repeats=repeats, kernel=kernel)}
                               for kind in kinds for net, shape in shapes.items()
                               for name, (impl, kernel) in TIMED.items() if kernel in (None, *kernels_of(kind))])
    finally:
        torch.set_num_threads(saved)
    ms = timing.pivot_table(index=["layer", "at"], columns="impl", values="ms", sort=False)[list(TIMED)]
    ms["as used / torch"] = ms["C++ kernel"].fillna(ms["reference pair"]) / ms["torch"]  # what the study's layers cost
    ms["reference pair / torch"] = ms["reference pair"] / ms["torch"]
    numbers = {f"time_ratio_{kind}_{net}": float(r["as used / torch"]) for (kind, net), r in ms.iterrows()}
    numbers.update({"time_ratio_min": float(ms["as used / torch"].min()), "time_ratio_max": float(ms["as used / torch"].max()),
                    "pair_ratio_min": float(ms["reference pair / torch"].min()),
                    "pair_ratio_max": float(ms["reference pair / torch"].max()),
                    "timing_repeats": repeats, "timing_threads": threads})
    ms.columns = [f"{c} (ms)" for c in TIMED] + ["as used / torch", "reference pair / torch"]
    table = ms.rename(index={k: norm_label(k) for k in kinds}, level="layer").rename(index=ARCH_LABELS, level="at")
    return table.round(3).reset_index(), numbers


def training_configs(train_size, val_size, epochs, kinds=CHECK_KINDS, lr=0.05):
    """The short MLP runs of the training comparison: each kind with the from-scratch layer (seed 0)
    and with torch's built-in (seeds 0 and 1, the second for scale), on the protocol of steps 1-5."""
    from dataclasses import replace

    from normlib.protocol import Protocol

    custom = Protocol(archs=("mlp",), train_size=train_size, val_size=val_size, mlp_epochs=epochs)
    builtin = replace(custom, impl="torch")
    return ([custom.config("mlp", kind, lr, 0) for kind in kinds]
            + [builtin.config("mlp", kind, lr, seed) for kind in kinds for seed in (0, 1)])
