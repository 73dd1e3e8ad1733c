"""Tests of the helpers behind steps 2-5 and the procedure page, on hand-made tables (nothing is
trained): metrics.head_to_head, the report's head-to-head summary and difference glue,
study.protocol_table and normlib.provenance's reading of a run manifest."""
import json
from dataclasses import fields

import pandas as pd
import pytest

from normlib import metrics, provenance, report
from normlib.study import PROTOCOL, protocol_table
from normlib.train import TrainConfig


def table():
    """Three seeds of batch and layer norm on one arch: batch clearly better on test_acc and
    final_val_loss, every other measure identical (ties)."""
    rows = []
    for norm, acc, loss in (("batch", (0.90, 0.91, 0.92), (0.30, 0.31, 0.32)),
                            ("layer", (0.80, 0.81, 0.82), (0.50, 0.51, 0.52))):
        for seed in range(3):
            rows.append({"arch": "mlp", "norm": norm, "seed": seed, "test_acc": acc[seed],
                         "final_val_loss": loss[seed], "test_loss": 0.4 + 0.01 * seed,
                         "steps_to_loss": 10 + seed, "volatility": 0.1 + 0.01 * seed, "grad_norm_cv": 0.2})
    return pd.DataFrame(rows)


def test_head_to_head_verdicts_and_welch_interval():
    h2h = metrics.head_to_head(table(), "batch", "layer", "mlp").set_index("metric")
    assert list(h2h.index) == [m for _, m, _, _ in metrics.CRITERIA]
    assert h2h.loc["test_acc", "winner"] == "batch"  # higher is better
    assert h2h.loc["final_val_loss", "winner"] == "batch"  # lower is better
    assert (h2h.drop(["test_acc", "final_val_loss"])["winner"] == "tie").all()
    acc = h2h.loc["test_acc"]
    assert acc["diff"] == pytest.approx(0.10) and acc["diff_lo"] < 0.10 < acc["diff_hi"]
    assert acc["batch_mean"] == pytest.approx(0.91) and acc["layer_mean"] == pytest.approx(0.81)


def test_head_to_head_summary_counts_every_measure():
    h2h = metrics.head_to_head(table(), "batch", "layer", "mlp")
    text = report.head_to_head_summary(h2h, "batch", "layer")
    assert text.startswith(f"Of {len(metrics.CRITERIA)} criterion measures, batch norm wins 2 (")
    assert "layer norm wins 0 and 4 (" in text and "are ties (overlapping 95% intervals" in text


def test_head_to_head_summary_without_ties():
    h2h = metrics.head_to_head(table(), "batch", "layer", "mlp")
    h2h = h2h[h2h["winner"] != "tie"]
    text = report.head_to_head_summary(h2h, "batch", "layer")
    assert text == f"Of {len(h2h)} criterion measures, batch norm wins 2 (" + text.split("wins 2 (", 1)[1]
    assert text.endswith("layer norm wins 0 and none is a tie.") and "overlapping" not in text


def test_glue_difference_in_points():
    h2h = metrics.head_to_head(table(), "batch", "layer", "mlp")
    out = report.glue_difference(h2h, "mlp", "test_acc", "acc", scale=100)
    assert out["mlp_acc_diff"] == pytest.approx(10.0)
    assert out["mlp_acc_difference_established"] == "established"
    assert out["mlp_acc_diff_ci"].startswith("+10.00 [")
    assert out["mlp_acc_difference_text"].startswith("established (the two 95% intervals do not overlap; Welch p = ")
    tie = report.glue_difference(h2h, "mlp", "test_loss", "loss")
    assert tie["mlp_loss_difference_established"] == "not established"
    assert tie["mlp_loss_difference_text"].startswith("not established")


def test_difference_text_when_welch_alone_would_reject():
    """Overlapping intervals with Welch p < 0.05: the report says not established, and why."""
    rows = [{"arch": "mlp", "norm": norm, "seed": s, "test_acc": acc, **{m: 1.0 for _, m, _, _ in metrics.CRITERIA
                                                                          if m != "test_acc"}}
            for norm, accs in (("batch", (0.920, 0.915, 0.925)), ("layer", (0.908, 0.910, 0.905)))
            for s, acc in enumerate(accs)]
    h2h = metrics.head_to_head(pd.DataFrame(rows), "batch", "layer", "mlp")
    r = h2h.set_index("metric").loc["test_acc"]
    assert r["winner"] == "tie" and r["welch_p"] < 0.05  # the case this text exists for
    out = report.glue_difference(h2h, "mlp", "test_acc", "acc", scale=100)
    assert out["mlp_acc_difference_text"] == ("not established by this report's rule, as the two 95% intervals "
                                              f"overlap, although Welch's test alone gives p = {r['welch_p']:.2g}")


@pytest.mark.parametrize("speedup, text", [(1.34, "1.3 times sooner"), (1 / 1.25, "1.2 times later"),
                                           (1.01, "as soon (a ratio of 1.0)"), (float("nan"), "at no comparable point")])
def test_speed_text(speedup, text):
    assert report.speed_text(speedup) == text


def test_protocol_table_lists_every_field_with_the_protocol_values():
    t = protocol_table().set_index("field")
    assert list(t.index) == [f.name for f in fields(TrainConfig)]
    for name, value in PROTOCOL.items():
        assert t.loc[name, "steps 1-5"] == repr(value)
    assert t.loc["seed", "steps 1-5"] == "notebook parameter"


def test_manifest_applies_only_to_the_run_it_describes(tmp_path):
    manifest = {"profile": "quick", "notebooks": {"procedure": {"injected": {"val_size": 1000}, "declared": {}}}}
    path = tmp_path / "run_manifest.json"
    path.write_text(json.dumps(manifest))
    loaded = provenance.load_manifest(path)
    assert provenance.manifest_applies(loaded, "procedure", {"val_size": 1000, "train_size": 2000})
    assert not provenance.manifest_applies(loaded, "procedure", {"val_size": 5000})
    assert not provenance.manifest_applies(loaded, "step1_bn_training", {})
    assert provenance.load_manifest(tmp_path / "absent.json") is None


def test_notebook_parameters_marks_injected_values():
    manifest = {"notebooks": {"step1_bn_training": {"injected": {"seeds": [0, 1, 2]}, "declared": {}}}}
    tables = provenance.notebook_parameters(manifest)
    t = tables["step1_bn_training"].set_index("parameter")
    assert t.loc["seeds", "value"] == "[0, 1, 2]" and t.loc["seeds", "set by"] == "run"
    assert (t.drop("seeds")["set by"] == "default").all()
