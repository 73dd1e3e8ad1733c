"""Tests of normlib.train on tiny runs (256 training images): TrainConfig rejects unknown keys and
bad values naming the field; History records every step and evaluation; SGD with momentum and
Adam both train; the cosine schedule; the same config and seed give an identical History on CPU;
a non-finite loss marks the run diverged instead of crashing; JSON round trips."""
import dataclasses
import json
import math

import pytest
import torch

from normlib import train as train_mod
from normlib.train import History, TrainConfig, train

TINY = dict(train_size=256, val_size=100, hidden=(32,), batch_size=64, epochs=2, evals_per_epoch=2, device="cpu")


def tiny(**kw):
    return TrainConfig(**{**TINY, **kw})


def without_wall_time(h):
    d = h.to_dict()
    d.pop("wall_time")
    return json.dumps(d)  # a string, so NaN test results of diverged runs compare equal


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# ----------------------------------------------------------------------------
# TrainConfig

def test_defaults_are_the_protocol():
    c = TrainConfig()
    assert (c.arch, c.norm, c.impl, c.optimizer, c.lr, c.momentum, c.batch_size) == \
        ("mlp", "none", "custom", "sgd", 0.05, 0.9, 128)
    assert (c.schedule, c.hidden, c.train_size, c.val_size) == ("cosine", (256, 256, 256), 0, 5000)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 0.1


def test_unknown_keys_rejected():
    with pytest.raises(TypeError, match="learning_rate"):
        TrainConfig(learning_rate=0.1)
    with pytest.raises(TypeError, match="unknown field.*learning_rate"):
        TrainConfig.from_dict({"norm": "batch", "learning_rate": 0.1})


@pytest.mark.parametrize("field, value", [
    ("arch", "resnet"), ("norm", "instance"), ("impl", "cudnn"), ("activation", "swish"),
    ("norm_position", "middle"), ("optimizer", "rmsprop"), ("schedule", "step"), ("device", "tpu"),
    ("lr", 0), ("lr", -0.1), ("lr", math.nan), ("lr", math.inf), ("lr", "0.1"),
    ("momentum", 1.0), ("momentum", -0.1), ("weight_decay", -1e-4), ("weight_decay", math.nan),
    ("batch_size", 0), ("batch_size", 64.0), ("batch_size", True), ("epochs", 0), ("epochs", 1.5),
    ("seed", -1), ("split_seed", -1), ("max_steps", -1), ("evals_per_epoch", 0),
    ("hidden", ()), ("hidden", (32, 0)), ("hidden", 32), ("channels", (16, -1)),
    ("init_scale", 0), ("init_scale", -1.0), ("init_scale", math.inf),
    ("val_size", 0), ("val_size", 60_000), ("train_size", -5), ("train_size", 55_001),
    ("data_init", "yes"), ("data_init", True),  # True needs custom weight norm
])
def test_bad_values_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{field} = "):
        TrainConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"^TrainConfig\.{field} = "):
        TrainConfig.from_dict({field: value})


def test_batch_larger_than_training_set_rejected():
    with pytest.raises(ValueError, match=r"^TrainConfig\.batch_size = 128: .*\(100 examples\)"):
        TrainConfig(train_size=100)
    with pytest.raises(ValueError, match=r"^TrainConfig\.batch_size"):
        TrainConfig(val_size=59_950)  # 50 training images left


def test_config_json_round_trip():
    c = tiny(norm="batch", init_scale=0.1, channels=(8, 16), data_init=False)
    back = TrainConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert back == c and back.hidden == (32,) and isinstance(back.channels, tuple)
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)


# ----------------------------------------------------------------------------
# History

def test_history_records_steps_and_evaluations():
    h = train(tiny())
    steps = 256 // 64 * 2
    assert h.steps_per_epoch == 4
    assert len(h.step_loss) == len(h.step_grad_norm) == steps
    assert all(math.isfinite(v) and v > 0 for v in h.step_loss + h.step_grad_norm)
    assert h.eval_step == [2, 4, 6, 8] and h.eval_epoch == [0.5, 1.0, 1.5, 2.0]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert len(getattr(h, key)) == 4
    assert h.train_loss[0] == pytest.approx(sum(h.step_loss[:2]) / 2)  # mean step loss since the last evaluation
    assert all(0 <= a <= 1 for a in h.train_acc + h.val_acc)
    assert math.isfinite(h.test_loss) and 0 <= h.test_acc <= 1
    assert h.wall_time > 0 and h.diverged is False and h.diverged_step is None and h.device == "cpu"
    assert h.config == tiny().to_dict()


def test_train_accepts_a_dict_and_max_steps():
    h = train({**tiny().to_dict(), "max_steps": 3})
    assert len(h.step_loss) == 3 and h.eval_step == [2, 3]  # the last step is always evaluated
    assert math.isfinite(h.test_acc)


def test_hooks_see_every_step():
    seen = []
    train(tiny(epochs=1), hooks=[lambda step, model: seen.append((step, model.training))])
    assert seen == [(1, True), (2, True), (3, True), (4, True)]


def test_history_json_round_trip():
    h = train(tiny(norm="batch"))
    back = History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back == h and back.to_dict() == h.to_dict()


# ----------------------------------------------------------------------------
# optimizers, schedule, reproducibility

def test_optimizers():
    sgd = train_mod.make_optimizer(tiny(momentum=0.8), [torch.nn.Parameter(torch.zeros(2))])
    adam = train_mod.make_optimizer(tiny(optimizer="adam", lr=1e-3), [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 1e-3


@pytest.mark.parametrize("kw", [dict(optimizer="sgd", lr=0.05), dict(optimizer="adam", lr=1e-3)])
def test_both_optimizers_reduce_the_loss(kw):
    h = train(tiny(epochs=4, train_size=512, **kw))
    first, last = sum(h.step_loss[:4]) / 4, sum(h.step_loss[-4:]) / 4
    assert last < 0.8 * first
    assert h.val_loss[-1] < h.val_loss[0] and h.test_acc > 0.5


def test_adam_and_sgd_differ():
    assert without_wall_time(train(tiny(optimizer="adam", lr=1e-3))) != without_wall_time(train(tiny()))


def learning_rates(monkeypatch, config):
    """The learning rate used at every step of a run."""
    opts = []
    make = train_mod.make_optimizer
    monkeypatch.setattr(train_mod, "make_optimizer", lambda c, p: opts.append(make(c, p)) or opts[-1])
    lrs = []
    train(config, hooks=[lambda step, model: lrs.append(opts[0].param_groups[0]["lr"])])
    return lrs


def test_cosine_schedule(monkeypatch):
    lrs = learning_rates(monkeypatch, tiny(lr=0.1, epochs=2))
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])
    assert learning_rates(monkeypatch, tiny(lr=0.1, schedule="constant")) == [0.1] * 8


def test_warmup_rises_linearly_then_follows_the_schedule(monkeypatch):
    """warmup=0.25 of 8 steps: 2 steps at lr/2 and lr, then the cosine over the 6 steps left (or constant)."""
    lrs = learning_rates(monkeypatch, tiny(lr=0.1, epochs=2, warmup=0.25))
    assert lrs == pytest.approx([0.05, 0.1] + [0.1 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)])
    assert learning_rates(monkeypatch, tiny(lr=0.1, epochs=2, schedule="constant", warmup=0.25)) == \
        pytest.approx([0.05, 0.1] + [0.1] * 6)


@pytest.mark.parametrize("kw", [dict(norm="batch"), dict(norm="layer", optimizer="adam", lr=1e-3),
                                dict(norm="weight", impl="torch"), dict(arch="cnn", norm="batch", channels=(4, 8),
                                                                        epochs=1)])
def test_same_config_and_seed_give_identical_history(kw):
    a, b = train(tiny(**kw)), train(tiny(**kw))
    assert without_wall_time(a) == without_wall_time(b)


def test_seed_changes_the_run():
    a, b = train(tiny(seed=0)), train(tiny(seed=1))
    assert a.step_loss != b.step_loss


def test_split_seed_changes_the_validation_set():
    a, b = train(tiny(split_seed=0)), train(tiny(split_seed=1))
    assert a.val_loss != b.val_loss


# ----------------------------------------------------------------------------
# divergence

@pytest.mark.parametrize("kw", [dict(lr=1e6), dict(norm="batch", lr=1e6), dict(init_scale=1e3, hidden=(32, 32, 32)),
                                dict(optimizer="adam", init_scale=1e6, hidden=(32, 32, 32))])
def test_non_finite_loss_marks_the_run_diverged(kw):
    h = train(tiny(**kw))
    assert h.diverged is True
    assert 1 <= h.diverged_step < 8 and h.diverged_step == len(h.step_loss)
    assert not (math.isfinite(h.step_loss[-1]) and math.isfinite(h.step_grad_norm[-1]))
    assert all(math.isfinite(v) for v in h.step_loss[:-1])
    assert len(h.val_loss) < 4 and math.isnan(h.test_loss) and math.isnan(h.test_acc)
    back = History.from_dict(json.loads(json.dumps(h.to_dict())))  # NaN survives the JSON round trip
    assert back.diverged and back.diverged_step == h.diverged_step and math.isnan(back.test_acc)
