"""Implementation checks for normlib.norms, as in the cs231n assignments: every hand-written
backward is compared with torch's built-in layers, with centred finite differences
(`eval_numerical_gradient_array`) and with torch.autograd.gradcheck; plus a timing of the
custom layers against the built-ins. Used by tests/test_norms.py and the implementation-check notebook.

`kernel` selects which from-scratch implementation is checked: "python", the reference pairs of
normlib.norms (PyTorch ops, every kind), or "cpp", the fused C++ kernels of normlib/csrc/norms.cpp
(batch, layer and group norm, CPU), which the custom layers use on CPU.

`shape` is always the input shape, (N, C) or (N, C, H, W). For kind "weight" the input feeds a
weight-normalized nn.Linear(C, C) (2-D) or nn.Conv2d(C, C, 3, padding=1) (4-D): its weight is v.
In float64 the custom layers agree with the built-ins to a relative error of about 1e-14
(should be < 1e-10). Against finite differences (h = 1e-5) the error is about 1e-10 for
dgamma/dbeta/dg and 1e-8 to 1e-6 for dx/dv, whose near-zero entries carry the round-off of
the differences (should be < 1e-5; a wrong gradient gives ~1).
"""
import contextlib
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from normlib import kernels
from normlib.norms import (BatchNormFn, GroupNormFn, LayerNormFn, WeightNormFn, batch_norm_backward,
                           batch_norm_forward, group_count, group_norm_backward, group_norm_forward,
                           layer_norm_backward, layer_norm_forward, make_norm, weight_norm,
                           weight_norm_backward, weight_norm_forward)

CHECK_KINDS = ("batch", "layer", "group", "weight")
KERNEL_KINDS = ("batch", "layer", "group")  # the kinds with a fused C++ kernel besides the reference pair
KERNELS = {"python": "reference pair (PyTorch ops)", "cpp": "fused C++ kernel"}
EPS = 1e-5


def kernels_of(kind):
    """The from-scratch implementations of kind: ("python", "cpp") for batch, layer and group norm, else ("python",)."""
    return ("python", "cpp") if kind in KERNEL_KINDS else ("python",)


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


def _check_kind(kind):
    if kind not in CHECK_KINDS:
        raise ValueError(f"kind = {kind!r}: allowed {', '.join(CHECK_KINDS)}")


def _inputs(kind, shape, dtype, seed):
    """Random inputs, named as the gradients are: x = 5*randn + 12 (a mean far from 0, as in cs231n),
    then gamma, beta (or v, g for weight norm) ~ N(0, 1)."""
    _check_kind(kind)
    gen = torch.Generator().manual_seed(seed)
    def randn(*s):
        return torch.randn(*s, generator=gen, dtype=dtype)

    c = shape[1]
    inputs = {"x": 5 * randn(shape) + 12}
    if kind == "weight":
        inputs.update(v=randn((c, c) if len(shape) == 2 else (c, c, 3, 3)), g=randn(c))
    else:
        pshape = tuple(shape[1:]) if kind == "layer" else (c,)
        inputs.update(gamma=randn(pshape), beta=randn(pshape))
    return inputs, randn


def _layer(x, w):
    """The layer a weight-normalized weight w feeds: linear for (C, C), 3x3 conv with padding 1 otherwise."""
    return F.linear(x, w) if w.dim() == 2 else F.conv2d(x, w, padding=1)


def _custom(kind, t, groups, kernel="python"):
    """The custom autograd Function of kind (the reference pair's, or the C++ kernel's) applied to the
    named inputs t."""
    _check_kernel(kind, kernel)
    if kernel == "cpp":
        ext, x = kernels.ext(), t["x"]
        if kind == "layer":
            return ext.layer_norm(x, t["gamma"], t["beta"], EPS)
        if kind == "group":
            return ext.group_norm(x, t["gamma"], t["beta"], group_count(x.shape[1], groups), EPS)
        return ext.batch_norm(x, t["gamma"], t["beta"], EPS)[0]  # batch norm; the batch statistics dropped
    if kind == "batch":
        return BatchNormFn.apply(t["x"], t["gamma"], t["beta"], EPS)[0]
    if kind == "layer":
        return LayerNormFn.apply(t["x"], t["gamma"], t["beta"], EPS)
    if kind == "group":
        return GroupNormFn.apply(t["x"], t["gamma"], t["beta"], group_count(t["x"].shape[1], groups), EPS)
    return _layer(t["x"], WeightNormFn.apply(t["v"], t["g"]))


def _builtin(kind, t, groups):
    """torch's own version of the same computation."""
    if kind == "batch":
        return F.batch_norm(t["x"], None, None, t["gamma"], t["beta"], training=True, eps=EPS)
    if kind == "layer":
        return F.layer_norm(t["x"], t["x"].shape[1:], t["gamma"], t["beta"], EPS)
    if kind == "group":
        return F.group_norm(t["x"], group_count(t["x"].shape[1], groups), t["gamma"], t["beta"], EPS)
    g = t["g"].view((-1,) + (1,) * (t["v"].dim() - 1))  # torch keeps g as (out, 1, ...)
    return _layer(t["x"], torch._weight_norm(t["v"], g, 0))


def compare_to_builtin(kind, shape, dtype=torch.float64, seed=0, groups=8, kernel="python"):
    """Custom Function (of the reference pair, or of the C++ kernel) vs torch built-in on random inputs
    and a random upstream gradient.
    Returns {"out": {"abs", "rel"}, "dx": ..., "dgamma"/"dv": ..., "dbeta"/"dg": ...}."""
    _check_kernel(kind, kernel)
    t, randn = _inputs(kind, tuple(shape), dtype, seed)
    t = {k: v.requires_grad_() for k, v in t.items()}
    out_custom, out_builtin = _custom(kind, t, groups, kernel), _builtin(kind, t, groups)
    dout = randn(out_custom.shape)
    grads_custom = torch.autograd.grad(out_custom, list(t.values()), dout)
    grads_builtin = torch.autograd.grad(out_builtin, list(t.values()), dout)
    pairs = [("out", out_custom.detach(), out_builtin.detach())]
    pairs += [("d" + k, a, b) for k, a, b in zip(t, grads_custom, grads_builtin)]
    return {name: {"abs": max_abs(a, b), "rel": rel_error(a, b)} for name, a, b in pairs}


def _kernel_pair(kind, t, groups):
    """_pure_pair for the C++ kernels: forward() -> (y, (mean, inv_std)), backward(dy, cache) -> gradients."""
    ext, x, gamma, beta = kernels.ext(), t["x"], t["gamma"], t["beta"]
    g = (group_count(x.shape[1], groups),) if kind == "group" else ()  # group norm's extra argument
    pure_forward, pure_backward = {"batch": (ext.batch_norm_forward, ext.batch_norm_backward),
                                   "layer": (ext.layer_norm_forward, ext.layer_norm_backward),
                                   "group": (ext.group_norm_forward, ext.group_norm_backward)}[kind]

    def forward():
        y, mean, *rest = pure_forward(x, gamma, beta, *g, EPS)
        return y, (mean, rest[-1])  # rest: (var, inv_std) for batch norm, (inv_std,) for the others

    def backward(dy, cache):
        return pure_backward(dy, x, *cache, gamma, *g)
    return forward, backward, ("x", "gamma", "beta")


def _pure_pair(kind, t, groups, kernel="python"):
    """(forward, backward, names of the differentiated inputs) of the pure functions of kind."""
    if kernel == "cpp":
        return _kernel_pair(kind, t, groups)
    if kind == "batch":
        return lambda: batch_norm_forward(t["x"], t["gamma"], t["beta"], EPS), batch_norm_backward, ("x", "gamma", "beta")
    if kind == "layer":
        return lambda: layer_norm_forward(t["x"], t["gamma"], t["beta"], EPS), layer_norm_backward, ("x", "gamma", "beta")
    if kind == "group":
        g = group_count(t["x"].shape[1], groups)
        return lambda: group_norm_forward(t["x"], t["gamma"], t["beta"], g, EPS), group_norm_backward, ("x", "gamma", "beta")
    return lambda: weight_norm_forward(t["v"], t["g"]), weight_norm_backward, ("v", "g")


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
    """Relative error of the analytic backward vs centred finite differences (h = 1e-5, float64),
    per gradient: {"dx": ..., "dgamma": ..., "dbeta": ...} or {"dv": ..., "dg": ...} for weight norm."""
    _check_kernel(kind, kernel)
    t, randn = _inputs(kind, tuple(shape), torch.float64, seed)
    forward, backward, names = _pure_pair(kind, t, groups, kernel)
    y, cache = forward()
    dy = randn(y.shape)
    analytic = backward(dy, cache)
    return {"d" + k: rel_error(a, _numerical_gradient(lambda: forward()[0], t[k], dy))
            for k, a in zip(names, analytic)}


def gradcheck(kind, shape, groups=8, kernel="python"):
    """torch.autograd.gradcheck of the custom Function of kind on float64 inputs of shape."""
    _check_kernel(kind, kernel)
    t, _ = _inputs(kind, tuple(shape), torch.float64, 0)
    t = {k: v.requires_grad_() for k, v in t.items()}
    if kernel == "cpp":
        names = list(t)
        return torch.autograd.gradcheck(lambda *v: _custom(kind, dict(zip(names, v)), groups, "cpp"), tuple(t.values()))
    if kind == "batch":
        return torch.autograd.gradcheck(BatchNormFn.apply, (t["x"], t["gamma"], t["beta"], EPS))
    if kind == "layer":
        return torch.autograd.gradcheck(LayerNormFn.apply, (t["x"], t["gamma"], t["beta"], EPS))
    if kind == "group":
        g = group_count(t["x"].shape[1], groups)
        return torch.autograd.gradcheck(GroupNormFn.apply, (t["x"], t["gamma"], t["beta"], g, EPS))
    return torch.autograd.gradcheck(WeightNormFn.apply, (t["v"], t["g"]))


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
    For kind "weight" the layer is the weight-normalized Linear(C, C) / Conv2d(C, C, 3, padding=1).
    kernel ("cpp" | "python"): which from-scratch implementation a custom layer uses (default: as configured)."""
    if kernel is not None and impl == "custom":
        _check_kernel(kind, kernel)
        with kernel_backend(kernel):
            return time_forward_backward(kind, impl, shape, repeats, dtype, groups, seed)
    _check_kind(kind)
    torch.manual_seed(seed)
    c = shape[1]
    if kind == "weight":
        module = weight_norm(nn.Linear(c, c) if len(shape) == 2 else nn.Conv2d(c, c, 3, padding=1), impl=impl)
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
    layer, kernel, shape, quantity, abs, rel, ready for pandas.DataFrame."""
    return [{"layer": kind, "kernel": kernel, "shape": str(tuple(shape)), "quantity": name, **err}
            for kind in kinds for kernel in kernels_of(kind) for shape in shapes
            for name, err in compare_to_builtin(kind, shape, dtype=dtype, seed=seed, kernel=kernel).items()]
