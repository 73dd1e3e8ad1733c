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
# the verdict rows and families

def spread_around(centre, n=5, width=0.01):
    return list(centre + width * np.linspace(-1, 1, n))


def test_difference_is_supported_contradicted_or_not_established():
    f = studies.family([studies.difference("up", "a higher", spread_around(0.5), spread_around(0.3), predicted=1),
                        studies.difference("down", "a lower", spread_around(0.5), spread_around(0.3), predicted=-1),
                        studies.difference("tie", "a higher", spread_around(0.5, width=0.3), spread_around(0.45),
                                           predicted=1)])
    assert list(f["verdict"]) == ["supported", "contradicted", "not established"]
    assert f.iloc[0]["text"].startswith("supported (+20.0 [") and "Holm p" in f.iloc[0]["text"]
    assert (f["p_holm"] >= f["p"]).all()


def test_holm_can_take_a_verdict_away():
    one = [studies.difference("x", "q", spread_around(0.50, width=0.02), spread_around(0.47, width=0.02))]
    alone = studies.family(one)
    many = studies.family(one + [studies.difference(f"n{i}", "q", spread_around(0.5), spread_around(0.5))
                                 for i in range(20)])
    assert alone.iloc[0]["verdict"] == "supported" and many.iloc[0]["verdict"] == "not established"


def test_too_few_seeds_is_not_established():
    f = studies.family([studies.difference("x", "q", [0.9, 0.91], [0.1, 0.11])])
    assert f.iloc[0]["verdict"] == "not established" and "a test needs 3" in f.iloc[0]["text"]


def test_equivalence_needs_the_interval_inside_the_margin():
    close = studies.equivalence("eq", "same", spread_around(0.300), spread_around(0.305), margin=0.03)
    far = studies.equivalence("eq", "same", spread_around(0.30), spread_around(0.36), margin=0.03)
    wide = studies.equivalence("eq", "same", spread_around(0.30, width=0.2), spread_around(0.30, width=0.2), 0.03)
    f = studies.family([close, far, wide])
    assert list(f["verdict"]) == ["supported", "not established", "not established"]
    assert "TOST, margin ±3.0 points" in f.iloc[0]["text"]


def test_noninferiority_is_one_sided():
    better = studies.noninferior("ni", "a no worse", spread_around(0.20), spread_around(0.30), margin=0.02)
    worse = studies.noninferior("ni", "a no worse", spread_around(0.35), spread_around(0.30), margin=0.02)
    f = studies.family([better, worse])
    assert list(f["verdict"]) == ["supported", "not established"]


def test_paired_test_reads_the_differences_of_the_same_runs():
    a = [0.5, 0.6, 0.7, 0.8, 0.9]
    r = studies.paired("m", "q", a, [v - 0.1 + 0.001 * i for i, v in enumerate(a)])
    assert r["estimate"] == pytest.approx(0.098) and r["p"] < 0.001
    # the same numbers as unpaired groups would not separate
    assert studies.difference("m", "q", a, [v - 0.1 for v in a])["p"] > 0.05


def test_family_table_and_glue_keys():
    f = studies.family([studies.difference("k", "question", spread_around(0.5), spread_around(0.3))])
    t = studies.family_table(f)
    assert list(t.columns) == ["question", "test", "estimate [interval]", "n", "p", "Holm p", "verdict"]
    assert t.iloc[0]["n"] == "5 vs 5"


# ---------------------------------------------------------------------------------------------
# batch size

def bs_table(bn_small=0.5, ln_small=0.2, none_small=0.2, large=0.2, running_minus_batch=0.3, n=5):
    rows = []
    for k, (norm, small) in enumerate((("none", none_small), ("batch", bn_small), ("layer", ln_small))):
        for j, (bs, err) in enumerate(((2, small), (32, large))):
            for s in range(n):
                e = err + 0.004 * ((s * (1 + k + 2 * j)) % n - 2)  # seed noise that differs between conditions
                rows.append({"norm": norm, "batch_size": bs, "seed": s, "lr": 0.1, "steps": 100, "val_error": e,
                             "batch_stats_error": e - running_minus_batch + 0.002 * s, "population_error": e,
                             "setback": 0.01 * s, "diverged": False})
    return pd.DataFrame(rows)


def test_batch_size_verdicts_move_with_what_they_claim():
    f = studies.batch_size_family(bs_table(), margin=0.03).set_index("key")
    assert f.loc["bs_bn_collapse", "verdict"] == "supported"
    assert f.loc["bs_ln_flat", "verdict"] == "supported"
    assert f.loc["bs_bn_mechanism", "verdict"] == "supported"
    # batch norm no worse than the control: no collapse; layer norm rising by 10 points: not flat
    f = studies.batch_size_family(bs_table(bn_small=0.2, ln_small=0.3), margin=0.03).set_index("key")
    assert f.loc["bs_bn_collapse", "verdict"] == "not established"
    assert f.loc["bs_ln_flat", "verdict"] == "not established"
    # the control rising with layer norm: flat relative to it
    f = studies.batch_size_family(bs_table(ln_small=0.3, none_small=0.3), margin=0.03).set_index("key")
    assert f.loc["bs_ln_flat", "verdict"] == "supported"
    # batch statistics worse than running ones: the mechanism is contradicted
    f = studies.batch_size_family(bs_table(running_minus_batch=-0.2), margin=0.03).set_index("key")
    assert f.loc["bs_bn_mechanism", "verdict"] == "contradicted"


def test_batch_size_trials_scale_the_learning_rate_and_keep_the_examples():
    P = {"seeds": [0], "batch_sizes": [8, 2, 32], "train_size": 64, "val_size": 64, "epochs": 1, "base_lr": 0.1,
         "hidden": [8], "evals_per_epoch": 2, "impl": "custom"}
    trials = studies.batch_size_trials(P)
    assert len(trials) == 9 and {t.probe for t in trials} == {"batch_stats"}
    assert [t.config.lr for t in trials[:3]] == pytest.approx([0.1 * 2 / 32, 0.1 * 8 / 32, 0.1])
    seen = {len(train(replace_device(t.config), fake_data(n=64)).step_loss) * t.config.batch_size for t in trials[:3]}
    assert seen == {64}


def replace_device(config):
    from dataclasses import replace
    return replace(config, device="cpu")


def test_per_seed_differences_pair_runs_by_seed():
    t = bs_table()
    d = studies.per_seed_differences(t, "val_error", "batch", "none", {"batch_size": 2})
    by_seed = t[t["batch_size"] == 2].pivot(index="seed", columns="norm", values="val_error")
    assert d == pytest.approx(list(by_seed["batch"] - by_seed["none"])) and np.mean(d) == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------
# learning rate

def lr_history(norm, lr, seed, acc, diverged=False):
    return History(config={"norm": norm, "lr": lr, "seed": seed, "epochs": 1, "max_steps": 0, "evals_per_epoch": 1},
                   val_loss=[] if diverged else [1.0 - acc], val_acc=[] if diverged else [acc], eval_step=[] if diverged
                   else [10], steps_per_epoch=10, diverged=diverged, diverged_step=3 if diverged else None)


def lr_runs():
    hs = []
    for seed in (0, 1, 2):
        for lr in (0.1, 1.0, 3.0):
            hs.append(lr_history("none", lr, seed, 0.85, diverged=lr > 0.1))
            hs.append(lr_history("batch", lr, seed, {0.1: 0.86, 1.0: 0.87, 3.0: 0.80}[lr] + 0.001 * seed))
            hs.append(lr_history("layer", lr, seed, {0.1: 0.85, 1.0: 0.11, 3.0: 0.10}[lr]))
    return hs


def test_learning_rate_table_marks_failed_and_stuck_runs():
    t = studies.learning_rate_table(lr_runs(), threshold=0.7)
    none_hi = t[(t["norm"] == "none") & (t["lr"] == 3.0)]
    assert none_hi["failed"].all() and (none_hi["final_val_acc"] == 0.1).all() and not none_hi["trains"].any()
    assert t[(t["norm"] == "layer") & (t["lr"] == 3.0)]["stuck"].all()


def test_learning_rate_findings_best_near_and_usable_rates():
    out = studies.learning_rate_findings(studies.learning_rate_table(lr_runs(), 0.7), margin=0.02)
    assert out["lr_best_batch"] == 1.0 and out["lr_near_batch"] == "0.1 and 1"
    assert out["lr_usable_batch"] == "0.1, 1 and 3" and out["lr_top_batch"].startswith("3 (the top of the grid")
    assert out["lr_usable_none"] == "0.1" and out["lr_failed_none"] == 6
    assert out["lr_usable_layer"] == "0.1" and out["lr_stuck_layer"] == 6
    assert out["lr_ratio_batch"] == "at least 30 times (its limit lies above the grid)"
    assert out["lr_ratio_layer"] == "1 times"


def test_learning_rate_family_counts_runs_that_train_above_the_grid():
    f = studies.learning_rate_family(studies.learning_rate_table(lr_runs(), 0.7), extra_lrs=[1.0, 3.0]).set_index("key")
    assert f.loc["lr_higher_batch", "verdict"] == "supported"  # 6 of 6 against 0 of 6
    assert f.loc["lr_higher_layer", "verdict"] == "not established"  # 0 of 6 against 0 of 6


def test_learning_rate_configs_are_the_main_comparisons_tuning_configs(tmp_path, monkeypatch):
    from normlib import protocol
    monkeypatch.setenv("NORMLIB_RESULTS", str(tmp_path))
    proto = protocol.Protocol(archs=("mlp", "cnn"), tuning_seeds=(100, 101), lrs=(0.03, 0.1), train_size=1000)
    for source, norm in (("step1_bn_training", "batch"), ("step3_ln_training", "layer")):
        protocol.write_record(source, proto, ("none", norm), {})
    configs, _, shared = studies.learning_rate_configs({"arch": "mlp", "extra_lrs": [1.0], "extra_seeds": [7]})
    assert len(configs) == 3 * (2 * 2 + 3) and shared == 3 * 2 * 2  # the extra seed only at the extra rate
    assert {c.seed for c in configs if c.lr == 1.0} == {100, 101, 7} and 7 not in {c.seed for c in configs if c.lr < 1}
    first_rung = set(proto.rung({(a, n): proto.lrs for a in proto.archs for n in ("none", "batch", "layer")},
                                proto.tuning_budgets[0]))
    assert {c for c in configs if c.lr in (0.03, 0.1) and c.seed in (100, 101)} <= first_rung
    assert {c.max_steps for c in configs} == {first_rung.pop().max_steps}  # every rate at the first rung's budget
    assert {c.arch for c in configs} == {"mlp"}


# ---------------------------------------------------------------------------------------------
# initialization scale

def init_table(rows):
    return pd.DataFrame([{"norm": n, "init_scale": s, "eps": e, "seed": i, "best_val_acc": acc + 0.005 * i,
                          "diverged": False} for n, s, e, acc in rows for i in range(5)])


def test_init_scale_family_trains_fails_and_undecided():
    t = init_table([("none", 1e-4, 1e-5, 0.1), ("none", 1.0, 1e-5, 0.8), ("batch", 1e-4, 1e-5, 0.8),
                    ("batch", 1.0, 1e-5, 0.2), ("layer", 1e-4, 1e-5, 0.2), ("layer", 1.0, 1e-5, 0.8),
                    ("layer", 1e-4, 1e-9, 0.8)])
    t.loc[(t["norm"] == "layer") & (t["init_scale"] == 1.0), "best_val_acc"] = [0.2, 0.8, 0.5, 0.9, 0.1]
    f = studies.init_scale_family(t, 0.5, 1e-5)
    status = studies.init_scale_status(f, t, 1e-5)
    assert status["init_trains_none"] == "1" and status["init_fails_none"] == "0.0001"
    assert status["init_trains_batch"] == "0.0001" and status["init_fails_batch"] == "1"
    assert status["init_undecided_layer"] == "1"  # a mean near the threshold with spread: undecided
    eps = f.set_index("key").loc["init_eps_layer_0p0001_1em09"]
    assert eps["verdict"] == "supported" and eps["estimate"] == pytest.approx(0.6)


def test_init_scale_margin_keeps_a_mean_near_the_threshold_undecided():
    t = init_table([("batch", 1e-4, 1e-5, 0.53), ("batch", 1.0, 1e-5, 0.62)])
    plain = studies.init_scale_status(studies.init_scale_family(t, 0.5, 1e-5), t, 1e-5)
    zoned = studies.init_scale_status(studies.init_scale_family(t, 0.5, 1e-5, margin=0.05), t, 1e-5)
    assert plain["init_trains_batch"] == "0.0001 and 1"
    assert zoned["init_trains_batch"] == "1" and zoned["init_undecided_batch"] == "0.0001"


def test_init_scale_table_reads_the_probe():
    p = {"update": [[np.nan] * 3, [0.1, 0.3, 9.0], [0.1, 0.3, 9.0]], "weight_norm": [[1, 2, 5], [2, 2, 5], [3, 4, 5]],
         "var_example": [[1e-5, 1e-6]] * 3, "var_batch": [[1.0, 1.0]] * 3, "layers": ["fc1", "fc2", "out"],
         "norms": ["norm1", "norm2"], "step": [1, 2, 3], "rep_dims": [9.0, 2.0, 1.5],
         "stable_rank": [[5, 5, 5], [5, 4, 5], [7, 2.5, 1]]}
    h = History(config={"norm": "layer", "norm_eps": 1e-5, "init_scale": 1e-4, "seed": 0, "epochs": 1,
                        "max_steps": 0, "evals_per_epoch": 1}, val_acc=[0.3], val_loss=[2.0], eval_step=[3],
                train_loss=[2.0], steps_per_epoch=3)
    r = studies.init_scale_table([Result(h, p)]).iloc[0]
    assert r["effective_step"] == pytest.approx(0.2)  # hidden layers only, records after the first
    assert r["weight_growth"] == pytest.approx((3 + 2) / 2)
    assert r["signal_kept_first"] == pytest.approx(0.5) and r["signal_kept_deep"] == pytest.approx(1e-6 / 1.1e-5)
    assert r["rep_dims"] == 1.5 and r["weight_rank"] == 2.5  # the last record; hidden-to-hidden weights only


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


# ---------------------------------------------------------------------------------------------
# drift, landscape

def probed(norm, seed, probe, diverged=False, **config):
    h = History(config={"norm": norm, "seed": seed, "activation": "relu", "norm_position": "before", "epochs": 1,
                        "max_steps": 0, "evals_per_epoch": 1, **config},
                val_acc=[0.5], val_loss=[1.0], eval_step=[10], steps_per_epoch=10, diverged=diverged)
    return Result(h, probe)


def test_drift_measures_are_in_units_of_the_mean_spread():
    # two units; unit 0's median moves 0 -> 2 with spreads 2, 2, 4 (mean 8/3); unit 1 stays
    values = [[[-1, -1], [0, 0], [1, 1]], [[0, -1], [1, 0], [2, 1]], [[0, -1], [2, 0], [4, 1]]]
    m = studies.drift_measures(values)
    assert m["median_shift"] == pytest.approx((2 / (8 / 3) + 0) / 2)
    assert m["spread_change"] == pytest.approx(math.log(2) / 2)
    rec = {"step": [1, 5, 9], "quantiles": [0.15, 0.5, 0.85], "layer": "norm3", "values": values,
           "by_layer": {"norm3": values, "act3": values}}
    t = studies.drift_table([probed("none", 0, rec)])
    assert list(t["layer"]) == ["norm3", "act3"]
    frame = studies.drift_frame([probed("none", 0, rec)], unit=0, layer="act3")
    assert len(frame) == 9 and frame.query("step == 9 and quantile == 0.5")["value"].item() == 2


def test_drift_family_compares_the_input_to_the_normalization():
    rows = [{"norm": n, "seed": s, "layer": layer, "median_shift": shift + 0.01 * s, "spread_change": 0.5 + 0.01 * s}
            for n, shift in (("none", 1.0), ("batch", 0.2), ("layer", 1.0)) for s in range(5)
            for layer in ("norm3", "act3")]
    t = pd.DataFrame(rows)
    t.loc[(t["layer"] == "act3") & (t["norm"] == "layer"), "median_shift"] = 0.0  # ignored: not the norm's input
    f = studies.drift_family(t).set_index("key")
    assert f.loc["drift_median_shift_batch", "verdict"] == "supported"
    assert f.loc["drift_median_shift_layer", "verdict"] == "not established"
    assert f.loc["drift_spread_change_batch", "verdict"] == "not established"


def test_landscape_table_takes_medians_and_keeps_inf_as_largest():
    rec = {"step": [5, 10, 15], "loss": [2, 1, 1], "grad_norm": [1, 1, 1], "loss_range": [0.1, 0.3, float("inf")],
           "grad_change": [1, 2, 3], "beta": [4, 5, 6]}
    t = studies.landscape_table([probed("batch", 0, rec)])
    assert t.iloc[0]["loss_range"] == pytest.approx(0.3) and t.iloc[0]["beta"] == 5
    assert studies.landscape_frame([probed("batch", 0, rec)])["loss_range"].isna().sum() == 1


def test_landscape_family_on_a_log_scale():
    rows = [{"norm": n, "seed": s, "diverged": False, "loss_range": v * (1 + 0.01 * s), "grad_change": 1.0 + 0.01 * s,
             "beta": 1.0 + 0.01 * s} for n, v in (("none", 1.0), ("batch", 0.1), ("layer", 10.0)) for s in range(5)]
    f = studies.landscape_family(pd.DataFrame(rows)).set_index("key")
    assert f.loc["landscape_loss_range_batch", "verdict"] == "supported"
    assert f.loc["landscape_loss_range_layer", "verdict"] == "contradicted"
    assert f.loc["landscape_beta_batch", "verdict"] == "not established"


# ---------------------------------------------------------------------------------------------
# the tutorial's claims

def grad_rows(spreads):
    return pd.DataFrame([{"norm": n, "activation": a, "position": pos, "seed": s, "grad_spread": v + 0.01 * s,
                          "val_error": err + 0.002 * s, "diverged": False}
                         for (n, a, pos), (v, err) in spreads.items() for s in range(5)])


def test_gradient_table_reads_the_spread_across_layers():
    rec = {"step": [1, 2, 3], "rms": [[1.0, 0.1, 0.5], [2.0, 0.2, 1.0], [4.0, 1.0, 1.0]], "layers": ["fc1", "fc2", "out"]}
    t = studies.gradient_table([probed("batch", 0, rec)])
    assert t.iloc[0]["grad_spread"] == pytest.approx(1.0)  # median of log10(10, 10, 4)
    assert t.iloc[0]["first_over_last"] == pytest.approx(2.0)


def test_claim_position_needs_a_spread_beyond_the_factor():
    t = grad_rows({("batch", "relu", "before"): (0.2, 0.1), ("batch", "relu", "after"): (0.19, 0.1),
                   ("layer", "relu", "before"): (1.5, 0.1), ("layer", "relu", "after"): (0.1, 0.1)})
    f = studies.family(studies.position_rows(t, factor=10)).set_index("key")
    assert f.loc["claim_position_batch_relu", "verdict"] == "contradicted"  # a spread of 10^0.2: no issue
    assert f.loc["claim_position_layer_relu", "verdict"] == "supported"     # 10^1.5 > 10
    assert f.loc["claim_position_layer_relu_vs_after", "verdict"] == "supported"
    words = studies.claim_words(studies.family(studies.position_rows(t, 10)), "claim_position_",
                                {"batch_relu": "batch norm with relu", "layer_relu": "layer norm with relu"}, "yes", "no")
    assert words == "yes layer norm with relu; no batch norm with relu"
    assert studies.claim_words(studies.family(studies.position_rows(t, 10)), "claim_position_",
                               {"batch_relu": "A", "layer_relu": "B", "batch_relu_vs_after": "C"}, "yes", "no") \
        == "yes B; no A; not established for C"


def test_spread_values_name_the_largest_normalized_spread_and_the_controls():
    t = grad_rows({("batch", "relu", "before"): (0.5, 0.1), ("layer", "relu", "after"): (1.0, 0.1),
                   ("none", "relu", "before"): (2.0, 0.1), ("none", "sigmoid", "before"): (0.3, 0.1)})
    v = studies.spread_values(t)
    assert v["claims_largest_spread_condition"] == "layer norm after relu"
    assert v["claims_largest_spread"] == pytest.approx(10 ** 1.02)  # the mean of log10 over seeds 0..4
    assert v["claims_spread_none_relu"] == pytest.approx(10 ** 2.02)
    f = studies.family([studies.difference("claim_x_a", "q", spread_around(0.5, width=0.3), spread_around(0.5))])
    assert studies.claim_words(f, "claim_x_", {"a": "A"}, "yes", "no") == "not established for any case (A)"
    assert studies.claim_words(f, "claim_y_", {"a": "A"}, "yes", "no") == "not established"


def test_claim_activation_is_non_inferiority():
    t = grad_rows({("none", "tanh", "before"): (0.1, 0.20), ("batch", "tanh", "before"): (0.1, 0.21),
                   ("layer", "tanh", "before"): (0.1, 0.30)})
    f = studies.family(studies.activation_rows(t, margin=0.03)).set_index("key")
    assert f.loc["claim_activation_batch_tanh", "verdict"] == "supported"
    assert f.loc["claim_activation_layer_tanh", "verdict"] == "not established"


def gap_rows(spec):
    return pd.DataFrame([{"condition": c, "norm": c.split("+")[0], "seed": s, "val_error": err + 0.002 * s,
                          "gap": gap + 0.002 * s} for c, (err, gap) in spec.items() for s in range(5)])


def test_claim_together_unnecessary_and_overfit():
    f = studies.family(studies.together_rows(gap_rows({"batch": (0.20, 0.1), "layer": (0.25, 0.1),
                                                      "batch+layer": (0.20, 0.3)}), margin=0.02)).set_index("key")
    assert f.loc["claim_together_unnecessary_batch", "verdict"] == "supported"     # no gain over batch norm
    assert f.loc["claim_together_unnecessary_layer", "verdict"] == "not established"  # the pair beats layer norm
    assert f.loc["claim_together_overfit_batch", "verdict"] == "supported"
    f = studies.family(studies.together_rows(gap_rows({"batch": (0.20, 0.3), "layer": (0.20, 0.3),
                                                      "batch+layer": (0.10, 0.1)}), margin=0.02)).set_index("key")
    assert f.loc["claim_together_unnecessary_batch", "verdict"] == "not established"  # the pair gains 10 points
    assert f.loc["claim_together_overfit_batch", "verdict"] == "contradicted"


def test_batch_claims_read_the_batch_size_runs():
    f = studies.family(studies.batch_claim_rows(bs_table())).set_index("key")
    assert f.loc["claim_batch_bn_large", "verdict"] == "supported"
    assert f.loc["claim_batch_ln_small", "verdict"] == "supported"
    assert f.loc["claim_batch_bn_at_large", "verdict"] == "not established"
    assert f.loc["claim_small_unstable_batch", "verdict"] == "not established"  # same setbacks as the control


def regularization_runs(dropout_error):
    """Five seeds per norm and regularizer: weight decay changes nothing, dropout shrinks the gap to 0.1
    and gives `dropout_error` (against 0.30)."""
    rows = []
    for n in ("none", "batch", "layer"):
        for reg, err, gap in (("none", 0.30, 0.4), ("weight decay", 0.30, 0.4), ("dropout", dropout_error, 0.1)):
            rows += [{"norm": n, "condition": reg, "seed": s, "val_error": err + 0.002 * s, "gap": gap + 0.002 * s}
                     for s in range(5)]
    return pd.DataFrame(rows)


def test_regularization_family_asks_whether_a_regularizer_still_helps():
    f = studies.regularization_family(regularization_runs(0.25)).set_index("key")
    assert f.loc["reg_batch_dropout_error", "verdict"] == "supported"
    assert f.loc["reg_layer_dropout_gap", "verdict"] == "supported"
    assert f.loc["reg_batch_weight_decay_error", "verdict"] == "not established"


def test_regularization_words_name_each_measure():
    f = studies.regularization_family(regularization_runs(0.30))
    assert studies.regularization_words(f, "batch") == ("validation error: no regularizer is established to help; "
                                                        "generalization gap narrowed by dropout")


def test_regularization_trials_set_one_regularizer_at_a_time():
    P = {"seeds": [0], "train_size": 100, "val_size": 100, "epochs": 1, "batch_size": 10, "lr": 0.1, "hidden": [8],
         "weight_decay": 1e-3, "dropout": 0.2, "impl": "custom"}
    trials = studies.regularization_trials(P)
    assert [(t.config.weight_decay, t.config.dropout) for t in trials[:3]] == [(0.0, 0.0), (1e-3, 0.0), (0.0, 0.2)]
    assert [studies.regularizer_of(t) for t in trials[:3]] == list(studies.REGULARIZERS)


def test_recurrent_family():
    t = pd.DataFrame([{"norm": n, "seed": s, "val_error": e + 0.003 * s} for n, e in
                      (("none", 0.4), ("layer", 0.3), ("batch", 0.3)) for s in range(5)])
    f = studies.recurrent_family(t).set_index("key")
    assert f.loc["rnn_ln_vs_none", "verdict"] == "supported"
    assert f.loc["rnn_ln_vs_bn", "verdict"] == "not established"
    assert f.loc["rnn_bn_vs_none", "verdict"] == "supported"
    trials = studies.recurrent_trials({"seeds": [0, 1], "rnn_hidden": 16, "train_size": 64, "val_size": 64, "batch_size": 32})
    assert {t.model for t in trials} == {"rnn"} and {t.config.hidden for t in trials} == {(16,)}


# ---------------------------------------------------------------------------------------------
# figures, and the pages' text

def test_study_figures_draw():
    t = bs_table()
    for fig in (figures.sweep(t, "batch_size", "val_error", diverged="diverged", hline=0.3),
                figures.statistics_modes(t[t["norm"] == "batch"]),
                figures.points(t, "batch_size", "val_error", hline=0.1),
                figures.points(t.melt(id_vars=["norm", "seed"], value_vars=["val_error", "setback"], var_name="m"),
                               "norm", "value", col="m", sharey=False)):
        assert isinstance(fig, matplotlib.figure.Figure) and fig.axes[0].get_ylabel()
    values = [[[-1, -1], [0, 0], [1, 1]]] * 3
    rec = {"step": [1, 2, 3], "quantiles": [0.15, 0.5, 0.85], "layer": "norm3", "values": values,
           "by_layer": {"norm3": values, "act3": values}}
    frame = pd.concat([studies.drift_frame([probed(n, 0, rec)], 0, layer) for n in ("none", "batch")
                       for layer in ("norm3", "act3")])
    assert len(figures.percentile_grid(frame, studies.DRIFT_LAYERS).axes) == 4


NUMBER_WORDS = r"(?:\d+|one|two|three|four|five|six|seven|eight|nine|ten|twelve|twenty)"


def test_no_study_page_types_a_count_of_seeds():
    """Seed counts on the study pages are glued from the runs: a typed "three seeds" goes stale when a
    profile changes the seeds."""
    import re
    import nbformat
    from normlib.paths import notebooks_dir
    pattern = re.compile(rf"\b{NUMBER_WORDS}\s+(?:fresh\s+|random\s+)?seeds?\b", re.IGNORECASE)
    typed = {}
    for path in sorted(notebooks_dir().glob("study_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                typed.setdefault(path.stem, []).extend(pattern.findall(cell.source))
    assert not {k: v for k, v in typed.items() if v}, f"typed seed counts (glue them): {typed}"
    assert pattern.search("over three seeds") and pattern.search("5 seeds") and not pattern.search("`n_seeds:d` seeds")
