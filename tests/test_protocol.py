"""Tests of the protocol of steps 1-5 (normlib.protocol) and of the step helpers' tables
(normlib.steps), on hand-made Histories and tables (nothing is trained), and of normlib.provenance's
reading of a run manifest."""
import json
import math
from dataclasses import fields

import pytest

from normlib import params, protocol, provenance, steps, verdicts
from normlib.train import History, TrainConfig


def proto(**kw):
    return protocol.Protocol(**{"lrs": (0.01, 0.1, 1.0), **kw})


def history(arch, norm, lr, seed, val_loss, diverged=False):
    c = proto().config(arch, norm, lr, seed).to_dict()
    steps_ = [10 * (i + 1) for i in range(len(val_loss))]
    return History(config=c, eval_step=steps_, eval_epoch=[s / 10 for s in steps_], train_loss=list(val_loss),
                   train_acc=[0.5] * len(val_loss), val_loss=list(val_loss), val_acc=[0.8] * len(val_loss),
                   steps_per_epoch=10, step_loss=[1.0] * steps_[-1], diverged=diverged,
                   diverged_step=steps_[-1] if diverged else None)


def test_seed_sets_must_be_disjoint_and_budgets_increasing():
    with pytest.raises(params.ParameterError, match="'confirm_seeds' = \\[0, 5\\]: shares seed\\(s\\) \\[0\\] with 'seeds'"):
        protocol.Protocol.from_params({"seeds": [0, 1], "confirm_seeds": [0, 5]})
    with pytest.raises(params.ParameterError, match="'tuning_seeds' = \\[1\\]: shares seed"):
        protocol.Protocol.from_params({"seeds": [0, 1], "tuning_seeds": [1]})
    for bad in ([0.5, 0.25], [0.0, 1.0], [0.5, 1.5], []):
        with pytest.raises(params.ParameterError, match="'tuning_budgets' = .*: must be a non-empty increasing list"):
            protocol.Protocol.from_params({"tuning_budgets": bad})
    assert protocol.Protocol.from_params({"lrs": [0.01, 0.1], "lr": 0.2}).lr == 0.2  # no tuning


def test_runs_of_a_protocol():
    p = proto(archs=("mlp",), seeds=(0, 1), confirm_seeds=(5, 6), tuning_seeds=(9,), train_size=1280, batch_size=128,
              mlp_epochs=4)
    rung = p.rung({("mlp", "none"): (0.01, 0.1), ("mlp", "batch"): (1.0,)}, 0.25)
    assert [(c.norm, c.lr, c.seed, c.max_steps) for c in rung] == [("none", 0.01, 9, 10), ("none", 0.1, 9, 10),
                                                                   ("batch", 1.0, 9, 10)]  # 10 of the 40 steps
    assert p.rung({("mlp", "none"): (0.1,)}, 1.0)[0].max_steps == 0  # the full budget: the full run
    assert p.tuning_plan(("none", "batch")) == [(0.25, 3), (0.5, 2)]
    lrs = {("mlp", "none"): 0.1, ("mlp", "batch"): 1.0}
    primary, confirm = p.runs(("none", "batch"), lrs), p.runs(("none", "batch"), lrs, "confirm")
    assert [(c.norm, c.lr, c.seed, c.split_seed) for c in primary] == [
        ("none", 0.1, 0, 0), ("none", 0.1, 1, 0), ("batch", 1.0, 0, 0), ("batch", 1.0, 1, 0)]
    assert {(c.seed, c.split_seed) for c in confirm} == {(5, p.confirm_split_seed), (6, p.confirm_split_seed)}
    assert proto(lr=0.2).tuning_plan(("none",)) == []
    cnn = p.config("cnn", "batch", 0.1, 0)
    assert cnn.hidden == (p.cnn_hidden,) and p.config("mlp", "batch", 0.1, 0).hidden == p.hidden
    assert p.config("mlp", "weight", 0.1, 0).data_init and not p.config("mlp", "batch", 0.1, 0).data_init


def synthetic_loss(lr, budget, best=0.1, width=1.0, floor=0.3):
    """A smooth tuning landscape: the loss a run at `lr` reaches with `budget` of the steps, lowest at
    `best` (in log rate), falling with the budget; the ranking of the rates is the same at every budget."""
    return floor + width * math.log10(lr / best) ** 2 + 0.2 / budget


def test_successive_halving_picks_the_rate_the_full_grid_picks():
    """On a synthetic landscape whose ranking holds from the first rung on, halving selects the same rate as
    every rate trained at the full budget, for a fraction of the runs."""
    rates = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
    conditions = {("mlp", "none"): 0.03, ("mlp", "batch"): 0.3, ("cnn", "layer"): 0.01}
    spent = []

    def evaluate(alive, budget):
        spent.append(budget * sum(len(r) for r in alive.values()))
        return {c: {lr: synthetic_loss(lr, budget, best=conditions[c]) for lr in r} for c, r in alive.items()}

    grid, _ = protocol.successive_halving({c: rates for c in conditions}, [1.0], evaluate)
    full = spent.pop()
    picked, rungs = protocol.successive_halving({c: rates for c in conditions}, [0.25, 0.5, 1.0], evaluate)
    assert picked == grid == conditions
    assert [len(scores[("mlp", "none")]) for _, scores in rungs] == [6, 3, 2]  # halved, rounded up
    assert sum(spent) == pytest.approx(full * (6 * 0.25 + 3 * 0.5 + 2 * 1.0) / 6)  # 5 of the grid's 6 runs
    assert protocol.halving_sizes(6, 3) == [6, 3, 2] and protocol.halving_sizes(4, 3) == [4, 2]
    assert protocol.halving_sizes(4, 1) == [4] and protocol.halving_sizes(1, 2) == [1]


def test_successive_halving_can_only_lose_a_rate_that_ranks_low_at_the_first_rung():
    """Its assumption, shown: a rate that is best at the full budget but in the worse half at the first
    rung (a landscape whose optimum moves with the budget) is dropped there, so halving picks another."""
    def moving(lr, budget):  # best rate 1.0 for short runs, 0.01 for the full run
        return synthetic_loss(lr, budget, best=1.0 if budget < 1 else 0.01)

    def evaluate(alive, budget):
        return {c: {lr: moving(lr, budget) for lr in r} for c, r in alive.items()}

    rates = {("mlp", "none"): [0.01, 0.1, 1.0, 10.0]}
    assert protocol.successive_halving(rates, [1.0], evaluate)[0] == {("mlp", "none"): 0.01}
    assert protocol.successive_halving(rates, [0.25, 1.0], evaluate)[0] != {("mlp", "none"): 0.01}


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
    assert tuned.startswith("each condition at its own rate, selected from the grid by successive halving on separate "
                            "tuning seeds (")
    assert "batch norm 0.3 (edge of the grid)" in tuned and "no normalization 0.1," in tuned
    fixed = lr_summary({("mlp", "none"): 0.1, ("mlp", "batch"): 0.1})
    assert fixed == "every condition at the rate this run set, 0.1 (no tuning)"


def test_the_wall_clock_span_of_notebooks_run_side_by_side_is_less_than_their_sum():
    """Two notebooks from 10:00:00, one of 60 s, one of 120 s, and a third from 10:02:00 for 30 s: the run
    spans 2.5 minutes while their times add up to 3.5."""
    import pandas as pd
    times = pd.DataFrame({"notebook": ["a", "b", "c"], "seconds": [60.0, 120.0, 30.0],
                          "executed at": ["2026-01-01T10:00:00+00:00", "2026-01-01T10:00:00+00:00",
                                          "2026-01-01T10:02:00+00:00"], "this run": ["executed"] * 3})
    assert provenance.span_minutes(times) == pytest.approx(2.5)
    assert times["seconds"].sum() / 60 == pytest.approx(3.5)
    assert math.isnan(provenance.span_minutes(times.assign(**{"executed at": "never"})))


def test_the_cost_chapter_states_the_measured_levers_and_what_batching_seeds_measured():
    """levers_text reads results/benchmark.json: every number it states is the benchmark's, and the batched-seeds
    measurement appears only when the benchmark made it."""
    def r(ratio):
        return {"ratio": ratio}
    bench = {"machine": {"cpu": "a test CPU"},
             "results": {"mlp_fraction_of_peak": r(0.41), "cnn_fraction_of_peak": r(0.31), "halving_vs_grid": r(0.25),
                         "one_owner_vs_two": r(0.56), "mlp_evals_2_vs_8": r(0.88)},
             "context": {"step_in_matmuls": {"mlp": 0.61, "cnn": 0.59}}}
    text = provenance.levers_text(bench)
    assert "on a test CPU" in text and "take 0.56 of the time they took when both trained them" in text
    assert "0.25 of the optimizer steps" in text and "CNN at 31%" in text and "grouped" not in text
    bench["context"]["seeds_batched_vs_separate"] = {"conv2": 1.5, "fc3": 0.96}
    text = provenance.levers_text(bench)
    assert ("5 seeds of the CNN in one model take 1.50 of the time of 5 separate models in conv2 (one grouped "
            "convolution) and 0.96 of the time of 5 separate models in fc3 (one batched matrix product)") in text
    assert provenance.levers_text({}).startswith("make benchmark measures them")
