"""Tests of normlib.norms: the hand-written layers against torch's built-ins, finite differences
and gradcheck (float64), also on the vision transformer's tokens (N, T, D), running statistics, the
invariances of Ba et al. 2016 Table 1, the factory, error messages and the weight-norm data-dependent init."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from normlib import check, kernels, trials
from normlib.check import (CHECK_KINDS, TOKEN_KINDS, compare_to_builtin, gradcheck, kernels_of, max_abs,
                           numeric_gradient_errors, rel_error)
from normlib.models import TokenNorm
from normlib.norms import NORMS, BatchNorm, GroupNorm, LayerNorm, group_count, make_norm, weight_norm
from normlib.weight_norm import WeightNormConv2d, WeightNormFn, WeightNormLinear, data_dependent_init

f64 = torch.float64
FUSED = [kind for kind, norm in NORMS.items() if norm.fused]  # the kinds with a C++ kernel too
MODULES = [kind for kind, norm in NORMS.items() if norm.make]  # the kinds that fill the norm slot

# Input shapes for every kind of the registry, 2-D and 4-D. Every normalized set holds more than two
# values (group norm: 8 groups of 3 for C = 24 or 32, 6 groups of 2 channels for C = 12): with exactly
# two, x_hat = +-1 whatever x is, dx is ~0 and its elementwise relative error measures only rounding
# (this is why no 2-D shape has a batch of 2).
SHAPES = [(16, 32), (5, 24), (2, 12, 5, 5), (6, 8, 3, 4), (3, 16, 4, 4)]
SMALL_SHAPES = [(4, 24), (3, 4, 2, 3)]  # finite differences perturb one entry at a time
# The vision transformer's tokens (N, T, D), for batch and layer norm: the op on x.reshape(N*T, D) against
# F.layer_norm over D and F.batch_norm on x.transpose(1, 2) (normlib.check.TOKEN_BUILTINS).
TOKEN_SHAPES = [(4, 16, 32), (8, 16, 64), (3, 5, 12)]
SMALL_TOKEN_SHAPES = [(2, 4, 6)]
CASES = ([(kind, shape) for kind in CHECK_KINDS for shape in SHAPES]
         + [(kind, shape) for kind in TOKEN_KINDS for shape in TOKEN_SHAPES])
SMALL_CASES = ([(kind, shape) for kind in CHECK_KINDS for shape in SMALL_SHAPES]
               + [(kind, shape) for kind in TOKEN_KINDS for shape in SMALL_TOKEN_SHAPES])


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


@pytest.fixture(params=["cpp", "python"])
def kernel(request, monkeypatch):
    """Run a module test with each from-scratch implementation the custom layers can use on CPU."""
    monkeypatch.setenv("NORMLIB_KERNELS", request.param)
    return request.param


def with_kernels(cases):
    """(kind, shape) cases -> (kind, kernel, shape) for every implementation of kind."""
    return [pytest.param(kind, k, shape, id=f"{kind}-{k}-{'x'.join(map(str, shape))}")
            for kind, shape in cases for k in kernels_of(kind)]


# ----------------------------------------------------------------------------
# gradients: against torch, finite differences, gradcheck

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind, kernel, shape", with_kernels(CASES))
def test_matches_builtin(kind, kernel, shape, seed):
    errors = compare_to_builtin(kind, shape, seed=seed, kernel=kernel)
    assert set(errors) == {"out"} | {"d" + name for name in NORMS[kind].inputs(shape)}
    worst = {name: e["rel"] for name, e in errors.items()}
    assert max(worst.values()) <= 1e-10, worst  # typically ~1e-14


@pytest.mark.parametrize("kind, kernel, shape", with_kernels(SMALL_CASES))
def test_numeric_gradient(kind, kernel, shape):
    errors = numeric_gradient_errors(kind, shape, seed=3, kernel=kernel)
    # elementwise relative error; round-off of the h = 1e-5 differences on the smallest entries of dx
    # gives up to ~1e-6, a wrong gradient gives ~1
    assert max(errors.values()) < 1e-5, errors


@pytest.mark.parametrize("kind, kernel, shape", with_kernels(SMALL_CASES))
def test_gradcheck(kind, kernel, shape):
    assert gradcheck(kind, shape, kernel=kernel)


def test_gradcheck_can_fail():
    """gradcheck as used here rejects a wrong backward: the C++ layer norm with its dgamma doubled."""
    x, g, b = (5 * randn(3, 6) + 12).requires_grad_(), randn(6, seed=1).requires_grad_(), randn(6, seed=2).requires_grad_()

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, g, b):
            y, mean, inv_std = kernels.ext().layer_norm_forward(x, g, b, 1e-5)
            ctx.save_for_backward(x, g, mean, inv_std)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, g, mean, inv_std = ctx.saved_tensors
            dx, dg, db = kernels.ext().layer_norm_backward(dy, x, mean, inv_std, g)
            return dx, 2 * dg, db

    assert torch.autograd.gradcheck(lambda *a: kernels.ext().layer_norm(*a, 1e-5), (x, g, b))
    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(Wrong.apply, (x, g, b))


# ----------------------------------------------------------------------------
# the C++ kernels against the reference pairs they implement

@pytest.mark.parametrize("shape", [(16, 12), (6, 8, 3, 4), (3, 5, 7, 7)])
@pytest.mark.parametrize("kind", FUSED)
def test_kernels_match_reference_pairs(kind, shape):
    """Outputs and gradients of the C++ kernels and the PyTorch-op pairs, float64."""
    errors = check.compare_kernel_to_pair(kind, shape, groups=4)
    assert max(errors.values()) <= 1e-12, errors


@pytest.mark.parametrize("shape", [(256, 512), (64, 16, 14, 14)])
def test_kernels_do_not_depend_on_the_thread_count(shape):
    """One or two threads give bit-identical float32 results (fixed splits, sums combined in order)."""
    gen = torch.Generator().manual_seed(0)
    x, dy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    saved, outs = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for kind in FUSED:
                layer = make_norm(kind, shape[1:])
                xi = x.clone().requires_grad_()
                y = layer(xi)
                y.backward(dy)
                outs.append((threads, kind, [y.detach(), xi.grad, layer.weight.grad, layer.bias.grad]))
    finally:
        torch.set_num_threads(saved)
    one, two = [o for o in outs if o[0] == 1], [o for o in outs if o[0] == 2]
    for (_, kind, a), (_, _, b) in zip(one, two):
        assert all(torch.equal(u, v) for u, v in zip(a, b)), kind


def test_kernel_backend_setting(monkeypatch):
    monkeypatch.setenv("NORMLIB_KERNELS", "python")
    x = torch.randn(4, 6, requires_grad=True)
    assert type(BatchNorm(6)(x).grad_fn).__name__ == "BatchNormFnBackward"  # the reference pair
    python_version = trials.code_version()
    monkeypatch.setenv("NORMLIB_KERNELS", "cpp")
    assert "BatchNormFn" not in type(BatchNorm(6)(x).grad_fn).__name__  # the C++ Function
    assert trials.code_version() != python_version  # cached trials of the two are kept apart
    monkeypatch.setenv("NORMLIB_KERNELS", "fortran")
    with pytest.raises(kernels.KernelError, match=r"^NORMLIB_KERNELS = 'fortran': allowed cpp, python$"):
        BatchNorm(6)(x)


@pytest.mark.parametrize("call, message", [
    (lambda e: e.layer_norm(torch.ones(2, 3, dtype=torch.int64), torch.ones(3), torch.zeros(3), 1e-5),
     "x must be float32 or float64"),
    (lambda e: e.layer_norm_forward(torch.ones(2, 3), torch.ones(4), torch.zeros(4), 1e-5),
     "gamma and beta need 3 values"),
    (lambda e: e.batch_norm_forward(torch.ones(3), torch.ones(3), torch.zeros(3), 1e-5),
     r"x must be \(N, C, \*S\)"),
    (lambda e: e.layer_norm_backward(torch.ones(2, 3), torch.ones(2, 3), torch.zeros(2), torch.ones(2),
                                     torch.ones(3)), "mean and inv_std must be float64")])
def test_kernels_refuse_bad_input(call, message):
    with pytest.raises(RuntimeError, match=message):
        call(kernels.ext())


def test_notebook_tables_cover_the_registry():
    """The implementation-check notebook's tables: a row group per kind of the registry, numbers to glue;
    a token shape adds rows for batch and layer norm only."""
    worst, by_shape, numbers = check.builtin_comparison([(4, 24), (2, 4, 6)], dtypes=("float64",))
    assert set(worst["layer"]) == {NORMS[k].label for k in CHECK_KINDS}
    tokens = by_shape.loc[by_shape["shape"] == "(2, 4, 6)"]
    assert set(tokens["layer"]) == {NORMS[k].label for k in TOKEN_KINDS} == {"batch norm", "layer norm"}
    assert numbers["max_rel_error_f64"] < 1e-10 and numbers["f64_agreement"].startswith("compute the same")
    table, numbers = check.gradient_checks([(4, 24), (2, 4, 6)])
    assert len(table) == numbers["n_gradchecks"] == sum(len(kernels_of(k)) for k in CHECK_KINDS + TOKEN_KINDS)
    assert numbers["gradcheck_all"] == "all passed" and numbers["max_numeric_rel_error"] < 1e-5


def test_rel_error_is_cs231n():
    a, b = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([1.0, 0.0, -2.2])
    assert rel_error(a, b) == pytest.approx(0.2 / 4.2)
    assert max_abs(a, b) == pytest.approx(0.2)


# ----------------------------------------------------------------------------
# modules

@pytest.mark.parametrize("momentum", [0.1, 0.5])
@pytest.mark.parametrize("shape, builtin", [((8, 6), nn.BatchNorm1d), ((4, 6, 3, 3), nn.BatchNorm2d)])
def test_batch_norm_running_stats_match_torch(shape, builtin, momentum, kernel):
    ours, theirs = BatchNorm(6, momentum=momentum).double(), builtin(6, momentum=momentum).double()
    for step in range(5):  # training steps on fresh batches with moving statistics
        x = 3 * randn(*shape, seed=step) + step
        assert rel_error(ours(x), theirs(x)) <= 1e-10
    for name in ("running_mean", "running_var"):
        assert rel_error(getattr(ours, name), getattr(theirs, name)) <= 1e-12, name
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 5
    ours.eval(), theirs.eval()
    x = (5 * randn(*shape, seed=9) + 12).requires_grad_()
    y_ours, y_theirs = ours(x), theirs(x)
    assert rel_error(y_ours, y_theirs) <= 1e-10
    dy = randn(*shape, seed=10)
    assert rel_error(*(torch.autograd.grad(y, x, dy)[0] for y in (y_ours, y_theirs))) <= 1e-10
    assert ours.state_dict().keys() == theirs.state_dict().keys()


@pytest.mark.parametrize("impl", ["custom", "torch"])
@pytest.mark.parametrize("kind", TOKEN_KINDS)
def test_token_norm_matches_torch_on_tokens(kind, impl, kernel):
    """The vision transformer's norm module (TokenNorm, impl custom or torch's layers through the same wrapper) on
    (N, T, D) against F.layer_norm(x, (D,)) and nn.BatchNorm1d on x.transpose(1, 2), float64: outputs and the
    gradients of x, gamma and beta in training, batch norm's running statistics after five steps, and evaluation."""
    n, t, d = 4, 16, 12
    ours = TokenNorm(kind, d, impl=impl).double()
    theirs = nn.BatchNorm1d(d).double() if kind == "batch" else None
    gamma, beta = randn(d, seed=1).requires_grad_(), randn(d, seed=2).requires_grad_()
    with torch.no_grad():
        ours.norm.weight.copy_(gamma), ours.norm.bias.copy_(beta)
        if theirs is not None:
            theirs.weight.copy_(gamma), theirs.bias.copy_(beta)

    def builtin(x):
        if kind == "layer":
            return F.layer_norm(x, (d,), gamma, beta, 1e-5)
        return theirs(x.transpose(1, 2)).transpose(1, 2)  # (N, D, T): D channels over N and T
    for step in range(5):
        x = (5 * randn(n, t, d, seed=10 + step) + 12 + step).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y_ours, y_theirs = ours(x), builtin(x2)
        assert rel_error(y_ours, y_theirs) <= 1e-10
        dy = randn(n, t, d, seed=20 + step)
        grads_ours = torch.autograd.grad(y_ours, [x, ours.norm.weight, ours.norm.bias], dy)
        grads_theirs = torch.autograd.grad(y_theirs, [x2] + ([gamma, beta] if theirs is None else
                                                             [theirs.weight, theirs.bias]), dy)
        for name, a, b in zip(("dx", "dgamma", "dbeta"), grads_ours, grads_theirs):
            assert rel_error(a, b) <= 1e-10, (name, step)
    if theirs is not None:
        for name in ("running_mean", "running_var"):
            assert rel_error(getattr(ours.norm, name), getattr(theirs, name)) <= 1e-12, name
    ours.eval()
    if theirs is not None:
        theirs.eval()
    x = 5 * randn(n, t, d, seed=9) + 12
    assert rel_error(ours(x), builtin(x)) <= 1e-10


@pytest.mark.parametrize("module, builtin, shape", [
    (LayerNorm((6, 3, 3)), nn.LayerNorm((6, 3, 3)), (4, 6, 3, 3)),
    (GroupNorm(3, 6), nn.GroupNorm(3, 6), (4, 6, 3, 3)),
    (GroupNorm(2, 6), nn.GroupNorm(2, 6), (4, 6))])
def test_module_matches_torch_module(module, builtin, shape, kernel):
    module, builtin = module.double(), builtin.double()
    with torch.no_grad():  # non-trivial affine parameters
        for m in (module, builtin):
            m.weight.copy_(randn(*m.weight.shape, seed=1))
            m.bias.copy_(randn(*m.bias.shape, seed=2))
    x = 5 * randn(*shape) + 12
    assert rel_error(module(x), builtin(x)) <= 1e-10


@pytest.mark.parametrize("make_layer", [lambda: nn.Linear(7, 5),
                                        lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
                                        lambda: nn.Conv2d(3, 4, 2, bias=False, dilation=2)])
def test_weight_norm_custom_matches_torch(make_layer):
    torch.manual_seed(0)
    layer = make_layer().double()
    ours, theirs = weight_norm(copy.deepcopy(layer)), weight_norm(copy.deepcopy(layer), impl="torch")
    assert isinstance(ours, WeightNormLinear if isinstance(layer, nn.Linear) else WeightNormConv2d)
    x = 5 * randn(6, 7, seed=1) + 12 if isinstance(layer, nn.Linear) else 5 * randn(6, 3, 8, 8, seed=1) + 12
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_theirs = ours(x_ours), theirs(x_theirs)
    assert rel_error(y_ours, layer(x)) <= 1e-10  # unchanged function at init
    assert rel_error(y_ours, y_theirs) <= 1e-10
    dy = randn(*y_ours.shape, seed=2)
    y_ours.backward(dy), y_theirs.backward(dy)
    p = theirs.parametrizations.weight
    assert rel_error(x_ours.grad, x_theirs.grad) <= 1e-10
    assert rel_error(ours.v.grad, p.original1.grad) <= 1e-10
    assert rel_error(ours.g.grad, p.original0.grad.view(-1)) <= 1e-10
    if layer.bias is not None:
        assert rel_error(ours.bias.grad, theirs.bias.grad) <= 1e-10


def test_data_dependent_init_standardizes_preactivations():
    torch.manual_seed(0)
    model = nn.Sequential(weight_norm(nn.Conv2d(3, 8, 3, padding=1)), nn.ReLU(), nn.Flatten(),
                          weight_norm(nn.Linear(8 * 6 * 6, 16)), nn.ReLU(),
                          weight_norm(nn.Linear(16, 10))).double()
    x = 5 * randn(64, 3, 6, 6) + 12
    layers = [m for m in model if isinstance(m, (WeightNormLinear, WeightNormConv2d))]
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.__setitem__(m, o)) for m in layers]
    model(x)
    before = [outputs[m].transpose(0, 1).flatten(1).std(1, correction=0) for m in layers]
    assert max((s - 1).abs().max().item() for s in before) > 0.5  # default init: stds far from 1

    assert data_dependent_init(model, x) is model
    model(x)  # the initialized model, with the hooks still recording
    for h in hooks:
        h.remove()
    for m in layers:
        t = outputs[m].transpose(0, 1).flatten(1)  # (out, N*H*W) per output unit
        std, mean = torch.std_mean(t, dim=1, correction=0)
        assert mean.abs().max().item() < 1e-10
        assert (std - 1).abs().max().item() < 1e-10


# ----------------------------------------------------------------------------
# invariances of Ba et al. 2016, Table 1, on the summed inputs a = W x (no bias), eps = 0.
# True: the normalized output is unchanged; False: it changes (which shows the check can fail).

def _rescale_row(w):
    w = w.clone()
    w[2] *= 3.7
    return w


def _rescale_example(x):
    x = x.clone()
    x[1] *= 3.7
    return x


TRANSFORMS = {  # name -> (x, W) -> (x', W')
    "weight matrix rescaled": lambda x, w: (x, 3.7 * w),
    "weight matrix recentred": lambda x, w: (x, w + randn(w.shape[1], seed=5)),  # W + 1 gamma^T
    "one weight vector rescaled": lambda x, w: (x, _rescale_row(w)),
    "dataset rescaled": lambda x, w: (3.7 * x, w),
    "dataset recentred": lambda x, w: (x + randn(x.shape[1], seed=6), w),
    "one example rescaled": lambda x, w: (_rescale_example(x), w),
}
NORMALIZED = {  # name -> normalized summed inputs of x (N, D) under weights W (M, D)
    "batch": lambda x, w: BatchNorm(w.shape[0], eps=0.0).double()(x @ w.T),
    "layer": lambda x, w: LayerNorm(w.shape[0], eps=0.0).double()(x @ w.T),
    "weight": lambda x, w: x @ WeightNormFn.apply(w, torch.ones(w.shape[0], dtype=f64)).T,
}
INVARIANT = [
    ("batch", "weight matrix rescaled", True), ("batch", "weight matrix recentred", False),
    ("batch", "one weight vector rescaled", True), ("batch", "dataset rescaled", True),
    ("batch", "dataset recentred", True), ("batch", "one example rescaled", False),
    ("layer", "weight matrix rescaled", True), ("layer", "weight matrix recentred", True),
    ("layer", "one weight vector rescaled", False), ("layer", "dataset recentred", False),
    ("layer", "one example rescaled", True),
    ("weight", "weight matrix rescaled", True), ("weight", "weight matrix recentred", False),
    ("weight", "one weight vector rescaled", True), ("weight", "dataset rescaled", False),
    ("weight", "one example rescaled", False),
]


@pytest.mark.parametrize("norm, transform, invariant", INVARIANT)
def test_invariances_of_ba_et_al_table_1(norm, transform, invariant, kernel):
    x, w = 5 * randn(8, 6, seed=1) + 12, randn(5, 6, seed=2)
    before = NORMALIZED[norm](x, w)
    after = NORMALIZED[norm](*TRANSFORMS[transform](x, w))
    diff = max_abs(before, after)
    if invariant:
        assert diff < 1e-9, diff
    else:
        assert diff > 1e-3, diff


# ----------------------------------------------------------------------------
# factory and errors

@pytest.mark.parametrize("shape", [(12,), (12, 5, 5)])
@pytest.mark.parametrize("kind, impl, expected", [
    ("none", "custom", nn.Identity), ("none", "torch", nn.Identity),
    ("weight", "custom", nn.Identity), ("weight", "torch", nn.Identity),
    ("batch", "custom", BatchNorm), ("batch", "torch", None),
    ("layer", "custom", LayerNorm), ("layer", "torch", nn.LayerNorm),
    ("group", "custom", GroupNorm), ("group", "torch", nn.GroupNorm)])
def test_make_norm_class(kind, impl, expected, shape):
    if expected is None:
        expected = nn.BatchNorm1d if len(shape) == 1 else nn.BatchNorm2d
    layer = make_norm(kind, shape, impl=impl)
    assert type(layer) is expected
    x = torch.randn(4, *shape)
    assert layer(x).shape == x.shape  # the layer fits activations of that shape


def test_make_norm_settings():
    assert make_norm("batch", (12,), eps=1e-3, momentum=0.3).momentum == 0.3
    assert make_norm("layer", (12, 5, 5), impl="torch", eps=1e-3).eps == 1e-3
    assert make_norm("group", (12, 5, 5)).num_groups == 6  # largest divisor of 12 that is <= 8
    assert make_norm("group", (32,), impl="torch").num_groups == 8
    assert [group_count(c) for c in (1, 7, 9, 12, 16, 30)] == [1, 7, 3, 6, 8, 6]


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1)])
def test_batch_norm_one_value_per_channel(shape, kernel):
    x = torch.randn(*shape)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as ours:
        BatchNorm(3)(x)
    with pytest.raises(ValueError) as theirs:
        (nn.BatchNorm1d if len(shape) == 2 else nn.BatchNorm2d)(3)(x)
    assert str(ours.value) == str(theirs.value)  # same message as torch
    assert BatchNorm(3).eval()(x).shape == x.shape  # fine with running statistics


@pytest.mark.parametrize("module, shape, message", [
    (BatchNorm(4), (2, 5), r"expected input of shape \(N, 4\) or \(N, 4, H, W\), got \(2, 5\)"),
    (BatchNorm(4), (2, 4, 3), r"expected input of shape \(N, 4\) or \(N, 4, H, W\), got \(2, 4, 3\)"),
    (LayerNorm(4), (2, 5), r"expected input of shape \(N, 4\), got \(2, 5\)"),
    (LayerNorm((4, 3, 3)), (2, 4, 3, 2), r"expected input of shape \(N, 4, 3, 3\), got \(2, 4, 3, 2\)"),
    (GroupNorm(2, 4), (2, 6, 3, 3), r"expected input of shape \(N, 4, \.\.\.\), got \(2, 6, 3, 3\)")])
def test_wrong_shape_names_expected_and_received(module, shape, message):
    with pytest.raises(ValueError, match=message):
        module(torch.randn(*shape))


@pytest.mark.parametrize("call, message", [
    (lambda: make_norm("batchnorm", (4,)), rf"kind = 'batchnorm': allowed {', '.join(NORMS)}$"),
    (lambda: make_norm("batch", (4,), impl="cuda"), r"impl = 'cuda': allowed custom, torch"),
    (lambda: make_norm("batch", (4, 5)), r"shape = \(4, 5\): allowed \(C,\) or \(C, H, W\)"),
    (lambda: weight_norm(nn.Linear(2, 2), impl="cudnn"), r"impl = 'cudnn': allowed custom, torch"),
    (lambda: GroupNorm(3, 4), r"num_channels=4 is not divisible by num_groups=3"),
    (lambda: compare_to_builtin("instance", (2, 3)), rf"kind = 'instance': allowed {', '.join(CHECK_KINDS)}$"),
    (lambda: compare_to_builtin("group", (2, 4, 6)), r"kind = 'group' at tokens \(2, 4, 6\): allowed batch, layer$")])
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_weight_norm_rejects_other_layers():
    with pytest.raises(TypeError, match="nn.Linear or nn.Conv2d, got ReLU"):
        weight_norm(nn.ReLU())


def test_autograd_functions_in_a_network(kernel):
    """Custom and torch layers give the same parameter gradients through a small network."""
    torch.manual_seed(0)
    x, y = 5 * randn(16, 1, 6, 6) + 12, torch.randint(0, 3, (16,))
    grads = {}
    for impl in ("custom", "torch"):
        torch.manual_seed(1)
        net = nn.Sequential(nn.Conv2d(1, 4, 3), make_norm("batch", (4, 4, 4), impl=impl), nn.ReLU(),
                            nn.Flatten(), nn.Linear(64, 8), make_norm("layer", (8,), impl=impl), nn.ReLU(),
                            nn.Linear(8, 8), make_norm("group", (8,), impl=impl, groups=2),
                            nn.Linear(8, 3)).double()
        F.cross_entropy(net(x), y).backward()
        grads[impl] = [p.grad for p in net.parameters()]
    assert len(grads["custom"]) == len(grads["torch"]) == 14
    for a, b in zip(grads["custom"], grads["torch"]):
        assert max_abs(a, b) <= 1e-12 * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("kind", MODULES)
def test_non_contiguous_inputs_and_gradients(kind, kernel):
    """channels_last / transposed inputs; a transposed and an expanded (stride 0) upstream gradient."""
    custom, builtin = (make_norm(kind, (8, 5, 5), impl=impl).double() for impl in ("custom", "torch"))
    x = 5 * randn(4, 8, 5, 5) + 12
    w = randn(4, 8, 5, 5, seed=1).transpose(2, 3)
    losses = [lambda y: (y * w).sum(),  # dy = w, transposed
              lambda y: (y.sum(0) * w[0]).sum()]  # dy = w[0] expanded over the batch
    for x_in in (x.to(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
        for loss in losses:
            a, b = x_in.clone().requires_grad_(), x_in.clone().requires_grad_()
            ya, yb = custom(a), builtin(b)
            assert rel_error(ya, yb) <= 1e-10
            loss(ya).backward(), loss(yb).backward()
            assert rel_error(a.grad, b.grad) <= 1e-10
