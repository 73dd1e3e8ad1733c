"""Shared pytest setup: the fast tier (`make test-fast` deselects tests marked slow, and every
notebook that nbval executes counts as slow), a fake book for pipeline tests, and the real book built
once with the quick profile in a scratch copy of the checkout (end-to-end, browser, reliability)."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items):
    """nbval's cells (notebooks/*.ipynb) run real kernels and train, and every test of the quick
    profile's book needs it built: they belong to the slow tier."""
    for item in items:
        if item.nodeid.split("::")[0].endswith(".ipynb") or "quick_book" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


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
    for f in ("_config.yml", "book/references.bib", "book/bibliography.md", "book/_ext/executed_notebooks.py"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / f, root / f)
    return root


@pytest.fixture
def book(tmp_path):
    return make_book(tmp_path / "repo")


# ----------------------------------------------------------------------------
# the real book, in a scratch copy of the checkout


def copy_repo(dest: Path) -> Path:
    """Copy the checkout's own files (tracked, and untracked but not ignored: no results, builds or data)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                            capture_output=True, text=True, check=True).stdout
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file():  # a file deleted since git listed it is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


def pipeline_env(results, **extra):
    """The environment of a pipeline run: the prepared data, its own results directory."""
    from normlib.paths import data_dir

    env = {k: v for k, v in os.environ.items() if k not in ("NORMLIB_WORKERS", "PYTHONPATH")}
    env.update({"NORMLIB_RESULTS": str(results), "NORMLIB_DATA": str(data_dir().resolve()), **extra})
    return env


def pipeline_cmd(*args):
    """`python -m normlib.pipeline ARGS`; run with cwd=<a copy>, it imports that copy's normlib."""
    return [sys.executable, "-m", "normlib.pipeline", *args]


def run_cli(root, *args, results, timeout=900, **env):
    """Run the pipeline CLI in `root` (a copy of the checkout) with results in `results`."""
    return subprocess.run(pipeline_cmd(*args), cwd=root, env=pipeline_env(results, **env),
                          capture_output=True, text=True, timeout=timeout)


def tail(proc, lines=40):
    """The end of a finished process's output, for assertion messages."""
    return "\n".join(f"{proc.stdout}\n{proc.stderr}".strip().splitlines()[-lines:])


TIMINGS = {}  # printed in the terminal summary


@pytest.fixture(scope="session")
def quick_book(tmp_path_factory):
    """`python -m normlib.pipeline --profile quick`, once per session, in a scratch copy of the checkout
    with an empty results directory. Tests assert on `.proc` themselves."""
    root = copy_repo(tmp_path_factory.mktemp("quick") / "repo")
    results = root.parent / "results"
    t0 = time.perf_counter()
    proc = run_cli(root, "--profile", "quick", results=results, timeout=1800)
    TIMINGS["quick profile, notebooks and book (s)"] = wall = round(time.perf_counter() - t0, 1)
    for line in proc.stdout.splitlines():  # "[3/13] step1_bn_training ... done in 41.2 s"
        if " ... done in " in line:
            what, _, took = line.partition(" ... done in ")
            TIMINGS[f"  {what.split('] ')[-1]} (s)"] = float(took.split()[0])
    return SimpleNamespace(root=root, results=results, proc=proc, html=root / "_build" / "html", wall_time=wall)


def pytest_terminal_summary(terminalreporter):
    for what, value in TIMINGS.items():
        terminalreporter.write_line(f"{what}: {value}")
