"""Tests of the protocol of steps 1-5 (normlib.protocol) and of the step helpers' tables
(normlib.steps), on hand-made Histories and tables (nothing is trained), and of normlib.provenance's
reading of a run manifest."""
import json
from dataclasses import fields

import pytest

from normlib import params, protocol, provenance, steps, verdicts
from normlib.train import History, TrainConfig


def proto(**kw):
    return protocol.Protocol(**{"lrs": (0.01, 0.1, 1.0), "fixed_lr": 0.1, **kw})


def history(arch, norm, lr, seed, val_loss, diverged=False):
    c = proto().config(arch, norm, lr, seed).to_dict()
    steps_ = [10 * (i + 1) for i in range(len(val_loss))]
    return History(config=c, eval_step=steps_, eval_epoch=[s / 10 for s in steps_], train_loss=list(val_loss),
                   train_acc=[0.5] * len(val_loss), val_loss=list(val_loss), val_acc=[0.8] * len(val_loss),
                   steps_per_epoch=10, step_loss=[1.0] * steps_[-1], diverged=diverged,
                   diverged_step=steps_[-1] if diverged else None)


def test_seed_sets_must_be_disjoint_and_fixed_lr_in_the_grid():
    with pytest.raises(params.ParameterError, match="'confirm_seeds' = \\[0, 5\\]: shares seed\\(s\\) \\[0\\] with 'seeds'"):
        protocol.Protocol.from_params({"seeds": [0, 1], "confirm_seeds": [0, 5]})
    with pytest.raises(params.ParameterError, match="'tuning_seeds' = \\[1\\]: shares seed"):
        protocol.Protocol.from_params({"seeds": [0, 1], "tuning_seeds": [1]})
    with pytest.raises(params.ParameterError, match="'fixed_lr' = 0.05: must be one of lrs"):
        protocol.Protocol.from_params({"lrs": [0.01, 0.1], "fixed_lr": 0.05})
    assert protocol.Protocol.from_params({"lrs": [0.01, 0.1], "fixed_lr": 0.05, "lr": 0.2}).lr == 0.2  # no tuning


def test_runs_of_a_protocol():
    p = proto(archs=("mlp",), seeds=(0, 1), confirm_seeds=(5, 6), tuning_seeds=(9,))
    tuning = p.tuning(("none", "batch"))
    assert [(c.norm, c.lr, c.seed) for c in tuning] == [(n, lr, 9) for n in ("none", "batch") for lr in (0.01, 0.1, 1.0)]
    lrs = {("mlp", "none"): 0.1, ("mlp", "batch"): 1.0}
    primary, confirm = p.runs(("none", "batch"), lrs), p.runs(("none", "batch"), lrs, "confirm")
    assert [(c.norm, c.lr, c.seed, c.split_seed) for c in primary] == [
        ("none", 0.1, 0, 0), ("none", 0.1, 1, 0), ("batch", 1.0, 0, 0), ("batch", 1.0, 1, 0)]
    assert {(c.seed, c.split_seed) for c in confirm} == {(5, p.confirm_split_seed), (6, p.confirm_split_seed)}
    assert proto(lr=0.2).tuning(("none",)) == []
    assert p.config("mlp", "weight", 0.1, 0).data_init and not p.config("mlp", "batch", 0.1, 0).data_init


def test_each_condition_gets_the_rate_with_the_lowest_mean_best_validation_loss():
    hs = [history("mlp", "none", 0.01, s, [1.0, 0.6]) for s in (0, 1)]
    hs += [history("mlp", "none", 0.1, 0, [0.9, 0.4]), history("mlp", "none", 0.1, 1, [0.9, 0.5])]
    hs += [history("mlp", "none", 1.0, 0, [0.9, 0.3]), history("mlp", "none", 1.0, 1, [0.5], diverged=True)]
    hs += [history("mlp", "batch", lr, s, [0.5, loss]) for lr, loss in ((0.01, 0.45), (0.1, 0.3), (1.0, 0.35))
           for s in (0, 1)]
    # none at 1.0: one seed at 0.3, one diverged (at chance, ln 10): the mean loses to 0.1's 0.45
    assert protocol.select_lrs(hs, proto()) == {("mlp", "none"): 0.1, ("mlp", "batch"): 0.1}
    assert protocol.select_lrs(hs, proto(lr=0.5)) == {("mlp", "none"): 0.5, ("mlp", "batch"): 0.5}
    t = protocol.tuning_table(hs)
    failed = t[(t["lr"] == 1.0) & (t["seed"] == 1) & (t["norm"] == "none")].iloc[0]
    assert failed["failed"] and failed["best_val_loss"] == pytest.approx(2.302585, abs=1e-6)


def test_records_round_trip_and_a_missing_one_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLIB_RESULTS", str(tmp_path))
    p = proto(archs=("mlp",))
    protocol.write_record("step1_bn_training", p, ("none", "batch"), {("mlp", "none"): 0.1, ("mlp", "batch"): 1.0})
    assert protocol.read_record("step1_bn_training") == (p, ["none", "batch"])
    with pytest.raises(params.ParameterError) as e:
        protocol.read_record("step3_ln_training")
    assert "no record of step3_ln_training" in str(e.value) and "\n" not in str(e.value)


def test_protocol_table_lists_every_field():
    t = protocol.protocol_table(proto()).set_index("field")
    assert list(t.index) == [f.name for f in fields(TrainConfig)]
    assert t.loc["lr", "steps 1-5"].startswith("selected per condition from 0.01, 0.1, 1")
    assert t.loc["momentum", "steps 1-5"] == "0.9" and t.loc["momentum", "meaning"]
    assert protocol.protocol_table(proto(lr=0.2)).set_index("field").loc["lr", "steps 1-5"] == "0.2 for every condition"


def test_findings_and_summary_tables_come_from_the_verdict_table():
    import pandas as pd
    rows = [{"arch": "mlp", "norm": n, "seed": s, "split_seed": 0, "lr": 0.1, "diverged": False, "reached": True,
             "planned_steps": 100, "steps_to_level": base + s, "spike": 0.01 * s, "best_test_loss": 0.3 + 0.01 * s,
             "best_test_acc": 0.9, "final_val_loss": 0.3}
            for n, base in (("none", 80), ("batch", 40), ("layer", 60)) for s in range(5)]
    measures = pd.DataFrame(rows)
    table = verdicts.confirm(verdicts.primary_table(measures), verdicts.primary_table(measures.assign(seed=measures.seed + 10)))
    html = steps.findings_html(table[(table["first"] == "batch") & (table["second"] == "none")])
    assert html.count("<li>") == 3 and "BN lower" in html and "confirmed on fresh seeds" in html
    summary = steps.summary_table(verdicts.condition_summary(measures))
    assert list(summary["condition"]) == ["no normalization", "batch norm", "layer norm"]
    assert summary.iloc[1]["steps to the validation-loss level (restricted mean)"].endswith("(5 reached)")


def test_manifest_applies_only_to_the_run_it_describes(tmp_path):
    manifest = {"profile": "quick", "notebooks": {"procedure": {"injected": {"val_size": 1000}, "declared": {}}}}
    path = tmp_path / "run_manifest.json"
    path.write_text(json.dumps(manifest))
    loaded = provenance.load_manifest(path)
    assert provenance.manifest_applies(loaded, "procedure", {"val_size": 1000, "train_size": 2000})
    assert not provenance.manifest_applies(loaded, "procedure", {"val_size": 5000})
    assert not provenance.manifest_applies(loaded, "step1_bn_training", {})
    assert provenance.load_manifest(tmp_path / "absent.json") is None


def test_lr_summary_says_how_the_rates_were_chosen():
    from normlib.steps import lr_summary
    tuned = lr_summary({("mlp", "none"): 0.1, ("mlp", "batch"): 0.3}, grid=(0.01, 0.1, 0.3))
    assert tuned.startswith("each condition at its own rate, the best of the grid on separate tuning seeds (")
    assert "batch norm 0.3 (edge of the grid)" in tuned and "no normalization 0.1," in tuned
    fixed = lr_summary({("mlp", "none"): 0.1, ("mlp", "batch"): 0.1})
    assert fixed == "every condition at the rate this run set, 0.1 (no tuning)"
