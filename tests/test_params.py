"""normlib.params: every rule rejects bad values with one line naming parameter, value and what is allowed."""
import pytest

from normlib import params as P

BAD = [
    ("batch_size", 0, "parameter 'batch_size' = 0: must be a positive integer"),
    ("batch_size", 2.5, "parameter 'batch_size' = 2.5: must be a positive integer"),
    ("epochs", True, "parameter 'epochs' = True: must be a positive integer"),
    ("mlp_epochs", "3", "parameter 'mlp_epochs' = '3': must be a positive integer"),
    ("cnn_epochs", -1, "parameter 'cnn_epochs' = -1: must be a positive integer"),
    ("norms", ["bach"], "parameter 'norms' = ['bach']: unknown norm 'bach' (allowed: {kinds})"),
    ("norms", [], "parameter 'norms' = []: must be a non-empty list of norms (allowed: {kinds})"),
    ("norms", "batch", "parameter 'norms' = 'batch': must be a non-empty list of norms (allowed: {kinds})"),
    ("norms", ["batch", "batch"], "parameter 'norms' = ['batch', 'batch']: must list each norm once (allowed: {kinds})"),
    ("archs", ["mlp", "rnn"], "parameter 'archs' = ['mlp', 'rnn']: unknown arch 'rnn' (allowed: mlp, cnn, vit)"),
    ("arch", "resnet", "parameter 'arch' = 'resnet': unknown arch 'resnet' (allowed: mlp, cnn, vit)"),
    ("norm", "instance", "parameter 'norm' = 'instance': unknown norm 'instance' (allowed: {kinds})"),
    ("seeds", [], "parameter 'seeds' = []: must be a non-empty list of distinct non-negative integers"),
    ("seeds", [0, 0], "parameter 'seeds' = [0, 0]: must be a non-empty list of distinct non-negative integers"),
    ("seeds", [0, -1], "parameter 'seeds' = [0, -1]: must be a non-empty list of distinct non-negative integers"),
    ("seeds", 3, "parameter 'seeds' = 3: must be a non-empty list of distinct non-negative integers"),
    ("train_size", -5, "parameter 'train_size' = -5: must be a non-negative integer (0 = all images not held out for validation)"),
    ("val_size", 0, "parameter 'val_size' = 0: must be an integer between 1 and 59999"),
    ("val_size", 60000, "parameter 'val_size' = 60000: must be an integer between 1 and 59999"),
    ("lr", 0, "parameter 'lr' = 0: must be a positive number, or null (where a notebook selects each condition's rate)"),
    ("lr", float("nan"), "parameter 'lr' = nan: must be a positive number, or null (where a notebook selects each condition's rate)"),
    ("lr", "1e-3", "parameter 'lr' = '1e-3': must be a positive number, or null (where a notebook selects each condition's rate)"),
    ("tuning_budgets", [0.5, 0.25], "parameter 'tuning_budgets' = [0.5, 0.25]: must be a non-empty increasing list of "
                                    "fractions in (0, 1] (the rungs' budgets; [1.0]: the full grid)"),
    ("cnn_hidden", 0, "parameter 'cnn_hidden' = 0: must be a positive integer"),
    ("tuning_seeds", [1, 1], "parameter 'tuning_seeds' = [1, 1]: must be a non-empty list of distinct non-negative integers"),
    ("confirm_seeds", [], "parameter 'confirm_seeds' = []: must be a non-empty list of distinct non-negative integers"),
    ("confirm_split_seed", 0, "parameter 'confirm_split_seed' = 0: must be a positive integer"),
    ("extra_norms", ["batch"], "parameter 'extra_norms' = ['batch']: unknown extra norm 'batch' (allowed: weight, group)"),
    ("weight_decay", -1e-4, "parameter 'weight_decay' = -0.0001: must be a non-negative number"),
    ("schedule", "linear", "parameter 'schedule' = 'linear': unknown schedule 'linear' (allowed: constant, cosine)"),
    ("hidden", [256, 0], "parameter 'hidden' = [256, 0]: must be a list of one or more positive integers"),
    ("channels", [8], "parameter 'channels' = [8]: must be a list of 2 positive integers"),
    ("init_scale", -1, "parameter 'init_scale' = -1: must be a positive number, or null (PyTorch's default initialization)"),
    ("data_init", 1, "parameter 'data_init' = 1: must be true or false"),
    ("max_steps", -1, "parameter 'max_steps' = -1: must be a non-negative integer"),
    ("seed", -1, "parameter 'seed' = -1: must be a non-negative integer"),
    ("device", "tpu", "parameter 'device' = 'tpu': unknown device 'tpu' (allowed: auto, cpu, cuda)"),
    ("lrs", [0.1, -0.1], "parameter 'lrs' = [0.1, -0.1]: must be a non-empty list of distinct positive numbers"),
    ("lrs", [0.1, 0.1], "parameter 'lrs' = [0.1, 0.1]: must be a non-empty list of distinct positive numbers"),
    ("batch_sizes", [64, 0], "parameter 'batch_sizes' = [64, 0]: must be a non-empty list of distinct positive integers"),
    ("init_scales", [], "parameter 'init_scales' = []: must be a non-empty list of distinct positive numbers"),
    ("optimizer", "rmsprop", "parameter 'optimizer' = 'rmsprop': unknown optimizer 'rmsprop' (allowed: sgd, adam)"),
    ("impl", "cuda", "parameter 'impl' = 'cuda': unknown impl 'cuda' (allowed: custom, torch)"),
    ("activation", "swish", "parameter 'activation' = 'swish': unknown activation 'swish' (allowed: relu, sigmoid, tanh, gelu)"),
    ("activations", ["relu", "elu"], "parameter 'activations' = ['relu', 'elu']: unknown activation 'elu' (allowed: relu, sigmoid, tanh, gelu)"),
    ("norm_position", "middle", "parameter 'norm_position' = 'middle': unknown norm_position 'middle' (allowed: before, after)"),
    ("momentum", 1.0, "parameter 'momentum' = 1.0: must be a number in [0, 1)"),
    ("warmup", 1.0, "parameter 'warmup' = 1.0: must be a number in [0, 1) (the fraction of the steps spent warming up; 0: none)"),
    ("workers", -1, "parameter 'workers' = -1: must be a non-negative integer"),
    ("force", "yes", "parameter 'force' = 'yes': must be true or false"),
    ("force", 1, "parameter 'force' = 1: must be true or false"),
    ("show_benchmark", "no", "parameter 'show_benchmark' = 'no': must be true or false"),
    ("split_seed", 1.5, "parameter 'split_seed' = 1.5: must be a non-negative integer"),
    ("evals_per_epoch", 0, "parameter 'evals_per_epoch' = 0: must be a positive integer"),
    ("repeats", 0, "parameter 'repeats' = 0: must be a positive integer"),
    ("base_lr", -0.05, "parameter 'base_lr' = -0.05: must be a positive number"),
    ("bs_train_size", -1, "parameter 'bs_train_size' = -1: must be a non-negative integer (0 = all images not held out for validation)"),
    ("bs_epochs", 0, "parameter 'bs_epochs' = 0: must be a positive integer"),
    ("depth", 0, "parameter 'depth' = 0: must be a positive integer"),
    ("acc_threshold", 1.5, "parameter 'acc_threshold' = 1.5: must be a number between 0 and 1"),
    ("record_every", 0, "parameter 'record_every' = 0: must be a positive integer"),
    ("probe_size", 0, "parameter 'probe_size' = 0: must be a positive integer"),
    ("unit", -1, "parameter 'unit' = -1: must be a non-negative integer"),
    ("multipliers", [1, -2], "parameter 'multipliers' = [1, -2]: must be a non-empty list of distinct positive numbers"),
    ("probe_every", 0, "parameter 'probe_every' = 0: must be a positive integer"),
    ("norm_eps", 0, "parameter 'norm_eps' = 0: must be a positive number"),
    ("dropout", 1.0, "parameter 'dropout' = 1.0: must be a number in [0, 1) (0: no dropout)"),
    ("dropout", -0.1, "parameter 'dropout' = -0.1: must be a number in [0, 1) (0: no dropout)"),
    ("bs_seeds", [1, 1], "parameter 'bs_seeds' = [1, 1]: must be a non-empty list of distinct non-negative integers"),
    ("bs_evals_per_epoch", 0, "parameter 'bs_evals_per_epoch' = 0: must be a positive integer"),
    ("margin", 0, "parameter 'margin' = 0: must be a number between 0 and 1"),
    ("small_scale", -1e-3, "parameter 'small_scale' = -0.001: must be a positive number"),
    ("eps_values", [1e-5, 0], "parameter 'eps_values' = [1e-05, 0]: must be a non-empty list of distinct positive numbers"),
    ("extra_lrs", [], "parameter 'extra_lrs' = []: must be a non-empty list of distinct positive numbers"),
    ("extra_seeds", [3, -1], "parameter 'extra_seeds' = [3, -1]: must be a non-empty list of distinct non-negative integers"),
    ("extra_seeds", 5, "parameter 'extra_seeds' = 5: must be a non-empty list of distinct non-negative integers"),
    ("lr_margin", 1, "parameter 'lr_margin' = 1: must be a number between 0 and 1"),
    ("sweep_lrs", [0.03, 0.03], "parameter 'sweep_lrs' = [0.03, 0.03]: must be a non-empty list of distinct positive numbers"),
    ("sweep_bn", "no", "parameter 'sweep_bn' = 'no': must be true or false"),
    ("grad_factor", 1, "parameter 'grad_factor' = 1: must be a number greater than 1"),
    ("overfit_epochs", 0, "parameter 'overfit_epochs' = 0: must be a positive integer"),
    ("rnn_hidden", 0, "parameter 'rnn_hidden' = 0: must be a positive integer"),
]


@pytest.mark.parametrize("name, value, message", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_rule_rejects_bad_value_with_one_line(name, value, message):
    if "{kinds}" in message:  # the normalization kinds: those of the registry normlib.norms.NORMS
        message = message.format(kinds=", ".join(P.norm_kinds()))
    with pytest.raises(P.ParameterError) as e:
        P.validate({name: value})
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_every_rule_is_exercised():
    assert {n for n, _, _ in BAD} == set(P.RULES)


GOOD = [
    ("batch_size", 128, 128),
    ("epochs", 1, 1),
    ("norms", ("none", "batch", "layer"), ["none", "batch", "layer"]),  # tuples -> lists, order kept
    ("archs", ["cnn"], ["cnn"]),
    ("seeds", (0, 1, 2), [0, 1, 2]),
    ("train_size", 0, 0),
    ("val_size", 5000, 5000),
    ("lr", 1, 1.0),  # ints accepted for floats
    ("lrs", [1, 0.1], [1.0, 0.1]),
    ("init_scales", (0.001,), [0.001]),
    ("batch_sizes", [2, 512], [2, 512]),
    ("optimizer", "adam", "adam"),
    ("impl", "torch", "torch"),
    ("activation", "tanh", "tanh"),
    ("momentum", 0, 0.0),
    ("workers", 0, 0),
    ("force", False, False),
    ("extra_seeds", [], []),  # no seeds beside the main comparison's tuning seeds
    ("extra_seeds", (102,), [102]),
    ("dropout", 0, 0.0),
    ("grad_factor", 10, 10.0),
]


@pytest.mark.parametrize("name, value, expected", GOOD, ids=[f"{n}={v!r}" for n, v, _ in GOOD])
def test_rule_accepts_and_normalizes(name, value, expected):
    out = P.validate({name: value})
    assert out == {name: expected}
    assert type(out[name]) is type(expected)


def test_validate_returns_new_dict_and_keeps_unruled_names():
    given = {"epochs": 2, "hidden_width": 64}
    out = P.validate(given, known={"epochs", "hidden_width"})
    assert out == given and out is not given


def test_unknown_name_lists_known_and_close_matches():
    with pytest.raises(P.ParameterError) as e:
        P.validate({"epoch": 1}, known={"epochs", "seeds"})
    assert str(e.value) == "unknown parameter 'epoch' (known: epochs, seeds); did you mean 'epochs'?"


def test_train_plus_val_must_fit_in_fashion_mnist():
    """The message states both values and their sum (it once printed val_size as if it were the sum)."""
    with pytest.raises(P.ParameterError) as e:
        P.validate({"train_size": 58000, "val_size": 5000})
    assert str(e.value) == ("parameter 'train_size' = 58000: train_size + val_size = 58000 + 5000 = 63000 "
                            "must be at most 60000")
    with pytest.raises(P.ParameterError) as e:
        P.validate({"val_size": 1, "train_size": 60000})
    assert str(e.value) == "parameter 'train_size' = 60000: train_size + val_size = 60000 + 1 = 60001 must be at most 60000"
    with pytest.raises(P.ParameterError) as e:
        P.validate({"train_size": 60001})
    assert str(e.value) == ("parameter 'train_size' = 60001: must be at most 60000 minus val_size "
                            "(the images held out for validation)")
    assert P.validate({"train_size": 55000, "val_size": 5000})["train_size"] == 55000
    assert P.validate({"train_size": 0, "val_size": 59999})["train_size"] == 0


def test_check_writable(tmp_path):
    assert P.check_writable(tmp_path / "a" / "b", "data_root") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(P.ParameterError, match=r"^parameter 'data_root' = '.*/file/sub': cannot create or write this directory \(.+\)$"):
        P.check_writable(blocker / "sub", "data_root")
    with pytest.raises(P.ParameterError, match=r"^results directory '.*/file': cannot create or write"):
        P.check_writable(blocker, "results directory")


def test_norm_kinds_are_the_registry():
    norms = pytest.importorskip("normlib.norms")
    assert P.norm_kinds() == tuple(norms.NORMS)
    assert P.validate({"norms": list(norms.NORMS)})["norms"] == list(norms.NORMS)
    with pytest.raises(P.ParameterError, match=f"allowed: {', '.join(norms.NORMS)}"):
        P.validate({"norm": "instance"})
