"""Run the lab: execute every notebook with papermill, then build the Jupyter Book.

    python -m normlib.pipeline --profile quick
    python -m normlib.pipeline --profile default --set seeds=[0,1,2,3] --set step1_bn_training.lr=0.1
    python -m normlib.pipeline --only step1_bn_training,step2_bn_analysis --no-book

Order of work, so that a bad request never leaves half a run behind:
1. validate everything (profile, parameter names and values, the data set, writable directories);
2. write results/run_manifest.json (what is about to run);
3. execute notebooks/<name>.ipynb into book/notebooks/<name>.ipynb in _toc.yml order (or
   `jobs` at a time, each waiting for the notebooks its metadata normlab.after names),
   stopping at the first error (the failed copy goes to results/failed/<name>.ipynb);
   skipping a notebook whose executed copy is up to date: same source, parameters, normlib
   code, data, package versions and device (see `stamp`; --rerun or --force execute it anyway);
4. check every {glue} reference resolves, build the book into .build-tmp/ and only
   then swap it in as _build/.

A profile (normlib/profiles/<name>.yaml) is:

    description: one line
    params: {name: value}              # every notebook that declares `name` gets it
    notebooks: {nb: {name: value}}     # one notebook only
    jobs: 2                            # optional: notebooks executed at once (default 1; --jobs)

and --set name=value / --set nb.name=value override it (values are YAML).
Exit codes: 0 done, 1 a notebook or the book build failed, 2 bad request (nothing written),
130 interrupted (Ctrl-C); running the same command again resumes from the cached trials.
"""
import argparse
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from normlib import kernels
from normlib import params as P
from normlib.paths import ROOT, write_atomic

PROFILES_DIR = Path(__file__).parent / "profiles"
KERNEL = "normlab"  # kernelspec installed into this environment (sys.prefix) on first use
PROFILE_KEYS = ("description", "params", "notebooks", "jobs")


class PipelineError(Exception):
    """A one-line error; `code` is the exit status (2 = bad request, 1 = a run failed)."""

    def __init__(self, message, code=2):
        super().__init__(message)
        self.code = code


# ----------------------------------------------------------------------------
# reading the request


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 floats, so that `lr: 1e-3` is a number, not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."),
)


def _first_line(text):
    return (str(text).strip().splitlines() or [""])[0]


def load_yaml(text):
    return yaml.load(text, Loader=_Loader)


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


def declared_parameters(source):
    """{name: default source text} declared by the cell tagged `parameters`, as papermill reads it.

    Papermill skips any line holding two '=' (e.g. `n: int = 0  # 0 = all`) without an error,
    which would hide a parameter from validation and from `papermill --help-notebook`: such a
    line is reported here.
    """
    import ast

    import nbformat
    from papermill.translators import PythonTranslator

    try:
        nb = nbformat.read(source, as_version=4)
    except Exception as e:  # not JSON, not a notebook
        raise PipelineError(f"cannot read notebook {source}: {_first_line(e)}") from None
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) > 1:
        raise PipelineError(f"{source}: {len(cells)} cells are tagged 'parameters' (exactly one allowed)")
    if not cells:
        return {}
    found = {p.name: p.default for p in PythonTranslator.inspect(cells[0])}
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as e:
        raise PipelineError(f"{source}: parameters cell line {e.lineno}: {e.msg}") from None
    for stmt in tree.body:
        target = stmt.target if isinstance(stmt, ast.AnnAssign) else (stmt.targets[0] if isinstance(stmt, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id not in found:
            line = cells[0].source.splitlines()[stmt.lineno - 1].strip()
            raise PipelineError(f"{source}: papermill cannot read parameter line {line!r} "
                                f"(one '=' per line: reword the comment)")
    return found


def load_profile(spec):
    """(name, path, profile dict) from a profile name or a path to a .yaml file."""
    path = Path(spec) if spec.endswith((".yaml", ".yml")) or os.sep in spec else PROFILES_DIR / f"{spec}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise PipelineError(f"profile {spec!r} not found: no file {path} (available profiles: {available})")
    try:
        profile = load_yaml(path.read_text())
    except yaml.YAMLError as e:
        where = f" at line {e.problem_mark.line + 1}" if getattr(e, "problem_mark", None) else ""
        raise PipelineError(f"profile {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    profile = {} if profile is None else profile
    if not isinstance(profile, dict):
        raise PipelineError(f"profile {path}: must be a mapping with keys {', '.join(PROFILE_KEYS)}")
    for key in profile:
        if key not in PROFILE_KEYS:
            raise PipelineError(f"profile {path}: unknown key {key!r} (allowed: {', '.join(PROFILE_KEYS)})")
    if not isinstance(profile.get("params") or {}, dict):
        raise PipelineError(f"profile {path}: 'params' must be a mapping name: value")
    nbs = profile.get("notebooks") or {}
    if not isinstance(nbs, dict) or not all(isinstance(v, dict) for v in nbs.values()):
        raise PipelineError(f"profile {path}: 'notebooks' must map notebook names to {{name: value}}")
    jobs = profile.get("jobs", 1)
    if not (isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1):
        raise PipelineError(f"profile {path}: 'jobs' = {jobs!r}: must be a positive integer (notebooks run at once)")
    return path.stem, path, profile


def parse_sets(items):
    """--set name=value / nb.name=value -> (global {name: value}, {nb: {name: value}})."""
    glob, per_nb = {}, {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise PipelineError(f"--set {item!r}: expected name=value or notebook.name=value")
        try:
            value = load_yaml(text)
        except yaml.YAMLError:
            raise PipelineError(f"--set {item!r}: value is not valid YAML") from None
        nb, _, pname = name.rpartition(".")
        (per_nb.setdefault(nb, {}) if nb else glob)[pname] = value
    return glob, per_nb


def _check(values, known, where):
    try:
        return P.validate(values, known=known)
    except P.ParameterError as e:
        raise PipelineError(f"{where}: {e}") from None


def plan(profile_name, profile, sets, declared, selected, force=False):
    """{notebook: parameters to inject}, every name and value validated.

    Precedence, lowest first: profile params, profile notebooks.<nb>, --set name, --set nb.name, --force.
    A notebook gets a global value only if it declares the name.
    """
    set_glob, set_nb = sets
    all_names = set().union(*declared.values()) if declared else set()
    profile_glob = _check(profile.get("params") or {}, all_names, f"profile {profile_name}")
    set_glob = _check(set_glob, all_names, "--set")

    def per_notebook(source, where):
        for nb in source:
            if nb not in declared:
                raise PipelineError(f"{where}: {P.unknown_name(nb, declared, 'notebook')}")
        return {nb: _check(values, set(declared[nb]), f"{where}, notebook {nb}") for nb, values in source.items()}

    profile_nb = per_notebook(profile.get("notebooks") or {}, f"profile {profile_name}")
    set_nb = per_notebook(set_nb, "--set")
    out = {}
    for nb in selected:
        def mine(values):
            return {k: v for k, v in values.items() if k in declared[nb]}
        injected = {**mine(profile_glob), **profile_nb.get(nb, {}), **mine(set_glob), **set_nb.get(nb, {}),
                    **mine({"force": True} if force else {})}
        out[nb] = _check(injected, None, nb)  # cross-parameter checks on the merged values
    return out


# ----------------------------------------------------------------------------
# up to date: a notebook is executed again only when something it depends on changed


def environment_digest():
    """What every notebook's outputs depend on besides its own source and parameters: normlib's
    code, the data, the installed versions of the packages that compute and render the results,
    and the device the trials would run on."""
    from normlib import data as D
    from normlib import provenance
    from normlib.train import resolve_device

    h = hashlib.sha256()
    lib = Path(__file__).resolve().parent
    for path in sorted(lib.rglob("*.py")) + sorted(lib.rglob("*.cpp")) + sorted(lib.rglob("*.yaml")):
        h.update(path.relative_to(lib).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    h.update(json.dumps({"data": D.FINGERPRINT, "software": provenance.software_versions(),
                         "device": resolve_device("auto"), "kernels": kernels.backend()}, sort_keys=True).encode())
    return h.hexdigest()


def stamp(source, parameters, environment):
    """Digest of everything an executed notebook was computed from: the source notebook, the
    injected parameters and the environment_digest(). Stored in the executed copy's metadata."""
    h = hashlib.sha256(Path(source).read_bytes())
    h.update(json.dumps(parameters, sort_keys=True, default=str).encode())
    h.update(environment.encode())
    return h.hexdigest()


def always_execute(source):
    """Why a notebook must run every time (source metadata normlab.always_execute), or None.

    The procedure chapter reads the run manifest, which changes with every run."""
    meta = json.loads(Path(source).read_text()).get("metadata", {})
    return meta.get("normlab", {}).get("always_execute")


def needs(source, names):
    """The notebooks among `names` (book order) that must finish before this one starts, from its
    source metadata normlab.after: a list of notebook names (e.g. the training notebook whose trials an
    analysis reads from the cache), or "all" for every notebook before it in book order."""
    after = json.loads(Path(source).read_text()).get("metadata", {}).get("normlab", {}).get("after", [])
    name = Path(source).stem
    earlier = names[:names.index(name)] if name in names else list(names)
    if after == "all":
        return earlier
    for n in after:  # so that book order, the sequential run's order, satisfies every `after`
        if n not in earlier:
            raise PipelineError(f"{source}: metadata normlab.after names {n!r}, which is not a notebook "
                                f"before it in _toc.yml (allowed: {', '.join(earlier) or 'none'})")
    return list(after)


def executed_stamp(dest):
    """(stamp, when executed) recorded in an executed notebook, or (None, None)."""
    try:
        meta = json.loads(Path(dest).read_text()).get("metadata", {}).get("normlab", {})
    except (OSError, ValueError):
        return None, None
    return meta.get("stamp"), meta.get("executed")


# ----------------------------------------------------------------------------
# running


def write_json_atomic(path, obj):
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def git_commit(root):
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def ensure_kernel():
    """Make the `normlab` kernelspec run this Python, writing it into sys.prefix if needed.

    Same as `python -m ipykernel install --sys-prefix --name normlab`, plus a log level that
    silences ipykernel's start-up and shutdown chatter (cell errors are read from the notebook).
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}", "--IPKernelApp.log_level=CRITICAL"]

    def current():
        try:
            return KernelSpecManager().get_kernel_spec(KERNEL).argv
        except NoSuchKernel:
            return None

    if current() != argv:
        spec_dir = Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL
        spec = {"argv": argv, "display_name": "Python (normlab)", "language": "python"}
        write_json_atomic(spec_dir / "kernel.json", spec)
    found = current()
    if found != argv:
        raise PipelineError(f"kernel {KERNEL!r} runs {found and found[0]}, not {sys.executable}: "
                            f"remove the kernelspec that shadows it (see `jupyter kernelspec list`)")
    return KERNEL


def _first_error(nb):
    """(cell index, cell, error output) of the first error output, or None."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return i, cell, out
    return None


def _source_cell_number(nb, index):
    """1-based position in the source notebook of executed cell `index` (skips papermill's cells)."""
    skip = ("injected-parameters", "papermill-error-cell-tag")
    before = nb.cells[:index]
    return 1 + sum(1 for c in before if not set(c.get("metadata", {}).get("tags", [])) & set(skip))


def execute(name, source, dest, failed_dir, parameters, kernel, stamp=None):
    """Run one notebook with papermill; on success atomically place it at `dest`, with
    metadata normlab = {stamp, executed (time), seconds}.

    On failure the executed copy goes to failed_dir/<name>.ipynb, never to `dest`.
    """
    import nbformat
    import papermill as pm

    tmp = dest.with_name(f".{name}.partial.ipynb")  # not in _toc.yml, so never a page
    failed = failed_dir / f"{name}.ipynb"

    def fail(reason):
        where = ""
        if tmp.exists():
            failed_dir.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, failed)
            where = f" (executed copy: {failed})"
        return PipelineError(f"notebook {name} failed{reason}{where}", code=1)

    started = datetime.datetime.now().astimezone()
    try:
        raised = None
        try:
            pm.execute_notebook(source, tmp, parameters=parameters, kernel_name=kernel, cwd=source.parent,
                                progress_bar=False, log_output=False)
        except pm.PapermillExecutionError as e:
            raised = e  # the partial notebook was written; its first error output is reported below
        except Exception as e:  # the kernel died (e.g. out of memory) or did not start
            raise fail(f": {type(e).__name__}: {_first_line(e)}") from None
        nb = nbformat.read(tmp, as_version=4)
        err = _first_error(nb)
        if err is not None:
            index, cell, out = err
            raise fail(f" in cell {_source_cell_number(nb, index)} (In [{cell.get('execution_count')}]): "
                       f"{out.get('ename')}: {_first_line(out.get('evalue', ''))}")
        if raised is not None:
            raise fail(f" at In [{raised.exec_count}]: {raised.ename}: {_first_line(raised.evalue)}")
        for cell in nb.cells:
            tags = cell.metadata.setdefault("tags", [])
            if "injected-parameters" in tags and "remove-cell" not in tags:
                tags.append("remove-cell")  # MyST-NB ignores papermill's report mode
        elapsed = (datetime.datetime.now().astimezone() - started).total_seconds()
        nb.metadata["normlab"] = {"stamp": stamp, "executed": started.isoformat(timespec="seconds"),
                                  "seconds": round(elapsed, 1)}
        nbformat.write(nb, tmp)
        os.replace(tmp, dest)
        failed.unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------
# glue references


_ROLE = re.compile(r"\{(glue(?::[a-z]*)?)\}`([^`]+)`")
_FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})\s*(.*?)\s*$")
_DOUBLE_TICKS = re.compile(r"(`{2,}).+?\1")


def glue_references(text):
    """[(kind, argument, doc option)] for every glue role/directive in MyST text.

    Literal code blocks and ``code spans`` are skipped, so examples in prose do not count.
    """
    refs, stack, literal = [], [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if literal:
            if m and m.group(1)[0] == literal[0] and len(m.group(1)) >= len(literal) and not m.group(2):
                literal = None
            continue
        if m:
            fence, info = m.groups()
            if stack and not info and fence[0] == stack[-1][0] and len(fence) >= len(stack[-1]):
                stack.pop()
            elif info.startswith("{"):
                stack.append(fence)
                d = re.match(r"\{(glue(?::[a-z]*)?)\}\s*(.*)", info)
                if d:
                    doc = None
                    for opt in lines[i + 1:]:
                        o = re.match(r"\s*:doc:\s*(.+?)\s*$", opt)
                        if o:
                            doc = o.group(1)
                        elif not re.match(r"\s*:\w+:", opt):
                            break
                    refs.append((d.group(1), d.group(2), doc))
            elif fence[0] != ":":
                literal = fence
            continue
        for kind, arg in _ROLE.findall(_DOUBLE_TICKS.sub("", line)):
            refs.append((kind, arg, None))
    return refs


def _resolve(ref):
    """(doc or None, key) as myst-nb 1.4 parses a glue role/directive."""
    kind, arg, doc = ref
    if doc is not None:
        return doc, arg
    if kind in ("glue:text", "glue:md"):
        arg = arg.rsplit(":", 1)[0] if ":" in arg else arg  # strip the format spec
    if kind != "glue:md" and "::" in arg:
        return tuple(arg.split("::", 1))
    return None, arg


def glue_keys(nb_path):
    """Keys glued in an executed notebook: outputs carrying metadata {"scrapbook": {"name": key}}."""
    nb = json.loads(Path(nb_path).read_text())
    return {out["metadata"]["scrapbook"]["name"]
            for cell in nb.get("cells", []) if cell.get("cell_type") == "code"
            for out in cell.get("outputs", []) if "scrapbook" in out.get("metadata", {})}


def glued_png(nb_path, key):
    """The PNG bytes of the figure glued under `key` in an executed notebook (PipelineError if absent)."""
    import base64

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


# The README's figure: the validation curves of step 5, every condition, both networks.
README_FIGURE = ("step5_comparison", "fig_val_loss", Path("book") / "images" / "overview.png")


def export_readme_figure(root):
    """Copy the README's figure out of the last build's executed notebook into book/images/."""
    name, key, dest = README_FIGURE
    png = glued_png(Path(root) / "book" / "notebooks" / f"{name}.ipynb", key)
    write_atomic(Path(root) / dest, png)
    return Path(root) / dest



def _page_text(path):
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text())
        return "\n\n".join("".join(c["source"]) if isinstance(c["source"], list) else c["source"]
                           for c in nb.get("cells", []) if c.get("cell_type") == "markdown")
    return path.read_text()


def find_missing_glue_keys(root) -> list[str]:
    """One message per glue reference in a book page that its (executed) notebook does not define."""
    root = Path(root)
    problems, cache = [], {}
    for entry in toc_files(root):
        page = next((root / (entry + s) for s in (".md", ".ipynb") if (root / (entry + s)).exists()), None)
        if page is None:
            continue  # missing pages are reported by the build itself
        for ref in glue_references(_page_text(page)):
            doc, key = _resolve(ref)
            target = page if doc is None else (root / doc.lstrip("/") if doc.startswith("/") else page.parent / doc)
            target = target.resolve()
            rel_page = page.relative_to(root)
            if target.suffix != ".ipynb" or not target.exists():
                where = "this page is not a notebook" if doc is None else f"{doc} not found"
                hint = " (a cross-page {glue:text} needs a format spec, e.g. `nb.ipynb::key:.3f`)" if ".ipynb" in key else ""
                problems.append(f"{rel_page}: glue key {key!r}: {where}{hint}")
                continue
            if target not in cache:
                cache[target] = glue_keys(target)
            if key not in cache[target]:
                problems.append(f"{rel_page}: glue key {key!r} is not defined in {target.relative_to(root)}")
    return problems


# ----------------------------------------------------------------------------
# book


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


# ----------------------------------------------------------------------------
# command line


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m normlib.pipeline", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="default", help="quick | default | full | PATH.yaml (default: default)")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a parameter everywhere it is declared, or NB.NAME=VALUE for one notebook")
    ap.add_argument("--only", default=None, metavar="NB[,NB]", help="execute only these notebooks")
    ap.add_argument("--force", action="store_true",
                    help="recompute cached trials (force=True where declared) and execute every notebook")
    ap.add_argument("--rerun", action="store_true",
                    help="execute every notebook, even those up to date (finished trials are still reused)")
    ap.add_argument("--no-book", action="store_true", help="execute notebooks, do not build the book")
    ap.add_argument("--workers", type=int, default=None, help="set NORMLIB_WORKERS for the notebooks")
    ap.add_argument("--jobs", type=int, default=None, metavar="N",
                    help="notebooks executed at once (default: the profile's jobs, else 1); a notebook still "
                         "waits for those it reads from (its metadata normlab.after)")
    ap.add_argument("--root", default=str(ROOT), help="repository root (default: this checkout)")
    ap.add_argument("--readme-figure", action="store_true",
                    help=f"run nothing: copy the last build's {README_FIGURE[1]} ({README_FIGURE[0]}) to "
                         f"{README_FIGURE[2]}, the README's figure")
    return ap.parse_args(argv)


def check_data():
    """Verify Fashion-MNIST (size and sha256) in the data root before any notebook trains on it,
    decompressing Debian's copy there if needed (normlib.data.prepare); a DataError says what to do."""
    from normlib import data as D

    try:
        D.prepare()
    except D.DataError as e:
        raise PipelineError(_first_line(e)) from None


def prepare(args):
    """Validate the whole request; return everything needed to run it.

    Writes nothing but the directories it checks and, when they are missing, the verified data files.
    """
    root = Path(args.root).resolve()
    nb_dir, book_nb_dir = root / "notebooks", root / "book" / "notebooks"
    results = Path(os.environ.get("NORMLIB_RESULTS") or root / "results")
    profile_name, profile_path, profile = load_profile(args.profile)
    names = toc_notebooks(root)
    if not names:
        raise PipelineError(f"{root / '_toc.yml'} lists no notebooks under book/notebooks/")
    for n in names:
        if not (nb_dir / f"{n}.ipynb").is_file():
            raise PipelineError(f"_toc.yml lists book/notebooks/{n} but {nb_dir / n}.ipynb does not exist")
    declared = {n: declared_parameters(nb_dir / f"{n}.ipynb") for n in names}
    for n in names:
        needs(nb_dir / f"{n}.ipynb", names)  # a bad normlab.after is a bad request
    selected = names
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        for w in wanted:
            if w not in names:
                raise PipelineError(f"--only: {P.unknown_name(w, names, 'notebook')}")
        selected = [n for n in names if n in wanted]
        if not args.no_book:
            stale = [n for n in names if n not in wanted and not (book_nb_dir / f"{n}.ipynb").exists()]
            if stale:
                raise PipelineError(f"--only: cannot build the book, not executed yet: {', '.join(stale)} "
                                    f"(run them too, or add --no-book)")
    if args.workers is not None and args.workers < 0:
        raise PipelineError(f"--workers {args.workers}: must be a non-negative integer (0 = one per core)")
    if args.jobs is not None and args.jobs < 1:
        raise PipelineError(f"--jobs {args.jobs}: must be a positive integer (notebooks executed at once)")
    to_run = plan(profile_name, profile, parse_sets(args.set), declared, selected, force=args.force)
    try:
        kernels.backend()  # a bad NORMLIB_KERNELS is a bad request
    except kernels.KernelError as e:
        raise PipelineError(str(e)) from None
    check_data()
    for path, what in ((results, "results directory"), (book_nb_dir, "executed notebooks directory")):
        try:
            P.check_writable(path, what)
        except P.ParameterError as e:
            raise PipelineError(str(e)) from None
    environment = environment_digest()
    stamps, reused = {}, {}
    for n in selected:
        source = nb_dir / f"{n}.ipynb"
        stamps[n] = stamp(source, to_run[n], environment)
        done, when = executed_stamp(book_nb_dir / f"{n}.ipynb")
        if done == stamps[n] and not (args.force or args.rerun or always_execute(source)):
            reused[n] = when
    manifest = {
        "profile": profile_name,
        "profile_path": str(profile_path),
        "description": profile.get("description", ""),
        "overrides": list(args.set) + (["--force"] if args.force else []),
        "only": selected if args.only else None,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": git_commit(root),
        "jobs": args.jobs or profile.get("jobs", 1),
        "notebooks": {n: {"injected": to_run[n], "declared": declared[n], "stamp": stamps[n],
                          "up_to_date_since": reused.get(n)} for n in selected},
    }
    return root, nb_dir, book_nb_dir, results, to_run, manifest


def build_kernels():
    """Compile (or load) normlib's C++ kernels before any notebook needs them, so that a missing
    compiler is one clear error here and every notebook's workers find them built."""
    if kernels.backend() != "cpp":
        return
    t0 = time.perf_counter()
    try:
        kernels.ext()
    except kernels.KernelError as e:
        raise PipelineError(str(e), code=1) from None
    if time.perf_counter() - t0 > 5:
        print(f"built normlib's C++ kernels in {time.perf_counter() - t0:.0f} s (once per environment)", flush=True)


def run_sequential(manifest, to_run, nb_dir, book_nb_dir, results, kernel):
    """Execute the notebooks that are not up to date one after the other, in book order, stopping at
    the first failure. Returns how many notebooks were executed."""
    n_run = 0
    for i, (name, parameters) in enumerate(to_run.items(), 1):
        print(f"[{i}/{len(to_run)}] {name} ...", end="", flush=True)
        entry = manifest["notebooks"][name]
        if entry["up_to_date_since"]:
            print(f" up to date (executed {entry['up_to_date_since']})", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            execute(name, nb_dir / f"{name}.ipynb", book_nb_dir / f"{name}.ipynb", results / "failed",
                    parameters, kernel, stamp=entry["stamp"])
        except PipelineError:
            print(" failed", flush=True)
            raise
        n_run += 1
        print(f" done in {time.perf_counter() - t0:.1f} s", flush=True)
    return n_run


def _execute_in_child(name, source, dest, failed_dir, parameters, kernel, stamp):
    """execute() in a pool process; returns (seconds, None) or (seconds, (message, exit code))."""
    logging.getLogger("papermill").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    try:
        execute(name, source, dest, failed_dir, parameters, kernel, stamp=stamp)
    except PipelineError as e:
        return time.perf_counter() - t0, (str(e), e.code)
    return time.perf_counter() - t0, None


def run_parallel(manifest, to_run, nb_dir, book_nb_dir, results, kernel):
    """Execute the notebooks that are not up to date, up to manifest["jobs"] at once, each in its own
    process (papermill's cwd handling is not thread-safe), a notebook starting only once those it
    needs() have finished. After the first failure no notebook starts; those running finish, then
    the failure is raised. Returns how many notebooks were executed."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    from normlib.grid import exit_with_parent

    names = list(to_run)
    number = {n: i for i, n in enumerate(names, 1)}
    pending = []
    for name in names:
        entry = manifest["notebooks"][name]
        if entry["up_to_date_since"]:
            print(f"[{number[name]}/{len(names)}] {name} ... up to date (executed {entry['up_to_date_since']})",
                  flush=True)
        else:
            pending.append(name)
    # wait only for notebooks that run now: the others are up to date or not in this run (--only)
    waits = {n: [d for d in needs(nb_dir / f"{n}.ipynb", names) if d in pending] for n in pending}
    done, running, failure, n_run = set(), {}, None, 0
    pool = ProcessPoolExecutor(max_workers=manifest["jobs"], mp_context=get_context("spawn"),
                               initializer=exit_with_parent, initargs=(os.getpid(),))
    try:
        while pending or running:
            ready = [] if failure else [n for n in pending if all(d in done for d in waits[n])]
            for name in ready[:manifest["jobs"] - len(running)]:
                pending.remove(name)
                print(f"[{number[name]}/{len(names)}] {name} started", flush=True)
                running[pool.submit(_execute_in_child, name, nb_dir / f"{name}.ipynb", book_nb_dir / f"{name}.ipynb",
                                    results / "failed", to_run[name], kernel,
                                    manifest["notebooks"][name]["stamp"])] = name
            if not running:
                break  # a failure stopped the rest
            finished, _ = wait(list(running), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                seconds, error = future.result()
                if error:
                    print(f"[{number[name]}/{len(names)}] {name} ... failed", flush=True)
                    failure = failure or PipelineError(*error)
                else:
                    done.add(name)
                    n_run += 1
                    print(f"[{number[name]}/{len(names)}] {name} ... done in {seconds:.1f} s", flush=True)
    except BaseException:  # Ctrl-C: end the notebooks still running (their kernels exit with them)
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if failure:
        raise failure
    return n_run


def run(args):
    root, nb_dir, book_nb_dir, results, to_run, manifest = prepare(args)
    kernel = ensure_kernel()
    build_kernels()
    write_json_atomic(results / "run_manifest.json", manifest)
    # the kernels import normlib from this checkout and see the same results directory
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    os.environ["NORMLIB_RESULTS"] = str(results)
    if args.workers is not None:
        os.environ["NORMLIB_WORKERS"] = str(args.workers)
    print(f"profile {manifest['profile']}" + (f": {manifest['description']}" if manifest["description"] else "")
          + (f" ({manifest['jobs']} notebooks at a time)" if manifest["jobs"] > 1 else ""), flush=True)
    t_all = time.perf_counter()
    run_notebooks = run_parallel if manifest["jobs"] > 1 else run_sequential
    n_run = run_notebooks(manifest, to_run, nb_dir, book_nb_dir, results, kernel)
    print(f"{n_run} notebooks executed in {time.perf_counter() - t_all:.1f} s"
          + (f", {len(to_run) - n_run} up to date (--rerun executes them all)" if n_run < len(to_run) else ""),
          flush=True)
    if args.no_book:
        return
    missing = find_missing_glue_keys(root)
    if missing:
        for m in missing[1:]:
            print(f"  {m}", file=sys.stderr)
        raise PipelineError(f"{missing[0]}" + (f" (and {len(missing) - 1} more above)" if len(missing) > 1 else ""),
                            code=1)
    print("building the book ...", end="", flush=True)
    t0 = time.perf_counter()
    try:
        index = build_book(root, results / "book-build.log")
    except PipelineError:
        print(" failed", flush=True)
        raise
    print(f" done in {time.perf_counter() - t0:.1f} s", flush=True)
    print(f"book: {index}", flush=True)


def main(argv=None):
    args = parse_args(argv)
    logging.getLogger("papermill").setLevel(logging.ERROR)  # its warnings are checked and reported above
    try:
        if args.readme_figure:
            print(f"wrote {export_readme_figure(Path(args.root).resolve())}")
        else:
            run(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.code
    except KeyboardInterrupt:  # nbclient has killed the kernel and its trial workers
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # not nbclient's pending cell's traceback
        print("\nerror: interrupted; finished trials are cached: run the same command again to resume",
              file=sys.stderr, flush=True)
        return 130
    return 0

if __name__ == "__main__":
    sys.exit(main())
