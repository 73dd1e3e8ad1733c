"""normlib.pipeline on a fake two-notebook book: the plan, failures, up-to-date stamps, several
notebooks at once, progress on a terminal and in a log, the real build. (Refusals of bad requests
are tested in-process on the real checkout in test_reliability.py.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell

from normlib.pipeline import PipelineError, book as pbook, cli, execute, plan

REPO = Path(__file__).resolve().parent.parent


def run_pipeline(root, *args, profile=None, env=None):
    """Run the CLI in a subprocess; returns the CompletedProcess."""
    if profile is None:
        profile = root.parent / "test-profile.yaml"
        profile.write_text("description: test run\nparams:\n  epochs: 2\n")
    env = {**{k: v for k, v in os.environ.items() if k not in ("NORMLIB_RESULTS", "NORMLIB_WORKERS")}, **(env or {})}
    env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "normlib.pipeline", "--root", str(root), "--profile", str(profile), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)


def written(root):
    """Everything the pipeline may write."""
    return [p for p in ("results", "_build", ".build-tmp", "book/notebooks") if (root / p).exists()]


# ----------------------------------------------------------------------------
# requests refused because of the book itself (in-process: exit 2, one line, nothing written)


def refused(book, capsys, monkeypatch, *args):
    """cli.main on the fake book in this process: (exit status, stderr lines)."""
    monkeypatch.delenv("NORMLIB_RESULTS", raising=False)
    profile = book.parent / "test-profile.yaml"
    profile.write_text("description: test run\nparams:\n  epochs: 2\n")
    code = cli.main(["--root", str(book), "--profile", str(profile), *args])
    assert written(book) == []
    return code, capsys.readouterr().err.strip().splitlines()


def test_parameter_line_papermill_cannot_read_is_an_error(book, capsys, monkeypatch):
    nb = nbformat.read(book / "notebooks" / "alpha.ipynb", as_version=4)
    nb.cells[1].source += "\ntrain_size: int = 2000  # 0 = all images"
    nbformat.write(nb, book / "notebooks" / "alpha.ipynb")
    assert refused(book, capsys, monkeypatch) == (2, [
        f"error: {book}/notebooks/alpha.ipynb: papermill cannot read parameter line "
        "'train_size: int = 2000  # 0 = all images' (one '=' per line: reword the comment)"])


# ----------------------------------------------------------------------------
# the plan: who gets which parameter


def test_plan_precedence_and_scoping():
    declared = {"a": {"epochs": "1", "seeds": "[0]"}, "b": {"epochs": "1", "force": "False"}}
    profile = {"params": {"seeds": [1, 2], "epochs": 3}, "notebooks": {"b": {"epochs": 4}}}
    sets = plan.parse_sets(["epochs=5", "a.epochs=6"])
    out = plan.plan("p", profile, sets, declared, ["a", "b"], force=True)
    assert out == {"a": {"seeds": [1, 2], "epochs": 6}, "b": {"epochs": 5, "force": True}}


def test_set_values_are_yaml_with_numeric_exponents():
    glob, per_nb = plan.parse_sets(["lr=1e-3", "seeds=[0, 1]", "nb.force=true", "name=sgd"])
    assert glob == {"lr": 0.001, "seeds": [0, 1], "name": "sgd"} and per_nb == {"nb": {"force": True}}


def test_toc_order_of_the_real_book():
    names = pbook.toc_notebooks(REPO)
    assert names[:3] == ["procedure", "implementation_check", "step1_bn_training"]
    assert names[-1] == "cost"  # cost runs last: it reports the others
    assert sorted(names) == sorted(p.stem for p in (REPO / "notebooks").glob("*.ipynb"))  # every notebook, once


@pytest.mark.parametrize("profile", ["quick", "default", "full"])
def test_shipped_profiles_are_valid(profile):
    from normlib import params
    name, path, data = plan.load_profile(profile)
    assert data["description"]
    names = set(data["params"]) | {k for v in data["notebooks"].values() for k in v}
    params.validate(data["params"])
    for values in data["notebooks"].values():
        params.validate({**data["params"], **values})
    assert names <= set(params.RULES)


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
def test_an_unknown_glue_key_fails_the_build_and_keeps_the_previous_one(book):
    """jupyter-book -W reports a glue reference that no executed notebook defines (myst-nb's glue_ref
    warning): the build fails, names the key, and the previous _build/ stays."""
    (book / "_build" / "html").mkdir(parents=True)
    (book / "_build" / "html" / "index.html").write_text("previous build")
    with open(book / "book" / "intro.md", "a") as f:
        f.write("\nMissing: {glue:text}`notebooks/beta.ipynb::nothing:.2f`\n")
    proc = run_pipeline(book)
    assert proc.returncode == 1
    assert "Glue reference 'nothing' not found in doc 'book/notebooks/beta'" in proc.stderr, proc.stderr
    assert "error: book build failed" in proc.stderr
    assert (book / "_build" / "html" / "index.html").read_text() == "previous build"


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
    # and so does another results folder (NORMLIB_RESULTS): its cache and records are what the analyses read
    moved = run_pipeline(book, "--no-book", "--set", "beta.epochs=3", env={"NORMLIB_RESULTS": str(book / "elsewhere")})
    assert moved.stdout.count("done in") == 2 and "up to date" not in moved.stdout, moved.stdout


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
    base = execute.stamp(source, {"epochs": 1}, "env")
    assert base == execute.stamp(source, {"epochs": 1}, "env")
    assert base != execute.stamp(source, {"epochs": 2}, "env")
    assert base != execute.stamp(source, {"epochs": 1}, "other env")
    source.write_text("{ }")
    assert base != execute.stamp(source, {"epochs": 1}, "env")


def test_environment_digest_covers_the_device(monkeypatch):
    from normlib import train
    before = execute.environment_digest()
    assert before == execute.environment_digest()
    monkeypatch.setattr(train, "resolve_device", lambda device: "cuda")
    assert execute.environment_digest() != before


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
    assert execute.prerequisites(book / "notebooks" / "beta.ipynb", ["alpha", "beta"]) == ["alpha"]
    _after(book, "beta", "all")
    assert execute.prerequisites(book / "notebooks" / "beta.ipynb", ["alpha", "beta"]) == ["alpha"]


def test_after_must_name_an_earlier_notebook(book, capsys, monkeypatch):
    _after(book, "alpha", ["beta"])  # later in the book: book order could not honour it
    code, err = refused(book, capsys, monkeypatch)
    assert code == 2 and len(err) == 1
    assert "alpha.ipynb: metadata normlab.after names 'beta', which is not a notebook before it in _toc.yml" in err[0]


def test_only_some_notebooks_run_without_the_prerequisites_that_ran_before(book):
    """--only beta, whose metadata names alpha: alpha ran before (its results are there), so the run of beta
    alone waits for nothing; the whole book still checks the order."""
    _after(book, "beta", ["alpha"])
    source = book / "notebooks" / "beta.ipynb"
    assert execute.prerequisites(source, ["beta"], strict=False) == []
    assert execute.prerequisites(source, ["alpha", "beta"], strict=False) == ["alpha"]
    with pytest.raises(PipelineError, match="names 'alpha', which is not a notebook before it"):
        execute.prerequisites(source, ["beta"])


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
    name, key, dest = pbook.README_FIGURE
    book_nbs = tmp_path / "book" / "notebooks"
    book_nbs.mkdir(parents=True)
    glued = {"output_type": "display_data", "metadata": {"scrapbook": {"name": key, "mime_prefix": ""}},
             "data": {"application/papermill.record/image/png": base64.b64encode(png).decode()}}
    (book_nbs / f"{name}.ipynb").write_text(json.dumps(_notebook_with([glued])))
    assert pbook.export_readme_figure(tmp_path) == tmp_path / dest
    assert (tmp_path / dest).read_bytes() == png
    (book_nbs / f"{name}.ipynb").write_text(json.dumps(_notebook_with([])))
    with pytest.raises(PipelineError, match=f"no figure glued as '{key}'"):
        pbook.export_readme_figure(tmp_path)
    (book_nbs / f"{name}.ipynb").unlink()
    with pytest.raises(PipelineError, match="run the pipeline first"):
        pbook.export_readme_figure(tmp_path)


# ----------------------------------------------------------------------------
# the run's pool, and progress while notebooks train


def test_an_unreachable_scheduler_is_refused_before_anything_runs(book, capsys, monkeypatch):
    from normlib import executors
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 2)  # no need to wait the usual 10 s for port 9
    code, err = refused(book, capsys, monkeypatch, "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:9 (")


def test_a_profile_scheduler_must_be_an_address(book, capsys, monkeypatch):
    profile = book.parent / "sched.yaml"
    profile.write_text("scheduler: localhost\n")
    monkeypatch.delenv("NORMLIB_RESULTS", raising=False)
    assert cli.main(["--root", str(book), "--profile", str(profile)]) == 2
    assert "'scheduler' = 'localhost': must be a Dask scheduler address such as tcp://host:8786" in \
        capsys.readouterr().err
    assert written(book) == []


TRIALS_CELL = ("from normlib.trials import run_configs\nfrom normlib.train import TrainConfig\n"
               "hs = run_configs([TrainConfig(train_size=2048, val_size=100, hidden=(64,), batch_size=32, epochs=1, "
               "seed=s, device='cpu') for s in range(12)])\nglue('n_trials', len(hs), display=False)")


def _with_trials(book):
    nb = nbformat.read(book / "notebooks" / "alpha.ipynb", as_version=4)
    nb.cells.insert(2, new_code_cell(TRIALS_CELL))
    nbformat.write(nb, book / "notebooks" / "alpha.ipynb")


@pytest.mark.slow
def test_progress_in_a_log_and_the_final_summary(book):
    """Output to a pipe (a CI log): a line per running notebook every NORMLIB_PROGRESS_EVERY seconds with
    its trials done / total, then a summary of each notebook's time and trials trained or reused."""
    _with_trials(book)
    proc = run_pipeline(book, "--no-book", env={"NORMLIB_PROGRESS_EVERY": "0.5"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    progress = [l for l in lines if l.startswith("  alpha: ") and " trials (0 cached)" in l]
    assert progress, proc.stdout
    assert "\x1b[K" not in proc.stdout and "\r" not in proc.stdout  # no terminal control codes in a log
    assert "[1/2] alpha ... done in" in proc.stdout and "12 trials trained, 0 reused" in proc.stdout
    summary = lines[lines.index(next(l for l in lines if l.startswith("notebook "))):]
    assert summary[1].split()[:2] == ["alpha", "executed"] and summary[1].split()[-3:] == ["12", "0", "0"]  # trained, reused, shared
    # the same notebook again (--rerun): every trial comes from the cache
    again = run_pipeline(book, "--no-book", "--rerun", "--only", "alpha")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 trials trained, 12 reused" in again.stdout


@pytest.mark.slow
def test_progress_in_place_on_a_terminal(book):
    import pty
    _with_trials(book)
    profile = book.parent / "test-profile.yaml"
    profile.write_text("description: test run\nparams:\n  epochs: 2\n")
    env = {k: v for k, v in os.environ.items() if k not in ("NORMLIB_RESULTS", "NORMLIB_WORKERS")}
    env["PYTHONPATH"] = str(REPO)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "normlib.pipeline", "--root", str(book), "--profile", str(profile),
                             "--no-book"], stdout=follower, stderr=subprocess.PIPE, env=env, cwd=book)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the other end closed
            break
        if not chunk:
            break
        out += chunk
    proc.wait(timeout=300)
    os.close(leader)
    text = out.decode()
    assert proc.returncode == 0, text + proc.stderr.read().decode()
    live = [part for part in text.split("\r\x1b[K") if part.startswith("alpha: ")]
    assert any(" trials (0 cached)" in part for part in live), text  # rewritten in place
    assert "[1/2] alpha ... done in" in text


def test_progress_describes_trials_done_and_time_left(tmp_path):
    import io
    import time
    progress = execute.Progress(["a", "b"], tmp_path, stream=io.StringIO(), every=0)
    progress.running["a"] = time.monotonic() - 65
    assert progress.describe("a").startswith("a: 1m05s")  # no status yet
    now = time.time()
    (tmp_path / "a.json").write_text(json.dumps({"total": 40, "cached": 8, "trained": 0, "hosts": {},
                                                 "train_seconds": 0.0, "started": now - 10, "updated": now}))
    assert progress.describe("a").endswith("8/40 trials (8 cached), 1m05s, estimating time left")
    (tmp_path / "a.json").write_text(json.dumps({"total": 40, "cached": 8, "trained": 4, "hosts": {"h": 4},
                                                 "train_seconds": 20.0, "started": now - 10, "updated": now}))
    assert progress.describe("a") == "a: 12/40 trials (8 cached), 1m05s, about 1m10s left"  # 28 left at 2.5 s each
    progress.tick()
    assert progress.stream.getvalue() == "  a: 12/40 trials (8 cached), 1m05s, about 1m10s left\n"
