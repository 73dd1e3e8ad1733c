"""Citable and licensed: CITATION.cff, the BibTeX entry of the README and of the book's "How to cite"
page, and LICENSE agree with one another and with pyproject.toml's version."""
import re
import tomllib
from pathlib import Path

import yaml

from normlib.pipeline import book as pbook

REPO = Path(__file__).resolve().parent.parent


def bibtex(text):
    return re.search(r"```bibtex\n(.*?)```", text, re.S).group(1)


def test_citation_cff_names_the_version_licences_and_authors():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert cff["cff-version"] == "1.2.0"
    assert set(cff) >= {"authors", "cff-version", "message", "title", "version", "date-released", "license"}
    assert cff["authors"] == [{"name": "the normlab authors"}]
    assert cff["version"] == cff["preferred-citation"]["version"] == version
    assert (cff["license"], cff["preferred-citation"]["license"]) == ("MIT", "CC-BY-4.0")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", cff["date-released"])
    assert cff["preferred-citation"]["year"] == int(cff["date-released"][:4])


def test_bibtex_entries_agree_with_citation_cff():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    readme, page = bibtex((REPO / "README.md").read_text()), bibtex((REPO / "book" / "cite.md").read_text())
    assert readme == page
    assert f"title  = {{{cff['title']}}}" in page and f"year   = {{{cff['date-released'][:4]}}}" in page
    assert f"version {cff['version']}" in page and "author = {{the normlab authors}}" in page


def test_licence_is_stated_in_license_book_and_footer():
    licence = (REPO / "LICENSE").read_text()
    assert "MIT License" in licence and "CC BY 4.0" in licence
    assert "book/cite" in pbook.toc_files(REPO)
    footer = yaml.safe_load((REPO / "_config.yml").read_text())["html"]["extra_footer"]
    assert "CC BY 4.0" in footer and "MIT License" in footer
