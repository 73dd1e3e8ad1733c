"""Tests of normlib.trials: trials cached under a key hashing trial, device, threads, data
fingerprint and code version; a re-run trains nothing; atomic writes (leftover temp files and
damaged entries are ignored and recomputed); force; worker processes, a Dask cluster (also with two
threads per worker) and in-process runs give identical Histories; a grid killed in the middle
completes on the next run with the same results; the progress file the pipeline reads.
Plus the acceptance run: one-epoch MLPs reach 84% test accuracy with every norm."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from normlib import executors, owners, paths, probes, progress, trials
from normlib.train import TrainConfig

TINY = dict(train_size=256, val_size=100, hidden=(16,), batch_size=64, epochs=1, device="cpu")
CONFIGS = [TrainConfig(**TINY, norm=norm, seed=seed)
           for norm, seed in [("none", 0), ("batch", 0), ("layer", 1), ("weight", 0)]]


def comparable(histories):
    """Histories (or Results) as JSON strings without wall_time (NaN-safe), for exact comparison."""
    histories = [getattr(h, "history", h) for h in histories]
    return [json.dumps({k: v for k, v in h.to_dict().items() if k != "wall_time"}) for h in histories]


def run(configs, **kwargs):
    return trials.run_configs(configs, progress=False, **kwargs)


def entries(cache):
    """Finished cache entries: {name: mtime_ns}."""
    return {p.name: p.stat().st_mtime_ns for p in cache.glob("*.json") if not p.name.startswith(".")}


@pytest.fixture
def count_training(monkeypatch):
    """Count in-process trainings (workers=1 trains in this process)."""
    calls = []
    real = probes.run
    monkeypatch.setattr(probes, "run", lambda t, device=None: calls.append(t.config) or real(t, device))
    return calls


@pytest.fixture
def no_training(monkeypatch):
    def fail(t, device=None):
        raise AssertionError(f"trained {t} although its result is cached")
    monkeypatch.setattr(probes, "run", fail)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """CONFIGS run in-process, uninterrupted."""
    return run(CONFIGS, workers=1, cache=tmp_path_factory.mktemp("baseline"))


# ----------------------------------------------------------------------------
# keys

def test_key_hashes_trial_device_threads_data_and_code(monkeypatch):
    c = CONFIGS[0]
    key = trials.trial_key(c)
    assert key == trials.trial_key(TrainConfig.from_dict(c.to_dict())) == trials.trial_key(trials.trial(c))
    assert len({trials.trial_key(x) for x in CONFIGS}) == len(CONFIGS)
    assert trials.trial_key(TrainConfig(**{**TINY, "lr": 0.0500001})) != trials.trial_key(TrainConfig(**TINY))
    assert trials.trial_key(trials.trial(c, "layer_grads")) != key  # a probe is part of the trial
    assert trials.trial_key(trials.trial(c, model="batch+layer")) != key
    assert trials.trial_key(c, device="cuda") != key and trials.trial_key(c, threads=2) != key
    monkeypatch.setattr(trials, "fingerprint", lambda: "other-data")
    assert trials.trial_key(c) != key
    monkeypatch.undo()
    monkeypatch.setattr(trials, "code_version", lambda probed=True: "other-code")
    assert trials.trial_key(c) != key


def test_code_version_hashes_the_code_a_trial_runs(tmp_path, monkeypatch):
    import shutil
    from pathlib import Path
    lib = Path(trials.__file__).parent
    sources = {p.relative_to(lib).as_posix() for p in trials._source_files(trials.TRAINER_FILES)}
    assert sources >= {"norms.py", "weight_norm.py", "kernels.py", "models.py", "data.py", "train.py"}
    assert any(s.endswith(".cpp") for s in sources)  # the C++ kernels
    plain, probed = trials.code_version(False), trials.code_version(True)
    assert plain != probed  # probes.py counts for probed trials only
    # a copy of the library with one changed training file has another version
    copy = tmp_path / "normlib"
    shutil.copytree(lib, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "train.py").write_text((copy / "train.py").read_text() + "\n# changed\n")
    monkeypatch.setattr(trials, "__file__", str(copy / "trials.py"))
    trials._digest.cache_clear()
    try:
        assert trials.code_version(False) != plain
    finally:
        monkeypatch.undo()
        trials._digest.cache_clear()
    assert trials.code_version(False) == plain


# ----------------------------------------------------------------------------
# the cache

def test_rerun_reuses_finished_trials(tmp_path, count_training, monkeypatch, baseline):
    first = run(CONFIGS, workers=1, cache=tmp_path)
    assert len(count_training) == len(CONFIGS)
    assert comparable(first) == comparable(baseline)
    files = entries(tmp_path)
    assert sorted(files) == sorted(f"{trials.trial_key(c)}.json" for c in CONFIGS)
    monkeypatch.setattr(probes, "run", lambda t, device=None: pytest.fail("trained a cached trial"))
    again = run(CONFIGS, workers=1, cache=tmp_path)
    assert [h.to_dict() for h in again] == [h.to_dict() for h in first]  # wall_time too: read back, not rerun
    assert entries(tmp_path) == files  # nothing rewritten
    assert [h.config for h in again] == [c.to_dict() for c in CONFIGS]  # same order


def test_only_missing_trials_run(tmp_path, count_training, baseline):
    run(CONFIGS, workers=1, cache=tmp_path)
    (tmp_path / f"{trials.trial_key(CONFIGS[2])}.json").unlink()
    count_training.clear()
    again = run(CONFIGS, workers=1, cache=tmp_path)
    assert count_training == [CONFIGS[2]]
    assert comparable(again) == comparable(baseline)


def test_force_recomputes(tmp_path, count_training, baseline):
    run(CONFIGS[:2], workers=1, cache=tmp_path)
    count_training.clear()
    forced = run(CONFIGS[:2], workers=1, cache=tmp_path, force=True)
    assert count_training == CONFIGS[:2]
    assert comparable(forced) == comparable(baseline[:2])


def test_identical_configs_run_once(tmp_path, count_training):
    a, b = run([CONFIGS[0], CONFIGS[0].to_dict()], workers=1, cache=tmp_path)
    assert len(count_training) == 1 and a.to_dict() == b.to_dict()


def test_leftover_temp_file_is_ignored(tmp_path, count_training, baseline):
    key = trials.trial_key(CONFIGS[0])
    (tmp_path / f".{key}.json.abc123.tmp").write_text(json.dumps(baseline[1].to_dict()))  # a killed write
    (h,) = run(CONFIGS[:1], workers=1, cache=tmp_path)
    assert len(count_training) == 1
    assert comparable([h]) == comparable(baseline[:1])


@pytest.mark.parametrize("damage", ["truncated", "empty", "not json", "not utf-8", "a list", "null", "no config"])
def test_damaged_entry_is_recomputed(tmp_path, count_training, baseline, damage):
    run(CONFIGS[:1], workers=1, cache=tmp_path)
    path = tmp_path / f"{trials.trial_key(CONFIGS[0])}.json"
    text = path.read_text()
    path.write_bytes({"truncated": text[:len(text) // 2].encode(), "empty": b"", "not json": b"<html>",
                      "not utf-8": b"\xff\xfe\x00", "a list": b"[1, 2]", "null": b"null",
                      "no config": b'{"history": {"step_loss": [1.0]}}'}[damage])
    count_training.clear()
    (h,) = run(CONFIGS[:1], workers=1, cache=tmp_path)
    assert len(count_training) == 1
    assert comparable([h]) == comparable(baseline[:1])
    assert comparable([trials.load(path)]) == comparable(baseline[:1])  # the entry was rewritten


def test_write_atomic(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "entry.json"
    paths.write_atomic(path, '{"a": 1}')
    assert path.read_text() == '{"a": 1}' and [p.name for p in path.parent.iterdir()] == ["entry.json"]

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)  # dies between writing the temp file and renaming it
    with pytest.raises(OSError):
        paths.write_atomic(path, '{"a": 2}')
    assert path.read_text() == '{"a": 1}'  # the old entry is intact
    assert [p.name for p in path.parent.iterdir()] == ["entry.json"]  # and no temp file is left


# ----------------------------------------------------------------------------
# executors: worker processes, Dask, in-process give identical Histories

def test_worker_processes_match_in_process(tmp_path, baseline):
    hs = run(CONFIGS, workers=2, cache=tmp_path)
    assert comparable(hs) == comparable(baseline)
    assert sorted(entries(tmp_path)) == sorted(f"{trials.trial_key(c)}.json" for c in CONFIGS)


@pytest.mark.parametrize("threads", [1, 2], ids=["one thread per worker", "two threads per worker"])
def test_dask_cluster_matches_in_process(tmp_path, baseline, threads):
    """Also with two threads per worker process, where two trials train at once in one process
    (torch's global generator and thread count are shared there)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2 if threads == 1 else 1, threads_per_worker=threads, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster.scheduler_address) as client:
        hs = run(CONFIGS, scheduler=client, cache=tmp_path)
        assert comparable(hs) == comparable(baseline)
        assert len(entries(tmp_path)) == len(CONFIGS)
        # a scheduler address works too; the results say where they ran
        again = trials.run_trials(CONFIGS[:2], scheduler=cluster.scheduler_address, cache=tmp_path, force=True,
                                  progress=False)
        assert comparable(again) == comparable(baseline[:2])
        assert {r.ran_on["worker"] for r in again} <= set(cluster.scheduler_info["workers"])
        assert all(r.ran_on["threads"] == trials.THREADS and r.ran_on["device"] == "cpu" for r in again)


def test_a_worker_that_differs_is_refused_before_any_trial(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    real = trials.environment
    monkeypatch.setattr(trials, "environment", lambda: {**real(), "normlib code": "0123456789abcdef"})
    monkeypatch.setattr(probes, "run", lambda t, device=None: pytest.fail("a trial ran on a mismatched pool"))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) \
            as cluster:
        worker = list(cluster.scheduler_info["workers"])[0]
        with pytest.raises(executors.PoolError) as e:
            trials.run_trials(CONFIGS[:1], scheduler=cluster.scheduler_address, cache=tmp_path, progress=False)
    message = str(e.value)
    assert "\n" not in message and worker in message
    assert "normlib code" in message and "this client: 0123456789abcdef" in message
    assert not entries(tmp_path)


def test_an_unreachable_scheduler_is_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "CONNECT_TIMEOUT", 2)
    with pytest.raises(executors.PoolError) as e:
        trials.run_trials(CONFIGS[:1], scheduler="tcp://127.0.0.1:9", cache=tmp_path, progress=False)
    assert "tcp://127.0.0.1:9" in str(e.value) and "\n" not in str(e.value)


def test_probed_trials_run_and_cache_like_plain_ones(tmp_path, count_training):
    from dataclasses import replace
    config = TrainConfig(hidden=(16,), train_size=256, val_size=200, batch_size=64, max_steps=4, device="cpu")
    probed = [trials.trial(config, "layer_grads"),
              trials.trial(replace(config, norm="batch"), "train_eval", model="batch+layer")]
    first = trials.run_trials(probed, workers=1, cache=tmp_path, progress=False)
    assert [r.history.config["norm"] for r in first] == ["none", "batch"]
    assert len(first[0].probe["first"]) == 4 and first[1].probe["step"] == [4]
    assert len(entries(tmp_path)) == 2 and len(count_training) == 2
    again = trials.run_trials(probed, workers=1, cache=tmp_path, progress=False)
    assert len(count_training) == 2 and all(r.cached for r in again)
    assert [r.history.step_loss for r in again] == [r.history.step_loss for r in first]
    assert [r.probe for r in again] == [r.probe for r in first]
    listed = [trials.trial(config, "drift", every=2, probe_size=64, layers=["norm1", "act1"])]  # a list-valued option
    trials.run_trials(listed, workers=1, cache=tmp_path, progress=False)
    assert all(r.cached for r in trials.run_trials(listed, workers=1, cache=tmp_path, progress=False))  # read back


def test_progress_file_counts_cached_and_trained_trials(tmp_path, monkeypatch, baseline):
    status = tmp_path / "progress" / "nb.json"
    monkeypatch.setenv("NORMLIB_PROGRESS", str(status))
    monkeypatch.setattr(progress.Progress, "_state", {})
    run(CONFIGS[:2], workers=1, cache=tmp_path / "cache")
    first = json.loads(status.read_text())
    assert (first["total"], first["cached"], first["trained"]) == (2, 0, 2)
    run(CONFIGS, workers=1, cache=tmp_path / "cache")  # a second call in the same notebook adds up
    second = json.loads(status.read_text())
    assert (second["total"], second["cached"], second["trained"]) == (6, 2, 4)
    assert sum(second["hosts"].values()) == 4 and second["updated"] >= second["started"]


# The grid of CONFIGS in a child process. The second trial's atomic rename is held back so that the
# kill below always lands in the middle of the grid, after trial 1 is stored and while trial 2's
# result exists only as a temp file (the worst moment for the cache).
CHILD = """
import json, os, sys, time
from normlib import trials
from normlib.train import TrainConfig
replace, renames = os.replace, []
def slow_replace(src, dst):
    renames.append(dst)
    if len(renames) == 2:
        time.sleep(300)
    replace(src, dst)
os.replace = slow_replace
configs = [TrainConfig.from_dict(c) for c in json.loads(sys.argv[1])]
trials.run_configs(configs, workers=1, cache=sys.argv[2], progress=False)
"""


def test_killed_grid_completes_with_identical_results(tmp_path, count_training, baseline):
    cache = tmp_path / "cache"
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps([c.to_dict() for c in CONFIGS]), str(cache)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (entries(cache) and list(cache.glob(".*.tmp"))):
            assert child.poll() is None, f"the grid ended early: {child.communicate()[1].decode()[-2000:]}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    done = entries(cache)
    assert len(done) == 1 and len(list(cache.glob(".*.tmp"))) == 1  # trial 1 stored, trial 2 half-way

    resumed = run(CONFIGS, workers=1, cache=cache)
    assert len(count_training) == len(CONFIGS) - 1  # the stored trial was reused
    assert all(entries(cache)[name] == mtime for name, mtime in done.items())
    assert comparable(resumed) == comparable(baseline)
    assert all(trials.load(cache / name) is not None for name in entries(cache))


# ----------------------------------------------------------------------------
# acceptance (issue "Done when"): 8 full-data one-epoch MLP runs, default TrainConfig

@pytest.mark.slow
def test_one_epoch_mlp_reaches_84_percent_with_every_norm(tmp_path):
    configs = [TrainConfig(norm=norm, impl=impl, device="cpu")
               for norm in ("none", "batch", "layer", "weight") for impl in ("custom", "torch")]
    hs = run(configs, workers=2, cache=tmp_path)
    acc = {(c.norm, c.impl): h.test_acc for c, h in zip(configs, hs)}
    print("test accuracy after one epoch:", {f"{n}/{i}": round(a, 4) for (n, i), a in acc.items()})
    for c, h in zip(configs, hs):
        assert h.config["train_size"] == 0 and len(h.step_loss) == 55_000 // 128  # the full training set
        assert not h.diverged
    assert all(a >= 0.84 for a in acc.values()), acc


def test_the_trials_of_a_build_export_as_one_archive(tmp_path, baseline, monkeypatch):
    import tarfile
    run(CONFIGS[:2], workers=1, cache=tmp_path / "results" / "trials")
    monkeypatch.setenv("NORMLIB_RESULTS", str(tmp_path / "results"))
    assert trials.main(["--export", str(tmp_path / "out.tar.gz")]) == 0
    with tarfile.open(tmp_path / "out.tar.gz") as tar:
        names = sorted(tar.getnames())
        first = json.load(tar.extractfile(names[0]))
    assert names == sorted(f"trials/{trials.trial_key(c)}.json" for c in CONFIGS[:2])
    assert first["trial"]["config"] in [c.to_dict() for c in CONFIGS[:2]] and "history" in first
    monkeypatch.setenv("NORMLIB_RESULTS", str(tmp_path / "nothing"))
    assert trials.main(["--export", str(tmp_path / "none.tar.gz")]) == 2


def test_a_pool_with_a_gpu_gets_the_auto_trials_with_a_gpu_resource(tmp_path, monkeypatch):
    """device "auto" resolves to CUDA when the executor offers a GPU (a Dask worker started with
    --resources GPU=1): the trial is keyed as a CUDA trial (cached apart from the CPU one) and submitted
    with the GPU resource; an explicit "cpu" trial stays on the CPU."""
    submitted = []

    class FakeGpuPool:
        kind = "Dask"

        def cuda(self):
            return True

        def workers(self, report):
            return {"tcp://gpu-node:1": trials.report()}

        def map(self, fn, jobs, keys=None, resources=None):
            for i, job in enumerate(jobs):
                submitted.append((job["device"], resources[i]))
                out = fn({**job, "device": "cpu"})  # this machine has no GPU: compute it on the CPU
                yield i, out

    monkeypatch.setattr(executors, "executor_for", lambda workers, scheduler: FakeGpuPool())
    auto = TrainConfig(**{**TINY, "device": "auto"})
    cpu = TrainConfig(**TINY)
    trials.run_trials([auto, cpu], cache=tmp_path, progress=False)
    assert submitted == [("cuda", {"GPU": 1}), ("cpu", None)]
    assert {p.name for p in tmp_path.glob("*.json")} == {f"{trials.trial_key(auto, device='cuda')}.json",
                                                         f"{trials.trial_key(cpu)}.json"}


# ----------------------------------------------------------------------------
# one owner per key: notebooks running at once never train a trial twice

def test_a_key_has_one_owner_and_a_dead_owners_lock_is_taken_over(tmp_path):
    assert owners.claim(tmp_path, "k") and owners.claim(tmp_path, "k")  # taken, and still ours
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "b.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid}))
        assert not owners.claim(tmp_path, "b")  # a live process owns it
    finally:
        sleeper.kill()
        sleeper.wait()
    assert owners.claim(tmp_path, "b")  # its owner is gone: stale, taken over
    owners.release(tmp_path, "k")
    assert not (tmp_path / "k.lock").exists() and (tmp_path / "b.lock").exists()


def test_a_trial_another_live_process_owns_is_waited_for_not_trained(tmp_path, monkeypatch, count_training, baseline):
    """The owner (here a sleeping process standing in for another notebook) writes the entry a moment later:
    this call trains nothing, reads the entry, and counts the trial as shared."""
    import threading

    done = tmp_path / "done"
    run(CONFIGS[:1], workers=1, cache=done)  # the entry the owner will write
    count_training.clear()
    status = tmp_path / "progress.json"
    monkeypatch.setenv("NORMLIB_PROGRESS", str(status))
    monkeypatch.setattr(progress.Progress, "_state", {})
    cache = tmp_path / "cache"
    cache.mkdir()
    (entry,) = done.glob("*.json")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (cache / entry.name.replace(".json", ".lock")).write_text(
            json.dumps({"host": os.uname().nodename, "pid": sleeper.pid}))
        threading.Timer(1.0, lambda: paths.write_atomic(cache / entry.name, entry.read_bytes())).start()
        got = trials.run_trials(CONFIGS[:1], workers=1, cache=cache, progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert count_training == [] and comparable(got) == comparable(baseline[:1])
    s = json.loads(status.read_text())
    assert (s["trained"], s["shared"], s["cached"]) == (0, 1, 0)


def test_an_owner_that_dies_without_an_entry_loses_the_trial_to_the_waiter(tmp_path, count_training):
    cache = tmp_path / "cache"
    key = trials.trial_key(CONFIGS[0])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    cache.mkdir()
    (cache / f"{key}.lock").write_text(json.dumps({"host": os.uname().nodename, "pid": sleeper.pid}))
    got = trials.run_trials(CONFIGS[:1], workers=1, cache=cache, progress=False)  # waits, then takes it over
    sleeper.wait()
    assert len(count_training) == 1 and not got[0].cached and not (cache / f"{key}.lock").exists()


OWNERS = """
import json, sys
from normlib import trials
from normlib.train import TrainConfig
configs = [TrainConfig(**json.loads(sys.argv[1]), norm=n, seed=s) for n, s in json.loads(sys.argv[2])]
results = trials.run_trials(configs, workers=1, cache=sys.argv[3], progress=False)
print(json.dumps([r.history.test_loss for r in results]))
"""


@pytest.mark.slow
def test_two_processes_asking_for_the_same_trials_train_each_once(tmp_path):
    """Two notebooks started at once with overlapping trials (in opposite orders): every distinct trial is
    trained by exactly one of them, the other reads it, and both get the same results."""
    grid = [("none", s) for s in range(3)] + [("batch", s) for s in range(3)]
    env = {**os.environ, "PYTHONPATH": str(paths.ROOT)}
    procs = []
    for i, order in enumerate((grid, grid[::-1])):
        env_i = {**env, "NORMLIB_PROGRESS": str(tmp_path / f"p{i}.json")}
        procs.append(subprocess.Popen([sys.executable, "-c", OWNERS, json.dumps(TINY), json.dumps(order),
                                       str(tmp_path / "cache")], env=env_i, stdout=subprocess.PIPE, text=True))
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    status = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    assert sum(s["trained"] for s in status) == len(grid)  # no trial trained twice
    assert set(status[0]["keys"]).isdisjoint(status[1]["keys"])
    assert sum(s["shared"] for s in status) == len(grid)  # what one trained, the other read
    assert outs[0] == outs[1][::-1]
    assert not list((tmp_path / "cache").glob("*.lock"))


def test_a_lock_file_being_written_is_not_taken_for_stale(tmp_path):
    """Between its exclusive creation and its content, a lock reads empty: young, it is another's; old, stale."""
    (tmp_path / "w.lock").write_text("")
    assert owners.state(tmp_path, "w") == "theirs" and not owners.claim(tmp_path, "w")
    old = time.time() - 60
    os.utime(tmp_path / "w.lock", (old, old))
    assert owners.state(tmp_path, "w") == "stale" and owners.claim(tmp_path, "w")
    assert owners.state(tmp_path, "w") == "mine" and owners.state(tmp_path, "none") == "free"
