"""Each from-scratch layer (normlib.norms), forward plus backward in train mode, against its torch built-in
at MLP shapes (128, 256) and CNN shapes (128, 32, 28, 28); layer norm on conv maps also against
nn.GroupNorm(1, C), torch's per-example alternative. For context: what a Python autograd.Function that
only copies costs next to the built-ins (python_floor), and torch's own LayerNorm against GroupNorm.
"""
import statistics

import torch
from torch import nn

from normlib.norms import make_norm
from timing import CNN_SHAPE, MLP_SHAPE, alternate, result


def layer_call(module, shape, device):
    """A function doing one forward + backward (input gradient included) through module."""
    torch.manual_seed(0)
    module = module.to(device).train()
    x = (5 * torch.randn(shape, device=device) + 12).requires_grad_()
    dy = torch.randn(shape, device=device)

    def call():
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(dy)
    return call


class CopyFn(torch.autograd.Function):
    """The least a Python-level layer can cost: an autograd.Function copying its input forward and
    its gradient backward. Its time, next to the built-ins', bounds what a from-scratch layer can reach."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        return x.clone()

    @staticmethod
    def backward(ctx, dy):
        return dy.clone(), None, None


class CopyLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return CopyFn.apply(x, self.weight, self.bias)


def python_floor(device, calls):
    """Seconds of CopyLayer at MLP shapes as a fraction of BatchNorm1d's and LayerNorm's, called in turn."""
    c = MLP_SHAPE[1]
    s = alternate({name: layer_call(m, MLP_SHAPE, device) for name, m in
                   (("copy", CopyLayer(c)), ("batch", nn.BatchNorm1d(c)), ("layer", nn.LayerNorm(c)))}, calls, 3, device)
    med = {name: statistics.median(t) for name, t in s.items()}
    return {"copy_function_seconds": med["copy"], "of_batch_norm": med["copy"] / med["batch"],
            "of_layer_norm": med["copy"] / med["layer"]}


def builtin_layer_norm_vs_groupnorm(device, calls):
    """Seconds of torch's own nn.LayerNorm over nn.GroupNorm(1, C) at CNN shapes, called in turn: how
    the two built-ins compare on this machine (context for layer_norm_cnn_vs_groupnorm)."""
    c, f = CNN_SHAPE[1], CNN_SHAPE[1:]
    s = alternate({"layer": layer_call(nn.LayerNorm(f), CNN_SHAPE, device),
                   "group": layer_call(nn.GroupNorm(1, c), CNN_SHAPE, device)}, calls // 2, 3, device)
    return statistics.median(a / b for a, b in zip(s["layer"], s["group"]))


def bench_layers(device, calls):
    c, f = CNN_SHAPE[1], CNN_SHAPE[1:]
    pairs = {  # name: (shape, ours, reference, target ratio of times)
        "batch_norm_mlp": (MLP_SHAPE, make_norm("batch", MLP_SHAPE[1:]), nn.BatchNorm1d(MLP_SHAPE[1]), 1.2),
        "layer_norm_mlp": (MLP_SHAPE, make_norm("layer", MLP_SHAPE[1:]), nn.LayerNorm(MLP_SHAPE[1:]), 1.2),
        "batch_norm_cnn": (CNN_SHAPE, make_norm("batch", f), nn.BatchNorm2d(c), 1.2),
        "layer_norm_cnn": (CNN_SHAPE, make_norm("layer", f), nn.LayerNorm(f), 1.2),
        "layer_norm_cnn_vs_groupnorm": (CNN_SHAPE, make_norm("layer", f), nn.GroupNorm(1, c), 1.0),
    }
    out = {}
    for name, (shape, ours, ref, target) in pairs.items():
        n = calls // 2 if len(shape) == 4 else calls  # conv maps are 98x larger
        s = alternate({"ours": layer_call(ours, shape, device), "ref": layer_call(ref, shape, device)},
                      n, 3, device)
        note = f"forward + backward, train mode, float32, input {shape}; reference {ref}"
        out[name] = result(s["ours"], s["ref"], target, "s", note)
    return out
