"""Implementation checks for normlib.norms, as in the cs231n assignments: every hand-written
backward is compared with torch's built-in layers, with centred finite differences
(`eval_numerical_gradient_array`) and with torch.autograd.gradcheck, and the tables and numbers of
the implementation-check notebook (its timing and training comparison: normlib.check_training). Used
by tests/test_norms.py and notebooks/implementation_check.ipynb.

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

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.autograd.gradcheck import GradcheckError

from normlib import kernels
from normlib.figures import norm_label
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
