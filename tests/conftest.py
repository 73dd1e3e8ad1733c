"""Shared pytest setup: the `slow` marker and a fake book for pipeline tests."""
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs real kernels or builds the book (still in the default run)")


def _notebook(params_src, *cells):
    params = new_code_cell(params_src, metadata={"tags": ["parameters"]})
    nb = new_notebook(cells=[new_code_cell("from myst_nb import glue"), params, *cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def make_book(root: Path) -> Path:
    """A two-notebook book using the project's real _config.yml and bibliography."""
    (root / "notebooks").mkdir(parents=True)
    (root / "book").mkdir()
    alpha = _notebook(
        "epochs: int = 1  # passes over the data\nseeds: list = [0]  # one run per seed",
        new_code_cell("glue('answer', float(41 + epochs), display=False)"),
        new_markdown_cell("# Alpha\n\nThe answer is {glue:text}`answer:.1f`."),
    )
    beta = _notebook(
        "fail: str = ''  # 'raise': an exception in cell 3; 'die': the kernel exits\nepochs: int = 1  # passes over the data",
        new_code_cell("if fail == 'raise':\n    raise ZeroDivisionError('boom')\nif fail == 'die':\n    import os\n    os._exit(1)\n"
                      "glue('beta_epochs', epochs, display=False)"),
        new_markdown_cell("# Beta\n\nBeta ran {glue:text}`beta_epochs:d` epochs."),
    )
    nbformat.write(alpha, root / "notebooks" / "alpha.ipynb")
    nbformat.write(beta, root / "notebooks" / "beta.ipynb")
    (root / "book" / "intro.md").write_text(
        "# Fake book\n\nAlpha's answer: {glue:text}`notebooks/alpha.ipynb::answer:.2f` {cite:p}`ioffe2015batch`.\n")
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n"
        "  - file: book/notebooks/alpha\n  - file: book/notebooks/beta\n  - file: book/bibliography\n")
    for f in ("_config.yml", "book/references.bib", "book/bibliography.md"):
        shutil.copy(REPO / f, root / f)
    return root


@pytest.fixture
def book(tmp_path):
    return make_book(tmp_path / "repo")
