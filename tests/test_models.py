"""Tests of normlib.models.build_model: layer layout (mlp 784 -> hidden -> 10, cnn two conv blocks
then FC, the vision transformer's patches, blocks and norm placement), activations, norm position,
custom vs torch layers, weight norm, init_scale, parameter counts, and one-line ValueErrors naming the
bad parameter."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import torch.nn.functional as F

from normlib.models import FirstConv, MaxPool2, RowRNN, build_model
from normlib.norms import NORM_KINDS, BatchNorm, LayerNorm
from normlib.weight_norm import WeightNormConv2d, WeightNormLinear

NORMS = NORM_KINDS  # every kind of the registry


def x_batch(n=8, seed=0):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def effective_weight(layer):
    """The weight a layer multiplies by: g v/||v|| for the custom weight-norm layers."""
    if isinstance(layer, (WeightNormLinear, WeightNormConv2d)):
        v = layer.v.detach().flatten(1)  # (out, fan_in)
        return layer.g.detach()[:, None] * v / v.norm(dim=1, keepdim=True)
    return layer.weight.detach()


def kinds(model):
    """Names of the model's top-level modules, in order."""
    return [name for name, _ in model.named_children()]


@pytest.mark.parametrize("impl", ["custom", "torch"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_output_shape_and_backward(arch, norm, impl):
    torch.manual_seed(0)
    model = build_model(arch, norm, impl=impl, hidden=(32, 16), channels=(4, 8))
    out = model(x_batch())
    assert out.shape == (8, 10)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    assert model(x_batch(3)).shape == (3, 10)  # eval mode (running statistics), another batch size


def test_mlp_layout():
    model = build_model("mlp", "none", hidden=(64, 32))
    assert kinds(model) == ["flatten", "fc1", "norm1", "act1", "fc2", "norm2", "act2", "out"]
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(784, 64), (64, 32), (32, 10)]
    assert n_params(model) == 784 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10


def test_mlp_default_is_three_hidden_layers_of_256():
    shapes = [(m.in_features, m.out_features) for m in build_model().modules() if isinstance(m, nn.Linear)]
    assert shapes == [(784, 256), (256, 256), (256, 256), (256, 10)]


def test_cnn_layout():
    model = build_model("cnn", "batch", hidden=(64,), channels=(16, 32))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 16, (3, 3)), (16, 32, (3, 3))]
    assert kinds(model) == ["conv1", "pool1", "norm1", "act1", "conv2", "pool2", "norm2", "act2",
                            "flatten", "fc3", "norm3", "act3", "out"]
    fcs = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert fcs == [(32 * 7 * 7, 64), (64, 10)]
    n_conv = (9 * 1 * 16 + 16) + (9 * 16 * 32 + 32)
    n_fc = 32 * 49 * 64 + 64 + 64 * 10 + 10
    assert n_params(model) == n_conv + n_fc + 2 * (16 + 32 + 64)  # gamma and beta per channel / feature


@pytest.mark.parametrize("impl", ["custom", "torch"])
def test_norm_parameter_counts(impl):
    """BN and LN add gamma and beta per hidden feature; WN adds one g per output unit of each hidden layer."""
    base = n_params(build_model("mlp", "none", hidden=(64, 32)))
    assert n_params(build_model("mlp", "batch", impl=impl, hidden=(64, 32))) == base + 2 * (64 + 32)
    assert n_params(build_model("mlp", "layer", impl=impl, hidden=(64, 32))) == base + 2 * (64 + 32)
    assert n_params(build_model("mlp", "weight", impl=impl, hidden=(64, 32))) == base + (64 + 32)


def test_norm_layer_types():
    assert isinstance(build_model("mlp", "batch").norm1, BatchNorm)
    assert isinstance(build_model("mlp", "layer").norm1, LayerNorm)
    assert isinstance(build_model("mlp", "batch", impl="torch").norm1, nn.BatchNorm1d)
    assert isinstance(build_model("cnn", "batch", impl="torch").norm1, nn.BatchNorm2d)
    assert isinstance(build_model("mlp", "layer", impl="torch").norm1, nn.LayerNorm)
    assert build_model("cnn", "layer", impl="torch").norm2.normalized_shape == (32, 7, 7)
    assert isinstance(build_model("mlp", "none").norm1, nn.Identity)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_weight_norm_wraps_hidden_layers(arch):
    custom = build_model(arch, "weight", hidden=(32,), channels=(4, 8))
    wrapped = [m for m in custom.modules() if isinstance(m, (WeightNormLinear, WeightNormConv2d))]
    assert len(wrapped) == (1 if arch == "mlp" else 3)  # every hidden Linear/Conv, not the output layer
    assert all(isinstance(m, nn.Identity) for n, m in custom.named_children() if n.startswith("norm"))
    assert isinstance(custom.out, nn.Linear)
    torch_wn = build_model(arch, "weight", impl="torch", hidden=(32,), channels=(4, 8))
    layers = [m for n, m in torch_wn.named_children() if n.startswith(("fc", "conv"))]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not parametrize.is_parametrized(torch_wn.out)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_custom_and_torch_compute_the_same_function_at_init(arch, norm):
    torch.manual_seed(0)
    custom = build_model(arch, norm, impl="custom", hidden=(32,), channels=(4, 8))
    torch.manual_seed(0)
    builtin = build_model(arch, norm, impl="torch", hidden=(32,), channels=(4, 8))
    x = x_batch(16)
    torch.testing.assert_close(custom(x), builtin(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("activation, cls", [("relu", nn.ReLU), ("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh),
                                             ("gelu", nn.GELU)])
def test_activation(activation, cls):
    for arch in ("mlp", "cnn"):
        model = build_model(arch, "batch", activation=activation, hidden=(16,))
        acts = [m for n, m in model.named_children() if n.startswith("act")]
        assert acts and all(type(m) is cls for m in acts)


def test_norm_position():
    before = build_model("mlp", "batch", hidden=(16, 16))
    after = build_model("mlp", "batch", norm_position="after", hidden=(16, 16))
    assert kinds(before)[1:4] == ["fc1", "norm1", "act1"]
    assert kinds(after)[1:4] == ["fc1", "act1", "norm1"]
    # after the activation, BN normalizes non-negative ReLU outputs: its training-mode output is centred
    x = x_batch(64)
    h = after.act1(after.fc1(after.flatten(x)))
    assert (h >= 0).all()
    assert after.norm1(h).mean(0).abs().max() < 1e-5


@pytest.mark.parametrize("norm", ["none", "batch", "weight"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_init_scale(arch, norm):
    torch.manual_seed(0)
    model = build_model(arch, norm, init_scale=0.3, hidden=(256,), channels=(16, 32))
    for name, m in model.named_children():
        if name.startswith(("fc", "conv", "out")):
            w = effective_weight(m)  # weight norm (custom or torch) starts equal to the drawn weight
            tol = 5 * 0.3 / w.numel() ** 0.5  # 5 standard errors of the sample mean / std
            assert abs(w.std().item() - 0.3) < tol, name
            assert abs(w.mean().item()) < tol, name
            assert (m.bias == 0).all(), name


def test_default_init_differs_from_init_scale():
    torch.manual_seed(0)
    default = build_model("mlp", hidden=(256,)).fc1.weight.std().item()
    assert abs(default - 1 / (3 * 784) ** 0.5) < 1e-3  # PyTorch's kaiming-uniform: U(-1/sqrt(fan_in), +)


@pytest.mark.parametrize("kwargs, name", [
    (dict(arch="rnn"), "arch"),
    (dict(norm="instance"), "norm"),
    (dict(norm="batch", impl="cuda"), "impl"),
    (dict(norm="none", impl="fast"), "impl"),
    (dict(activation="swish"), "activation"),
    (dict(norm_position="middle"), "norm_position"),
    (dict(init_scale=-0.1), "init_scale"),
    (dict(init_scale=0), "init_scale"),
    (dict(init_scale=float("nan")), "init_scale"),
    (dict(init_scale="big"), "init_scale"),
    (dict(hidden=()), "hidden"),
    (dict(hidden=(64, 0)), "hidden"),
    (dict(hidden=64), "hidden"),
    (dict(arch="cnn", channels=(16,)), "channels"),
    (dict(arch="cnn", channels=(16, -2)), "channels"),
])
def test_bad_values_raise_value_error_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=rf"^build_model\.{name} = "):
        build_model(**kwargs)


# ----------------------------------------------------------------------------
# MaxPool2: the CNN's pooling, a C++ kernel on CPU, exactly F.max_pool2d(x, 2)

def pool_input(shape, dtype, seed):
    """Small integers (many ties inside windows), with NaNs and -infs sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 3, shape, generator=g).to(dtype)
    x.view(-1)[seed % 5::17] = float("nan")
    x.view(-1)[seed % 7::23] = float("-inf")
    return x


@pytest.mark.parametrize("kernel", ["cpp", "python"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(128, 16, 28, 28), (4, 32, 14, 14), (2, 3, 5, 7), (2, 2, 9, 17), (1, 1, 2, 2),
                                   (3, 2, 40, 33)])
def test_max_pool_is_exactly_torchs(shape, dtype, kernel, monkeypatch):
    """Same values and the same gradients as F.max_pool2d: ties go to the first place of a window in
    row-major order, NaN wins, odd trailing rows and columns are dropped (their gradient is 0)."""
    monkeypatch.setenv("NORMLIB_KERNELS", kernel)
    for seed in range(3):
        x = pool_input(shape, dtype, seed)
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = MaxPool2()(a), F.max_pool2d(b, 2)
        assert ya.shape == yb.shape and ya.dtype == dtype
        assert torch.equal(ya.isnan(), yb.isnan()) and torch.equal(ya.nan_to_num(), yb.nan_to_num())
        dy = torch.randn(ya.shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))
        ya.backward(dy)
        yb.backward(dy)
        assert torch.equal(a.grad, b.grad)


def test_max_pool_runs_the_cpp_kernel_and_passes_gradcheck():
    x = torch.randn(2, 3, 6, 10, dtype=torch.float64, requires_grad=True)
    assert "MaxPool2Function" in MaxPool2()(x).grad_fn.name()  # the C++ Function, not F.max_pool2d
    assert torch.autograd.gradcheck(MaxPool2(), (x,))


def test_max_pool_kernel_refuses_bad_input():
    from normlib import kernels
    with pytest.raises(RuntimeError, match=r"x must be \(N, C, H, W\) with H, W >= 2"):
        kernels.ext().max_pool2(torch.ones(2, 3, 1, 4))
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        kernels.ext().max_pool2(torch.ones(2, 3, 4, 4, dtype=torch.int64))


@pytest.mark.parametrize("kernel", ["cpp", "python"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(128, 28, 28), (3, 5, 7), (2, 1, 1), (4, 2, 9), (5, 13, 3), (1, 30, 17)])
def test_first_conv_is_torchs_convolution(shape, dtype, kernel, monkeypatch):
    """FirstConv: the values of F.conv2d(x, w, b, padding=1) and the gradients of w and b, up to float
    rounding (relative to the largest entry: float32 < 1e-5, float64 < 1e-13), for any image size."""
    monkeypatch.setenv("NORMLIB_KERNELS", kernel)
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    g = torch.Generator().manual_seed(sum(shape))
    conv = FirstConv(6).to(dtype)
    x = torch.randn(shape[0], 1, *shape[1:], dtype=dtype, generator=g)
    y = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    dy = torch.randn(ref.shape, dtype=dtype, generator=g)
    grads = torch.autograd.grad(y, (conv.weight, conv.bias), dy)
    ref_grads = torch.autograd.grad(ref, (conv.weight, conv.bias), dy)
    for a, b in zip((y, *grads), (ref, *ref_grads)):
        assert a.shape == b.shape and a.dtype == dtype
        assert (a - b).abs().max() <= tol * b.abs().max()


def test_first_conv_runs_the_cpp_kernel_and_passes_gradcheck():
    conv = FirstConv(3).double()
    x = torch.randn(2, 1, 6, 5, dtype=torch.float64)
    assert "FirstConvFunction" in conv(x).grad_fn.name()  # the C++ Function, not F.conv2d
    from normlib import kernels
    assert torch.autograd.gradcheck(lambda w, b: kernels.ext().first_conv(x, w, b),
                                    (conv.weight.detach().clone().requires_grad_(), conv.bias.detach().clone().requires_grad_()))


def test_first_conv_falls_back_to_torch_where_the_input_needs_a_gradient():
    """A gradient into the image (a probe, a saliency map) needs F.conv2d: the kernel computes dw and db only."""
    conv = FirstConv(4)
    x = torch.randn(3, 1, 28, 28, requires_grad=True)
    y = conv(x)
    assert "FirstConvFunction" not in y.grad_fn.name()
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_first_conv_is_an_nn_conv2d_with_its_state_dict():
    conv = FirstConv(8)
    ref = nn.Conv2d(1, 8, 3, padding=1)
    assert isinstance(conv, nn.Conv2d) and conv.state_dict().keys() == ref.state_dict().keys()
    assert [p.shape for p in conv.parameters()] == [p.shape for p in ref.parameters()]
    assert isinstance(build_model("cnn", "batch").conv1, FirstConv)


def test_first_conv_kernel_refuses_bad_input():
    from normlib import kernels
    w, b = torch.ones(4, 1, 3, 3), torch.ones(4)
    with pytest.raises(RuntimeError, match=r"x must be \(N, 1, H, W\)"):
        kernels.ext().first_conv(torch.ones(2, 3, 8, 8), w, b)
    with pytest.raises(RuntimeError, match=r"w must be \(O, 1, 3, 3\)"):
        kernels.ext().first_conv(torch.ones(2, 1, 8, 8), torch.ones(4, 1, 5, 5), b)
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        kernels.ext().first_conv(torch.ones(2, 1, 8, 8, dtype=torch.int64), w, b)


def test_cnn_pools_with_max_pool2():
    model = build_model("cnn", "batch")
    assert isinstance(model.pool1, MaxPool2) and isinstance(model.pool2, MaxPool2)


# ----------------------------------------------------------------------------
# dropout with its own generator, the norm's epsilon, and the recurrent network (studies)

def test_dropout_draws_from_its_own_generator_and_is_off_in_eval():
    from normlib.models import Dropout
    x = torch.ones(64, 32)
    a, b = Dropout(0.5, seed=3), Dropout(0.5, seed=3)
    torch.manual_seed(0)
    ya = a(x)
    torch.manual_seed(1)  # the global generator plays no part
    assert torch.equal(ya, b(x))
    assert set(ya.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)
    assert 0.4 < (ya == 0).float().mean().item() < 0.6
    assert not torch.equal(ya, a(x))  # the next mask differs
    a.eval()
    assert torch.equal(a(x), x)


def test_build_model_with_dropout_and_eps():
    m = build_model("mlp", "layer", hidden=(16, 16), dropout=0.25, norm_eps=1e-3, seed=2)
    names = [n for n, _ in m.named_children()]
    assert names == ["flatten", "fc1", "norm1", "act1", "drop1", "fc2", "norm2", "act2", "drop2", "out"]
    assert m.norm1.eps == 1e-3 and m.drop1.p == 0.25
    # masks per block and seed: block 1 and 2 differ, the same seed repeats them
    assert torch.equal(m.drop1.generator.get_state(), build_model("mlp", "layer", hidden=(16, 16), dropout=0.25,
                                                                  seed=2).drop1.generator.get_state())
    assert not torch.equal(m.drop1.generator.get_state(), m.drop2.generator.get_state())
    assert "drop1" not in dict(build_model("mlp", "layer", hidden=(16, 16)).named_children())
    with pytest.raises(ValueError, match="dropout"):
        build_model("mlp", "none", dropout=1.0)


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_row_rnn_shapes_and_backward(norm):
    from normlib.models import RowRNN
    model = RowRNN(hidden=12, norm=norm)
    x = torch.randn(6, 1, 28, 28)
    y = model(x)
    assert y.shape == (6, 10)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(x[:1]).shape == (1, 10)  # evaluation needs no batch (batch norm: running statistics)
    with pytest.raises(ValueError, match="allowed none, batch, layer"):
        RowRNN(hidden=12, norm="weight")


@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_row_rnn_is_its_recurrence_step_by_step(norm):
    """RowRNN (the input terms of all steps at once, unbound per step) against the recurrence of its
    docstring written one step at a time: the same loss and the same gradients, bit for bit."""
    torch.manual_seed(0)
    model = RowRNN(hidden=12, norm=norm)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))

    def recurrence(x):
        rows = x.reshape(len(x), 28, 28)
        h = None
        for t in range(28):
            a = model.inp(rows[:, t])  # (N, H)
            if norm == "batch":
                a = model.bn_x(a, t) + (model.bn_h(model.rec(h), t) if h is not None else 0)
            else:
                a = a + model.rec(h) if h is not None else a
                a = model.ln(a) if norm == "layer" else a
            h = torch.tanh(a)
        return model.out(h)

    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    ref = F.cross_entropy(recurrence(x), y)
    assert torch.equal(loss, ref)
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_step_batch_norm_keeps_statistics_per_time_step_and_shares_gamma():
    from normlib.models import StepBatchNorm
    bn = StepBatchNorm(4, steps=3)
    assert torch.allclose(bn.weight, torch.full((4,), 0.1))
    assert len(list(bn.parameters())) == 2  # gamma and beta, shared by the three steps
    bn(torch.randn(32, 4) * 5 + 10, 1)  # only step 1 sees data
    means = torch.stack([s.running_mean for s in bn.steps])  # (T, C)
    assert torch.all(means[1] > 0.5) and torch.all(means[0] == 0) and torch.all(means[2] == 0)
    bn.eval()
    x = torch.randn(5, 4) * 5 + 10
    assert not torch.allclose(bn(x, 0), bn(x, 1))  # each step normalizes with its own statistics


def test_a_short_run_of_the_rnn_learns():
    """A task only a reader of the rows solves: the class is the column that lights up, in every row."""
    from normlib.data import Splits
    from normlib.models import VARIANTS
    from normlib.train import TrainConfig, train
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (512,), generator=g)
    x = torch.randn(512, 1, 28, 28, generator=g) * 0.5
    x[torch.arange(512), 0, :, y * 2] += 2.0
    data = Splits(x[:384], y[:384], x[384:448], y[384:448], x[448:], y[448:], 0.0, 1.0, "fake")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as trials run (normlib.trials.THREADS): 28 small steps thrash with more threads
    try:
        for norm in ("none", "layer", "batch"):
            c = TrainConfig(norm=norm, hidden=(32,), optimizer="adam", lr=3e-3, batch_size=32, epochs=4, val_size=64,
                            device="cpu")
            h = train(c, data, build=VARIANTS["rnn"])
            assert not h.diverged and h.val_acc[-1] > 0.5, (norm, h.val_acc)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------
# the vision transformer: patches, blocks, pre- and post-LN placement, norms over tokens

VIT_NORMS = ["none", "batch", "layer"]


def vit(norm="layer", position="before", **kwargs):
    return build_model("vit", norm, norm_position=position, hidden=kwargs.pop("hidden", (16, 16)), **kwargs)


@pytest.mark.parametrize("impl", ["custom", "torch"])
@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("norm", VIT_NORMS)
def test_vit_output_shape_and_backward(norm, position, impl):
    torch.manual_seed(0)
    model = vit(norm, position, impl=impl, activation="gelu")
    out = model(x_batch())
    assert out.shape == (8, 10)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    assert model(x_batch(1)).shape == (1, 10)  # evaluation needs no batch (batch norm: running statistics)


def test_vit_layout():
    from normlib.models import ViT, TokenNorm
    d = 32
    model = vit("layer", hidden=(d, d, d))
    assert isinstance(model, ViT) and len(model.blocks) == 3
    assert model.pos.shape == (16, d) and abs(model.pos.std().item() - 0.02) < 0.004
    linears = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert linears == {"embed": (49, d), "out": (d, 10),
                       **{f"blocks.{i}.{n}": s for i in range(3) for n, s in
                          [("attn.qkv", (d, 3 * d)), ("attn.proj", (d, d)), ("mlp.fc1", (d, 2 * d)),
                           ("mlp.fc2", (2 * d, d))]}}
    norms = [n for n, m in model.named_modules() if isinstance(m, TokenNorm)]
    assert norms == [f"blocks.{i}.norm{j}" for i in range(3) for j in (1, 2)] + ["final_norm"]
    assert all(isinstance(m.norm, LayerNorm) and m.norm.normalized_shape == (d,)
               for n, m in model.named_modules() if n in norms)
    n_block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 2 * d + 2 * d) + (2 * d * d + d) + 2 * 2 * d
    assert n_params(model) == (49 * d + d) + 16 * d + 3 * n_block + 2 * d + (d * 10 + 10)
    assert isinstance(vit("layer", "after").final_norm, nn.Identity)  # post-LN: no final norm
    assert isinstance(vit("batch").blocks[0].norm1.norm, BatchNorm)
    assert isinstance(vit("batch", impl="torch").blocks[0].norm1.norm, nn.BatchNorm1d)
    assert isinstance(vit("layer", impl="torch").final_norm.norm, nn.LayerNorm)
    assert isinstance(vit("none").blocks[0].norm1.norm, nn.Identity)


def test_patches_are_the_7x7_tiles_in_row_major_order():
    from normlib.models import patches
    x = torch.arange(2 * 784.0).reshape(2, 1, 28, 28)
    p = patches(x)
    assert p.shape == (2, 16, 49)
    for n, t, j in [(0, 0, 0), (0, 1, 0), (0, 4, 0), (1, 5, 10), (0, 15, 48), (1, 7, 23)]:
        row, col = 7 * (t // 4) + j // 7, 7 * (t % 4) + j % 7
        assert p[n, t, j] == x[n, 0, row, col], (n, t, j)


def record_calls(model, names):
    """Forward hooks on the named modules: a list of (name, input, output), in call order."""
    calls, modules = [], dict(model.named_modules())
    for name in names:
        modules[name].register_forward_hook(lambda m, i, o, name=name: calls.append((name, i[0], o)))
    return calls


@pytest.mark.parametrize("position", ["before", "after"])
def test_vit_norm_placement(position):
    """pre-LN: x + attn(norm1(x)), x + mlp(norm2(x)), a final norm; post-LN: norm1(x + attn(x)), norm2(x + mlp(x))."""
    torch.manual_seed(0)
    model = vit("layer", position, hidden=(16,))
    names = ["blocks.0", "blocks.0.norm1", "blocks.0.attn", "blocks.0.norm2", "blocks.0.mlp", "final_norm", "out"]
    calls = record_calls(model, names)
    model(x_batch())
    c = {name: (i, o) for name, i, o in calls}
    x, y = c["blocks.0"]  # the block's input and output
    if position == "before":
        assert [n for n, *_ in calls] == names[1:5] + ["blocks.0", "final_norm", "out"]
        assert torch.equal(c["blocks.0.norm1"][0], x) and torch.equal(c["blocks.0.attn"][0], c["blocks.0.norm1"][1])
        h = x + c["blocks.0.attn"][1]
        assert torch.equal(c["blocks.0.norm2"][0], h) and torch.equal(c["blocks.0.mlp"][0], c["blocks.0.norm2"][1])
        assert torch.equal(y, h + c["blocks.0.mlp"][1])
        assert torch.equal(c["final_norm"][0], y)
    else:
        assert [n for n, *_ in calls] == ["blocks.0.attn", "blocks.0.norm1", "blocks.0.mlp", "blocks.0.norm2",
                                          "blocks.0", "final_norm", "out"]
        assert torch.equal(c["blocks.0.attn"][0], x)
        assert torch.equal(c["blocks.0.norm1"][0], x + c["blocks.0.attn"][1])
        h = c["blocks.0.norm1"][1]
        assert torch.equal(c["blocks.0.mlp"][0], h) and torch.equal(c["blocks.0.norm2"][0], h + c["blocks.0.mlp"][1])
        assert torch.equal(y, c["blocks.0.norm2"][1]) and torch.equal(c["final_norm"][1], y)  # identity
        # the block's output is normalized: every token has mean 0 and variance 1 over its features (gamma 1, beta 0)
        var, mean = torch.var_mean(y, dim=-1, correction=0)
        assert mean.abs().max() < 1e-5 and (var - 1).abs().max() < 1e-3


def test_token_norms_normalize_what_they_say():
    """Layer norm: each token over its D features; batch norm: each feature over the batch and the tokens,
    with the running statistics in evaluation (an example's output then does not depend on the batch)."""
    from normlib.models import TokenNorm
    x = 3 * torch.randn(8, 16, 12, generator=torch.Generator().manual_seed(0)) + 5  # (N, T, D)
    var, mean = torch.var_mean(TokenNorm("layer", 12)(x), dim=2, correction=0)  # (N, T)
    assert mean.abs().max() < 1e-5 and (var - 1).abs().max() < 1e-3
    bn = TokenNorm("batch", 12)
    var, mean = torch.var_mean(bn(x), dim=(0, 1), correction=0)  # (D,)
    assert mean.abs().max() < 1e-5 and (var - 1).abs().max() < 1e-3
    assert torch.allclose(bn.norm.running_mean, 0.1 * x.mean((0, 1)))
    bn.eval()
    assert torch.equal(bn(x)[:1], bn(x[:1]))
    assert torch.equal(TokenNorm("none", 12)(x), x)


@pytest.mark.parametrize("kwargs, message", [
    (dict(norm="weight"), r"vit: norm = 'weight': allowed none, batch, layer"),
    (dict(norm="group"), r"vit: norm = 'group': allowed none, batch, layer"),
    (dict(hidden=(64, 32)), r"vit: hidden = \(64, 32\): all widths must be equal \(one block per entry\)"),
    (dict(hidden=(30, 30)), r"vit: hidden width = 30: must be divisible by the 4 heads"),
    (dict(dropout=0.1), r"vit: dropout = 0.1: allowed 0 \(the vit has no dropout\)")])
def test_vit_refusals_are_one_line(kwargs, message):
    from normlib.models import from_config
    from normlib.train import TrainConfig
    kwargs = {"norm": "layer", "hidden": (64, 64), **kwargs}
    with pytest.raises(ValueError, match=f"^{message}$"):
        build_model("vit", **kwargs)
    config = TrainConfig(arch="vit", **kwargs)  # a valid config: the network refuses when it is built
    with pytest.raises(ValueError, match=f"^{message}$"):
        from_config(config)


def test_vit_init_scale():
    torch.manual_seed(0)
    model = vit("layer", hidden=(64, 64), init_scale=0.3)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            tol = 5 * 0.3 / m.weight.numel() ** 0.5
            assert abs(m.weight.std().item() - 0.3) < tol and abs(m.weight.mean().item()) < tol, name
            assert (m.bias == 0).all(), name
    assert abs(model.pos.std().item() - 0.02) < 0.002  # the position embedding keeps its own init


@pytest.mark.parametrize("position", ["before", "after"])
@pytest.mark.parametrize("norm", VIT_NORMS)
def test_vit_custom_and_torch_compute_the_same_function_at_init(norm, position):
    models = {}
    for impl in ("custom", "torch"):
        torch.manual_seed(0)
        models[impl] = vit(norm, position, impl=impl, hidden=(32, 32), activation="gelu").double()
    x = x_batch(16).double()
    for train in (True, False):  # batch statistics, then the running statistics of that batch
        for m in models.values():
            m.train(train)
        torch.testing.assert_close(models["custom"](x), models["torch"](x), rtol=1e-10, atol=1e-12)


def patch_data(n=512, seed=0):
    """A task for a reader of patches: one patch, anywhere, carries the 7 x 7 pattern of the class."""
    from normlib.data import Splits
    from normlib.models import patches
    g = torch.Generator().manual_seed(seed)
    y, where = torch.randint(0, 10, (n,), generator=g), torch.randint(0, 16, (n,), generator=g)
    templates = torch.randn(10, 49, generator=g)  # one pattern per class
    tiles = patches(torch.randn(n, 1, 28, 28, generator=g) * 0.5)  # (N, 16, 49), a copy
    tiles[torch.arange(n), where] += templates[y]
    x = tiles.reshape(n, 4, 4, 7, 7).transpose(2, 3).reshape(n, 1, 28, 28)  # the patches put back
    return Splits(x[:384], y[:384], x[384:448], y[384:448], x[448:], y[448:], 0.0, 1.0, "fake"), templates, where


def vit_config(**kwargs):
    from normlib.train import TrainConfig
    return TrainConfig(**{"arch": "vit", "hidden": (16, 16), "activation": "gelu", "optimizer": "adam",
                          "lr": 3e-3, "batch_size": 32, "epochs": 3, "val_size": 64, "device": "cpu", **kwargs})


def test_patch_data_carries_the_class_pattern():
    from normlib.models import patches
    data, templates, where = patch_data(64)
    tiles = patches(data.x_train)[torch.arange(64), where]  # (N, 49): the patch with the pattern
    assert (tiles - templates[data.y_train]).std().item() == pytest.approx(0.5, abs=0.03)  # and noise of std 0.5


@pytest.mark.parametrize("norm, position", [("none", "before"), ("layer", "before"), ("layer", "after"),
                                            ("batch", "before"), ("batch", "after")])
def test_a_short_run_of_the_vit_learns(norm, position):
    from normlib.train import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as trials run (normlib.trials.THREADS)
    try:
        h = train(vit_config(norm=norm, norm_position=position, epochs=10), patch_data()[0])
    finally:
        torch.set_num_threads(threads)
    assert not h.diverged
    first, last = sum(h.step_loss[:5]) / 5, sum(h.step_loss[-5:]) / 5
    assert last < 0.6 * first and h.val_acc[-1] > 0.5, (first, last, h.val_acc)


def test_the_same_vit_config_gives_an_identical_history():
    from normlib.train import train
    config = vit_config(norm="batch", epochs=1)
    a, b = (train(config, patch_data()[0]).to_dict() for _ in range(2))
    a.pop("wall_time"), b.pop("wall_time")
    assert a == b
