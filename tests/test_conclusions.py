"""Tests of normlib.conclusions: the per-network table of the conclusions chapter is read off the pages'
pairwise verdicts alone, names a favourite only when one condition beats each other and loses to none,
and states the weakest firmness among the verdicts behind it."""
import pandas as pd
import pytest

from normlib import conclusions


def rows(network, *verdicts, source="page"):
    return pd.DataFrame([{"network": network, "criterion": c, "first": a, "second": b, "winner": w, "firmness": f,
                          "source": source} for c, a, b, w, f in verdicts])


CONF, EST, STUDY, NONE = conclusions.FIRMNESS


def test_a_favourite_beats_each_other_condition_and_loses_to_none():
    r = rows("mlp", ("final loss", "batch", "none", "batch", CONF), ("final loss", "batch", "layer", "batch", EST),
             ("speed", "layer", "none", "layer", CONF))
    best, firm, evidence = conclusions.favoured(r)
    assert best == "batch" and firm == EST  # the weakest of the verdicts that make it the favourite
    assert "batch norm better than layer norm on final loss" in evidence


def test_no_favourite_when_two_conditions_each_win_something_or_nothing_is_established():
    split = rows("vit", ("loss", "layer", "batch", "layer", STUDY), ("rates", "batch", "layer", "batch", STUDY),
                 ("loss", "layer", "none", "layer", STUDY), ("loss", "batch", "none", "batch", STUDY))
    assert conclusions.favoured(split)[:2] == ("", "not established")
    nothing = rows("rnn", ("error", "layer", "none", "", NONE), ("error", "layer", "batch", "", NONE))
    assert conclusions.favoured(nothing) == ("", "not established", "no difference established")


def test_two_conditions_better_than_the_third_and_undecided_between_them():
    r = rows("mlp", ("final loss", "batch", "none", "batch", CONF), ("final loss", "layer", "none", "layer", EST),
             ("final loss", "batch", "layer", "", NONE))
    assert conclusions.favoured(r)[:2] == ("batch or layer", EST)
    only_one = rows("mlp", ("final loss", "batch", "none", "batch", CONF), ("final loss", "batch", "layer", "", NONE),
                    ("final loss", "layer", "none", "", NONE))
    assert conclusions.favoured(only_one)[:2] == ("", "not established")  # layer norm neither beats nor loses


def test_the_table_has_a_row_per_network_and_the_head_to_head(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLIB_RESULTS", str(tmp_path))
    conclusions.write("step5_comparison", [{"network": "cnn", "criterion": "final loss", "first": "batch",
                                            "second": "layer", "winner": "batch", "firmness": CONF},
                                           {"network": "cnn", "criterion": "final loss", "first": "batch",
                                            "second": "none", "winner": "batch", "firmness": CONF},
                                           {"network": "cnn", "criterion": "final loss", "first": "layer",
                                            "second": "none", "winner": "", "firmness": NONE}])
    t = conclusions.network_table(conclusions.read(["step5_comparison", "study_absent"]))
    assert list(t["network"]) == list(conclusions.NETWORKS.values())  # every kind keeps its row
    cnn = t.set_index("network").loc["CNN"]
    assert cnn["the evidence favours"] == "batch norm" and cnn["source"] == "step5_comparison"
    assert cnn["how firmly"] == CONF and cnn["batch against layer norm"] == "batch norm (final loss)"
    vit = t.set_index("network").loc["vision transformer"]  # its page has not run: said so, and which page
    assert vit["the evidence favours"] == conclusions.NOT_RECORDED and "study_transformer" in vit["verdicts behind it"]
    with pytest.raises(ValueError, match="firmness"):
        conclusions.write("x", [{"network": "mlp", "criterion": "c", "first": "a", "second": "b", "winner": "a",
                                 "firmness": "very"}])


def test_rows_from_a_study_family():
    fam = pd.DataFrame({"key": ["ln_vs_none", "ln_vs_bn"], "verdict": ["supported", "contradicted"]})
    r = conclusions.from_family(fam, "rnn", "validation error", {"ln_vs_none": ("layer", "none"),
                                                                 "ln_vs_bn": ("layer", "batch")})
    assert [x["winner"] for x in r] == ["layer", "batch"] and {x["firmness"] for x in r} == {STUDY}
