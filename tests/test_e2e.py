"""The quick profile end to end (conftest.quick_book: one run per session, in a scratch copy of the
checkout): the pipeline exits 0, every _toc.yml entry is a page, the executed notebooks hold no
error and hide papermill's injected parameters, no raw glue role reaches the HTML (the build itself
fails on a glue reference that does not resolve), and nothing half-done is left behind.
"""
import html.parser
import json

import nbformat
import pytest

from conftest import tail
from normlib.pipeline import book as pbook


@pytest.fixture(scope="module")
def run(quick_book):
    assert quick_book.proc.returncode == 0, f"quick profile failed:\n{tail(quick_book.proc)}"
    return quick_book


def test_quick_profile_builds_the_book(quick_book):
    proc = quick_book.proc
    print(f"quick profile: {quick_book.wall_time:.0f} s (target: under 3 minutes on 2 quiet cores)")
    assert proc.returncode == 0, tail(proc)
    assert (quick_book.html / "index.html").is_file()
    assert f"book: {quick_book.html / 'index.html'}" in proc.stdout
    names = pbook.toc_notebooks(quick_book.root)
    for i, name in enumerate(names, 1):
        assert f"[{i}/{len(names)}] {name} ... done in" in proc.stdout


def test_every_toc_entry_is_a_page(run):
    missing = [e for e in pbook.toc_files(run.root) if not (run.html / f"{e}.html").is_file()]
    assert not missing


def test_manifest_records_what_ran(run):
    manifest = json.loads((run.results / "run_manifest.json").read_text())
    assert manifest["profile"] == "quick" and manifest["only"] is None
    assert list(manifest["notebooks"]) == pbook.toc_notebooks(run.root)


@pytest.mark.parametrize("check", ["valid", "no errors", "injected parameters hidden"])
def test_executed_notebooks(run, check):
    manifest = json.loads((run.results / "run_manifest.json").read_text())
    for name in pbook.toc_notebooks(run.root):
        nb = nbformat.read(run.root / "book" / "notebooks" / f"{name}.ipynb", as_version=4)
        if check == "valid":
            nbformat.validate(nb)
            assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code" and c.source.strip()), \
                f"{name}: a code cell did not run"
        elif check == "no errors":
            errors = [(i, o.get("ename"), o.get("evalue")) for i, c in enumerate(nb.cells)
                      for o in c.get("outputs", []) if o.get("output_type") == "error"]
            assert not errors, f"{name}: {errors}"
        else:
            injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
            if manifest["notebooks"][name]["injected"]:
                assert len(injected) == 1, f"{name}: {len(injected)} injected-parameters cells"
            for c in injected:
                assert "remove-cell" in c.metadata.tags, f"{name}: injected parameters would be shown"


class _Prose(html.parser.HTMLParser):
    """The text of an HTML page outside <pre>, <code>, <script> and <style>."""
    SKIP = {"pre", "code", "script", "style"}

    def __init__(self):
        super().__init__()
        self.depth, self.text = 0, []

    def handle_starttag(self, tag, attrs):
        self.depth += tag in self.SKIP

    def handle_endtag(self, tag):
        self.depth -= tag in self.SKIP and self.depth > 0

    def handle_data(self, data):
        if not self.depth:
            self.text.append(data)


def test_no_raw_glue_or_traceback_in_html(run):
    pages = [p for p in run.html.rglob("*.html") if not {"_sources", "_static"} & set(p.parts)]
    assert len(pages) >= len(pbook.toc_files(run.root))
    problems = []
    for page in pages:
        parser = _Prose()
        parser.feed(page.read_text())
        prose = "".join(parser.text)
        for needle in ("{glue", "glue:text", "Traceback (most recent call last)", "<Figure size"):
            if needle in prose:
                problems.append(f"{page.relative_to(run.html)}: {needle!r}")
    assert not problems


def test_nothing_half_done_is_left(run):
    root = run.root
    assert not (root / ".build-tmp").exists() and not (root / ".build-old").exists()
    assert not list((root / "book" / "notebooks").glob(".*")), "partial notebooks left behind"
    assert not (run.results / "failed").exists()
    assert not list(run.results.rglob("*.tmp")), "temporary result files left behind"


def glued(nb_path):
    """{key: text/plain value} of every value glued in an executed notebook."""
    nb = json.loads(nb_path.read_text())
    out = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            key = o.get("metadata", {}).get("scrapbook", {}).get("name")
            if key:
                data = o.get("data", {})
                text = data.get("application/papermill.record/text/plain", data.get("text/plain"))
                out[key] = "".join(text) if isinstance(text, list) else text
    return out


def test_no_two_chapters_state_different_verdicts(run):
    """Every page that states a primary verdict glues it under the shared key
    verdict__<network>__<measure>__<first>__<second> (normlib.steps): the same comparison must read the
    same on every page, and steps 2, 4 and 5 must all state theirs."""
    seen = {}
    for name in pbook.toc_notebooks(run.root):
        for key, value in glued(run.root / "book" / "notebooks" / f"{name}.ipynb").items():
            if key.startswith("verdict__"):
                seen.setdefault(key, {})[name] = value
    assert seen, "no page glued a primary verdict"
    differ = {k: v for k, v in seen.items() if len(set(v.values())) > 1}
    assert not differ, f"chapters disagree: {differ}"
    pages = {page for v in seen.values() for page in v}
    assert {"step2_bn_analysis", "step4_ln_analysis", "step5_comparison"} <= pages
    assert all("step5_comparison" in v for v in seen.values())  # step 5 states every one of them
