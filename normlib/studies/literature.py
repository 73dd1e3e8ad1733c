"""What the literature reports, against what a page's tests detect. Next to its family each study declares,
as `Reported` rows, the size of the effect its sources report for the family's key rows (in the row's unit,
with the source); its page states whether a true effect of that size is detectable at these seeds
(`literature`: the row's smallest detectable effect, 80% power at Holm's first level, normlib.studies.common),
and the study is sized for it where the budget allows (normlib/profiles/default.yaml), and says so where it
does not.
"""
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from normlib.report import glue_values
from normlib.studies.common import detectable_text, margin_text

NONE = "no source reports a size for these effects"


@dataclass(frozen=True)
class Reported:
    """The size of an effect the literature reports for one row of a page's family, in the row's unit:
    for a difference its magnitude (a rise of a share, for Fisher's test); for an equivalence the difference
    the source finds (about 0). source: who reports it and where, and what, in words."""
    key: str
    effect: float
    source: str


def literature(fam, reported):
    """Per Reported row: is a true effect of the reported size detectable at these seeds? A difference (or a
    share's rise) is when its size is at least the row's detectable effect (80% power at Holm's first level);
    an equivalence when the smallest margin the row's TOST establishes, plus the reported difference, fits within
    the row's margin. Columns: key, source, kind, effect, margin, detectable text, detectable (bool), seeds: about
    how many runs per condition would make it detectable (the standard error falls as 1 / sqrt(n); NaN for a
    share, or where the row has no stated power)."""
    rows = []
    by_key = {r.key: r for r in fam.itertuples()}
    for rep in reported:
        r = by_key[rep.key]
        size = abs(rep.effect)
        need = r.margin - size if r.kind == "equivalence" else size  # the largest detectable effect that will do
        ok = bool(np.isfinite(r.detectable) and r.detectable <= need)
        scalable = np.isfinite(r.detectable) and r.detectable > 0 and need > 0 and r.power_kind != "shares"
        rows.append({"key": rep.key, "source": rep.source, "kind": r.kind, "effect": detectable_text(size, r.unit),
                     "margin": margin_text(r.margin, r.unit) if r.kind == "equivalence" else "",
                     "detectable text": detectable_text(r.detectable, r.unit, r.power_kind), "detectable": ok,
                     "seeds": math.ceil(r.n_min * (r.detectable / need) ** 2) if scalable else math.nan})
    return pd.DataFrame(rows, columns=["key", "source", "kind", "effect", "margin", "detectable text", "detectable",
                                       "seeds"])


def literature_line(row):
    """One row of literature() as a sentence: the source, and whether its effect is detectable at these seeds."""
    more = ("" if not np.isfinite(row["seeds"]) else f"; about {int(row['seeds'])} runs per condition would"
            if row["seeds"] <= 100 else "; over 100 runs per condition would")
    if row["kind"] == "equivalence":
        return (f"{row['source']}: flatness within the margin of ±{row['margin']} is "
                + ("establishable at these seeds" if row["detectable"] else "not establishable at these seeds")
                + f" (the test establishes margins of {row['detectable text']}{'' if row['detectable'] else more})")
    return (f"{row['source']}: an effect of that size ({row['effect']}) is "
            + (f"detectable at these seeds (the test detects {row['detectable text']})" if row["detectable"] else
               f"not detectable at these seeds (the test detects {row['detectable text']}{more})"))


def literature_sentence(table, none=NONE):
    """The page's sentence over literature(): each row's line, or `none` when nothing is reported."""
    if table.empty:
        return none
    return "; ".join(literature_line(r) for r in table.to_dict("records"))


def glue_literature(fam, reported, prefix="", none=NONE):
    """Glue literature_text (the page's sentence), n_literature_detectable / n_literature, and per Reported
    row {key}_literature ("detectable" or "not detectable"). Returns the table (literature)."""
    t = literature(fam, reported)
    glue_values({f"{prefix}literature_text": literature_sentence(t, none),
                 f"{prefix}n_literature": len(t), f"{prefix}n_literature_detectable": int(t["detectable"].sum()),
                 **{f"{prefix}{r['key']}_literature": "detectable" if r["detectable"] else "not detectable"
                    for r in t.to_dict("records")}})
    return t
