"""Implementation checks for normlib.norms, as in the cs231n assignments: every hand-written
backward is compared with torch's built-in layers, with centred finite differences
(`eval_numerical_gradient_array`) and with torch.autograd.gradcheck; plus a timing of the
custom layers against the built-ins, and the tables and numbers of the implementation-check
notebook. Used by tests/test_norms.py and notebooks/implementation_check.ipynb.

Every kind of the registry normlib.norms.NORMS with a reference pair is checked, from what its
entry names: the pair, its autograd Function, torch's built-in and the names of its inputs.
`kernel` selects which from-scratch implementation is checked: "python", the reference pair and
its Function (every kind), or "cpp", the fused C++ op of normlib/csrc/norms.cpp (the kinds whose
entry names one), which the custom layers use on CPU.

`shape` is always the input shape of the layer, (N, C) or (N, C, H, W). For weight norm, whose
input is a weight, it is the weight of a Linear(C, C) (2-D) or of a 3x3 Conv2d(C, C) (4-D).
A 3-D shape (N, T, D) is the tokens of the vision transformer (normlib.models.ViT): batch and layer
norm (TOKEN_KINDS) are checked there as the network applies them, the op on x.reshape(N*T, D)
(normlib.models.over_tokens), against F.layer_norm over the D features of each token and
F.batch_norm on x.transpose(1, 2), each feature over the batch and the tokens.
In float64 the custom layers agree with the built-ins to a relative error of about 1e-14
(should be < 1e-10). Against finite differences (h = 1e-5) the error is about 1e-10 for
dgamma/dbeta/dg and 1e-8 to 1e-6 for dx/dv, whose near-zero entries carry the round-off of
the differences (should be < 1e-5; a wrong gradient gives ~1).
"""
import contextlib
import os
import statistics
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from normlib import kernels
from normlib.figures import ARCH_LABELS, norm_label
from normlib.metrics import run_metrics
from normlib.models import TOKEN_NORMS, over_tokens
from normlib.norms import NORMS, make_norm

CHECK_KINDS = tuple(kind for kind, norm in NORMS.items() if norm.forward is not None)  # all but "none"
TOKEN_KINDS = tuple(kind for kind in TOKEN_NORMS if kind in CHECK_KINDS)  # batch, layer: the vit's norms
TOKEN_BUILTINS = {  # kind -> torch's own norm of the tokens x (N, T, D): builtin(x, gamma, beta, eps) -> y
    "batch": lambda x, gamma, beta, eps: F.batch_norm(x.transpose(1, 2), None, None, gamma, beta, training=True,
                                                      eps=eps).transpose(1, 2),  # (N, D, T): D channels
    "layer": lambda x, gamma, beta, eps: F.layer_norm(x, x.shape[-1:], gamma, beta, eps),
}
KERNELS = {"python": "reference pair (PyTorch ops)", "cpp": "fused C++ kernel"}
EPS = 1e-5


def kernels_of(kind):
    """The from-scratch implementations of kind: ("python", "cpp") if it has a fused C++ op, else ("python",)."""
    return ("python", "cpp") if NORMS[kind].fused else ("python",)


def _check_kind(kind, shape=()):
    if kind not in CHECK_KINDS:
        raise ValueError(f"kind = {kind!r}: allowed {', '.join(CHECK_KINDS)}")
    if not applies(kind, shape):
        raise ValueError(f"kind = {kind!r} at tokens {tuple(shape)}: allowed {', '.join(TOKEN_KINDS)}")


def is_tokens(shape):
    """Whether shape is the vision transformer's tokens (N, T, D)."""
    return len(shape) == 3


def applies(kind, shape):
    """Whether kind is checked at shape: every kind at (N, C) and (N, C, H, W), TOKEN_KINDS at (N, T, D)."""
    return not is_tokens(shape) or kind in TOKEN_KINDS


def _check_kernel(kind, kernel):
    _check_kind(kind)
    if kernel not in kernels_of(kind):
        raise ValueError(f"kernel = {kernel!r}: allowed for {kind} {', '.join(kernels_of(kind))}")


def rel_error(a, b):
    """cs231n relative error: max over elements of |a - b| / (|a| + |b|)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).abs() / (a.abs() + b.abs()).clamp_min(1e-300)).max().item()


def max_abs(a, b):
    """Largest absolute elementwise difference."""
    return (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).abs().max().item()


def _inputs(kind, shape, dtype, seed):
    """The named inputs of kind's pair for a layer input of shape: x = 5*randn + 12 (a mean far from 0,
    as in cs231n), every other input (gamma, beta; v, g) ~ N(0, 1); and the generator's randn.
    At tokens (N, T, D): x, and gamma, beta of D values."""
    _check_kind(kind, shape)
    gen = torch.Generator().manual_seed(seed)

    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=dtype)
    shape = tuple(shape)
    names = {"x": shape, "gamma": shape[-1:], "beta": shape[-1:]} if is_tokens(shape) else NORMS[kind].inputs(shape)
    return {name: 5 * randn(s) + 12 if name == "x" else randn(s) for name, s in names.items()}, randn


def _args(kind, shape, groups):
    """The further arguments of kind's pair (eps; the group count) for a layer input of shape."""
    return NORMS[kind].args(shape[1], EPS, groups)


def _op(kind, kernel, shape=()):
    """The differentiable op checked, op(*inputs, *args) -> y: the pair's autograd Function
    ("python") or the fused C++ op ("cpp"). Batch norm's batch statistics are dropped.
    At tokens (N, T, D): that op on the N*T tokens, as the vision transformer applies it (over_tokens)."""
    _check_kernel(kind, kernel)
    _check_kind(kind, shape)
    op = NORMS[kind].function.apply if kernel == "python" else getattr(kernels.ext(), NORMS[kind].fused)

    def apply(x, *args):
        out = op(x, *args)
        return out[0] if isinstance(out, (tuple, list)) else out
    if is_tokens(shape):
        return lambda x, *args: over_tokens(lambda rows: apply(rows, *args), x)  # (N*T, D) rows
    return apply


def _builtin(kind, shape):
    """torch's own op for kind at shape: the registry's builtin, or at tokens TOKEN_BUILTINS."""
    return TOKEN_BUILTINS[kind] if is_tokens(shape) else NORMS[kind].builtin


def compare_to_builtin(kind, shape, dtype=torch.float64, seed=0, groups=8, kernel="python"):
    """The custom op (the pair's Function, or the C++ kernel) vs torch's built-in on random inputs and a
    random upstream gradient. Returns {"out": {"abs", "rel"}, "dx": ..., "dgamma": ..., "dbeta": ...}
    (weight norm: "out", "dv", "dg"), one gradient per input of the pair."""
    op, args = _op(kind, kernel, shape), _args(kind, shape, groups)
    t, randn = _inputs(kind, shape, dtype, seed)
    xs = [v.requires_grad_() for v in t.values()]
    out_custom, out_builtin = op(*xs, *args), _builtin(kind, shape)(*xs, *args)
    dout = randn(out_custom.shape)
    grads_custom = torch.autograd.grad(out_custom, xs, dout)
    grads_builtin = torch.autograd.grad(out_builtin, xs, dout)
    pairs = [("out", out_custom.detach(), out_builtin.detach())]
    pairs += [("d" + k, a, b) for k, a, b in zip(t, grads_custom, grads_builtin)]
    return {name: {"abs": max_abs(a, b), "rel": rel_error(a, b)} for name, a, b in pairs}


def compare_kernel_to_pair(kind, shape, dtype=torch.float64, seed=0, groups=8):
    """The fused C++ op of kind vs its reference pair's Function, on the same random inputs and upstream
    gradient: {"out": rel, "dx": rel, ...}, cs231n relative errors (should be ~1e-15 in float64)."""
    args = _args(kind, shape, groups)
    t, randn = _inputs(kind, shape, dtype, seed)
    results = {}
    for kernel in ("cpp", "python"):
        xs = [v.clone().requires_grad_() for v in t.values()]
        y = _op(kind, kernel, shape)(*xs, *args)
        if kernel == "cpp":
            dy = randn(y.shape)
        results[kernel] = [y.detach(), *torch.autograd.grad(y, xs, dy)]
    names = ["out"] + ["d" + k for k in t]
    return {name: rel_error(a, b) for name, a, b in zip(names, results["cpp"], results["python"])}


def _numerical_gradient(f, x, df, h=1e-5):
    """cs231n eval_numerical_gradient_array: d(sum(f(x) * df))/dx by centred differences, x changed in place."""
    grad = torch.zeros_like(x)
    flat, gflat = x.view(-1), grad.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + h
        pos = f().clone()
        flat[i] = old - h
        neg = f()
        flat[i] = old
        gflat[i] = ((pos - neg) * df).sum() / (2 * h)
    return grad


def numeric_gradient_errors(kind, shape, seed=0, groups=8, kernel="python"):
    """Relative error of the analytic gradients vs centred finite differences of the forward (h = 1e-5,
    float64), per input: {"dx": ..., "dgamma": ..., "dbeta": ...} or {"dv": ..., "dg": ...}. The analytic
    gradients: the pure backward(dy, cache) of the reference pair ("python"), or the C++ op's backward
    through autograd ("cpp"); at tokens, the op on the tokens through autograd (the pair's Function, whose
    backward is the pair's, or the C++ op)."""
    _check_kernel(kind, kernel)
    norm, args = NORMS[kind], _args(kind, shape, groups)
    t, randn = _inputs(kind, shape, torch.float64, seed)
    xs = list(t.values())  # the finite differences change these in place
    if kernel == "python" and not is_tokens(shape):
        y, cache = norm.forward(*xs, *args)
        dy = randn(y.shape)
        analytic = norm.backward(dy, cache)
        forward = lambda: norm.forward(*xs, *args)[0]  # noqa: E731
    else:
        op = _op(kind, kernel, shape)
        leaves = [v.clone().requires_grad_() for v in xs]
        y = op(*leaves, *args)
        dy = randn(y.shape)
        analytic = torch.autograd.grad(y, leaves, dy)
        forward = lambda: op(*xs, *args)  # noqa: E731
    return {"d" + k: rel_error(a, _numerical_gradient(forward, t[k], dy)) for k, a in zip(t, analytic)}


def gradcheck(kind, shape, groups=8, kernel="python"):
    """torch.autograd.gradcheck of the custom op of kind (the pair's Function, or the C++ kernel) on
    float64 inputs for a layer input of shape; raises torch's GradcheckError on a mismatch."""
    op, args = _op(kind, kernel, shape), _args(kind, shape, groups)
    t, _ = _inputs(kind, shape, torch.float64, 0)
    return torch.autograd.gradcheck(lambda *xs: op(*xs, *args), tuple(v.requires_grad_() for v in t.values()))


def passes_gradcheck(kind, shape, groups=8, kernel="python"):
    """gradcheck as a boolean: False where torch's GradcheckError names mismatching entries."""
    try:
        return gradcheck(kind, shape, groups, kernel)
    except GradcheckError:
        return False


@contextlib.contextmanager
def kernel_backend(kernel):
    """Within the block the custom layers use `kernel` on CPU ("cpp" | "python"; NORMLIB_KERNELS)."""
    saved = os.environ.get("NORMLIB_KERNELS")
    os.environ["NORMLIB_KERNELS"] = kernel
    try:
        kernels.backend()
        yield
    finally:
        if saved is None:
            os.environ.pop("NORMLIB_KERNELS", None)
        else:
            os.environ["NORMLIB_KERNELS"] = saved


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


def implementation_table(kinds=CHECK_KINDS, shapes=((4, 32), (2, 16, 5, 5)), dtype=torch.float64, seed=0):
    """One row per (layer, implementation, shape, quantity) of compare_to_builtin: dicts with keys
    layer, kernel, shape, quantity, abs, rel, ready for pandas.DataFrame. A token shape (N, T, D) is
    checked for TOKEN_KINDS only."""
    return [{"layer": kind, "kernel": kernel, "shape": str(tuple(shape)), "quantity": name, **err}
            for kind in kinds for kernel in kernels_of(kind) for shape in shapes if applies(kind, shape)
            for name, err in compare_to_builtin(kind, shape, dtype=dtype, seed=seed, kernel=kernel).items()]


# ----------------------------------------------------------------------------
# the implementation-check notebook: display-ready tables and the numbers it glues

def _format(table):
    """A reader's table: the row labels as columns (report.show prints no index), errors as 1.2e-14, an
    error that does not apply (a gradient the layer does not have) as ''."""
    table = table.reset_index()
    return table.map(lambda v: "" if isinstance(v, float) and np.isnan(v) else f"{v:.1e}" if isinstance(v, float) else v)


def builtin_comparison(shapes, dtypes=("float64", "float32"), kinds=CHECK_KINDS, seed=0):
    """compare_to_builtin for every kind, implementation, shape and dtype. Returns (worst, by_shape, numbers):
    the largest errors over the shapes per layer, implementation and quantity (display-ready), every
    shape's errors (display-ready), and the numbers the notebook glues: max_rel_error_f64/_f32,
    max_abs_error_f64/_f32, float32_eps and f64_agreement (a phrase: below cs231n's 1e-8 or not)."""
    errors = pd.concat([pd.DataFrame(implementation_table(kinds, shapes, dtype=getattr(torch, d), seed=seed))
                        .assign(dtype=d) for d in dtypes], ignore_index=True)
    errors = errors.assign(layer=errors["layer"].map(norm_label), kernel=errors["kernel"].map(KERNELS))
    errors = errors.rename(columns={"kernel": "implementation"})
    worst = errors.pivot_table(index=["layer", "implementation", "quantity"], columns="dtype", values=["abs", "rel"],
                               aggfunc="max", sort=False)
    worst = worst[[(v, d) for d in dtypes for v in ("abs", "rel")]]
    worst.columns = [f"{d} max {v}" for d in dtypes for v in ("abs", "rel")]
    by_shape = errors.pivot_table(index=["layer", "implementation", "shape", "quantity"], columns="dtype",
                                  values=["abs", "rel"], sort=False)
    by_shape = by_shape[[(v, d) for d in dtypes for v in ("abs", "rel")]]
    by_shape.columns = [f"{d} {v}" for d in dtypes for v in ("abs", "rel")]
    numbers = {f"max_{v}_error_{d.replace('float', 'f')}": float(g[v].max())
               for d, g in errors.groupby("dtype") for v in ("rel", "abs")}
    numbers["float32_eps"] = float(torch.finfo(torch.float32).eps)
    if "float64" in dtypes:
        numbers["f64_agreement"] = (
            "compute the same outputs and gradients as PyTorch's, to float64 rounding (every relative error is "
            "below cs231n's 1e-8)" if numbers["max_rel_error_f64"] < 1e-8 else
            "differ from PyTorch's somewhere (a relative error above cs231n's 1e-8): see the table below")
    return _format(worst), _format(by_shape), numbers


def gradient_checks(shapes, kinds=CHECK_KINDS):
    """numeric_gradient_errors and gradcheck for every kind, implementation and shape. Returns (table, numbers):
    per layer, implementation and shape the relative error of each gradient and "passed" | "FAILED"
    (display-ready), and max_numeric_rel_error, n_gradchecks and gradcheck_all ("all passed" or which failed).
    A token shape (N, T, D) is checked for TOKEN_KINDS only."""
    rows = [{"layer": norm_label(kind), "implementation": KERNELS[kernel], "shape": str(tuple(shape)),
             **numeric_gradient_errors(kind, shape, kernel=kernel),
             "gradcheck": "passed" if passes_gradcheck(kind, shape, kernel=kernel) else "FAILED"}
            for kind in kinds for kernel in kernels_of(kind) for shape in shapes if applies(kind, shape)]
    table = pd.DataFrame(rows).set_index(["layer", "implementation", "shape"])
    failed = [", ".join(i[:2]) + f" {i[2]}" for i, ok in table["gradcheck"].items() if ok != "passed"]
    numbers = {"max_numeric_rel_error": float(table.select_dtypes("number").max().max()), "n_gradchecks": len(table),
               "gradcheck_all": "all passed" if not failed else f"{len(failed)} failed ({'; '.join(failed)})"}
    return _format(table), numbers


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
