"""Sphinx extension: no book without its executed notebooks.

The chapters listed in _toc.yml under book/notebooks/ are notebooks executed by
`python -m normlib.pipeline` (never committed). Without them, a plain `jupyter-book build .` would
only warn about missing toctree entries and render the intro with blanks where the glued numbers
belong. This extension (registered in _config.yml, `sphinx: local_extensions`) stops the build
before anything is read or written, with one line that says how to produce them.

It stops with SystemExit, not a Sphinx error: jupyter-book 1 wraps any exception raised during a
build in a RuntimeError and prints a traceback.
"""
import json
from pathlib import Path

EXECUTED = "book/notebooks/"  # toc entries under this folder are executed notebooks
HOW = "run `make report` (or `.venv/bin/python -m normlib.pipeline`) to execute them and build the book"


def is_executed(path):
    """True for a notebook the pipeline executed: it records metadata normlab.executed (a time)."""
    try:
        meta = json.loads(Path(path).read_text()).get("metadata", {})
    except (OSError, ValueError):
        return False
    return bool(meta.get("normlab", {}).get("executed"))


def not_executed(srcdir, docnames):
    """The toc entries under book/notebooks/ that are not notebooks executed by the pipeline."""
    return [d for d in docnames if d.startswith(EXECUTED) and not is_executed(Path(srcdir) / f"{d}.ipynb")]


def message(missing, total):
    """The one line printed when `missing` (toc docnames) of the `total` executed notebooks are absent."""
    names = ", ".join(Path(d).name for d in missing[:3]) + (", ..." if len(missing) > 3 else "")
    return f"error: {EXECUTED} lacks {len(missing)} of the book's {total} executed notebooks ({names}): {HOW}"


def check(app):
    from sphinx_external_toc.parsing import parse_toc_yaml

    toc = Path(app.srcdir) / getattr(app.config, "external_toc_path", "_toc.yml")
    docnames = list(parse_toc_yaml(toc)) if toc.is_file() else []
    missing = not_executed(app.srcdir, docnames)
    if missing:
        raise SystemExit(message(missing, sum(d.startswith(EXECUTED) for d in docnames)))


def setup(app):
    check(app)  # at set-up, before Sphinx creates the output folder
    return {"parallel_read_safe": True, "parallel_write_safe": True}
