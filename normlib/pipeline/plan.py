"""The plan of a run: profiles, the parameters each notebook declares, and the values it gets.

A profile (normlib/profiles/<name>.yaml) is:

    description: one line
    params: {name: value}              # every notebook that declares `name` gets it
    notebooks: {nb: {name: value}}     # one notebook only
    jobs: 2                            # optional: notebooks executed at once (default 1; --jobs)
    scheduler: tcp://host:8786         # optional: the Dask scheduler the trials go to (--scheduler)
    main: &main {name: value}          # optional: values shared by several notebooks (`nb: *main`)

and --set name=value / --set nb.name=value override it (values are YAML). Every name and value is
validated (normlib.params) before anything runs.
"""
import os
import re
from pathlib import Path

import yaml

from normlib import params as rules
from normlib.pipeline import PipelineError, first_line

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
PROFILE_KEYS = ("description", "params", "notebooks", "jobs", "scheduler", "main")


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 floats, so that `lr: 1e-3` is a number, not a string."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),
    list("-+0123456789."),
)


def load_yaml(text):
    return yaml.load(text, Loader=_Loader)


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
        raise PipelineError(f"cannot read notebook {source}: {first_line(e)}") from None
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
    scheduler = profile.get("scheduler")
    if scheduler is not None and not (isinstance(scheduler, str) and "://" in scheduler):
        raise PipelineError(f"profile {path}: 'scheduler' = {scheduler!r}: must be a Dask scheduler address "
                            f"such as tcp://host:8786")
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
        return rules.validate(values, known=known)
    except rules.ParameterError as e:
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
                raise PipelineError(f"{where}: {rules.unknown_name(nb, declared, 'notebook')}")
        return {nb: _check(values, set(declared[nb]), f"{where}, notebook {nb}") for nb, values in source.items()}

    profile_nb = per_notebook(profile.get("notebooks") or {}, f"profile {profile_name}")
    set_nb = per_notebook(set_nb, "--set")
    out = {}
    for nb in selected:
        def mine(values):
            return {k: v for k, v in values.items() if k in declared[nb]}
        injected = {**mine(profile_glob), **profile_nb.get(nb, {}), **mine(set_glob), **set_nb.get(nb, {}),
                    **mine({"force": True} if force else {})}
        out[nb] = _check(injected, None, f"notebook {nb}")  # cross-parameter checks on the merged values
        for name, value in injected.items():  # null means "select it" only where the notebook's default is null
            if value is None and declared[nb][name].strip() != "None":
                raise PipelineError(f"notebook {nb}: parameter {name!r} = None: this notebook needs a value "
                                    f"(its default is {declared[nb][name].strip()})")
    return out
