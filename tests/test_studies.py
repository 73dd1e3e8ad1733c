"""Tests of normlib.studies and normlib.probes: the trainer for custom networks against train(),
the probes on models whose answer is known, the sweep builders, the verdict helpers and the
cached runner. Synthetic data keeps all but one test off the disk."""
import math
from collections import OrderedDict

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from normlib import figures, models, probes, studies
from normlib.data import Splits
from normlib.models import build_model
from normlib.params import ParameterError, positive_float
from normlib.train import History, TrainConfig, evaluate, train
from normlib.trials import Result

matplotlib.use("Agg")


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
# sweeps and verdicts

def test_batch_size_configs_scale_the_learning_rate_and_keep_the_examples_seen():
    configs = studies.batch_size_configs(["batch"], [2, 8, 64], [0], base_lr=0.05, train_size=64, epochs=1,
                                         hidden=(8,), device="cpu")
    assert [c.lr for c in configs] == pytest.approx([0.05 * 2 / 128, 0.05 * 8 / 128, 0.05 * 64 / 128])
    data = fake_data(n=64)
    seen = {studies.examples_seen(train(c, data)) for c in configs}
    assert seen == {64}


def test_sweep_configs_cross_norms_values_and_seeds():
    configs = studies.sweep_configs(["none", "batch"], "init_scale", [0.01, 1.0], [0, 1], optimizer="adam")
    assert len(configs) == 8 and {c.optimizer for c in configs} == {"adam"}
    assert [(c.norm, c.init_scale, c.seed) for c in configs[:3]] == [("none", 0.01, 0), ("none", 0.01, 1),
                                                                     ("none", 1.0, 0)]


def test_compare_says_when_a_difference_is_not_established():
    assert studies.compare([1.0], [2.0], ("a", "b"))["text"].startswith("not established")
    overlap = studies.compare([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], ("a", "b"))
    assert overlap["winner"] == "tie" and "intervals overlap" in overlap["text"]
    clear = studies.compare([0.10, 0.11, 0.12], [0.50, 0.51, 0.52], ("batch", "layer"))
    assert clear["winner"] == "batch" and clear["text"].startswith("batch norm better")
    assert clear["p"] < 1e-4 and clear["g"] < -10
    assert studies.compare([0.1, 0.11, 0.12], [0.5, 0.51, 0.52], ("a", "b"), higher_is_better=True)["winner"] == "b"


def sweep(errors, x="batch_size"):
    """A trials table from {(norm, x): [error per seed]}."""
    rows = [{"norm": n, x: v, "seed": s, "val_error": e, "diverged": not math.isfinite(e)}
            for (n, v), errs in errors.items() for s, e in enumerate(errs)]
    return pd.DataFrame(rows)


BS = sweep({("batch", 2): [0.60, 0.62, 0.61], ("batch", 32): [0.20, 0.21, 0.19], ("batch", 256): [0.20, 0.22, 0.21],
            ("layer", 2): [0.20, 0.21, 0.22], ("layer", 32): [0.21, 0.20, 0.22], ("layer", 256): [0.30, 0.31, 0.32],
            ("none", 2): [0.3, 0.31, 0.29], ("none", 32): [0.3, 0.3, 0.31], ("none", 256): [0.4, 0.41, 0.39]})


def test_worse_points_and_rise_against_own_best():
    assert studies.worse_points(BS, "batch_size", "val_error", "batch", "layer") == [2]
    assert studies.worse_points(BS, "batch_size", "val_error", "layer", "batch") == [256]
    assert studies.worse_than_own_best(BS, "batch_size", "val_error", "batch") == [2]
    assert studies.worse_than_own_best(BS, "batch_size", "val_error", "layer") == [256]


def test_batch_size_findings_glue_keys_do_not_depend_on_the_sweep():
    out = studies.batch_size_findings(BS)
    assert out["bs_where_bn_worse_than_ln"] == "2" and out["bs_small"] == 2 and out["bs_large"] == 256
    assert out["batch_error_small"].startswith("61.00%")
    assert "established above its best at batch size 2" in out["bn_trend"]
    other = studies.batch_size_findings(BS[BS["batch_size"] != 32].replace({"batch_size": {2: 4}}))
    assert set(other) == set(out)


def test_good_points_exclude_diverged_and_weak_learning_rates():
    t = sweep({("none", 0.1): [0.8, 0.82], ("none", 1.0): [0.3, 0.2], ("none", 10.0): [float("nan"), 0.1],
               ("batch", 0.1): [0.8, 0.8], ("batch", 1.0): [0.7, 0.72], ("batch", 10.0): [0.6, 0.65]}, x="lr")
    t = t.rename(columns={"val_error": "final_val_acc"})
    assert studies.good_points(t, "lr", "none") == [0.1, 1.0]
    assert studies.good_points(t, "lr", "none", "final_val_acc", 0.5) == [0.1]
    assert studies.list_text([0.1, 1.0, 10.0]) == "0.1, 1 and 10" and studies.list_text([]) == "none"


def test_learning_rate_findings():
    t = sweep({(n, lr): accs for n, table in
               {"none": {0.1: [0.8, 0.82, 0.81], 1.0: [0.3, 0.2, 0.25], 10.0: [float("nan")] * 3},
                "batch": {0.1: [0.85, 0.86, 0.87], 1.0: [0.7, 0.72, 0.71], 10.0: [0.6, 0.65, float("nan")]},
                "layer": {0.1: [0.8, 0.8, 0.8], 1.0: [0.6, 0.6, 0.61], 10.0: [0.1, 0.1, 0.1]}}.items()
               for lr, accs in table.items()}, x="lr").rename(columns={"val_error": "final_val_acc"})
    out = studies.learning_rate_findings(t, 0.5)
    assert out["max_stable_lr_none"] == 1.0 and out["min_diverged_lr_none_text"] == "10"
    assert out["max_trained_lr_none"] == 0.1 and out["max_trained_lr_batch"] == 1.0
    assert out["max_stable_lr_layer_text"].startswith("10 (top of the sweep")
    assert out["stable_lr_ratio_batch"] == 1.0 and out["stable_lr_ratio_layer"] == 10.0
    assert out["stable_lr_ratio_batch_text"] == "the same as"
    assert out["stable_lr_ratio_layer_text"] == "at least 10 times (its limit lies above the sweep)"
    assert out["lr_compared"] == 1.0 and out["at_none_max_lr_batch_vs_none"].startswith("batch norm better")


def test_claim_batch_size_reads_the_three_comparisons():
    out = studies.claim_batch_size(BS[BS["norm"] != "none"])
    # batch norm: better at 256 than at 2 (supported); layer beats batch at 2 (supported);
    # at 256 batch beats layer (supported)
    assert out["claim_batch_verdict"].startswith("supported for")
    assert out["claim_batch_small"] == 2 and out["claim_batch_large"] == 256
    flat = sweep({("batch", 2): [0.2, 0.21, 0.22], ("batch", 256): [0.2, 0.22, 0.21],
                  ("layer", 2): [0.2, 0.22, 0.21], ("layer", 256): [0.21, 0.2, 0.22]})
    assert studies.claim_batch_size(flat)["claim_batch_verdict"].startswith("not established")


def test_outcome_wording():
    assert studies.outcome([], []).startswith("not established")
    assert studies.outcome(["a"], []) == "supported for a"
    assert studies.outcome([], ["a", "b"]) == "contradicted for a and b"
    assert studies.outcome(["a"], ["b"]).startswith("mixed")
    assert studies.outcome(["x"], [], yes="smoother in") == "smoother in x"


def test_validate_study_names_the_parameter():
    assert studies.validate_study({"seeds": [0], "base_lr": 1}, {"base_lr": positive_float})["base_lr"] == 1.0
    with pytest.raises(ParameterError, match="parameter 'base_lr' = -1: must be a positive number"):
        studies.validate_study({"seeds": [0], "base_lr": -1}, {"base_lr": positive_float})
    with pytest.raises(ParameterError, match="parameter 'acc_threshold'"):
        studies.validate_study({"acc_threshold": 1.5}, {"acc_threshold": studies.unit_interval})


# ---------------------------------------------------------------------------------------------
# tables from probed trials

def probed(norm, seed, probe, diverged=False):
    h = History(config={"norm": norm, "seed": seed, "activation": "relu", "norm_position": "before"},
                val_acc=[0.5], val_loss=[1.0], diverged=diverged)
    return Result(h, probe)


def test_drift_table_measures_the_shift_of_the_median_over_units():
    # two units; the median of unit 0 moves 0 -> 2, of unit 1 stays; spreads double / stay
    values = [[[-1, -1], [0, 0], [1, 1]], [[0, -1], [1, 0], [2, 1]], [[0, -1], [2, 0], [4, 1]]]
    t = studies.drift_table([probed("none", 0, {"step": [1, 5, 9], "quantiles": [0.15, 0.5, 0.85], "values": values})])
    r = t.iloc[0]
    assert r["median_shift"] == pytest.approx(1.0)        # (2 + 0) / 2
    assert r["late_median_shift"] == pytest.approx(0.5)   # (|2 - 1| + 0) / 2
    assert r["spread_change"] == pytest.approx(math.log(2) / 2)
    frame = studies.drift_frame([probed("none", 0, {"step": [1, 5, 9], "quantiles": [0.15, 0.5, 0.85],
                                                    "values": values})], unit=0)
    assert len(frame) == 9 and frame.query("step == 9 and quantile == 0.5")["value"].item() == 2


def test_landscape_table_takes_medians_and_keeps_inf_as_largest():
    rec = {"step": [5, 10, 15], "loss": [2, 1, 1], "grad_norm": [1, 1, 1], "loss_range": [0.1, 0.3, float("inf")],
           "grad_change": [1, 2, 3], "beta": [4, 5, 6]}
    t = studies.landscape_table([probed("batch", 0, rec)])
    assert t.iloc[0]["loss_range"] == pytest.approx(0.3) and t.iloc[0]["beta"] == 5
    assert studies.landscape_frame([probed("batch", 0, rec)])["loss_range"].isna().sum() == 1


def test_claim_position_decides_on_gradient_imbalance():
    rows = [{"norm": "batch", "activation": "sigmoid", "position": pos, "seed": s, "final_val_acc": 0.8 + 0.01 * s,
             "grad_imbalance": base + 0.01 * s, "diverged": False}
            for pos, base in (("before", 0.1), ("after", 0.9)) for s in range(3)]
    table, glued = studies.claim_position(pd.DataFrame(rows))
    assert glued["claim_position_verdict"].startswith("contradicted (a smaller gradient imbalance")
    assert glued["claim_position_verdict"].endswith("for batch norm with sigmoid")
    assert glued["claim_position_batch_sigmoid_grad"].startswith("the norm before the activation better")
    assert glued["claim_position_largest_factor"] == pytest.approx(10 ** 0.91) and len(table) == 1


def test_claim_together_flags_a_larger_gap_as_overfitting():
    rows = [{"norm": n, "seed": s, "final_val_acc": acc + 0.001 * s, "gap": gap + 0.001 * s}
            for n, acc, gap in (("batch", 0.80, 0.1), ("layer", 0.79, 0.1), ("batch+layer", 0.80, 0.5))
            for s in range(3)]
    out = studies.claim_together(pd.DataFrame(rows))
    assert out["claim_together_overfit"].startswith("supported: the pair's gap is larger")
    assert out["claim_together_unnecessary"].startswith("consistent with the claim")
    assert out["claim_together_best_single"] == "batch norm"
    half = pd.DataFrame(rows).assign(gap=lambda d: d["gap"].where(d["norm"] != "batch", d["gap"] + 0.4))
    assert studies.claim_together(half)["claim_together_overfit"].startswith("not established: the pair's gap is")


# ---------------------------------------------------------------------------------------------
# figures of the studies

def test_study_figures_draw():
    t = BS.assign(best_val_acc=1 - BS["val_error"], final_train_loss=BS["val_error"] * 3)
    for fig in (figures.panels(t, "batch_size", ["best_val_acc", "final_train_loss"], logx=True,
                               logy=("final_train_loss",), diverged="diverged"),
                figures.points(t, "batch_size", "val_error"),
                figures.points(t, "norm", "val_error", order=["batch", "layer"])):
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes[0].get_ylabel()
    values = [[[-1, -1], [0, 0], [1, 1]]] * 3
    frame = studies.drift_frame([probed("none", 0, {"step": [1, 2, 3], "quantiles": [0.15, 0.5, 0.85],
                                                    "values": values}),
                                 probed("batch", 0, {"step": [1, 2, 3], "quantiles": [0.15, 0.5, 0.85],
                                                     "values": values})])
    assert len(figures.percentile_traces(frame).axes) == 2


def test_compare_without_spread_names_no_effect_size():
    """Seeds that agree exactly (runs at chance level) give no Hedges' g, and a tiny p is floored."""
    c = studies.compare([0.1, 0.1, 0.1], [0.8, 0.81, 0.82], ("none", "layer"), higher_is_better=True)
    assert c["winner"] == "layer"
    assert "Hedges' g undefined (no spread within the conditions)" not in c["text"]  # one side has spread
    c = studies.compare([0.1, 0.1, 0.1], [0.8 + 1e-14, 0.8, 0.8 - 1e-14], ("none", "layer"), higher_is_better=True)
    assert c["text"] == "layer norm better (Welch p < 1e-06, Hedges' g undefined (no spread within the conditions))"
