"""The networks of the study, built around one normalization slot per hidden block.

mlp: 784 -> hidden widths -> 10, each hidden block Linear -> norm -> activation
     (Ioffe & Szegedy 2015, sec. 4.1 use three sigmoid layers of 100 on MNIST).
cnn: two blocks conv3x3 -> maxpool2 -> norm -> activation, then FC -> norm -> activation -> FC
     (pooling before the norm: the norm and activation see 4x fewer values, so they cost 4x less);
     on CPU conv1 and the pooling run normlib's C++ kernels (FirstConv, MaxPool2), the same values as
     F.conv2d and F.max_pool2d.
With norm_position="after" the norm follows the activation instead. With norm="weight"
the block's Linear/Conv is reparameterized (Salimans & Kingma 2016) and the norm slot is empty.
With dropout > 0 each hidden block ends in a Dropout that draws its masks from its own generator.
Modules are named (fc1, norm1, act1, ..., out) so studies can hook e.g. the input of act3.
VARIANTS names the networks a trial can train: the standard one of its config, and the studies' own
(batch norm and layer norm together in every block; a recurrent network reading an image row by row,
with layer norm in the recurrence as Ba et al. 2016, sec. 3.1, or batch norm with statistics per time
step as Cooijmans et al. 2016).
vit: a small vision transformer (Dosovitskiy et al. 2021): the image as 16 patches of 7 x 7, a linear
     embedding to width D = hidden[0] plus a learned position embedding, len(hidden) blocks of 4-head
     self-attention and an MLP D -> 2D -> D, each in a residual branch, then the mean over the tokens and
     Linear(D, 10). norm_position picks where the norms sit (Xiong et al. 2020, fig. 1): "before" = pre-LN,
     x + attn(n1(x)), x + mlp(n2(x)) and a final norm before pooling; "after" = post-LN, the original
     Transformer's n1(x + attn(x)), n2(x + mlp(x)). The norms act on every token: layer norm normalizes
     each token over its D features, batch norm each feature over the batch and the tokens, with running
     statistics in evaluation (Shen et al. 2020, sec. 3, the batch-norm baseline of PowerNorm).
"""
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from normlib import kernels, params
from normlib.norms import NORMS, make_norm

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


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


class Dropout(nn.Module):
    """Inverted dropout (Srivastava et al. 2014): in training, each value is zeroed with probability p and
    the rest scaled by 1/(1 - p); the identity in evaluation. The masks come from the module's own
    generator, seeded at construction: trials that run as threads of one process never share a random
    stream, and a config gives the same masks wherever it runs."""

    def __init__(self, p, seed):
        super().__init__()
        self.p = p
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, generator=self.generator).to(x.device) >= self.p  # (N, *F) drawn on the CPU
        return x * keep / (1 - self.p)

    def extra_repr(self):
        return f"p={self.p}"


def _block(i, kind, layer, shape, norm, impl, activation, norm_position, init_scale, eps=1e-5, dropout=0.0,
           seed=0):
    """Named (layer, norm, activation[, dropout]) modules of hidden block i; kind is "fc" or "conv"."""
    if init_scale is not None:
        _init(layer, init_scale)
    if NORMS[norm].wrap:  # weight norm: reparameterize after init, so w = g v/||v|| starts as the drawn weight
        layer = NORMS[norm].wrap(layer, impl)
    parts = [(f"norm{i}", make_norm(norm, shape, impl=impl, eps=eps)), (f"act{i}", ACTIVATIONS[activation]())]
    drop = [(f"drop{i}", Dropout(dropout, seed=1000 * seed + i))] if dropout else []
    return [(f"{kind}{i}", layer)] + (parts if norm_position == "before" else parts[::-1]) + drop


class FirstConv(nn.Conv2d):
    """The CNN's first layer: a 3 x 3 convolution of the one-channel image, padding 1, exactly an
    nn.Conv2d (same parameters, init and state_dict), with the values of F.conv2d up to float rounding.
    On CPU, when the input needs no gradient (it is the data), it runs normlib's C++ kernel
    (csrc/conv.cpp): oneDNN's kernel for one input channel is slow on CPU (make benchmark: cnn_first_conv)."""

    def __init__(self, c_out):
        super().__init__(1, c_out, 3, padding=1)

    def forward(self, x):
        if kernels.use_cpp(x) and not x.requires_grad and x.dtype == self.weight.dtype:
            return kernels.ext().first_conv(x, self.weight, self.bias)
        return super().forward(x)


def build_model(arch="mlp", norm="none", *, impl="custom", activation="relu", norm_position="before",
                hidden=(256, 256, 256), channels=(16, 32), init_scale=None, norm_eps=1e-5, dropout=0.0,
                seed=0):
    """A network with the given normalization in every hidden block.
    init_scale: None keeps PyTorch's default init; a float draws every weight from N(0, init_scale^2)
    with zero biases (the cs231n weight-scale experiment). norm_eps: the epsilon under the square root
    of batch, layer and group norm. dropout: the probability of dropping a hidden unit (0: no dropout
    module); the masks of block i come from a generator seeded with 1000 * seed + i."""
    for name, value in (("arch", arch), ("norm", norm), ("impl", impl), ("activation", activation),
                        ("norm_position", norm_position), ("hidden", hidden), ("channels", channels),
                        ("init_scale", init_scale), ("norm_eps", norm_eps), ("dropout", dropout), ("seed", seed)):
        params.check(name, value, where="build_model")  # the rules of normlib.params

    if arch == "vit":
        return vision_transformer(hidden, norm, impl=impl, activation=activation, norm_position=norm_position,
                                  init_scale=init_scale, norm_eps=norm_eps, dropout=dropout)

    def block(i, kind, layer, shape):
        return _block(i, kind, layer, shape, norm, impl, activation, norm_position, init_scale, norm_eps,
                      dropout, seed)

    layers = [("flatten", nn.Flatten())] if arch == "mlp" else []
    if arch == "mlp":
        widths = (784, *hidden)
        for i, (d_in, d_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            layers += block(i, "fc", nn.Linear(d_in, d_out), (d_out,))
        layers.append(("out", nn.Linear(widths[-1], 10)))
    else:
        c1, c2 = channels
        for i, (c_in, c_out, side) in enumerate([(1, c1, 14), (c1, c2, 7)], start=1):
            layer = FirstConv(c_out) if i == 1 else nn.Conv2d(c_in, c_out, 3, padding=1)
            conv, *rest = block(i, "conv", layer, (c_out, side, side))
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
# a vision transformer: Fashion-MNIST as 16 patches of 7 x 7 (Dosovitskiy et al. 2021, sec. 3.1)


PATCH = 7  # patch side: 28 x 28 = 4 x 4 patches of 49 pixels
TOKENS = (28 // PATCH) ** 2  # 16
HEADS = 4
TOKEN_NORMS = ("none", "batch", "layer")  # the norms of a token (weight and group norm: no vit)


def patches(x):
    """(N, 1, 28, 28) -> (N, 16, 49): the 7 x 7 patches in row-major order, each read row by row."""
    n = len(x)
    rows = x.reshape(n, 4, PATCH, 4, PATCH)  # (N, patch row, pixel row, patch column, pixel column)
    return rows.transpose(2, 3).reshape(n, TOKENS, PATCH * PATCH)  # (N, T, 49)


def over_tokens(norm, x):
    """norm, a layer for (M, D), applied to every token of x (N, T, D) as one batch of N*T rows: layer norm
    normalizes each token over its D features, batch norm each feature over the N*T tokens of the batch."""
    n, t, d = x.shape
    return norm(x.reshape(n * t, d)).reshape(n, t, d)  # (N*T, D) -> (N, T, D)


class TokenNorm(nn.Module):
    """A normlib norm (make_norm(kind, (D,), impl, eps): from scratch, or torch's built-in with impl="torch")
    over the tokens of (N, T, D); none is the identity."""

    def __init__(self, kind, width, impl="custom", eps=1e-5):
        super().__init__()
        self.norm = make_norm(kind, (width,), impl=impl, eps=eps)  # BatchNorm(D) | LayerNorm(D) | Identity

    def forward(self, x):
        return over_tokens(self.norm, x)


class SelfAttention(nn.Module):
    """Multi-head self-attention (Vaswani et al. 2017, sec. 3.2.2): q, k, v from one Linear(D, 3D),
    softmax(q k^T / sqrt(D/H)) v in each of the H heads, the heads concatenated and projected by Linear(D, D)."""

    def __init__(self, width, heads=HEADS):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads)  # (N, T, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, H, T, D/H)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)  # (N, H, T, T)
        y = scores.softmax(-1) @ v  # (N, H, T, D/H); as F.scaled_dot_product_attention, 1.5x faster here
        return self.proj(y.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


class Block(nn.Module):
    """One transformer block of width D: attention and an MLP D -> 2D -> D, each in a residual branch.
    pre-LN (pre=True):   x = x + attn(norm1(x));  x = x + mlp(norm2(x))
    post-LN (pre=False): x = norm1(x + attn(x));  x = norm2(x + mlp(x))"""

    def __init__(self, width, norm, impl, activation, pre, eps):
        super().__init__()
        self.pre = pre
        self.norm1 = TokenNorm(norm, width, impl, eps)
        self.attn = SelfAttention(width)
        self.norm2 = TokenNorm(norm, width, impl, eps)
        self.mlp = nn.Sequential(OrderedDict(
            [("fc1", nn.Linear(width, 2 * width)), ("act", activation()), ("fc2", nn.Linear(2 * width, width))]))

    def forward(self, x):  # (N, T, D) -> (N, T, D)
        if self.pre:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class ViT(nn.Module):
    """patches (N, 16, 49) -> embed (N, 16, D) + pos -> blocks -> final_norm -> mean over tokens -> out (N, 10).
    pos: the learned position embedding (16, D), drawn from N(0, 0.02^2); final_norm: the norm before pooling
    of pre-LN (the identity in post-LN, whose blocks end in a norm). Named for probes: embed, pos,
    blocks.<i>.norm1 | .attn | .norm2 | .mlp, final_norm, out."""

    def __init__(self, width=64, depth=2, norm="layer", impl="custom", activation="gelu", norm_position="before",
                 eps=1e-5):
        super().__init__()
        if norm not in TOKEN_NORMS:
            raise ValueError(f"vit: norm = {norm!r}: allowed {', '.join(TOKEN_NORMS)}")
        if width % HEADS:
            raise ValueError(f"vit: hidden width = {width}: must be divisible by the {HEADS} heads")
        pre = norm_position == "before"
        self.embed = nn.Linear(PATCH * PATCH, width)  # (49 -> D)
        self.pos = nn.Parameter(torch.randn(TOKENS, width) * 0.02)  # (T, D)
        self.blocks = nn.ModuleList(Block(width, norm, impl, ACTIVATIONS[activation], pre, eps) for _ in range(depth))
        self.final_norm = TokenNorm(norm, width, impl, eps) if pre else nn.Identity()
        self.out = nn.Linear(width, 10)

    def forward(self, x):
        h = self.embed(patches(x)) + self.pos  # (N, T, D)
        for block in self.blocks:
            h = block(h)  # (N, T, D)
        return self.out(self.final_norm(h).mean(1))  # (N, D) -> (N, 10)


def vision_transformer(hidden, norm, *, impl, activation, norm_position, init_scale, norm_eps, dropout):
    """The ViT of build_model: one block per entry of hidden, which must all be equal (the width D);
    init_scale: every Linear's weight from N(0, init_scale^2), zero biases (the position embedding keeps
    its N(0, 0.02^2)). No dropout."""
    if len(set(hidden)) != 1:
        raise ValueError(f"vit: hidden = {tuple(hidden)}: all widths must be equal (one block per entry)")
    if dropout:
        raise ValueError(f"vit: dropout = {dropout}: allowed 0 (the vit has no dropout)")
    model = ViT(hidden[0], len(hidden), norm, impl, activation, norm_position, norm_eps)
    if init_scale is not None:
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                _init(layer, init_scale)
    return model


# ----------------------------------------------------------------------------
# the networks a trial can train (normlib.trials.Trial.model), each built from a TrainConfig


def from_config(config):
    """The network of build_model for a TrainConfig."""
    return build_model(config.arch, config.norm, impl=config.impl, activation=config.activation,
                       norm_position=config.norm_position, hidden=config.hidden, channels=config.channels,
                       init_scale=config.init_scale, norm_eps=config.norm_eps, dropout=config.dropout,
                       seed=config.seed)


def batch_and_layer(config):
    """The config's MLP with norm="batch", and a layer norm right after every batch norm (a tutorial's
    claim that both together are unnecessary and overfit)."""
    if config.arch != "mlp":
        raise ValueError(f"batch+layer: arch = {config.arch!r}: only the MLP is built with both norms")
    model = build_model("mlp", "batch", impl=config.impl, activation=config.activation,
                        norm_position=config.norm_position, hidden=config.hidden, init_scale=config.init_scale,
                        norm_eps=config.norm_eps, dropout=config.dropout, seed=config.seed)
    layers = []
    for name, module in model.named_children():
        layers.append((name, module))
        if name.startswith("norm"):  # norm{i}: batch norm of block i
            layers.append((f"lnorm{name[4:]}", make_norm("layer", (module.num_features,), impl=config.impl,
                                                         eps=config.norm_eps)))
    return nn.Sequential(OrderedDict(layers))


# ----------------------------------------------------------------------------
# a recurrent network: Fashion-MNIST read row by row


ROWS = 28  # time steps: one row of 28 pixels per step


class StepBatchNorm(nn.Module):
    """Batch norm with statistics per time step (Cooijmans et al. 2016, sec. 3): at step t the batch
    statistics of that step normalize in training, and the running statistics of that step in evaluation;
    gamma and beta are shared across steps, gamma starts at 0.1 (their sec. 4: a gain of 1 saturates the
    tanh and the gradients through time vanish). One normlib batch norm per step, holding the step's
    running statistics and the shared gamma and beta."""

    def __init__(self, features, steps, impl="custom", eps=1e-5, gamma=0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.full((features,), gamma))  # gamma, shared across steps
        self.bias = nn.Parameter(torch.zeros(features))  # beta
        self.steps = nn.ModuleList(make_norm("batch", (features,), impl=impl, eps=eps) for _ in range(steps))
        for bn in self.steps:
            del bn.weight, bn.bias
            bn.weight, bn.bias = self.weight, self.bias  # registered in every step's module, one parameter

    def forward(self, x, t):
        return self.steps[t](x)


class RowRNN(nn.Module):
    """A vanilla tanh RNN reading a 28 x 28 image as 28 steps of 28 pixels, and a linear readout of its
    last hidden state.
    none:  h_t = tanh(W_x x_t + W_h h_{t-1} + b)
    layer: h_t = tanh(LN(W_x x_t + W_h h_{t-1}))          (Ba et al. 2016, eq. 4: the summed inputs of each
           step, normalized over the hidden units of one example; LN's gain and bias)
    batch: h_t = tanh(BN_x,t(W_x x_t) + BN_h,t(W_h h_{t-1}))  (Cooijmans et al. 2016, eq. 6: the input and
           recurrent terms normalized separately, with statistics per time step; h_0 = 0 has no recurrent
           term, so BN_h starts at step 1)"""

    def __init__(self, hidden=64, norm="none", impl="custom", eps=1e-5):
        super().__init__()
        if norm not in ("none", "batch", "layer"):
            raise ValueError(f"rnn: norm = {norm!r}: allowed none, batch, layer")
        self.hidden, self.norm = hidden, norm
        self.inp = nn.Linear(ROWS, hidden, bias=norm == "none")  # (28 -> H)
        self.rec = nn.Linear(hidden, hidden, bias=False)  # (H -> H)
        if norm == "layer":
            self.ln = make_norm("layer", (hidden,), impl=impl, eps=eps)
        if norm == "batch":
            self.bn_x = StepBatchNorm(hidden, ROWS, impl, eps)
            self.bn_h = StepBatchNorm(hidden, ROWS, impl, eps)
        self.out = nn.Linear(hidden, 10)

    def forward(self, x):
        rows = x.reshape(len(x), ROWS, ROWS)  # (N, 1, 28, 28) -> (N, T, 28)
        # the input terms of every step at once, (N, T, H), as T tensors (N, H): unbind, not xs[:, t], whose
        # backward would add T zero-filled (N, T, H) gradients (most of a step's time)
        xs = self.inp(rows).unbind(1)
        h = None
        for t in range(ROWS):
            a = xs[t]  # (N, H)
            if self.norm == "batch":
                a = self.bn_x(a, t) + (self.bn_h(self.rec(h), t) if h is not None else 0)
            else:
                a = a + self.rec(h) if h is not None else a
                a = self.ln(a) if self.norm == "layer" else a
            h = torch.tanh(a)  # (N, H)
        return self.out(h)  # (N, 10)


def row_rnn(config):
    """The recurrent network of a TrainConfig: hidden[0] units, config.norm in the recurrence."""
    return RowRNN(config.hidden[0], config.norm, config.impl, config.norm_eps)


VARIANTS = {"standard": from_config, "batch+layer": batch_and_layer, "rnn": row_rnn}
