"""A plain `jupyter-book build .` without the executed notebooks (a fresh clone) stops with one line that
says how to produce them, and writes no book (book/_ext/executed_notebooks.py, registered in _config.yml).
The pipeline's own builds, with every notebook executed, are tested in test_pipeline and test_e2e."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_repo
from normlib.pipeline import book as pbook

JB = Path(sys.executable).with_name("jupyter-book")


def build(root):
    cmd = [str(JB) if JB.exists() else "jupyter-book", "build", ".", "-W", "--keep-going"]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("state", ["fresh clone", "sources copied unexecuted"])
def test_build_without_executed_notebooks_stops_with_one_line(tmp_path, state):
    root = copy_repo(tmp_path / "repo")
    names = pbook.toc_notebooks(root)
    assert not (root / "book" / "notebooks").exists()  # never committed
    if state == "sources copied unexecuted":
        (root / "book" / "notebooks").mkdir()
        for name in names:
            shutil.copy(root / "notebooks" / f"{name}.ipynb", root / "book" / "notebooks")
    proc = build(root)
    assert proc.returncode != 0
    first = ", ".join(names[:3]) + ", ..."
    assert proc.stderr.strip() == (
        f"error: book/notebooks/ lacks {len(names)} of the book's {len(names)} executed notebooks ({first}): "
        f"run `make report` (or `.venv/bin/python -m normlib.pipeline`) to execute them and build the book")
    assert "Traceback" not in proc.stdout + proc.stderr and "WARNING" not in proc.stdout + proc.stderr
    assert not (root / "_build").exists()


def test_the_missing_notebook_is_named(book):
    """The fake two-notebook book (conftest.make_book) with alpha marked as executed and beta absent."""
    nb = json.loads((book / "notebooks" / "alpha.ipynb").read_text())
    nb["metadata"]["normlab"] = {"stamp": "x", "executed": "2025-01-01T00:00:00+00:00", "seconds": 1.0}
    (book / "book" / "notebooks").mkdir()
    (book / "book" / "notebooks" / "alpha.ipynb").write_text(json.dumps(nb))
    proc = build(book)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: book/notebooks/ lacks 1 of the book's 2 executed notebooks (beta): ")
    assert not (book / "_build").exists()
