"""Normalization layers written from scratch, with hand-derived gradients, and their registry.

- Batch norm: Ioffe & Szegedy 2015, Alg. 1 (training transform) and Alg. 2 (running
  statistics for inference; the variance is stored unbiased, momentum update as in torch).
- Layer norm: Ba, Kiros & Hinton 2016, eq. 4 (statistics over the features of one example).
- Group norm: Wu & He 2018, eq. 1-3 with per-channel gamma/beta (layer-norm math on (N, G, -1)).
- Weight norm: Salimans & Kingma 2016 (w = g v/||v||): its pair, Function, modules and data-dependent
  initialization are in normlib.weight_norm; `weight_norm` here builds it for a layer.

Each normalization is a pure pair, cs231n style: `*_forward` returns the output and a cache,
`*_backward` takes the upstream gradient and that cache and returns one gradient per input.
The pairs are the definition, written as the formulas read, not for speed. A
`torch.autograd.Function` wraps each pair and an `nn.Module` holds the parameters, so the
layers drop into a network like torch's. On CPU the batch-norm, layer-norm and group-norm modules
call the same formulas as fused C++ loops (normlib/csrc/norms.cpp, via normlib.kernels), which
cost about what torch's built-ins cost; the pairs run on other devices and with
NORMLIB_KERNELS=python.

NORMS, at the end, is the one table of the kinds: how models build each one, how the report names
and draws it, and what normlib.check needs to check it against torch's built-in, finite
differences and gradcheck (tests/test_norms.py runs those checks for every entry). Adding a kind
is its entry, its pair, Function and Module, and its tests. The names other modules validate
against live here: NORM_KINDS (the registry's keys) and IMPLS (normlib.params reads both).
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from normlib import kernels
from normlib.weight_norm import (WeightNormConv2d, WeightNormFn, WeightNormLinear, weight_norm_backward,
                                 weight_norm_forward)

IMPLS = ("custom", "torch")  # every layer's implementations: normlib's from-scratch one, or torch's built-in


# ----------------------------------------------------------------------------
# the reference pairs: the formulas of book/architecture.md, line by line. Shape comments are for a
# conv activation (N, C, H, W); after a Linear it is (N, C) and the trailing 1s go.

def batch_norm_forward(x, gamma, beta, eps):
    """x: (N, C) or (N, C, H, W); gamma, beta: (C,). Alg. 1: each channel is normalized over the
    batch (and the positions). Returns y (like x) and cache = (x_hat, inv_std, gamma, mean, var): the
    backward uses the first three, BatchNorm's running statistics the batch mean and biased variance (C,)."""
    dims = [0] + list(range(2, x.dim()))  # every axis but C: the M = N*H*W values of a channel
    shape = [1, -1] + [1] * (x.dim() - 2)  # (C,) -> (1, C, 1, 1), to broadcast over x
    mean = x.mean(dims, keepdim=True)  # (1, C, 1, 1)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)  # (1, C, 1, 1), biased
    inv_std = 1 / torch.sqrt(var + eps)  # (1, C, 1, 1)
    x_hat = (x - mean) * inv_std  # (N, C, H, W)
    y = gamma.view(shape) * x_hat + beta.view(shape)  # (N, C, H, W)
    return y, (x_hat, inv_std, gamma, mean.flatten(), var.flatten())


def batch_norm_backward(dy, cache):
    """dy: like x. Returns dx (like dy), dgamma (C,), dbeta (C,)."""
    x_hat, inv_std, gamma = cache[:3]  # (N, C, H, W), (1, C, 1, 1), (C,)
    dims = [0] + list(range(2, dy.dim()))  # every axis but C
    m = dy.numel() // dy.shape[1]  # M values per channel
    dgamma = (dy * x_hat).sum(dims)  # (C,)
    dbeta = dy.sum(dims)  # (C,)
    dx_hat = dy * gamma.view(inv_std.shape)  # (N, C, H, W)
    dx = inv_std / m * (m * dx_hat - dx_hat.sum(dims, keepdim=True)
                        - x_hat * (dx_hat * x_hat).sum(dims, keepdim=True))  # (N, C, H, W)
    return dx, dgamma, dbeta


def layer_norm_forward(x, gamma, beta, eps):
    """x: (N, *F); gamma, beta: F. Eq. 4: each example is normalized over its K = prod(F) features.
    Returns y (N, *F) and cache = (x_hat, inv_std, gamma)."""
    dims = list(range(1, x.dim()))  # every axis but N
    mean = x.mean(dims, keepdim=True)  # (N, 1, 1, 1)
    var = ((x - mean) ** 2).mean(dims, keepdim=True)  # (N, 1, 1, 1), biased
    inv_std = 1 / torch.sqrt(var + eps)  # (N, 1, 1, 1)
    x_hat = (x - mean) * inv_std  # (N, C, H, W)
    y = gamma * x_hat + beta  # (N, C, H, W); gamma, beta: (C, H, W)
    return y, (x_hat, inv_std, gamma)


def layer_norm_backward(dy, cache):
    """dy: (N, *F). Returns dx (N, *F), dgamma F, dbeta F."""
    x_hat, inv_std, gamma = cache  # (N, C, H, W), (N, 1, 1, 1), (C, H, W)
    dims = list(range(1, dy.dim()))  # every axis but N
    k = math.prod(dy.shape[1:])  # K features per example
    dgamma = (dy * x_hat).sum(0)  # (C, H, W)
    dbeta = dy.sum(0)  # (C, H, W)
    dx_hat = dy * gamma  # (N, C, H, W)
    dx = inv_std / k * (k * dx_hat - dx_hat.sum(dims, keepdim=True)
                        - x_hat * (dx_hat * x_hat).sum(dims, keepdim=True))  # (N, C, H, W)
    return dx, dgamma, dbeta


def group_norm_forward(x, gamma, beta, num_groups, eps):
    """x: (N, C, *S); gamma, beta: (C,). Eq. 1-3: layer norm within each of the G groups of C/G
    channels, then a per-channel affine map. Returns y (like x) and cache = (x_hat, inv_std, gamma, num_groups)."""
    n, c = x.shape[:2]
    shape = [1, c] + [1] * (x.dim() - 2)  # (C,) -> (1, C, 1, 1), to broadcast over x
    x_g = x.reshape(n, num_groups, -1)  # (N, G, K): one row per example and group, K = C/G*H*W
    mean = x_g.mean(2, keepdim=True)  # (N, G, 1)
    var = ((x_g - mean) ** 2).mean(2, keepdim=True)  # (N, G, 1), biased
    inv_std = 1 / torch.sqrt(var + eps)  # (N, G, 1)
    x_hat = ((x_g - mean) * inv_std).view(x.shape)  # (N, C, H, W)
    y = gamma.view(shape) * x_hat + beta.view(shape)  # (N, C, H, W)
    return y, (x_hat, inv_std, gamma, num_groups)


def group_norm_backward(dy, cache):
    """dy: (N, C, *S). Returns dx (like dy), dgamma (C,), dbeta (C,)."""
    x_hat, inv_std, gamma, num_groups = cache  # (N, C, H, W), (N, G, 1), (C,)
    n, c = dy.shape[:2]
    dims = [0] + list(range(2, dy.dim()))  # every axis but C
    dgamma = (dy * x_hat).sum(dims)  # (C,)
    dbeta = dy.sum(dims)  # (C,)
    dx_hat = (dy * gamma.view([1, c] + [1] * (dy.dim() - 2))).reshape(n, num_groups, -1)  # (N, G, K)
    x_hat = x_hat.reshape(n, num_groups, -1)  # (N, G, K)
    k = x_hat.shape[2]  # values per example and group
    dx = inv_std / k * (k * dx_hat - dx_hat.sum(2, keepdim=True)
                        - x_hat * (dx_hat * x_hat).sum(2, keepdim=True))  # (N, G, K)
    return dx.view(dy.shape), dgamma, dbeta


# ----------------------------------------------------------------------------
# autograd Functions: the pairs above as differentiable ops (first derivatives only)

class BatchNormFn(torch.autograd.Function):
    """BatchNormFn.apply(x, gamma, beta, eps) -> (y, mean, var); mean, var are the batch
    statistics (biased, (C,)), returned for the running averages and not differentiable."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        y, (x_hat, inv_std, gamma, mean, var) = batch_norm_forward(x, gamma, beta, eps)
        ctx.save_for_backward(x_hat, inv_std, gamma)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _dvar):
        dx, dgamma, dbeta = batch_norm_backward(dy, ctx.saved_tensors)
        return dx, dgamma, dbeta, None


class LayerNormFn(torch.autograd.Function):
    """LayerNormFn.apply(x, gamma, beta, eps) -> y."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps):
        y, cache = layer_norm_forward(x, gamma, beta, eps)
        ctx.save_for_backward(*cache)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        return *layer_norm_backward(dy, ctx.saved_tensors), None


class GroupNormFn(torch.autograd.Function):
    """GroupNormFn.apply(x, gamma, beta, num_groups, eps) -> y."""

    @staticmethod
    def forward(ctx, x, gamma, beta, num_groups, eps):
        y, (x_hat, inv_std, gamma, num_groups) = group_norm_forward(x, gamma, beta, num_groups, eps)
        ctx.save_for_backward(x_hat, inv_std, gamma)
        ctx.num_groups = num_groups
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        return *group_norm_backward(dy, (*ctx.saved_tensors, ctx.num_groups)), None, None


# ----------------------------------------------------------------------------
# modules (parameters named weight/bias like torch's, so state dicts are interchangeable)

class BatchNorm(nn.Module):
    """Batch norm over (N, C) or (N, C, H, W); running statistics as in torch (Alg. 2 at eval)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))  # unbiased, as torch
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        c = self.num_features
        if x.dim() not in (2, 4) or x.shape[1] != c:
            raise ValueError(f"BatchNorm({c}) expected input of shape (N, {c}) or (N, {c}, H, W), "
                             f"got {tuple(x.shape)}")
        bshape = (1, c) + (1,) * (x.dim() - 2)
        if not self.training:  # Alg. 2: a fixed affine map from the running statistics
            scale = self.weight * torch.rsqrt(self.running_var + self.eps)  # (C,)
            shift = self.bias - self.running_mean * scale  # (C,)
            return scale.view(bshape) * x + shift.view(bshape)
        m = x.numel() // c  # values per channel
        if m == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        # the batch mean and biased variance (C,) come back with y, from the C++ kernel or the reference pair
        batch_norm = kernels.ext().batch_norm if kernels.use_cpp(x) else BatchNormFn.apply
        y, mean, var = batch_norm(x, self.weight, self.bias, self.eps)
        # Alg. 2's averages as exponential moving averages, in torch's convention: r <- r + p (batch - r),
        # the variance unbiased; mean and var need no grad (non-differentiable outputs), so no no_grad block
        torch._foreach_lerp_([self.running_mean, self.running_var], [mean, var * (m / (m - 1))], self.momentum)
        self.num_batches_tracked.add_(1)
        return y

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class LayerNorm(nn.Module):
    """Layer norm of inputs (N, *normalized_shape), with gamma, beta of normalized_shape."""

    def __init__(self, normalized_shape, eps=1e-5):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = nn.Parameter(torch.ones(shape))  # gamma
        self.bias = nn.Parameter(torch.zeros(shape))  # beta

    def forward(self, x):
        if tuple(x.shape[1:]) != self.normalized_shape:
            expected = ", ".join(map(str, ("N",) + self.normalized_shape))
            raise ValueError(f"LayerNorm expected input of shape ({expected}), got {tuple(x.shape)}")
        if kernels.use_cpp(x):
            return kernels.ext().layer_norm(x, self.weight, self.bias, self.eps)
        return LayerNormFn.apply(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class GroupNorm(nn.Module):
    """Group norm of inputs (N, C, *S): G groups of C/G channels, per-channel gamma, beta."""

    def __init__(self, num_groups, num_channels, eps=1e-5):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels={num_channels} is not divisible by num_groups={num_groups}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = nn.Parameter(torch.ones(num_channels))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_channels))  # beta

    def forward(self, x):
        c = self.num_channels
        if x.dim() < 2 or x.shape[1] != c:
            raise ValueError(f"GroupNorm expected input of shape (N, {c}, ...), got {tuple(x.shape)}")
        if kernels.use_cpp(x):
            return kernels.ext().group_norm(x, self.weight, self.bias, self.num_groups, self.eps)
        return GroupNormFn.apply(x, self.weight, self.bias, self.num_groups, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


def weight_norm(layer, impl="custom"):
    """Weight-normalized copy of an nn.Linear / nn.Conv2d computing the same function at init.
    impl="torch" applies torch.nn.utils.parametrizations.weight_norm to the layer itself."""
    if impl not in IMPLS:
        raise ValueError(f"impl = {impl!r}: allowed {', '.join(IMPLS)}")
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        raise TypeError(f"weight_norm: layer must be nn.Linear or nn.Conv2d, got {type(layer).__name__}")
    if impl == "torch":
        return nn.utils.parametrizations.weight_norm(layer)
    return WeightNormLinear(layer) if isinstance(layer, nn.Linear) else WeightNormConv2d(layer)


# ----------------------------------------------------------------------------
# the registry: one entry per kind

def group_count(channels, groups=8):
    """Largest divisor of channels that is <= groups."""
    return max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)


@dataclass(frozen=True)
class Norm:
    """One normalization kind. The check fields are None for "none"; see normlib.check."""
    label: str  # how the report names it
    colour: str  # its colour in every figure
    # make(shape, impl, eps=, momentum=, groups=) -> the module of a block's norm slot, for activations of
    # one example of shape (C,) or (C, H, W); None: the slot stays empty (nn.Identity)
    make: Callable | None = None
    wrap: Callable | None = None  # wrap(layer, impl) -> the block's Linear/Conv2d reparameterized instead
    fused: str | None = None  # name of its fused C++ op, kernels.ext().<fused>, used on CPU; None: pair only
    # what the implementation check needs:
    inputs: Callable | None = None  # input shape (N, C, *S) -> {name: shape} of the pair's inputs, in order
    args: Callable = lambda c, eps, groups: (eps,)  # (C, eps, groups) -> the further, fixed arguments
    forward: Callable | None = None  # the reference pair: forward(*inputs, *args) -> (y, cache)
    backward: Callable | None = None  # backward(dy, cache) -> one gradient per input
    function: type | None = None  # function.apply(*inputs, *args) -> y, or a tuple that starts with y
    builtin: Callable | None = None  # torch's own: builtin(*inputs, *args) -> y


def _per_channel(shape):  # x with gamma and beta of one value per channel
    return {"x": shape, "gamma": shape[1:2], "beta": shape[1:2]}


NORMS = {
    "none": Norm("no normalization", "#6e6e6e"),
    "batch": Norm(
        "batch norm", "#1f77b4", fused="batch_norm",
        make=lambda shape, impl, eps, momentum, **_: (
            BatchNorm if impl == "custom" else nn.BatchNorm1d if len(shape) == 1 else nn.BatchNorm2d)(
            shape[0], eps=eps, momentum=momentum),
        inputs=_per_channel, forward=batch_norm_forward, backward=batch_norm_backward, function=BatchNormFn,
        builtin=lambda x, gamma, beta, eps: F.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)),
    "layer": Norm(
        "layer norm", "#ff7f0e", fused="layer_norm",
        make=lambda shape, impl, eps, **_: (LayerNorm if impl == "custom" else nn.LayerNorm)(shape, eps=eps),
        inputs=lambda shape: {"x": shape, "gamma": shape[1:], "beta": shape[1:]},
        forward=layer_norm_forward, backward=layer_norm_backward, function=LayerNormFn,
        builtin=lambda x, gamma, beta, eps: F.layer_norm(x, x.shape[1:], gamma, beta, eps)),
    "weight": Norm(
        "weight norm", "#2ca02c", wrap=weight_norm,
        # v: the weight of a Linear(C, C) for inputs (N, C), of a 3x3 Conv2d(C, C) for (N, C, H, W)
        inputs=lambda shape: {"v": (shape[1], shape[1]) + (3, 3) * (len(shape) == 4), "g": shape[1:2]},
        args=lambda c, eps, groups: (), forward=weight_norm_forward, backward=weight_norm_backward,
        function=WeightNormFn, builtin=lambda v, g: torch._weight_norm(v, g.view([-1] + [1] * (v.dim() - 1)), 0)),
    "group": Norm(
        "group norm", "#9467bd", fused="group_norm",
        make=lambda shape, impl, eps, groups, **_: (GroupNorm if impl == "custom" else nn.GroupNorm)(
            group_count(shape[0], groups), shape[0], eps=eps),
        inputs=_per_channel, args=lambda c, eps, groups: (group_count(c, groups), eps),
        forward=group_norm_forward, backward=group_norm_backward, function=GroupNormFn,
        builtin=lambda x, gamma, beta, groups, eps: F.group_norm(x, groups, gamma, beta, eps)),
}
NORM_KINDS = tuple(NORMS)


def make_norm(kind, shape, impl="custom", eps=1e-5, momentum=0.1, groups=8):
    """The normalization layer for activations of one example of `shape`: (C,) after a Linear,
    (C, H, W) after a conv. 'none' and 'weight' give nn.Identity (weight norm wraps the layer instead)."""
    if kind not in NORMS:
        raise ValueError(f"kind = {kind!r}: allowed {', '.join(NORMS)}")
    if impl not in IMPLS:
        raise ValueError(f"impl = {impl!r}: allowed {', '.join(IMPLS)}")
    shape = tuple(shape)
    if len(shape) not in (1, 3):
        raise ValueError(f"shape = {shape}: allowed (C,) or (C, H, W)")
    make = NORMS[kind].make
    return nn.Identity() if make is None else make(shape, impl, eps=eps, momentum=momentum, groups=groups)
