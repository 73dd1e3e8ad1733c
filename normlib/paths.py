"""Where the project's files live (repository root, data, results, notebooks), and the one way
files are written: atomically (write_atomic), so that a process killed at any moment leaves either
the old file or the new one, never half of one."""
import os
import tempfile
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


def write_atomic(path, data) -> Path:
    """Write `data` (str or bytes) to `path`: into a temporary file in the same folder, flushed to
    disk, then renamed over `path` (os.replace is atomic). The folder is created if needed; the file
    is readable by everyone (0644, like a file written the ordinary way); on any error the temporary
    file is removed and the error raised."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
