"""Reliability of the pipeline: bad input, damaged data, diverged runs, interrupted runs, determinism.

- Bad input: every case goes through the pipeline's command line in this process (cli.main, on a
  scratch copy of the checkout), and one case of each kind also through the real command line
  (`python -m normlib.pipeline`); each must exit 2 with one line naming the parameter, the value and
  what is allowed, having written nothing.
- Data: missing, truncated and corrupted Fashion-MNIST files are caught by their sha256 and reported
  with what to do, by normlib.data and by the pipeline before any notebook runs.
- A diverged run (non-finite loss) is recorded with its step, cached, and handled by the tables
  and figures.
- A run killed at any point (SIGKILL of the whole process group, or Ctrl-C) and run again ends
  with exactly the results of an uninterrupted run; no process of it survives the kill.
- The quick profile run twice on CPU gives byte-identical result tables.
"""
import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import matplotlib
import nbformat
import pytest

from conftest import copy_repo, pipeline_cmd, pipeline_env, run_cli, tail
from normlib import data as D
from normlib.norms import NORM_KINDS
from normlib.pipeline import book as pbook, cli, plan
from normlib.paths import data_dir

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------
# bad input: exit 2, one line naming parameter, value and what is allowed, nothing written


@pytest.fixture(scope="module")
def checkout(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("bad-input") / "repo")


def written(root, results):
    """What a run may have written: results, executed notebooks, builds."""
    paths = [results] + [root / p for p in ("book/notebooks", "_build", ".build-tmp", ".build-old")]
    return [str(p) for p in paths if p.exists()]


ALLOWED_NORMS = f"(allowed: {', '.join(NORM_KINDS)})"  # the kinds of the registry
# (id, pipeline arguments, expected stderr line: the exact text, or a list of fragments)
BAD_REQUESTS = [
    ("unknown parameter", ["--set", "seed=[0]"],
     ["error: --set: unknown parameter 'seed' (known: ", "did you mean 'seeds'"]),
    ("unknown norm kind", ["--set", "step5_comparison.extra_norms=[weight, instance]"],
     "error: --set, notebook step5_comparison: parameter 'extra_norms' = ['weight', 'instance']: "
     "unknown extra norm 'instance' (allowed: weight, group)"),
    ("overlapping seed sets", ["--set", "step1_bn_training.confirm_seeds=[0, 20]"],
     ["error: notebook step1_bn_training: parameter 'confirm_seeds' = [0, 20]: shares seed(s) [0] with 'seeds'"]),
    ("null learning rate where a number is needed", ["--set", "lr=null"],
     ["error: notebook study_", "parameter 'lr' = None: this notebook needs a value"]),
    ("unknown arch", ["--set", "archs=[mlp, resnet]"],
     "error: --set: parameter 'archs' = ['mlp', 'resnet']: unknown arch 'resnet' (allowed: mlp, cnn, vit)"),
    ("batch size 0", ["--set", "batch_size=0"], "error: --set: parameter 'batch_size' = 0: must be a positive integer"),
    ("batch sizes with 0", ["--set", "batch_sizes=[0, 128]"],
     "error: --set: parameter 'batch_sizes' = [0, 128]: must be a non-empty list of distinct positive integers"),
    ("negative learning rate", ["--set", "lr=-1"], "error: --set: parameter 'lr' = -1: must be a positive number, or null (where a notebook selects each condition's rate)"),
    ("learning rates with 0", ["--set", "lrs=[0.1, 0]"],
     "error: --set: parameter 'lrs' = [0.1, 0]: must be a non-empty list of distinct positive numbers"),
    ("epochs 0", ["--set", "epochs=0"], "error: --set: parameter 'epochs' = 0: must be a positive integer"),
    ("mlp epochs for one notebook", ["--set", "step1_bn_training.mlp_epochs=-2"],
     "error: --set, notebook step1_bn_training: parameter 'mlp_epochs' = -2: must be a positive integer"),
    ("empty seed list", ["--set", "seeds=[]"],
     "error: --set: parameter 'seeds' = []: must be a non-empty list of distinct non-negative integers"),
    ("duplicate seeds", ["--set", "seeds=[1, 1]"],
     "error: --set: parameter 'seeds' = [1, 1]: must be a non-empty list of distinct non-negative integers"),
    ("wrong type", ["--set", "train_size=all"],
     "error: --set: parameter 'train_size' = 'all': must be a non-negative integer "
     "(0 = all images not held out for validation)"),
    ("train + val too large", ["--set", "train_size=58000", "--set", "val_size=5000"],
     "error: --set: parameter 'train_size' = 58000: train_size + val_size = 58000 + 5000 = 63000 must be at most 60000"),
    ("unknown optimizer", ["--set", "optimizer=rmsprop"],
     "error: --set: parameter 'optimizer' = 'rmsprop': unknown optimizer 'rmsprop' (allowed: sgd, adam)"),
    ("unknown impl", ["--set", "impl=cuda"],
     "error: --set: parameter 'impl' = 'cuda': unknown impl 'cuda' (allowed: custom, torch)"),
    ("not a boolean", ["--set", "force=maybe"], "error: --set: parameter 'force' = 'maybe': must be true or false"),
    ("threshold above 1", ["--set", "acc_threshold=2"],
     "error: --set: parameter 'acc_threshold' = 2: must be a number between 0 and 1"),
    ("study parameter of one notebook", ["--set", "study_init_scale.depth=0"],
     "error: --set, notebook study_init_scale: parameter 'depth' = 0: must be a positive integer"),
    ("unknown parameter of one notebook", ["--set", "step1_bn_training.batch_sizes=[4]"],
     ["error: --set, notebook step1_bn_training: unknown parameter 'batch_sizes' (known: ", "seeds"]),
    ("unknown notebook", ["--set", "step9_bn.seeds=[0]"], ["error: --set: unknown notebook 'step9_bn' (known: "]),
    ("unknown --only notebook", ["--only", "step1_bn_trainig", "--no-book"],
     ["error: --only: unknown notebook 'step1_bn_trainig'", "did you mean 'step1_bn_training'"]),
    ("not name=value", ["--set", "seeds"], "error: --set 'seeds': expected name=value or notebook.name=value"),
    ("value not YAML", ["--set", "seeds=[0,"], "error: --set 'seeds=[0,': value is not valid YAML"),
    ("no workers", ["--workers", "0"], "error: --workers 0: must be a positive integer (worker processes of the pool)"),
    ("bad scheduler address", ["--scheduler", "tcp://127.0.0.1:9"],
     ["error: cannot reach the Dask scheduler at tcp://127.0.0.1:9 (", "dask scheduler"]),
    ("missing profile", ["--profile", "nightly"],
     ["error: profile 'nightly' not found: no file ", "nightly.yaml (available profiles: default, full, quick)"]),
]


def check_refused(code, out, err, expected, root, results):
    lines = err.strip().splitlines()
    assert code == 2, out + err
    assert len(lines) == 1, err
    if isinstance(expected, str):
        assert lines[0] == expected
    else:
        assert lines[0].startswith(expected[0]) and all(x in lines[0] for x in expected[1:]), lines[0]
    assert out == ""
    assert written(root, results) == []


def refuse_in_process(root, results, args, monkeypatch, capsys):
    """cli.main(args) in this process, as `python -m normlib.pipeline` runs it: (code, stdout, stderr)."""
    monkeypatch.setenv("NORMLIB_RESULTS", str(results))
    code = cli.main(["--root", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("args, expected", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_refused_before_anything_runs(checkout, tmp_path, args, expected, monkeypatch, capsys):
    from normlib import executors
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 2)  # the unreachable scheduler's case
    results = tmp_path / "results"
    code, out, err = refuse_in_process(checkout, results, ["--profile", "quick", *args], monkeypatch, capsys)
    check_refused(code, out, err, expected, checkout, results)


# one case of each kind through the real command line: a bad value, an unknown name, a bad profile
CLI_CASES = ["batch size 0", "unknown parameter", "missing profile"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_command_line_refuses_the_same_way(checkout, tmp_path, case):
    _, args, expected = next(c for c in BAD_REQUESTS if c[0] == case)
    results = tmp_path / "results"
    proc = run_cli(checkout, "--profile", "quick", *args, results=results, timeout=120)
    check_refused(proc.returncode, proc.stdout, proc.stderr, expected, checkout, results)


# {path}: the profile file; its name is "mine"
BAD_PROFILES = [
    ("invalid YAML", "params:\n  seeds: [0, 1\n", ["error: profile {path} is not valid YAML at line 3: "]),
    ("unknown key", "description: x\nparameters:\n  seeds: [0]\n",
     "error: profile {path}: unknown key 'parameters' (allowed: description, params, notebooks, jobs, scheduler, main)"),
    ("not a mapping", "- seeds\n",
     "error: profile {path}: must be a mapping with keys description, params, notebooks, jobs, scheduler, main"),
    ("unknown norm in a notebook", "notebooks:\n  step5_comparison:\n    extra_norms: [batchnorm]\n",
     "error: profile mine, notebook step5_comparison: parameter 'extra_norms' = ['batchnorm']: "
     "unknown extra norm 'batchnorm' (allowed: weight, group)"),
    ("non-positive learning rate", "params:\n  lr: 0.0\n",
     "error: profile mine: parameter 'lr' = 0.0: must be a positive number, or null (where a notebook selects each condition's rate)"),
    ("float epochs", "params:\n  mlp_epochs: 1.5\n",
     "error: profile mine: parameter 'mlp_epochs' = 1.5: must be a positive integer"),
]


@pytest.mark.parametrize("text, expected", [c[1:] for c in BAD_PROFILES], ids=[c[0] for c in BAD_PROFILES])
def test_bad_profile_is_refused(checkout, tmp_path, text, expected, monkeypatch, capsys):
    profile = tmp_path / "mine.yaml"
    profile.write_text(text)
    results = tmp_path / "results"
    expected = [e.format(path=profile) for e in expected] if isinstance(expected, list) \
        else expected.format(path=profile)
    code, out, err = refuse_in_process(checkout, results, ["--profile", str(profile)], monkeypatch, capsys)
    check_refused(code, out, err, expected, checkout, results)


def test_unwritable_data_root_is_refused(checkout, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")  # root ignores permissions, not this
    results = tmp_path / "results"
    monkeypatch.setenv("NORMLIB_DATA", str(blocker / "data"))
    code, out, err = refuse_in_process(checkout, results, ["--profile", "quick"], monkeypatch, capsys)
    check_refused(code, out, err, f"error: data root {blocker / 'data'} cannot be created (Not a directory); "
                                  f"set NORMLIB_DATA to a writable folder", checkout, results)


@pytest.mark.slow
def test_unwritable_results_directory_is_refused(checkout, tmp_path):
    """Through the real command line: the run's pool is started (a notebook would run) and closed again."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli(checkout, "--profile", "quick", results=blocker / "results", timeout=120)
    check_refused(proc.returncode, proc.stdout, proc.stderr,
                  f"error: results directory '{blocker / 'results'}': cannot create or write this directory "
                  f"(Not a directory)", checkout, blocker / "results")


def test_every_notebook_parameter_is_validated_by_the_pipeline():
    """A declared parameter without a rule in normlib.params.RULES would reach its notebook unchecked
    (and fail only after the notebooks before it had trained)."""
    unruled = {}
    from normlib import params
    for name in pbook.toc_notebooks(REPO):
        declared = plan.declared_parameters(REPO / "notebooks" / f"{name}.ipynb")
        for p in sorted(set(declared) - set(params.RULES)):
            unruled.setdefault(p, []).append(name)
    assert not unruled, f"parameters without a rule in normlib.params.RULES: {unruled}"


# ----------------------------------------------------------------------------
# damaged data


def data_copy(root):
    """A data root holding the verified files (hard links where possible: never write through them)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    src = D._raw_dir(data_dir())
    if D.verify(data_dir()):
        pytest.skip(f"Fashion-MNIST is not prepared in {src} (run `make data`)")
    for name in D.SHA256:
        try:
            os.link(src / name, raw / name)
        except OSError:
            shutil.copyfile(src / name, raw / name)
    return raw


def damage(raw, how):
    """Damage train-labels-idx1-ubyte: 'missing', 'truncated' or 'corrupted' (same size, one byte changed)."""
    path = raw / "train-labels-idx1-ubyte"
    data = path.read_bytes()
    path.unlink()  # a hard link to the real file: replace it, never write into it
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupted":
        path.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    return path


EXPECTED_DAMAGE = {"missing": "is missing", "truncated": "is truncated or wrong (30004 bytes, expected 60008)",
                   "corrupted": "is corrupted (sha256 mismatch)"}


@pytest.mark.parametrize("how", list(EXPECTED_DAMAGE))
def test_damaged_data_is_reported_with_what_to_do(tmp_path, monkeypatch, how):
    raw = data_copy(tmp_path / "data")
    path = damage(raw, how)
    assert D.verify(tmp_path / "data") == [f"{path} {EXPECTED_DAMAGE[how]}"]
    monkeypatch.setattr(D, "DEBIAN_DIR", tmp_path / "no-debian-package")
    with pytest.raises(D.DataError) as e:
        D.prepare(tmp_path / "data")
    message = str(e.value)
    assert f"{path} {EXPECTED_DAMAGE[how]}" in message and "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "python -m normlib.data --download" in message


@pytest.mark.parametrize("how", ["missing", "corrupted"])
def test_pipeline_reports_damaged_data_before_running_anything(tmp_path, monkeypatch, capsys, how):
    raw = data_copy(tmp_path / "data")
    path = damage(raw, how)
    monkeypatch.setattr(D, "DEBIAN_DIR", tmp_path / "no-debian-package")
    monkeypatch.setenv("NORMLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("NORMLIB_RESULTS", str(tmp_path / "results"))
    root = copy_repo(tmp_path / "repo")
    assert cli.main(["--root", str(root), "--profile", "quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: Fashion-MNIST not usable: ")
    assert f"{path} {EXPECTED_DAMAGE[how]}" in err[0] and "apt-get install dataset-fashion-mnist" in err[0]
    assert written(root, tmp_path / "results") == []


def test_damaged_debian_archive_is_reported(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in D.SHA256:
        (debian / f"{name}.gz").write_bytes(b"\x1f\x8b\x08\x00truncated")
    monkeypatch.setattr(D, "DEBIAN_DIR", debian)
    with pytest.raises(D.DataError, match=r"train-images-idx3-ubyte.gz cannot be decompressed .*"
                                          r"apt-get install --reinstall dataset-fashion-mnist"):
        D.prepare(tmp_path / "data")
    assert not [p for p in (tmp_path / "data").rglob("*") if p.is_file()], "half-written data file left behind"


@pytest.mark.skipif(not all((D.DEBIAN_DIR / f"{n}.gz").exists() for n in D.SHA256),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_corrupted_file_is_replaced_from_debian_package(tmp_path):
    raw = data_copy(tmp_path / "data")
    damage(raw, "corrupted")
    assert D.prepare(tmp_path / "data") == tmp_path / "data"
    assert D.verify(tmp_path / "data") == []


# ----------------------------------------------------------------------------
# a diverged run


def test_diverged_run_is_recorded_cached_and_reported(tmp_path):
    from normlib import figures, metrics, protocol, study_figures
    from normlib.studies import learning_rate
    from normlib.trials import run_configs
    from normlib.train import TrainConfig

    base = dict(arch="mlp", norm="none", schedule="constant", train_size=512, val_size=256, batch_size=64,
                epochs=1, evals_per_epoch=2)
    configs = [TrainConfig(**base, lr=lr, seed=seed) for lr in (0.05, 100.0) for seed in (0, 1)]
    hists = run_configs(configs, workers=1, cache=tmp_path / "trials", progress=False)
    ok, bad = hists[0], hists[2]
    assert not ok.diverged and ok.diverged_step is None and math.isfinite(ok.test_acc)
    assert bad.diverged and bad.diverged_step == len(bad.step_loss) < ok.steps_per_epoch
    assert not math.isfinite(bad.step_loss[-1] * bad.step_grad_norm[-1])
    assert all(math.isfinite(x) for x in bad.step_loss[:-1]) and math.isnan(bad.test_acc)
    # cached with its divergence, read back identically
    again = run_configs(configs, workers=1, cache=tmp_path / "trials", progress=False)
    assert json.dumps(again[2].to_dict()) == json.dumps(bad.to_dict())
    # tables: the row says diverged, at which step, with no final metrics; the studies count it at chance
    runs = metrics.trials_table(hists, keys=("lr", "seed"))
    row = runs[(runs["lr"] == 100.0) & (runs["seed"] == 0)].iloc[0]
    assert bool(row["diverged"]) and row["diverged_step"] == bad.diverged_step
    assert math.isnan(row["final_val_loss"]) and math.isnan(row["final_val_acc"])
    assert metrics.trials_table(hists)["diverged"].tolist() == [False, False, True, True]
    table = learning_rate.tabulate(hists, threshold=0.5)
    assert table.groupby("lr")["failed"].sum().to_dict() == {0.05: 0, 100.0: 2}
    assert (table[table["lr"] == 100.0]["final_val_acc"] == metrics.CHANCE_ACC).all()
    assert not table[table["lr"] == 100.0]["trains"].any()
    # figures: marked as diverged, no crash
    fig = study_figures.sweep(table, "lr", "final_val_acc", diverged="failed")
    labels = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else \
        [h.get_label() for ax in fig.axes for h in ax.collections]
    assert any("diverged" in label for label in labels), labels
    steps = protocol.steps_frame(hists, keys=("norm", "lr", "seed"))
    assert steps[steps["lr"] == 100.0].groupby("seed")["step"].max().tolist() == [h.diverged_step for h in hists[2:]]
    figures.curves(protocol.curves_frame(hists), "val_loss")


# ----------------------------------------------------------------------------
# interrupted runs resume to identical results

TINY = ["--profile", "quick", "--only", "step1_bn_training,step3_ln_training", "--no-book",
        "--set", "train_size=640", "--set", "val_size=320"]


def result_tables(results):
    """{file: canonical JSON} of every cached trial (plain and probed), where and how long it ran (not a
    result) removed."""
    tables = {}
    for path in sorted(Path(results).glob("trials/*.json")):
        d = json.loads(path.read_text())
        d.pop("ran_on")
        d["history"].pop("wall_time")
        tables[str(path.relative_to(results))] = json.dumps(d, sort_keys=True)
    return tables


def processes_of(results):
    """{pid: command line} of the live processes a run started (pipeline, kernels, trial workers):
    they all inherit NORMLIB_RESULTS=results."""
    mark = f"NORMLIB_RESULTS={results}\0".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "environ").read_bytes() \
                    and (proc / "stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:100].decode()
        except OSError:
            pass
    return found


def wait_until(condition, timeout, proc=None, what=""):
    end = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}", pytrace=False)
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}", pytrace=False)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The TINY run, uninterrupted: (its checkout, its results directory, its result tables)."""
    root = copy_repo(tmp_path_factory.mktemp("uninterrupted") / "repo")
    results = root.parent / "results"
    proc = run_cli(root, *TINY, results=results)
    assert proc.returncode == 0, tail(proc)
    tables = result_tables(results)
    assert len([k for k in tables if k.startswith("trials/")]) >= 8
    return root, results, tables


@pytest.mark.slow
@pytest.mark.parametrize("sig, moment", [
    (signal.SIGKILL, "first trial stored"),
    (signal.SIGKILL, "second notebook running"),
    (signal.SIGINT, "first trial stored"),
], ids=["SIGKILL after the first trial", "SIGKILL in the second notebook", "Ctrl-C after the first trial"])
def test_interrupted_run_resumes_to_identical_results(tmp_path, uninterrupted, sig, moment):
    root = copy_repo(tmp_path / "repo")
    results = tmp_path / "results"
    trials, executed = results / "trials", root / "book" / "notebooks"
    log = tmp_path / "killed-run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(pipeline_cmd(*TINY), cwd=root, env=pipeline_env(results), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if moment == "first trial stored":
            wait_until(lambda: list(trials.glob("*.json")), 300, proc, "the first trial was stored")
        else:
            wait_until(lambda: (executed / ".step3_ln_training.partial.ipynb").exists(), 300, proc,
                       "the second notebook started")
        os.killpg(proc.pid, sig)  # the whole process group, as Ctrl-C in a terminal does
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text()
    if sig == signal.SIGINT:
        assert code == 130, output
        assert output.strip().splitlines()[-1] == ("error: interrupted; finished trials are cached: "
                                                   "run the same command again to resume"), output
    else:
        assert code == -signal.SIGKILL
    # whatever the run started (kernel, trial workers) must end with it: give them 30 s, then end them
    end = time.monotonic() + 30
    while processes_of(results) and time.monotonic() < end:
        time.sleep(0.2)
    survivors = processes_of(results)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    kept = {p.name: p.stat().st_mtime_ns for p in trials.glob("*.json")}
    assert not (executed / "step3_ln_training.ipynb").exists(), "an unfinished notebook took its final place"

    proc = run_cli(root, *TINY, results=results)
    assert proc.returncode == 0, tail(proc)
    assert result_tables(results) == uninterrupted[2]
    assert {p.name: p.stat().st_mtime_ns for p in trials.glob("*.json") if p.name in kept} == kept, \
        "trials finished before the interruption were recomputed instead of reused"
    for name in ("step1_bn_training", "step3_ln_training"):
        nbformat.validate(nbformat.read(executed / f"{name}.ipynb", as_version=4))
    assert not list(executed.glob(".*")), "partial notebooks left behind"
    assert not survivors, f"processes still running 30 s after the {sig.name}: {survivors}"


@pytest.mark.slow
def test_unreadable_trial_file_is_recomputed_not_read(tmp_path, uninterrupted):
    root, done, tables = uninterrupted
    results = shutil.copytree(done, tmp_path / "results")
    victims = sorted((results / "trials").glob("*.json"))[:2]
    victims[0].write_text(victims[0].read_text()[:100])  # as a crash mid-write would leave it, were writes not atomic
    victims[1].write_text("")
    proc = run_cli(root, *TINY, "--rerun", results=results)  # the notebooks are up to date: execute them anyway
    assert proc.returncode == 0, tail(proc)
    assert result_tables(results) == tables


# ----------------------------------------------------------------------------
# determinism


@pytest.mark.slow
def test_quick_profile_twice_gives_identical_result_tables(quick_book, tmp_path):
    assert quick_book.proc.returncode == 0, tail(quick_book.proc)
    root = copy_repo(tmp_path / "repo")
    results = tmp_path / "results"
    proc = run_cli(root, "--profile", "quick", "--no-book", results=results, timeout=1800)
    assert proc.returncode == 0, tail(proc)
    first, second = result_tables(quick_book.results), result_tables(results)
    assert first and sorted(first) == sorted(second)
    differ = [k for k in first if first[k] != second[k]]
    assert not differ, f"{len(differ)} of {len(first)} trials differ between two runs, e.g. {differ[:3]}"
