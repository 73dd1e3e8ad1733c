"""Which normalization the evidence favours, per kind of network: the conclusions chapter's table.

Every page that compares batch norm, layer norm and no normalization for a kind of network leaves a record
of its pairwise verdicts (results/conclusions/<notebook>.json): step 5 for the MLP and the CNN (the primary
family, Holm over 18 comparisons, and its confirmation on fresh seeds), the recurrent study for the RNN and
the transformer study for the vision transformer (their declared families, Holm within each). Each verdict
is one row: network, criterion, the two conditions, the better one ("" when not established) and how
firmly the page established it (FIRMNESS, strongest first). The conclusions page reads the records and
states per network the normalization the evidence favours and how firmly, from those rows alone (so it
cannot disagree with the pages it summarizes):

- favoured: the condition established better than each other condition on some criterion and worse than
  none of them on any; or, when several conditions are each better than all the rest and nothing is
  established between them, those ("batch norm or layer norm"); else no condition;
- how firm: the weakest firmness among the verdicts that make them the favourite.
"""
import json

import pandas as pd

from normlib.paths import results_dir, write_atomic

SOURCES = ("step5_comparison", "study_recurrent", "study_transformer")  # the pages that record their verdicts

FIRMNESS = ("confirmed on fresh seeds", "established (Holm), not confirmed on fresh seeds",
            "supported in a study (Holm)", "not established")
LABELS = {"none": "no normalization", "batch": "batch norm", "layer": "layer norm"}
NETWORKS = {"mlp": "MLP", "cnn": "CNN", "rnn": "RNN (row by row)", "vit": "vision transformer"}
PAGE_OF = {"mlp": "step5_comparison", "cnn": "step5_comparison", "rnn": "study_recurrent", "vit": "study_transformer"}
NOT_RECORDED = "no verdicts recorded"


def record_path(notebook):
    return results_dir() / "conclusions" / f"{notebook}.json"


def write(notebook, rows):
    """Record a page's pairwise verdicts: rows of {network, criterion, first, second, winner, firmness}."""
    for r in rows:
        if r["firmness"] not in FIRMNESS:
            raise ValueError(f"conclusions: firmness {r['firmness']!r}: allowed {', '.join(FIRMNESS)}")
    write_atomic(record_path(notebook), json.dumps({"notebook": notebook, "rows": list(rows)}, indent=1))


def from_primary_table(table):
    """The rows of step 5's table (normlib.steps.verdict_table(...).table, merged with its confirmation)."""
    rows = []
    for r in table.to_dict("records"):
        firm = ("confirmed on fresh seeds" if r["confirmation"] == "confirmed" else
                "established (Holm), not confirmed on fresh seeds" if r["established"] else "not established")
        rows.append({"network": r["network"], "criterion": r["criterion"], "first": r["first"], "second": r["second"],
                     "winner": r["winner"] if r["established"] else "", "firmness": firm})
    return rows


def from_family(fam, network, criterion, pairs):
    """The rows of a study's family: pairs {row key: (first, second)}, the claim of each row being that the
    first is better (a "supported" verdict makes it the winner, "contradicted" the second)."""
    rows = []
    verdicts = dict(zip(fam["key"], fam["verdict"]))
    for key, (first, second) in pairs.items():
        v = verdicts.get(key, "not established")
        winner = first if v == "supported" else second if v == "contradicted" else ""
        rows.append({"network": network, "criterion": criterion, "first": first, "second": second, "winner": winner,
                     "firmness": "supported in a study (Holm)" if winner else "not established"})
    return rows


def read(notebooks):
    """Every row the notebooks recorded (those without a record are left out), with the notebook's name."""
    rows = []
    for nb in notebooks:
        try:
            record = json.loads(record_path(nb).read_text())
        except (OSError, ValueError):
            continue
        rows += [{**r, "source": nb} for r in record["rows"]]
    return pd.DataFrame(rows, columns=["network", "criterion", "first", "second", "winner", "firmness", "source"])


def favoured(rows):
    """(favoured, firmness, evidence text) of one network's rows. favoured: the one condition established better
    than each other one and worse than none ("batch"), else the conditions no other beats when they are fewer
    than all ("batch or layer": each better than the rest, not established between them), else ""."""
    conditions = list(dict.fromkeys([*rows["first"], *rows["second"]]))
    decided = rows[rows["winner"] != ""]
    loser = lambda r: r.second if r.winner == r.first else r.first  # noqa: E731
    beaten = {loser(r) for r in decided.itertuples()}
    top = [c for c in conditions if c not in beaten]
    evidence = "; ".join(f"{LABELS.get(r.winner, r.winner)} better than {LABELS.get(loser(r), loser(r))} on "
                         f"{r.criterion} ({r.firmness})" for r in decided.itertuples()) or "no difference established"
    if not decided.empty and 0 < len(top) < len(conditions):
        rest = set(conditions) - set(top)
        behind = [r for r in decided.itertuples() if r.winner in top and loser(r) in rest]
        # every condition outside the top is beaten by every top one: the top's verdicts over the rest
        if all({loser(r) for r in behind if r.winner == c} == rest for c in top):
            firm = max(FIRMNESS.index(r.firmness) for r in behind)
            return " or ".join(top), FIRMNESS[firm], evidence
    return "", "not established", evidence


def network_table(rows):
    """One row per network (every kind in NETWORKS, then any other recorded): the normalization the evidence
    favours, how firmly, and the verdicts behind it. A network whose page has not run yet (or left no record)
    keeps its row, saying so and naming the page."""
    out = []
    groups = dict(list(rows.groupby("network", sort=False)))
    for network in [*NETWORKS, *(n for n in groups if n not in NETWORKS)]:
        if network not in groups:
            out.append({"network": NETWORKS[network], "the evidence favours": NOT_RECORDED, "how firmly": NOT_RECORDED,
                        "batch against layer norm": NOT_RECORDED,
                        "verdicts behind it": f"run {PAGE_OF[network]} first: it records them", "source": ""})
            continue
        g = groups[network]
        best, firm, evidence = favoured(g)
        bn_ln = g[[{a, b} == {"batch", "layer"} and w != "" for a, b, w in zip(g["first"], g["second"], g["winner"])]]
        out.append({"network": NETWORKS.get(network, network),
                    "the evidence favours": " or ".join(LABELS.get(c, c) for c in best.split(" or ")) if best
                    else "no condition over the others",
                    "how firmly": firm,
                    "batch against layer norm": "; ".join(f"{LABELS[r.winner]} ({r.criterion})" for r in bn_ln.itertuples())
                    or "not established", "verdicts behind it": evidence,
                    "source": ", ".join(dict.fromkeys(g["source"]))})
    return pd.DataFrame(out)


def page():
    """The conclusions page: the per-network table of the recorded verdicts (glued as HTML, network_table, for
    the conclusions chapter) and how many networks have a favourite."""
    from normlib import report

    t = network_table(read(SOURCES))
    report.glue_html("network_table", report.table_html(t.drop(columns=["source"])))
    recorded = t[t["the evidence favours"] != NOT_RECORDED]
    report.glue_values({"n_networks": len(recorded),
                        "n_favoured": int((recorded["the evidence favours"] != "no condition over the others").sum()),
                        "networks_text": ", ".join(recorded["network"]) or "none recorded yet"})
    return t
