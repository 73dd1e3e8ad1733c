"""Where the project's files live: repository root, data, results, notebooks."""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # repository root (parent of normlib/)


def data_dir() -> Path:
    """Fashion-MNIST root: $NORMLIB_DATA or <ROOT>/data."""
    return Path(os.environ.get("NORMLIB_DATA") or ROOT / "data")


def results_dir() -> Path:
    """Trial cache, run manifest, failed notebooks: $NORMLIB_RESULTS or <ROOT>/results."""
    return Path(os.environ.get("NORMLIB_RESULTS") or ROOT / "results")


def notebooks_dir() -> Path:
    """Notebook sources, committed without outputs."""
    return ROOT / "notebooks"


def executed_dir() -> Path:
    """Notebooks executed by papermill: the book's chapters (gitignored)."""
    return ROOT / "book" / "notebooks"
