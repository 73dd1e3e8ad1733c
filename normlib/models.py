"""The two networks of the study, built around one normalization slot per hidden block.

mlp: 784 -> hidden widths -> 10, each hidden block Linear -> norm -> activation
     (Ioffe & Szegedy 2015, sec. 4.1 use three sigmoid layers of 100 on MNIST).
cnn: two blocks conv3x3 -> maxpool2 -> norm -> activation, then FC -> norm -> activation -> FC
     (pooling before the norm: the norm and activation see 4x fewer values, so they cost 4x less).
With norm_position="after" the norm follows the activation instead. With norm="weight"
the block's Linear/Conv is reparameterized (Salimans & Kingma 2016) and the norm slot is empty.
Modules are named (fc1, norm1, act1, ..., out) so studies can hook e.g. the input of act3.
VARIANTS names the networks a trial can train: the standard one of its config, and the studies' own
(batch norm and layer norm together in every block).
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from normlib import kernels, params
from normlib.norms import NORMS, make_norm

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class MaxPool2(nn.Module):
    """2 x 2 max pooling with stride 2, exactly F.max_pool2d(x, 2) (values, and gradients routed to
    the same winner on ties and NaN). On CPU it runs normlib's C++ kernel (csrc/pooling.cpp): torch's own
    CPU kernel for this layout takes a quarter of a CNN training step here."""

    def forward(self, x):
        if kernels.use_cpp(x):
            return kernels.ext().max_pool2(x)
        return F.max_pool2d(x, 2)

    def extra_repr(self):
        return "kernel_size=2, stride=2"


def _block(i, kind, layer, shape, norm, impl, activation, norm_position, init_scale):
    """Named (layer, norm, activation) modules of hidden block i; kind is "fc" or "conv"."""
    if init_scale is not None:
        _init(layer, init_scale)
    if NORMS[norm].wrap:  # weight norm: reparameterize after init, so w = g v/||v|| starts as the drawn weight
        layer = NORMS[norm].wrap(layer, impl)
    parts = [(f"norm{i}", make_norm(norm, shape, impl=impl)), (f"act{i}", ACTIVATIONS[activation]())]
    return [(f"{kind}{i}", layer)] + (parts if norm_position == "before" else parts[::-1])


def build_model(arch="mlp", norm="none", *, impl="custom", activation="relu", norm_position="before",
                hidden=(256, 256, 256), channels=(16, 32), init_scale=None):
    """A network with the given normalization in every hidden block.
    init_scale: None keeps PyTorch's default init; a float draws every weight from N(0, init_scale^2)
    with zero biases (the cs231n weight-scale experiment)."""
    for name, value in (("arch", arch), ("norm", norm), ("impl", impl), ("activation", activation),
                        ("norm_position", norm_position), ("hidden", hidden), ("channels", channels),
                        ("init_scale", init_scale)):
        params.check(name, value, where="build_model")  # the rules of normlib.params

    def block(i, kind, layer, shape):
        return _block(i, kind, layer, shape, norm, impl, activation, norm_position, init_scale)

    layers = [("flatten", nn.Flatten())] if arch == "mlp" else []
    if arch == "mlp":
        widths = (784, *hidden)
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers += block(i, "fc", nn.Linear(d_in, d_out), (d_out,))
        layers.append(("out", nn.Linear(widths[-1], 10)))
    else:
        c1, c2 = channels
        for i, (c_in, c_out, side) in enumerate([(1, c1, 14), (c1, c2, 7)], start=1):
            conv, *rest = block(i, "conv", nn.Conv2d(c_in, c_out, 3, padding=1), (c_out, side, side))
            layers += [conv, (f"pool{i}", MaxPool2())] + rest  # pool first: 4x cheaper norm
        layers += [("flatten", nn.Flatten())] + block(3, "fc", nn.Linear(c2 * 49, hidden[-1]), (hidden[-1],))
        layers.append(("out", nn.Linear(hidden[-1], 10)))
    if init_scale is not None:
        _init(layers[-1][1], init_scale)
    return nn.Sequential(OrderedDict(layers))


@torch.no_grad()
def _init(layer, scale):
    layer.weight.normal_(0.0, scale)
    layer.bias.zero_()


# ----------------------------------------------------------------------------
# the networks a trial can train (normlib.trials.Trial.model), each built from a TrainConfig


def from_config(config):
    """The network of build_model for a TrainConfig."""
    return build_model(config.arch, config.norm, impl=config.impl, activation=config.activation,
                       norm_position=config.norm_position, hidden=config.hidden, channels=config.channels,
                       init_scale=config.init_scale)


def batch_and_layer(config):
    """The config's MLP with norm="batch", and a layer norm right after every batch norm (a tutorial's
    claim that both together are unnecessary and overfit)."""
    if config.arch != "mlp":
        raise ValueError(f"batch+layer: arch = {config.arch!r}: only the MLP is built with both norms")
    model = build_model("mlp", "batch", impl=config.impl, activation=config.activation,
                        norm_position=config.norm_position, hidden=config.hidden, init_scale=config.init_scale)
    layers = []
    for name, module in model.named_children():
        layers.append((name, module))
        if name.startswith("norm"):  # norm{i}: batch norm of block i
            layers.append((f"lnorm{name[4:]}", make_norm("layer", (module.num_features,), impl=config.impl)))
    return nn.Sequential(OrderedDict(layers))


VARIANTS = {"standard": from_config, "batch+layer": batch_and_layer}
