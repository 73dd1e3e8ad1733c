"""Tests of normlib.probes and of train(build=...): the trainer for custom networks against train(), and
each probe on models whose answer is known. Synthetic data keeps every test off the disk."""
import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlib import models, probes
from normlib.data import Splits
from normlib.models import build_model
from normlib.train import TrainConfig, evaluate, train


def fake_data(n=256, seed=0):
    """Splits of random 28x28 'images' whose class is readable from their mean brightness."""
    g = torch.Generator().manual_seed(seed)

    def part(m):
        y = torch.randint(0, 10, (m,), generator=g)
        x = torch.randn(m, 1, 28, 28, generator=g) + (y.float() / 5).view(-1, 1, 1, 1)
        return x, y

    (xt, yt), (xv, yv), (xs, ys) = part(n), part(64), part(64)
    return Splits(xt, yt, xv, yv, xs, ys, 0.0, 1.0, "fake")


def small(**kw):
    return TrainConfig(**{"hidden": (16, 16), "batch_size": 32, "epochs": 2, "val_size": 64, "device": "cpu",
                          "evals_per_epoch": 2, **kw})


# ---------------------------------------------------------------------------------------------
# train(build=...): networks build_model does not make

@pytest.mark.parametrize("schedule", ["constant", "cosine"])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_a_build_hook_making_the_standard_network_reproduces_train(norm, schedule):
    data, config = fake_data(), small(norm=norm, schedule=schedule)
    a, b = train(config, data), train(config, data, build=models.from_config)
    for name in ("step_loss", "step_grad_norm", "eval_step", "train_loss", "train_acc", "val_loss", "val_acc"):
        assert getattr(a, name) == getattr(b, name), name
    assert (a.test_loss, a.test_acc, a.diverged) == (b.test_loss, b.test_acc, b.diverged)


def test_batch_layer_model_puts_a_layer_norm_after_every_batch_norm():
    model = models.batch_and_layer(small(norm="batch"))
    names = [n for n, _ in model.named_children()]
    assert names == ["flatten", "fc1", "norm1", "lnorm1", "act1", "fc2", "norm2", "lnorm2", "act2", "out"]
    y = model(torch.randn(8, 1, 28, 28))
    assert y.shape == (8, 10)
    # layer norm's output has zero mean and unit variance over each example's features
    hidden = model[:4](torch.randn(8, 1, 28, 28))  # (8, 16) after lnorm1
    assert torch.allclose(hidden.mean(1), torch.zeros(8), atol=1e-5)
    with pytest.raises(ValueError, match="only the MLP"):
        models.batch_and_layer(small(norm="batch", arch="cnn"))


def test_train_with_a_build_hook_trains_the_batch_layer_network():
    data, config = fake_data(), small(norm="batch", epochs=3)
    hist = train(config, data, build=models.batch_and_layer)
    assert hist.step_loss != train(config, data).step_loss  # the hook's network trained, not the standard one
    assert not hist.diverged and len(hist.step_loss) == 3 * 8
    assert hist.step_loss[-1] < hist.step_loss[0]


# ---------------------------------------------------------------------------------------------
# probes

def test_direction_probe_on_a_quadratic():
    """L(w) = mean((Xw - y)^2) has Hessian H = 2/N X^T X, so along -g the gradient changes by -eta H g:
    grad_change = max eta * ||H g||, beta = ||H g|| / ||g|| and the loss follows a parabola."""
    torch.manual_seed(0)
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
    model = nn.Linear(3, 1, bias=False).double()
    w0 = model.weight.detach().clone()
    mse = lambda out, target: ((out.squeeze(1) - target) ** 2).mean()  # noqa: E731
    etas = [0.01, 0.05, 0.1]
    r = probes.direction_probe(model, x, y, etas, loss_fn=mse)
    w = w0.view(-1)
    g = 2 / 20 * x.T @ (x @ w - y)
    hg = 2 / 20 * x.T @ x @ g
    loss = lambda v: ((x @ v - y) ** 2).mean().item()  # noqa: E731
    losses = [loss(w)] + [loss(w - e * g) for e in etas]
    assert r["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-10)
    assert r["grad_change"] == pytest.approx(0.1 * hg.norm().item(), rel=1e-8)
    assert r["beta"] == pytest.approx((hg.norm() / g.norm()).item(), rel=1e-8)
    assert r["loss_range"] == pytest.approx(max(losses) - min(losses), rel=1e-8)
    assert torch.equal(model.weight, w0)  # the model itself is untouched


def test_direction_probe_leaves_batch_norm_statistics_alone():
    model = build_model("mlp", "batch", hidden=(16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = probes.direction_probe(model, torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,)), [0.1, 0.5])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(math.isfinite(r[k]) and r[k] >= 0 for k in ("loss_range", "grad_change", "beta"))


def test_direction_probe_reports_inf_when_the_loss_blows_up():
    model = nn.Linear(3, 1, bias=False).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    r = probes.direction_probe(model, x, y, [1e200], loss_fn=lambda o, t: ((o.squeeze(1) - t) ** 2).mean())
    assert r["loss_range"] == r["beta"] == float("inf")


def test_drift_probe_records_percentiles_of_the_layer_input():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(2))
        layer.bias.zero_()
    model = nn.Sequential(OrderedDict(fc3=layer, act3=nn.Sigmoid()))
    x = torch.stack([torch.arange(101.0), -torch.arange(101.0)], 1)  # (101, 2)
    probe = probes.DriftProbe(x, layer="act3", every=4)
    for step in range(1, 11):
        probe(step, model)
    r = probe.result()
    assert r["step"] == [1, 4, 8]
    q = np.asarray(r["values"][0])  # (3 quantiles, 2 units)
    assert q.shape == (3, 2)
    np.testing.assert_allclose(q[:, 0], [15, 50, 85], atol=1e-5)
    np.testing.assert_allclose(q[:, 1], [-85, -50, -15], atol=1e-5)


def test_layer_grad_probe_reads_the_gradients_of_first_and_last_layer():
    model = build_model("mlp", "none", hidden=(8, 8))
    F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    probe = probes.LayerGradProbe()
    probe(1, model)
    r = probe.result()
    first = torch.cat([model.fc1.weight.grad.view(-1), model.fc1.bias.grad]).norm().item()
    assert r["first"] == [pytest.approx(first)] and r["step"] == [1] and r["last"][0] > 0


def test_eval_probe_evaluates_at_the_given_steps():
    data = fake_data()
    model = build_model("mlp", "batch", hidden=(16,))
    probe = probes.EvalProbe(data.x_train, data.y_train, at_steps=[3, 5])
    for step in range(1, 7):
        probe(step, model)
    r = probe.result()
    assert r["step"] == [3, 5]
    assert (r["loss"][0], r["acc"][0]) == evaluate(model, data.x_train, data.y_train)
    assert model.training  # evaluation mode only inside the probe


# ---------------------------------------------------------------------------------------------
# the new probes

def test_drift_probe_records_several_layers():
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(2 * torch.eye(2))
        layer.bias.zero_()
    model = nn.Sequential(OrderedDict(fc3=layer, norm3=nn.Identity(), act3=nn.Sigmoid()))
    x = torch.stack([torch.arange(101.0), -torch.arange(101.0)], 1)
    probe = probes.DriftProbe(x, layers=["norm3", "act3"], every=5)
    probe(1, model)
    r = probe.result()
    assert set(r["by_layer"]) == {"norm3", "act3"} and r["values"] == r["by_layer"]["norm3"]
    np.testing.assert_allclose(np.asarray(r["by_layer"]["norm3"][0])[:, 0], [30, 100, 170], atol=1e-4)


def test_grad_rms_probe_divides_each_layer_norm_by_its_size():
    model = build_model("mlp", "batch", hidden=(8, 6))
    F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    probe = probes.GradRMSProbe(every=2)
    for step in (1, 2, 3):
        probe(step, model)
    r = probe.result()
    assert r["layers"] == ["fc1", "fc2", "out"] and r["step"] == [1, 2]
    g = model.fc1.weight.grad
    assert r["rms"][0][0] == pytest.approx((g.norm() / math.sqrt(g.numel())).item())


def test_scale_probe_records_weight_norms_updates_and_input_variances():
    model = build_model("mlp", "layer", hidden=(8, 8))
    x = torch.randn(32, 1, 28, 28)
    probe = probes.ScaleProbe(x, every=2)
    probe(1, model)
    with torch.no_grad():
        model.fc2.weight.mul_(3.0)  # an update that triples fc2's weights: ||dW|| / ||W|| = 2
    probe(2, model)
    r = probe.result()
    assert r["layers"] == ["fc1", "fc2", "out"] and r["norms"] == ["norm1", "norm2"] and r["step"] == [1, 2]
    assert r["update"][1][1] == pytest.approx(2.0) and r["update"][1][0] == 0.0
    assert r["weight_norm"][1][1] == pytest.approx(3 * r["weight_norm"][0][1])
    h = model.fc1(model.flatten(x))
    assert r["var_example"][0][0] == pytest.approx(h.var(1, unbiased=False).mean().item(), rel=1e-5)
    assert r["var_batch"][0][0] == pytest.approx(h.var(0, unbiased=False).mean().item(), rel=1e-5)


def test_batch_stats_probe_evaluates_three_ways():
    data = fake_data()
    bn = build_model("mlp", "batch", hidden=(16,))
    bn.train()
    for _ in range(3):
        bn(data.x_train[:32])  # running statistics of a few batches
    probe = probes.BatchStatsProbe(data.x_val, data.y_val, at_step=5, batch_size=2, large=32)
    probe(4, bn)
    assert probe.result() == {}
    probe(5, bn)
    r = probe.result()
    assert (r["running"]["loss"], r["running"]["acc"]) == evaluate(bn, data.x_val, data.y_val)
    assert r["batch"]["loss"] != r["running"]["loss"] != r["population"]["loss"]
    plain = probes.BatchStatsProbe(data.x_val, data.y_val, at_step=1, batch_size=2)
    plain(1, build_model("mlp", "none", hidden=(16,)))
    assert plain.result()["batch"]["acc"] == pytest.approx(plain.result()["running"]["acc"])  # nothing to differ


# ---------------------------------------------------------------------------------------------
# the measures behind the init-scale study's explanation

def test_participation_ratio_counts_the_directions_the_examples_spread_over():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4000, 6, generator=g, dtype=torch.float64)
    for k in (1, 3, 6):
        z = torch.zeros(4000, 20, dtype=torch.float64)
        z[:, :k] = base[:, :k]  # variance spread evenly over k directions
        assert probes.participation_ratio(z) == pytest.approx(k, rel=0.05)
        assert probes.participation_ratio(1e-6 * z + 5.0) == pytest.approx(probes.participation_ratio(z))  # scale, shift
    line = torch.randn(500, 1, generator=g) * torch.randn(1, 20, generator=g)  # every example on one line
    assert probes.participation_ratio(line) == pytest.approx(1.0, abs=1e-6)
    assert probes.participation_ratio(torch.ones(10, 5)) == 0.0
    uneven = base[:, :2] * torch.tensor([1.0, 0.1], dtype=torch.float64)  # a second direction 100x weaker in variance
    assert 1.0 < probes.participation_ratio(uneven) < 1.05


def test_stable_rank_counts_the_directions_of_a_weight():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=torch.float64))
    for k in (1, 4, 50):
        w = q[:, :k] @ q[:, :k].T  # k orthogonal directions of equal size
        assert probes.stable_rank(w) == pytest.approx(k) and probes.stable_rank(1e-4 * w) == pytest.approx(k)
    signs = torch.sign(torch.randn(50, 1, generator=g)) @ torch.sign(torch.randn(1, 50, generator=g))
    assert probes.stable_rank(signs) == pytest.approx(1.0)  # the sign pattern of an outer product
    assert probes.stable_rank(torch.zeros(3, 3)) == 0.0


def test_scale_probe_sees_a_collapsed_representation():
    torch.manual_seed(0)
    model = build_model("mlp", "layer", hidden=(16, 16))
    x = torch.randn(64, 1, 28, 28)
    probe = probes.ScaleProbe(x, every=1)
    probe(1, model)
    with torch.no_grad():  # fc2 of rank one: layer norm over its output leaves one pattern, up to its sign
        u, v = torch.randn(16, 1), torch.randn(1, 16)
        model.fc2.weight.copy_(u @ v)
        model.fc2.bias.zero_()
    probe(2, model)
    r = probe.result()
    assert r["rep_dims"][0] > 2 and r["rep_dims"][1] == pytest.approx(1.0, abs=1e-3)  # eps bends the line a little
    assert r["stable_rank"][1][1] == pytest.approx(1.0) and r["stable_rank"][1][0] == r["stable_rank"][0][0]
