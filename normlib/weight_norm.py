"""Weight normalization written from scratch (Salimans & Kingma 2016): w = g v/||v|| per output unit.

- the pure pair: weight_norm_forward (eq. 2) and weight_norm_backward (eq. 3), cs231n style;
- WeightNormFn, the autograd Function around the pair;
- WeightNormLinear and WeightNormConv2d, copies of an nn.Linear / nn.Conv2d reparameterized this way;
- data_dependent_init, the initialization of sec. 3.

Unlike batch, layer and group norm it normalizes a layer's weights, not its activations, and has no
fused C++ kernel. normlib.norms builds it (weight_norm) and lists it in the registry NORMS.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def weight_norm_forward(v, g):
    """v: (out, *in); g: (out,). Eq. 2: w = g v/||v||, the norm per output unit (over all axes but 0).
    Returns w (out, *in) and cache = (v, g, norm)."""
    shape = [-1] + [1] * (v.dim() - 1)  # (out,) -> (out, 1, 1, 1), to broadcast over v
    norm = torch.linalg.vector_norm(v.flatten(1), dim=1)  # (out,) ||v||
    w = (g / norm).view(shape) * v  # (out, in, kh, kw)
    return w, (v, g, norm)


def weight_norm_backward(dw, cache):
    """dw: (out, *in). Eq. 3: dg = dw.v/||v||, dv = g/||v|| dw - g dg/||v||^2 v. Returns dv (out, *in), dg (out,)."""
    v, g, norm = cache  # (out, in, kh, kw), (out,), (out,)
    shape = [-1] + [1] * (v.dim() - 1)
    dg = (dw * v).flatten(1).sum(1) / norm  # (out,)
    dv = (g / norm).view(shape) * dw - (g * dg / norm ** 2).view(shape) * v  # (out, in, kh, kw)
    return dv, dg


class WeightNormFn(torch.autograd.Function):
    """WeightNormFn.apply(v, g) -> w = g * v/||v||."""

    @staticmethod
    def forward(ctx, v, g):
        w, cache = weight_norm_forward(v, g)
        ctx.save_for_backward(*cache)
        return w

    @staticmethod
    @once_differentiable
    def backward(ctx, dw):
        return weight_norm_backward(dw, ctx.saved_tensors)


class WeightNormLinear(nn.Module):
    """nn.Linear with w = g v/||v|| (per output unit); built from an existing layer, same function at init."""

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.v = nn.Parameter(layer.weight.detach().clone())  # (out, in)
        self.g = nn.Parameter(torch.linalg.vector_norm(self.v.detach(), dim=1))  # (out,)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())  # (out,)

    def forward(self, x):
        return F.linear(x, WeightNormFn.apply(self.v, self.g), self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class WeightNormConv2d(nn.Module):
    """nn.Conv2d with w = g v/||v|| (per output channel); keeps the layer's stride, padding, dilation, groups."""

    def __init__(self, layer: nn.Conv2d):
        super().__init__()
        if layer.padding_mode != "zeros":
            raise ValueError(f"weight_norm: padding_mode={layer.padding_mode!r} is not supported, only 'zeros'")
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        self.v = nn.Parameter(layer.weight.detach().clone())  # (out, in/groups, kh, kw)
        self.g = nn.Parameter(torch.linalg.vector_norm(self.v.detach().flatten(1), dim=1))  # (out,)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone())  # (out,)

    def forward(self, x):
        w = WeightNormFn.apply(self.v, self.g)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self):
        return (f"{self.v.shape[1] * self.groups}, {self.v.shape[0]}, kernel_size={tuple(self.v.shape[2:])}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}")


@torch.no_grad()
def data_dependent_init(model, x):
    """Salimans & Kingma 2016, sec. 3: run the batch x through model once; at each custom weight-norm
    layer, in forward order, take t = v.x/||v|| (per output unit, over the batch and positions) and set
    g = 1/std(t), b = -mean(t)/std(t), so the layer's outputs on x have mean 0 and std 1 and later
    layers see the initialized earlier ones. Returns the model."""
    def init(layer, inputs, _output):
        w = WeightNormFn.apply(layer.v, torch.ones_like(layer.g))  # v/||v||
        t = F.linear(inputs[0], w) if isinstance(layer, WeightNormLinear) else \
            F.conv2d(inputs[0], w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        dims = [0] + list(range(2, t.dim()))  # all but the output unit
        std, mean = torch.std_mean(t, dim=dims, correction=0)  # (out,)
        std.clamp_min_(1e-12)  # a unit with constant t (e.g. dead inputs) keeps a finite scale
        layer.g.copy_(std.reciprocal())
        if layer.bias is not None:
            layer.bias.copy_(-mean / std)
        return layer.forward(*inputs)  # the initialized output, seen by later layers

    layers = [m for m in model.modules() if isinstance(m, (WeightNormLinear, WeightNormConv2d))]
    hooks = [m.register_forward_hook(init) for m in layers]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return model
