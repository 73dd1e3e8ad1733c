"""normlib.pipeline on a fake two-notebook book: validation, failures, glue checks, the real build."""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from normlib import pipeline

REPO = Path(__file__).resolve().parent.parent


def run_pipeline(root, *args, profile=None):
    """Run the CLI in a subprocess; returns the CompletedProcess."""
    if profile is None:
        profile = root.parent / "test-profile.yaml"
        profile.write_text("description: test run\nparams:\n  epochs: 2\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NORMLIB_RESULTS", "NORMLIB_WORKERS")}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "normlib.pipeline", "--root", str(root), "--profile", str(profile), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)


def written(root):
    """Everything the pipeline may write."""
    return [p for p in ("results", "_build", ".build-tmp", "book/notebooks") if (root / p).exists()]


# ----------------------------------------------------------------------------
# bad requests: exit 2, one line, nothing written


@pytest.mark.parametrize("args, message", [
    (["--set", "epoch=3"], "--set: unknown parameter 'epoch' (known: epochs, fail, seeds); did you mean 'epochs'?"),
    (["--set", "epochs=0"], "--set: parameter 'epochs' = 0: must be a positive integer"),
    (["--set", "seeds=[0, 0]"], "parameter 'seeds' = [0, 0]: must be a non-empty list of distinct non-negative integers"),
    (["--set", "beta.seeds=[1]"], "--set, notebook beta: unknown parameter 'seeds' (known: epochs, fail)"),
    (["--set", "gamma.epochs=1"], "--set: unknown notebook 'gamma' (known: alpha, beta)"),
    (["--set", "epochs"], "expected name=value"),
    (["--only", "alpah"], "--only: unknown notebook 'alpah' (known: alpha, beta); did you mean 'alpha'?"),
    (["--only", "alpha"], "not executed yet: beta"),
    (["--jobs", "0"], "--jobs 0: must be a positive integer (notebooks executed at once)"),
])
def test_bad_cli_request_exits_2_and_writes_nothing(book, args, message):
    proc = run_pipeline(book, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert written(book) == []


@pytest.mark.parametrize("text, message", [
    ("params:\n  epoch: 2\n", "profile bad: unknown parameter 'epoch'"),
    ("params:\n  epochs: -1\n", "profile bad: parameter 'epochs' = -1: must be a positive integer"),
    ("notebooks:\n  beta:\n    seeds: [0]\n", "profile bad, notebook beta: unknown parameter 'seeds'"),
    ("params: {epochs: [1\n", "is not valid YAML at line 2"),
    ("parms:\n  epochs: 2\n", "unknown key 'parms' (allowed: description, params, notebooks, jobs)"),
    ("jobs: 0\n", "'jobs' = 0: must be a positive integer (notebooks run at once)"),
    ("- epochs\n", "must be a mapping"),
])
def test_bad_profile_exits_2_and_writes_nothing(book, text, message):
    profile = book.parent / "bad.yaml"
    profile.write_text(text)
    proc = run_pipeline(book, profile=profile)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert written(book) == []


def test_missing_profile_exits_2(book):
    proc = run_pipeline(book, profile="no_such_profile")
    assert proc.returncode == 2
    assert "profile 'no_such_profile' not found" in proc.stderr and "available profiles: default, full, quick" in proc.stderr
    proc = run_pipeline(book, profile=book / "missing.yaml")
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr
    assert written(book) == []


def test_unwritable_results_dir_exits_2(book):
    (book / "results").write_text("a file where the results directory should be")
    proc = run_pipeline(book)
    assert proc.returncode == 2
    assert "results directory" in proc.stderr and "cannot create or write" in proc.stderr


def test_parameter_line_papermill_cannot_read_is_an_error(book):
    nb = nbformat.read(book / "notebooks" / "alpha.ipynb", as_version=4)
    nb.cells[1].source += "\ntrain_size: int = 2000  # 0 = all images"
    nbformat.write(nb, book / "notebooks" / "alpha.ipynb")
    proc = run_pipeline(book)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {book}/notebooks/alpha.ipynb: papermill cannot read parameter line "
        "'train_size: int = 2000  # 0 = all images' (one '=' per line: reword the comment)"]


# ----------------------------------------------------------------------------
# the plan: who gets which parameter


def test_plan_precedence_and_scoping():
    declared = {"a": {"epochs": "1", "seeds": "[0]"}, "b": {"epochs": "1", "force": "False"}}
    profile = {"params": {"seeds": [1, 2], "epochs": 3}, "notebooks": {"b": {"epochs": 4}}}
    sets = pipeline.parse_sets(["epochs=5", "a.epochs=6"])
    out = pipeline.plan("p", profile, sets, declared, ["a", "b"], force=True)
    assert out == {"a": {"seeds": [1, 2], "epochs": 6}, "b": {"epochs": 5, "force": True}}


def test_set_values_are_yaml_with_numeric_exponents():
    glob, per_nb = pipeline.parse_sets(["lr=1e-3", "seeds=[0, 1]", "nb.force=true", "name=sgd"])
    assert glob == {"lr": 0.001, "seeds": [0, 1], "name": "sgd"} and per_nb == {"nb": {"force": True}}


def test_toc_order_of_the_real_book():
    names = pipeline.toc_notebooks(REPO)
    assert names[:3] == ["procedure", "implementation_check", "step1_bn_training"]
    assert names[-2:] == ["study_claims", "cost"] and len(names) == 14  # cost runs last: it reports the others


@pytest.mark.parametrize("profile", ["quick", "default", "full"])
def test_shipped_profiles_are_valid(profile):
    name, path, data = pipeline.load_profile(profile)
    assert data["description"]
    names = set(data["params"]) | {k for v in data["notebooks"].values() for k in v}
    pipeline.P.validate(data["params"])
    for values in data["notebooks"].values():
        pipeline.P.validate({**data["params"], **values})
    assert names <= set(pipeline.P.RULES)


# ----------------------------------------------------------------------------
# glue references


def _executed(path, keys):
    outputs = [new_output("display_data", data={"application/papermill.record/text/plain": "1.0"},
                          metadata={"scrapbook": {"name": k, "mime_prefix": "application/papermill.record/"}})
               for k in keys]
    nb = new_notebook(cells=[new_code_cell("glue(...)", outputs=outputs),
                             new_markdown_cell("local {glue:text}`here:.1f` and {glue}`gone`")])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_find_missing_glue_keys(book):
    _executed(book / "book" / "notebooks" / "alpha.ipynb", ["answer", "here"])
    _executed(book / "book" / "notebooks" / "beta.ipynb", ["gone", "here"])
    (book / "book" / "intro.md").write_text(
        "{glue:text}`notebooks/alpha.ipynb::answer:.2f` {glue:text}`notebooks/alpha.ipynb::nope:.2f`\n"
        "{glue:text}`notebooks/beta.ipynb::here`\n"  # no format spec: myst-nb misparses it
        "``{glue:text}`literal::example:.1f` `` is prose\n\n"
        "```md\n{glue}`in_a_code_block`\n```\n\n"
        ":::{note}\n{glue:text}`notebooks/beta.ipynb::gone:.1f` inside a note\n:::\n\n"
        "```{glue:figure} fig_key\n:doc: notebooks/beta.ipynb\n:name: fig-x\n```\n")
    missing = pipeline.find_missing_glue_keys(book)
    assert missing == [
        "book/intro.md: glue key 'nope' is not defined in book/notebooks/alpha.ipynb",
        "book/intro.md: glue key 'notebooks/beta.ipynb:': this page is not a notebook "
        "(a cross-page {glue:text} needs a format spec, e.g. `nb.ipynb::key:.3f`)",
        "book/intro.md: glue key 'fig_key' is not defined in book/notebooks/beta.ipynb",
        "book/notebooks/alpha.ipynb: glue key 'gone' is not defined in book/notebooks/alpha.ipynb",
    ]


# ----------------------------------------------------------------------------
# real runs: papermill kernels and jupyter-book build -W


@pytest.mark.slow
def test_success_builds_the_book_with_glued_values(book):
    proc = run_pipeline(book, "--set", "alpha.seeds=[3, 4]")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/2] alpha ... done in" in proc.stdout and "[2/2] beta ... done in" in proc.stdout
    assert "_build/html/index.html" in proc.stdout
    html = book / "_build" / "html"
    assert (html / "index.html").exists()
    assert '<span class="pasted-text">43.00</span>' in (html / "book" / "intro.html").read_text()  # cross-page
    assert '<span class="pasted-text">43.0</span>' in (html / "book" / "notebooks" / "alpha.html").read_text()
    assert "Ioffe" in (html / "book" / "bibliography.html").read_text()
    nb = nbformat.read(book / "book" / "notebooks" / "alpha.ipynb", as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0].metadata.tags
    assert "seeds = [3, 4]" in injected[0].source
    manifest = json.loads((book / "results" / "run_manifest.json").read_text())
    assert manifest["profile"] == "test-profile" and manifest["description"] == "test run"
    assert manifest["notebooks"]["alpha"]["injected"] == {"epochs": 2, "seeds": [3, 4]}
    assert manifest["overrides"] == ["alpha.seeds=[3, 4]"]
    assert not (book / ".build-tmp").exists() and not list((book / "book" / "notebooks").glob(".*"))


@pytest.mark.slow
def test_failing_notebook_stops_before_the_book(book):
    (book / "_build" / "html").mkdir(parents=True)
    (book / "_build" / "html" / "index.html").write_text("previous build")
    proc = run_pipeline(book, "--set", "beta.fail=raise")
    assert proc.returncode == 1
    assert ("error: notebook beta failed in cell 3 (In [4]): ZeroDivisionError: boom" in proc.stderr), proc.stderr
    assert "[2/2] beta ... failed" in proc.stdout and "building" not in proc.stdout
    assert (book / "book" / "notebooks" / "alpha.ipynb").exists()
    assert not (book / "book" / "notebooks" / "beta.ipynb").exists()
    assert (book / "results" / "failed" / "beta.ipynb").exists()
    assert (book / "_build" / "html" / "index.html").read_text() == "previous build"


@pytest.mark.slow
def test_dead_kernel_is_a_failure(book):
    proc = run_pipeline(book, "--only", "beta", "--no-book", "--set", "beta.fail=die")
    assert proc.returncode == 1
    assert "error: notebook beta failed: DeadKernelError" in proc.stderr, proc.stderr
    assert not (book / "book" / "notebooks" / "beta.ipynb").exists()


@pytest.mark.slow
def test_broken_book_keeps_previous_build(book):
    (book / "_build" / "html").mkdir(parents=True)
    (book / "_build" / "html" / "index.html").write_text("previous build")
    with open(book / "book" / "intro.md", "a") as f:
        f.write("\nSee {ref}`no-such-label`.\n")
    proc = run_pipeline(book)
    assert proc.returncode == 1
    assert "undefined label: 'no-such-label'" in proc.stderr and "error: book build failed" in proc.stderr
    assert (book / "_build" / "html" / "index.html").read_text() == "previous build"
    assert not (book / ".build-tmp").exists()


@pytest.mark.slow
def test_missing_glue_key_stops_before_the_book(book):
    with open(book / "book" / "intro.md", "a") as f:
        f.write("\nMissing: {glue:text}`notebooks/beta.ipynb::nothing:.2f`\n")
    proc = run_pipeline(book)
    assert proc.returncode == 1
    assert "error: book/intro.md: glue key 'nothing' is not defined in book/notebooks/beta.ipynb" in proc.stderr
    assert not (book / "_build").exists()


# ----------------------------------------------------------------------------
# up to date: unchanged notebooks are not executed again


def _mtimes(root):
    return {p.name: p.stat().st_mtime_ns for p in (root / "book" / "notebooks").glob("*.ipynb")}


@pytest.mark.slow
def test_unchanged_notebooks_are_not_executed_again(book):
    first = run_pipeline(book, "--no-book")
    assert first.returncode == 0, first.stdout + first.stderr
    executed = _mtimes(book)
    stamp = nbformat.read(book / "book" / "notebooks" / "alpha.ipynb", as_version=4).metadata["normlab"]
    assert len(stamp["stamp"]) == 64 and stamp["seconds"] >= 0

    again = run_pipeline(book)  # nothing changed: no kernel starts, the book still builds
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"[1/2] alpha ... up to date (executed {stamp['executed']})" in again.stdout
    assert "0 notebooks executed" in again.stdout and "2 up to date" in again.stdout
    assert _mtimes(book) == executed
    assert (book / "_build" / "html" / "book" / "notebooks" / "alpha.html").exists()
    manifest = json.loads((book / "results" / "run_manifest.json").read_text())
    assert manifest["notebooks"]["alpha"]["up_to_date_since"] == stamp["executed"]

    # a changed parameter re-executes that notebook only
    changed = run_pipeline(book, "--no-book", "--set", "beta.epochs=3")
    assert "[1/2] alpha ... up to date" in changed.stdout and "[2/2] beta ... done in" in changed.stdout
    assert json.loads((book / "results" / "run_manifest.json").read_text())["notebooks"]["beta"]["up_to_date_since"] is None
    # so does a changed source notebook, and --rerun / --force re-execute everything
    nb = nbformat.read(book / "notebooks" / "alpha.ipynb", as_version=4)
    nb.cells.append(new_markdown_cell("One more paragraph."))
    nbformat.write(nb, book / "notebooks" / "alpha.ipynb")
    edited = run_pipeline(book, "--no-book", "--set", "beta.epochs=3")
    assert "[1/2] alpha ... done in" in edited.stdout and "[2/2] beta ... up to date" in edited.stdout
    for flag in ("--rerun", "--force"):
        proc = run_pipeline(book, "--no-book", "--set", "beta.epochs=3", flag)
        assert proc.stdout.count("done in") == 2 and "up to date" not in proc.stdout, (flag, proc.stdout)


@pytest.mark.slow
def test_a_notebook_marked_always_execute_runs_every_time(book):
    nb = nbformat.read(book / "notebooks" / "beta.ipynb", as_version=4)
    nb.metadata["normlab"] = {"always_execute": "it reads the run manifest"}
    nbformat.write(nb, book / "notebooks" / "beta.ipynb")
    for _ in range(2):
        proc = run_pipeline(book, "--no-book")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[1/2] alpha ... up to date" in proc.stdout and "[2/2] beta ... done in" in proc.stdout


def test_stamp_changes_with_source_parameters_and_environment(tmp_path):
    source = tmp_path / "nb.ipynb"
    source.write_text("{}")
    base = pipeline.stamp(source, {"epochs": 1}, "env")
    assert base == pipeline.stamp(source, {"epochs": 1}, "env")
    assert base != pipeline.stamp(source, {"epochs": 2}, "env")
    assert base != pipeline.stamp(source, {"epochs": 1}, "other env")
    source.write_text("{ }")
    assert base != pipeline.stamp(source, {"epochs": 1}, "env")


def test_environment_digest_covers_the_device(monkeypatch):
    from normlib import train
    before = pipeline.environment_digest()
    assert before == pipeline.environment_digest()
    monkeypatch.setattr(train, "resolve_device", lambda device: "cuda")
    assert pipeline.environment_digest() != before


# ----------------------------------------------------------------------------
# several notebooks at once (--jobs / the profile's jobs)


def _after(book, name, after):
    nb = nbformat.read(book / "notebooks" / f"{name}.ipynb", as_version=4)
    nb.metadata["normlab"] = {"after": after}
    nbformat.write(nb, book / "notebooks" / f"{name}.ipynb")


@pytest.mark.slow
def test_two_jobs_run_independent_notebooks_at_once(book):
    proc = run_pipeline(book, "--jobs", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    started = [i for i, l in enumerate(lines) if l.endswith(" started")]
    first_done = next(i for i, l in enumerate(lines) if " ... done in " in l)
    assert len(started) == 2 and max(started) < first_done, lines  # both started before either finished
    assert "[1/2] alpha ... done in" in proc.stdout and "[2/2] beta ... done in" in proc.stdout
    assert json.loads((book / "results" / "run_manifest.json").read_text())["jobs"] == 2
    assert (book / "_build" / "html" / "book" / "notebooks" / "beta.html").exists()


@pytest.mark.slow
def test_a_notebook_waits_for_the_notebooks_it_reads(book):
    _after(book, "beta", ["alpha"])
    proc = run_pipeline(book, "--jobs", "2", "--no-book")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines.index("[2/2] beta started") > next(i for i, l in enumerate(lines) if l.startswith("[1/2] alpha ... done"))
    assert pipeline.needs(book / "notebooks" / "beta.ipynb", ["alpha", "beta"]) == ["alpha"]
    _after(book, "beta", "all")
    assert pipeline.needs(book / "notebooks" / "beta.ipynb", ["alpha", "beta"]) == ["alpha"]


def test_after_must_name_an_earlier_notebook(book):
    _after(book, "alpha", ["beta"])  # later in the book: the sequential order could not honour it
    proc = run_pipeline(book)
    assert proc.returncode == 2 and written(book) == []
    assert "alpha.ipynb: metadata normlab.after names 'beta', which is not a notebook before it in _toc.yml" \
        in proc.stderr


@pytest.mark.slow
def test_a_failure_with_two_jobs_stops_the_rest_and_names_the_cell(book):
    _after(book, "beta", ["alpha"])  # alpha fails: beta must not start
    proc = run_pipeline(book, "--jobs", "2", "--set", "alpha.epochs=0.5")
    assert proc.returncode == 2  # a bad value is refused before anything runs, with jobs as without
    nb = nbformat.read(book / "notebooks" / "alpha.ipynb", as_version=4)
    nb.cells.insert(2, new_code_cell("raise ZeroDivisionError('boom in alpha')"))
    nbformat.write(nb, book / "notebooks" / "alpha.ipynb")
    proc = run_pipeline(book, "--jobs", "2")
    assert proc.returncode == 1
    assert "error: notebook alpha failed in cell 3 (In [4]): ZeroDivisionError: boom in alpha" in proc.stderr, \
        proc.stdout + proc.stderr
    assert "[1/2] alpha ... failed" in proc.stdout and "beta started" not in proc.stdout
    assert not (book / "book" / "notebooks" / "alpha.ipynb").exists() and not (book / "_build").exists()
    assert (book / "results" / "failed" / "alpha.ipynb").exists()


def _notebook_with(outputs):
    return {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "execution_count": 1, "outputs": outputs}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_readme_figure_is_copied_from_the_executed_notebook(tmp_path):
    import base64
    png = b"\x89PNG\r\n\x1a\n a glued figure"
    name, key, dest = pipeline.README_FIGURE
    book_nbs = tmp_path / "book" / "notebooks"
    book_nbs.mkdir(parents=True)
    glued = {"output_type": "display_data", "metadata": {"scrapbook": {"name": key, "mime_prefix": ""}},
             "data": {"application/papermill.record/image/png": base64.b64encode(png).decode()}}
    (book_nbs / f"{name}.ipynb").write_text(json.dumps(_notebook_with([glued])))
    assert pipeline.export_readme_figure(tmp_path) == tmp_path / dest
    assert (tmp_path / dest).read_bytes() == png
    (book_nbs / f"{name}.ipynb").write_text(json.dumps(_notebook_with([])))
    with pytest.raises(pipeline.PipelineError, match=f"no figure glued as '{key}'"):
        pipeline.export_readme_figure(tmp_path)
    (book_nbs / f"{name}.ipynb").unlink()
    with pytest.raises(pipeline.PipelineError, match="run the pipeline first"):
        pipeline.export_readme_figure(tmp_path)
