"""The book's prose states no result and no count of the run by hand: seed counts, epochs, sizes and
profile facts come from the executed notebooks (glue), so a profile with other values cannot leave a
stale sentence behind. Checked on the sources: the markdown of every notebook and every book page."""
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NUMBER = r"(?:\d+|two|three|four|five|six|seven|eight|nine|ten|twenty)"
TYPED = re.compile(rf"\b{NUMBER}\s+(?:seeds?|epochs?|trials?|runs per)\b", re.IGNORECASE)


def prose(path):
    """The markdown of a page or notebook, without code blocks, inline code and glue roles."""
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text())
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    else:
        text = path.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"\{[a-z:]+\}`[^`]*`|`[^`]*`", "", text)


PAGES = sorted(REPO.glob("notebooks/*.ipynb")) + sorted(REPO.glob("book/*.md"))


@pytest.mark.parametrize("path", PAGES, ids=[p.name for p in PAGES])
def test_no_typed_counts_of_seeds_epochs_or_trials(path):
    found = TYPED.findall(prose(path))
    assert not found, f"{path.relative_to(REPO)} types {found}: glue the count from the run instead"


def test_the_check_finds_a_typed_count(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("We ran five seeds and 3 epochs; {glue:text}`n_seeds:d` seeds is fine.")
    assert TYPED.findall(prose(page)) == ["five seeds", "3 epochs"]


NOTEBOOKS = sorted(REPO.glob("notebooks/*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_are_narrated_scripts(path):
    """Logic lives in normlib: no notebook cell defines a function or a class, and no code cell is longer
    than 12 lines (a parameters cell lists parameters, one per line, and may be longer)."""
    nb = json.loads(path.read_text())
    problems = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if re.search(r"^\s*(def|class)\s", source, re.M):
            problems.append(f"cell {i} defines a function or class")
        lines = [line for line in source.splitlines() if line.strip()]
        if len(lines) > 12 and "parameters" not in cell.get("metadata", {}).get("tags", []):
            problems.append(f"cell {i} has {len(lines)} lines")
    assert not problems, f"{path.name}: " + "; ".join(problems)
