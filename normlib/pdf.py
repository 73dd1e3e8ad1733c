"""The whole book as one PDF: `python -m normlib.pdf` (what `make pdf` runs).

    python -m normlib.pdf                          # _build/pdf/normlab.pdf from the executed notebooks
    python -m normlib.pdf --profile quick          # the profile to run first if there are none

1. The executed notebooks of the last `make report` are reused; if book/notebooks/ lacks any, the
   pipeline runs first (`--profile`, `--set` as for normlib.pipeline).
2. `jupyter-book build --builder singlehtml -W` writes the whole book as one page into a scratch
   folder (not _build/, which the pipeline replaces as a whole).
3. Debian's headless chromium prints that page to the PDF, after MathJax (served by the book
   itself) has typeset the math: `--virtual-time-budget` lets the page's scripts run to the end
   before printing. JB1's own `--builder pdfhtml` would download a Chromium (pyppeteer), which
   fails offline.

Exit codes: 0 done, 1 the build or the printing failed, 2 chromium missing or a bad request.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from normlib.pipeline import PipelineError, cli
from normlib.pipeline.book import toc_files, toc_notebooks
from normlib.pipeline.execute import executed_stamp
from normlib.paths import ROOT

OUTPUT = Path("_build") / "pdf" / "normlab.pdf"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                  "--no-pdf-header-footer", "--run-all-compositor-stages-before-draw",
                  "--virtual-time-budget=60000"]  # ms of page time for scripts (MathJax) before printing
# Only in the printed copy: code lines wrap instead of being cut at the right margin.
PRINT_CSS = "<style>@media print { pre { white-space: pre-wrap; overflow-wrap: anywhere; } }</style>"


class PdfError(PipelineError):
    """A one-line error; `code` is the exit status."""


def find_chromium():
    """Path of Debian's chromium (or a chromium-browser), or a PdfError saying how to install it."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    raise PdfError("chromium not found: install Debian's package (`apt-get install chromium`; "
                   "`make pdf` does it when run as root)")


def missing_notebooks(root):
    """The _toc.yml notebooks that book/notebooks/ does not hold as copies executed by the pipeline."""
    return [name for name in toc_notebooks(root)
            if executed_stamp(Path(root) / "book" / "notebooks" / f"{name}.ipynb")[1] is None]


def build_single_page(root, out):
    """Build the book with the singlehtml builder under `out`; returns the one page, placed beside
    its _static/ and _images/ folders."""
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(root), "--builder", "singlehtml",
           "-W", "--keep-going", "--path-output", str(out)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    html = out / "_build" / "singlehtml"
    root_doc = toc_files(root)[0]  # book/intro
    page = html / f"{root_doc}.html"
    if proc.returncode != 0 or not page.is_file():
        lines = [l for l in f"{proc.stdout}\n{proc.stderr}".splitlines()
                 if "WARNING" in l or "ERROR" in l or l.startswith("error:")]
        for line in lines[:20]:
            print(f"  {line}", file=sys.stderr)
        raise PdfError(f"the single-page book build failed (exit {proc.returncode}, {len(lines)} warnings/errors)",
                       code=1)
    # Sphinx writes the single page at the root document's path (book/intro.html) but links its
    # assets as if it lay at the top (_static/..., _images/...): a copy there finds them.
    single = html / "normlab.html"
    single.write_text(page.read_text().replace("</head>", f"{PRINT_CSS}</head>", 1))
    return single


def print_pdf(chromium, page, pdf, profile_dir):
    """Print `page` to `pdf` with headless chromium (written beside it, then renamed into place)."""
    pdf.parent.mkdir(parents=True, exist_ok=True)
    tmp = pdf.with_name(f".{pdf.name}.partial")
    tmp.unlink(missing_ok=True)
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", f"--print-to-pdf={tmp}", page.as_uri()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise PdfError(f"chromium did not finish printing {page} within 10 minutes", code=1) from None
    if proc.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise PdfError(f"chromium could not print the book (exit {proc.returncode}): {last}", code=1)
    os.replace(tmp, pdf)
    return pdf


def make_pdf(root, output, profile="default", sets=()):
    """Build `output` from the executed notebooks in `root`, running the pipeline first if any is missing."""
    root = Path(root).resolve()
    chromium = find_chromium()  # before anything runs
    missing = missing_notebooks(root)
    if missing:
        print(f"book/notebooks/ lacks {len(missing)} executed notebooks: running the pipeline "
              f"(profile {profile}) first", flush=True)
        code = cli.main(["--root", str(root), "--profile", profile, *[f"--set={s}" for s in sets]])
        if code:
            raise PdfError("the pipeline failed (above): no PDF", code=code)
    with tempfile.TemporaryDirectory(prefix="normlab-pdf-") as scratch:
        scratch = Path(scratch)
        print("building the single-page book ...", end="", flush=True)
        t0 = time.perf_counter()
        try:
            page = build_single_page(root, scratch / "book")
        except PdfError:
            print(" failed", flush=True)
            raise
        print(f" done in {time.perf_counter() - t0:.1f} s", flush=True)
        print("printing it with chromium ...", end="", flush=True)
        t0 = time.perf_counter()
        try:
            pdf = print_pdf(chromium, page, output if output.is_absolute() else root / output, scratch / "chromium")
        except PdfError:
            print(" failed", flush=True)
            raise
        print(f" done in {time.perf_counter() - t0:.1f} s", flush=True)
    return pdf


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m normlib.pdf", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    ap.add_argument("--output", default=str(OUTPUT), help=f"the PDF, relative to the root (default: {OUTPUT})")
    ap.add_argument("--profile", default="default",
                    help="profile of the pipeline run, only if executed notebooks are missing (default: default)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="parameter override for that pipeline run, as in normlib.pipeline")
    args = ap.parse_args(argv)
    try:
        pdf = make_pdf(args.root, Path(args.output), args.profile, args.set)
    except PdfError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.code
    print(f"pdf: {pdf} ({pdf.stat().st_size / 1e6:.1f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
