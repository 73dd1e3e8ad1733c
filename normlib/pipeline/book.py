"""The book: its table of contents (_toc.yml, which is also the order notebooks execute in), the
build (jupyter-book with warnings as errors, into a scratch folder swapped in as _build/ only on
success) and the README's figure, copied out of an executed notebook."""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from normlib.paths import write_atomic
from normlib.pipeline import PipelineError

# The README's figure: the validation curves of step 5, every condition, both networks.
README_FIGURE = ("step5_comparison", "fig_val_loss", Path("book") / "images" / "overview.png")


def toc_files(root):
    """Every file named in _toc.yml, in book order, as paths relative to root without suffix."""
    path = Path(root) / "_toc.yml"
    try:
        toc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"cannot read {path}: {e}".splitlines()[0]) from None
    files = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node or "root" in node:
                files.append(str(node.get("file", node.get("root"))))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return [re.sub(r"\.(md|ipynb)$", "", f) for f in files]


def toc_notebooks(root):
    """Notebook names in book order: the _toc.yml entries under book/notebooks/."""
    return [f.split("/", 2)[2] for f in toc_files(root) if f.startswith("book/notebooks/")]


def glued_png(nb_path, key):
    """The PNG bytes of the figure glued under `key` in an executed notebook (PipelineError if absent)."""
    try:
        nb = json.loads(Path(nb_path).read_text())
    except (OSError, ValueError):
        raise PipelineError(f"cannot read executed notebook {nb_path}: run the pipeline first") from None
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("metadata", {}).get("scrapbook", {}).get("name") == key:
                data = out.get("data", {})
                png = data.get("image/png") or data.get("application/papermill.record/image/png")
                if png:
                    return base64.b64decode("".join(png) if isinstance(png, list) else png)
    raise PipelineError(f"{nb_path}: no figure glued as {key!r}")


def export_readme_figure(root):
    """Copy the README's figure out of the last build's executed notebook into book/images/."""
    name, key, dest = README_FIGURE
    png = glued_png(Path(root) / "book" / "notebooks" / f"{name}.ipynb", key)
    write_atomic(Path(root) / dest, png)
    return Path(root) / dest



def build_book(root, log_path):
    """jupyter-book build -W into .build-tmp/, then swap it in as _build/ (only on success)."""
    tmp, old = root / ".build-tmp", root / ".build-old"
    if old.exists() and not (root / "_build").exists():
        os.replace(old, root / "_build")  # a previous run was killed in the middle of the swap below
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir()
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", str(root), "-W", "--keep-going",
           "--path-output", str(tmp)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    output = re.sub(r"\x1b\[[0-9;]*m", "", f"{proc.stdout}\n{proc.stderr}")  # no terminal colours
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"$ {' '.join(cmd)}\n{output}")
    built = tmp / "_build"
    if proc.returncode != 0 or not (built / "html" / "index.html").exists():
        lines = [l for l in output.splitlines() if "WARNING" in l or "ERROR" in l or l.startswith("error:")]
        for line in lines[:20]:
            print(f"  {line}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        raise PipelineError(f"book build failed ({len(lines)} warnings/errors; full log: {log_path}); "
                            f"the previous _build/ is unchanged", code=1)
    if (root / "_build").exists():
        os.replace(root / "_build", old)
    os.replace(built, root / "_build")
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return root / "_build" / "html" / "index.html"
