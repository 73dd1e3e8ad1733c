"""The book as one PDF (`python -m normlib.pdf`, what `make pdf` runs) from the quick profile's executed
notebooks (conftest.quick_book): the PDF holds every chapter's title, a plausible number of pages,
the figures, and typeset math rather than TeX source. Needs chromium and poppler-utils (pdftotext,
pdfinfo, pdfimages), which `make test` installs as root.
"""
import html
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from conftest import pipeline_env, tail
from normlib import pdf as PDF
from normlib.pipeline import book as pbook

MAX_PAGES_PER_CHAPTER = 20  # the quick book prints about 5 on average


def need(tool, why):
    if shutil.which(tool):
        return
    reason = f"{tool} not found: {why}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must run the PDF test, not skip it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def book_pdf(quick_book):
    assert quick_book.proc.returncode == 0, f"quick profile failed:\n{tail(quick_book.proc)}"
    need("chromium", "`make browser` installs Debian's package (as root)")
    need("pdftotext", "`make poppler` installs Debian's poppler-utils (as root)")
    proc = subprocess.run([sys.executable, "-m", "normlib.pdf"], cwd=quick_book.root,
                          env=pipeline_env(quick_book.results), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, tail(proc)
    path = quick_book.root / PDF.OUTPUT
    assert f"pdf: {path}" in proc.stdout
    assert "running the pipeline" not in proc.stdout, "the executed notebooks were not reused"
    return path


def chapter_titles(quick_book):
    """The title of every _toc.yml page, as the HTML book shows it (<title>, before ' — ')."""
    titles = {}
    for entry in pbook.toc_files(quick_book.root):
        page = (quick_book.html / f"{entry}.html").read_text()
        title = html.unescape(re.search(r"<title>(.*?)</title>", page, re.S).group(1))
        titles[entry] = " ".join(title.split(" \u2014 ")[0].split())
    return titles


def squash(text):
    return " ".join(text.split())


@pytest.mark.slow
def test_pdf_holds_every_chapter_title(book_pdf, quick_book):
    text = squash(subprocess.run(["pdftotext", str(book_pdf), "-"], capture_output=True, text=True,
                                 check=True).stdout)
    titles = chapter_titles(quick_book)
    missing = {entry: t for entry, t in titles.items() if t not in text}
    assert not missing, f"chapter titles not in the PDF: {missing}"


@pytest.mark.slow
def test_pdf_page_count_is_plausible(book_pdf, quick_book):
    info = subprocess.run(["pdfinfo", str(book_pdf)], capture_output=True, text=True, check=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))
    chapters = len(pbook.toc_files(quick_book.root))
    print(f"PDF: {pages} pages, {book_pdf.stat().st_size / 1e6:.1f} MB, {chapters} chapters")
    assert chapters < pages < MAX_PAGES_PER_CHAPTER * chapters


@pytest.mark.slow
def test_pdf_math_is_typeset(book_pdf):
    text = subprocess.run(["pdftotext", str(book_pdf), "-"], capture_output=True, text=True, check=True).stdout
    raw = re.findall(r"\\\(|\\\[|\\frac|\$\$", text)
    assert not raw, f"{len(raw)} pieces of TeX source in the PDF: MathJax had not typeset before printing"


@pytest.mark.slow
def test_pdf_shows_the_figures(book_pdf, quick_book):
    """Every picture of the HTML book is in the PDF: an image of the same size in pixels (chromium embeds
    the PNG as it is)."""
    srcs = {src for entry in pbook.toc_files(quick_book.root)
            for src in re.findall(r'<img[^>]*src="(?:\.\./)*(_images/[^"]+)"', (quick_book.html / f"{entry}.html").read_text())}
    figures = {src: Image.open(quick_book.html / src).size for src in srcs}
    listed = subprocess.run(["pdfimages", "-list", str(book_pdf)], capture_output=True, text=True, check=True).stdout
    in_pdf = {(int(f[3]), int(f[4])) for f in (line.split() for line in listed.splitlines()[2:]) if f[2] == "image"}
    assert len(figures) >= 10, f"the quick book shows only {len(figures)} figures"
    missing = {src: size for src, size in figures.items() if size not in in_pdf}
    assert not missing, f"{len(missing)} of {len(figures)} figures are not in the PDF: {missing}"


def test_missing_chromium_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert PDF.main(["--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: chromium not found: install Debian's package (`apt-get install chromium`; "
                           "`make pdf` does it when run as root)")
    assert not (tmp_path / "_build").exists()


def test_without_executed_notebooks_the_pipeline_runs_first(monkeypatch, capsys, book):
    """The fake two-notebook book (conftest.make_book), nothing executed: the pipeline is asked to run with
    the given profile and overrides (here it fails, so nothing is built or printed)."""
    calls = []
    monkeypatch.setattr(PDF, "find_chromium", lambda: "/usr/bin/chromium")
    monkeypatch.setattr(PDF.cli, "main", lambda argv: calls.append(argv) or 1)
    assert PDF.main(["--root", str(book), "--profile", "quick", "--set", "epochs=2"]) == 1
    assert calls == [["--root", str(book), "--profile", "quick", "--set=epochs=2"]]
    out, err = capsys.readouterr()
    assert "book/notebooks/ lacks 2 executed notebooks: running the pipeline (profile quick) first" in out
    assert err.strip() == "error: the pipeline failed (above): no PDF"
    assert not (book / "_build").exists()
